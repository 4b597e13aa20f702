//! The replies the relay itself sends a POP3 client before login, with RFC 2449 / RFC 3206
//! response codes, and the one function that maps an [`Error`] to a reply.

use crate::error::Error;
use crate::protocol::Reply;

pub const TOO_MANY_CONNECTIONS: &str = "-ERR [SYS/TEMP] Too many connections, try again later\r\n";
pub const TOO_MANY_FROM_SOURCE: &str =
    "-ERR [SYS/TEMP] Too many connections from your address, try again later\r\n";
pub const SOURCE_BLOCKED: &str =
    "-ERR [SYS/TEMP] Too many failed logins from your address, try again later\r\n";
pub const TOO_MUCH_INPUT: &str = "-ERR Too much input before login, closing connection\r\n";
pub const LINE_TOO_LONG: &str = "-ERR Line too long\r\n";
pub const TOO_MANY_COMMANDS: &str = "-ERR Too many commands before login, closing connection\r\n";
pub const TOO_MANY_FAILURES: &str = "-ERR [AUTH] Too many failed logins, closing connection\r\n";
pub const BAD_CREDENTIALS: &str = "-ERR [AUTH] Authentication failed\r\n";
pub const PLAINTEXT_REFUSED: &str = "-ERR Use STLS (or the TLS port) before logging in\r\n";
pub const AUTH_CANCELLED: &str = "-ERR Authentication cancelled\r\n";
pub const BAD_BASE64: &str = "-ERR Invalid base64 in response\r\n";
pub const UNKNOWN_MECHANISM: &str =
    "-ERR Unsupported authentication mechanism; use PLAIN or LOGIN\r\n";
pub const USER_FIRST: &str = "-ERR Send USER first\r\n";
pub const NOT_BEFORE_LOGIN: &str = "-ERR Log in first\r\n";
pub const UNKNOWN_COMMAND: &str = "-ERR Unknown command\r\n";
pub const ALREADY_TLS: &str = "-ERR TLS is already active\r\n";
pub const BYE: &str = "+OK m365-relay signing off\r\n";
pub const OK: &str = "+OK\r\n";
pub const BEGIN_TLS: &str = "+OK Begin TLS negotiation\r\n";

/// The reply for a failed login or a session-ending error. Upstream detail is logged,
/// never shown.
pub fn reply_for(error: &Error) -> Reply {
    match error {
        Error::BadCredentials { .. } => Reply::new(BAD_CREDENTIALS),
        Error::Token { source, mailbox } if source.needs_admin() => Reply::new(format!(
            "-ERR [SYS/PERM] Mailbox {mailbox} needs the relay admin: {}\r\n",
            crate::protocol::smtp::reply::admin_hint(source)
        )),
        Error::Token { .. } => Reply::new(
            "-ERR [SYS/TEMP] No access token from Microsoft Entra ID yet, try again later\r\n",
        ),
        Error::UpstreamRejected { .. } => Reply::new(
            "-ERR [SYS/TEMP] The mail server did not accept the mailbox's access token, try again later\r\n",
        ),
        Error::UpstreamUnreachable { .. } | Error::UpstreamTimeout { .. } => {
            Reply::new("-ERR [SYS/TEMP] Cannot reach the upstream mail server, try again later\r\n")
        }
        Error::UpstreamTls { .. } | Error::UpstreamProtocol { .. } => Reply::new(
            "-ERR [SYS/TEMP] The upstream mail server broke off the login, try again later\r\n",
        ),
        Error::PreauthTimeout => Reply::closing("-ERR [SYS/TEMP] Time limit for login reached\r\n"),
        Error::ShuttingDown => {
            Reply::closing("-ERR [SYS/TEMP] Server shutting down, try again later\r\n")
        }
        Error::SourceBlocked => Reply::closing(SOURCE_BLOCKED),
        Error::ClientIo(_) | Error::Untrusted | Error::ProxyHeader(_) => Reply::closing(""),
    }
}
