//! One error type for a client session, which knows which side failed: the client, the
//! upstream mail server, the identity platform (Entra ID), or the relay itself. Each
//! protocol maps it to a reply in exactly one function; upstream detail is logged, never
//! echoed to the client.

use std::io;

use crate::oauth::TokenError;

/// Which party a failure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The legacy client: bad input, wrong password, went away.
    Client,
    /// The upstream Microsoft 365 (or other XOAUTH2) mail server.
    Upstream,
    /// Entra ID's token endpoint, or the stored tokens of a mailbox.
    Idp,
    /// The relay itself (disk, configuration, shutdown).
    Local,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("client connection: {0}")]
    ClientIo(#[source] io::Error),

    #[error("client did not log in within the time limit")]
    PreauthTimeout,

    #[error("wrong local password or unknown mailbox `{}`", crate::logfield::Field(.mailbox))]
    BadCredentials { mailbox: String },

    #[error("no usable token for {mailbox}: {source}")]
    Token {
        mailbox: String,
        #[source]
        source: TokenError,
    },

    #[error("upstream {server} unreachable: {source}")]
    UpstreamUnreachable {
        server: String,
        #[source]
        source: io::Error,
    },

    #[error("upstream {server} timed out {during}")]
    UpstreamTimeout {
        server: String,
        during: &'static str,
    },

    #[error("upstream {server}: TLS failed: {detail}")]
    UpstreamTls { server: String, detail: String },

    #[error("upstream {server} rejected the access token for {mailbox}: {reply}")]
    UpstreamRejected {
        server: String,
        mailbox: String,
        /// The server's reply line (it never holds a secret).
        reply: String,
    },

    #[error("upstream {server} broke the protocol: {detail}")]
    UpstreamProtocol { server: String, detail: String },

    #[error("relay is shutting down")]
    ShuttingDown,

    /// The client's address failed to log in too often and is refused for a while
    /// ([`crate::abuse`]).
    #[error("too many failed logins from this address; refused for now")]
    SourceBlocked,

    /// A client of the trusted-network listener from a network not listed.
    #[error("not on a trusted network")]
    Untrusted,

    /// A PROXY protocol header missing where one is required, invalid, or sent where none
    /// is accepted ([`crate::protocol::proxy_header`]); the connection is closed.
    #[error("PROXY protocol: {0}")]
    ProxyHeader(&'static str),
}

impl Error {
    pub fn side(&self) -> Side {
        match self {
            Error::ClientIo(_)
            | Error::PreauthTimeout
            | Error::BadCredentials { .. }
            | Error::SourceBlocked
            | Error::Untrusted
            | Error::ProxyHeader(_) => Side::Client,
            Error::Token { .. } => Side::Idp,
            Error::UpstreamUnreachable { .. }
            | Error::UpstreamTimeout { .. }
            | Error::UpstreamTls { .. }
            | Error::UpstreamRejected { .. }
            | Error::UpstreamProtocol { .. } => Side::Upstream,
            Error::ShuttingDown => Side::Local,
        }
    }

    /// A short label for the session's closing log line and for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Error::ClientIo(_) => "client_error",
            Error::PreauthTimeout => "preauth_timeout",
            Error::BadCredentials { .. } => "bad_credentials",
            Error::Token { source, .. } if source.needs_admin() => "needs_reauth",
            Error::Token { .. } => "token_unavailable",
            Error::UpstreamUnreachable { .. } | Error::UpstreamTimeout { .. } => {
                "upstream_unreachable"
            }
            Error::UpstreamTls { .. } => "upstream_tls",
            Error::UpstreamRejected { .. } => "upstream_rejected",
            Error::UpstreamProtocol { .. } => "upstream_protocol",
            Error::ShuttingDown => "shutting_down",
            Error::SourceBlocked => "source_blocked",
            Error::Untrusted => "untrusted_network",
            Error::ProxyHeader(_) => "proxy_header",
        }
    }
}
