//! The replies the relay itself sends an IMAP client before login, with their RFC 5530
//! response codes, and the one function that maps an [`Error`] to a tagged reply.

use crate::error::Error;
use crate::protocol::Reply;

pub const TOO_MANY_CONNECTIONS: &str =
    "* BYE [UNAVAILABLE] Too many connections, try again later\r\n";
pub const TOO_MANY_FROM_SOURCE: &str =
    "* BYE [UNAVAILABLE] Too many connections from your address, try again later\r\n";
pub const SOURCE_BLOCKED: &str =
    "* BYE [UNAVAILABLE] Too many failed logins from your address, try again later\r\n";
pub const TOO_MUCH_INPUT: &str = "* BYE Too much input before login\r\n";
pub const LINE_TOO_LONG: &str = "* BAD Line too long\r\n";
pub const TOO_MANY_COMMANDS: &str = "* BYE Too many commands before login\r\n";
pub const LITERAL_TOO_BIG: &str = "* BYE [TOOBIG] Literal too large before login\r\n";
pub const CONTINUE_LITERAL: &str = "+ Ready for literal data\r\n";
pub const TOO_MANY_FAILURES: &str = "* BYE Too many failed logins\r\n";

/// The tagged reply for a failed login. Upstream detail is logged, never shown.
pub fn reply_for(tag: &str, error: &Error) -> Reply {
    let text = match error {
        Error::BadCredentials { .. } => "NO [AUTHENTICATIONFAILED] Authentication failed".to_owned(),
        Error::Token { source, mailbox } if source.needs_admin() => {
            format!("NO [UNAVAILABLE] Mailbox {mailbox} needs the relay admin: {}", admin_hint(source))
        }
        Error::Token { .. } => {
            "NO [UNAVAILABLE] No access token from Microsoft Entra ID yet, try again later".into()
        }
        Error::UpstreamRejected { .. } => {
            "NO [UNAVAILABLE] The mail server did not accept the mailbox's access token, try again later".into()
        }
        Error::UpstreamUnreachable { .. } | Error::UpstreamTimeout { .. } => {
            "NO [UNAVAILABLE] Cannot reach the upstream mail server, try again later".into()
        }
        Error::UpstreamTls { .. } | Error::UpstreamProtocol { .. } => {
            "NO [UNAVAILABLE] The upstream mail server broke off the login, try again later".into()
        }
        Error::PreauthTimeout
        | Error::ShuttingDown
        | Error::SourceBlocked
        | Error::Untrusted
        | Error::ProxyHeader(_)
        | Error::ClientIo(_) => {
            return farewell(error);
        }
    };
    Reply::new(format!("{tag} {text}\r\n"))
}

/// The untagged BYE that ends a session before login.
pub fn farewell(error: &Error) -> Reply {
    Reply::closing(match error {
        Error::PreauthTimeout => "* BYE Autologout; time limit for login reached\r\n",
        Error::ShuttingDown => "* BYE [UNAVAILABLE] Server shutting down, try again later\r\n",
        Error::SourceBlocked => SOURCE_BLOCKED,
        _ => "* BYE Closing connection\r\n",
    })
}

/// What the admin must do, in words a client may show its user.
pub fn admin_hint(error: &crate::oauth::TokenError) -> &'static str {
    crate::protocol::smtp::reply::admin_hint(error)
}
