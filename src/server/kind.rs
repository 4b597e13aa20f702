//! What a listener serves: the mail [`Protocol`] and the [`Kind`] of port.

use std::time::Duration;

/// The mail protocols the relay speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Smtp,
    Imap,
    Pop3,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
        }
    }

    /// How much life an access token handed to a new session must have left. Exchange
    /// ends an IMAP session when its token expires (`* BYE Session invalidated -
    /// AccessTokenExpired`), so IMAP gets more, and a client that reconnects after such a
    /// BYE always gets a token that lasts (PROTOCOL.md A3).
    pub fn min_token_validity(self) -> Duration {
        match self {
            Protocol::Smtp | Protocol::Pop3 => Duration::from_secs(5 * 60),
            Protocol::Imap => Duration::from_secs(10 * 60),
        }
    }

    /// How long a logged-in session may be silent both ways.
    pub fn idle_timeout(self, limits: &crate::config::Limits) -> Duration {
        match self {
            Protocol::Smtp => limits.idle_timeout_smtp(),
            Protocol::Imap => limits.idle_timeout_imap(),
            Protocol::Pop3 => limits.idle_timeout_pop3(),
        }
    }
}

/// Which kind of port a listener is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Kind {
    pub(super) protocol: Protocol,
    /// Implicit TLS (RFC 8314) rather than plaintext with STARTTLS.
    pub(super) implicit_tls: bool,
    /// The SMTP listener for devices on trusted networks (`[smtp.trusted]`): no AUTH.
    pub(super) trusted: bool,
}

impl Kind {
    pub(super) fn name(self) -> &'static str {
        if self.trusted {
            return "smtp-trusted";
        }
        match (self.protocol, self.implicit_tls) {
            (Protocol::Smtp, false) => "smtp",
            (Protocol::Smtp, true) => "smtps",
            (Protocol::Imap, false) => "imap",
            (Protocol::Imap, true) => "imaps",
            (Protocol::Pop3, false) => "pop3",
            (Protocol::Pop3, true) => "pop3s",
        }
    }
}
