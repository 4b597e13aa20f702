//! The mail protocols up to login. Each protocol is a pure state machine
//! (`Session::on_line(line) -> Action`, testable without I/O) plus a small async driver
//! that reads client lines through [`crate::codec::LineReader`], writes replies, upgrades
//! to TLS, and asks a [`Login`] to log the client in upstream. Pre-auth ends in a
//! [`Handoff`]; after it the relay understands nothing and only pipes bytes.

pub mod sasl;
pub mod smtp;

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;

use crate::error::Error;
use crate::tls::Stream;
pub use sasl::Credentials;

/// Logs a client in on the other side: checks the local password, gets an access token,
/// and logs in to the upstream server. The server implements it; tests can fake it.
pub trait Login: Sync {
    /// The logged-in upstream connection.
    type Upstream: Send;

    fn login(
        &self,
        credentials: Credentials,
    ) -> impl Future<Output = Result<LoggedIn<Self::Upstream>, Error>> + Send;
}

/// A successful login on both sides.
pub struct LoggedIn<U> {
    /// The mailbox the client opened (lower case).
    pub mailbox: String,
    pub upstream: U,
}

/// The end of pre-auth: the client is logged in, locally and upstream.
pub struct Handoff<U> {
    pub client: Stream,
    /// What the client sent behind its login command (pipelining): it goes upstream first.
    pub client_residual: Vec<u8>,
    pub mailbox: String,
    pub upstream: U,
}

/// A reply to the client, complete with its line ends, and whether to close afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub text: Cow<'static, str>,
    pub close: bool,
}

impl Reply {
    pub fn new(text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            text: text.into(),
            close: false,
        }
    }

    pub fn closing(text: impl Into<Cow<'static, str>>) -> Self {
        Self {
            text: text.into(),
            close: true,
        }
    }
}

/// Whether a client may send a password: always over TLS; in plaintext only from a
/// loopback address and only when the config allows it.
pub fn auth_allowed(peer: SocketAddr, tls: bool, allow_plaintext_on_loopback: bool) -> bool {
    tls || (allow_plaintext_on_loopback && crate::config::is_loopback(peer.ip()))
}
