//! The mail protocols up to login. Each protocol is a pure state machine
//! (`Session::on_line(line) -> Action`, testable without I/O) plus a small async driver
//! that reads client lines through [`crate::codec::LineReader`], writes replies, upgrades
//! to TLS, and asks a [`Login`] to log the client in upstream. Pre-auth ends in a
//! [`Handoff`]; after it the relay understands nothing and only pipes bytes.

pub mod driver;
pub mod imap;
pub mod pop3;
pub mod proxy_header;
pub mod sasl;
pub mod smtp;
#[cfg(test)]
mod testing;

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;

use crate::config::Limits;
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
    /// The upstream server's success reply, without tag or status word (IMAP passes its
    /// `[CAPABILITY ...]` code on to the client).
    pub upstream_ok: String,
}

/// What a pre-auth state machine asks its driver to do next.
#[derive(Debug)]
pub enum Action {
    /// Send this reply (and close if it says so).
    Reply(Reply),
    /// Send this go-ahead, drop buffered input, and run the TLS handshake.
    StartTls(Reply),
    /// Log in with these credentials, then call [`PreAuth::login_succeeded`] or
    /// [`PreAuth::login_failed`].
    Login(Credentials),
    /// Send `ack` if any (an IMAP `+` continuation), read exactly `len` bytes of literal,
    /// and hand them to [`PreAuth::on_literal`].
    Literal { len: usize, ack: Option<Reply> },
    /// Say nothing; read the next line (the rest of an IMAP command after a literal).
    Continue,
}

/// The pre-auth bounds of one session, from `[limits]` (see [`crate::config::Limits`]).
/// Sessions made with `Session::new` get the defaults; the server gives them the
/// configured values with `with_limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreauthLimits {
    /// Longest command line, line end included. SMTP AUTH lines may be longer
    /// ([`smtp::MAX_AUTH_LINE`]).
    pub max_line: usize,
    /// Largest IMAP literal (unused by the others).
    pub max_literal: usize,
    /// Commands before login; the next one closes the connection.
    pub max_commands: u32,
    /// Bytes read before login; the driver closes the connection past it.
    pub max_bytes: usize,
}

impl PreauthLimits {
    pub fn smtp(limits: &Limits) -> Self {
        Self::with_line(limits, limits.max_line_smtp)
    }

    pub fn imap(limits: &Limits) -> Self {
        Self::with_line(limits, limits.max_line_imap)
    }

    pub fn pop3(limits: &Limits) -> Self {
        Self::with_line(limits, limits.max_line_pop3)
    }

    fn with_line(limits: &Limits, max_line: usize) -> Self {
        Self {
            max_line,
            max_literal: limits.max_literal_imap,
            max_commands: limits.preauth_max_commands,
            max_bytes: limits.preauth_max_bytes,
        }
    }
}

/// What a pre-auth session counts against its limits: its commands and failed logins.
#[derive(Debug)]
pub struct Tally {
    pub limits: PreauthLimits,
    commands: u32,
    failures: u32,
}

impl Tally {
    pub fn new(limits: PreauthLimits) -> Self {
        Self {
            limits,
            commands: 0,
            failures: 0,
        }
    }

    /// Counts a command; once there are more than `limits.max_commands`, the action that
    /// closes the connection with `too_many`.
    pub fn count_command(&mut self, too_many: &'static str) -> Option<Action> {
        self.commands += 1;
        (self.commands > self.limits.max_commands).then(|| Action::Reply(Reply::closing(too_many)))
    }

    /// Counts a failed login: `true` once there were `max`.
    pub fn failures_reach(&mut self, max: u32) -> bool {
        self.failures += 1;
        self.failures >= max
    }
}

/// [`PreAuth::tally`] and [`PreAuth::tally_mut`] for a session that keeps its [`Tally`]
/// in a field named `tally`.
macro_rules! tally_in_field {
    () => {
        fn tally(&self) -> &$crate::protocol::Tally {
            &self.tally
        }

        fn tally_mut(&mut self) -> &mut $crate::protocol::Tally {
            &mut self.tally
        }
    };
}
use tally_in_field;

/// A protocol's pre-auth conversation as a pure state machine: lines (and IMAP literals)
/// in, actions out. No I/O, so every transition is a plain unit test.
pub trait PreAuth {
    /// [`PreAuth::max_line`] under the default limits (what `Session::new` gets).
    const MAX_LINE: usize;

    /// What the session has counted against its limits.
    fn tally(&self) -> &Tally;

    /// The same, to change its limits.
    fn tally_mut(&mut self) -> &mut Tally;

    /// The same session under `limits` instead of the defaults.
    fn with_limits(mut self, limits: PreauthLimits) -> Self
    where
        Self: Sized,
    {
        self.tally_mut().limits = limits;
        self
    }

    /// Longest line the reader accepts, line end included, under the session's limits.
    fn max_line(&self) -> usize {
        self.tally().limits.max_line
    }

    /// Bytes the client may send before login.
    fn max_bytes(&self) -> usize {
        self.tally().limits.max_bytes
    }

    /// The text of [`PreAuth::too_much_input`].
    const TOO_MUCH_INPUT: &'static str;

    /// The reply that closes a session that sent more than [`PreAuth::max_bytes`].
    fn too_much_input(&self) -> Reply {
        Reply::closing(Self::TOO_MUCH_INPUT)
    }

    /// The first thing the server says.
    fn greeting(&self) -> Reply;

    /// One complete line, without its line end.
    fn on_line(&mut self, line: &[u8]) -> Action;

    /// A line longer than [`PreAuth::max_line`], already discarded.
    fn on_too_long(&mut self) -> Action;

    /// The bytes of a literal that [`Action::Literal`] asked for.
    fn on_literal(&mut self, bytes: Vec<u8>) -> Action;

    /// The TLS handshake after STARTTLS/STLS succeeded.
    fn tls_started(&mut self, auth_allowed: bool);

    /// The reply to a successful login.
    fn login_succeeded(&mut self, upstream_ok: &str) -> Reply;

    /// The reply to a failed login (it may close after too many).
    fn login_failed(&mut self, error: &Error) -> Reply;

    /// The reply that ends the session for `error` (time limit, shutdown).
    fn farewell(&self, error: &Error) -> Reply;
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
