//! Every reply the relay itself sends an SMTP client, with its RFC, and the one function
//! that maps an [`Error`] to a reply. Upstream detail is logged, never shown to the client.

use crate::error::Error;
use crate::protocol::Reply;

// RFC 5321 §4.2, RFC 3463 (enhanced status codes), RFC 4954 §6 (AUTH), RFC 3207 (STARTTLS).
pub const READY_FOR_TLS: &str = "220 2.0.0 Ready to start TLS\r\n";
pub const BYE: &str = "221 2.0.0 Bye\r\n";
pub const AUTH_OK: &str = "235 2.7.0 Authentication successful\r\n";
pub const OK: &str = "250 2.0.0 OK\r\n";
pub const HELP: &str =
    "214 2.0.0 m365-relay: log in with AUTH PLAIN or AUTH LOGIN, then send mail as usual\r\n";
pub const CANNOT_VRFY: &str =
    "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n";
pub const LINE_TOO_LONG: &str = "500 5.5.2 Line too long\r\n";
pub const UNRECOGNIZED: &str = "500 5.5.2 Command not recognized\r\n";
pub const AUTH_CANCELLED: &str = "501 5.7.0 Authentication cancelled\r\n";
pub const BAD_BASE64: &str = "501 5.5.2 Cannot decode the response as base64\r\n";
pub const EHLO_SYNTAX: &str = "501 5.5.4 Syntax: EHLO hostname\r\n";
pub const NO_PARAMETERS: &str = "501 5.5.4 Syntax error: no parameters allowed\r\n";
pub const AUTH_SYNTAX: &str = "501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n";
pub const NOT_IMPLEMENTED: &str = "502 5.5.1 Command not implemented\r\n";
pub const EHLO_FIRST: &str = "503 5.5.1 Send EHLO first\r\n";
pub const ALREADY_TLS: &str = "503 5.5.1 TLS is already active\r\n";
pub const UNKNOWN_MECHANISM: &str =
    "504 5.5.4 Unrecognized authentication type; use PLAIN or LOGIN\r\n";
pub const AUTH_REQUIRED: &str = "530 5.7.0 Authentication required\r\n";
pub const BAD_CREDENTIALS: &str = "535 5.7.8 Authentication credentials invalid\r\n";
pub const ENCRYPTION_REQUIRED: &str =
    "538 5.7.11 Encryption required for requested authentication mechanism\r\n";
pub const TOO_MANY_FAILURES: &str =
    "421 4.7.0 Too many failed authentication attempts, closing connection\r\n";
pub const TOO_MANY_COMMANDS: &str =
    "421 4.7.0 Too many commands before authentication, closing connection\r\n";
pub const TOO_MUCH_INPUT: &str =
    "421 4.7.0 Too much input before authentication, closing connection\r\n";
pub const TOO_MANY_CONNECTIONS: &str = "421 4.3.2 Too many connections, try again later\r\n";
/// Postfix's reply for its per-client connection limit is the same code.
pub const TOO_MANY_FROM_SOURCE: &str =
    "421 4.7.0 Too many connections from your address, try again later\r\n";
pub const SOURCE_BLOCKED: &str =
    "421 4.7.0 Too many failed logins from your address, try again later\r\n";

/// The reply for a failed login or a session-ending error.
pub fn reply_for(error: &Error) -> Reply {
    match error {
        Error::BadCredentials { .. } => Reply::new(BAD_CREDENTIALS),
        Error::Token { source, mailbox } if source.needs_admin() => Reply::new(format!(
            "454 4.7.0 Mailbox {mailbox} needs the relay admin: {}\r\n",
            admin_hint(source)
        )),
        Error::Token { .. } => Reply::new(
            "454 4.7.0 Temporary authentication failure: no access token from Microsoft Entra ID yet, try again later\r\n",
        ),
        Error::UpstreamRejected { .. } => Reply::new(
            "454 4.7.0 Temporary authentication failure: the mail server did not accept the mailbox's access token\r\n",
        ),
        Error::UpstreamUnreachable { .. } | Error::UpstreamTimeout { .. } => {
            Reply::closing("421 4.4.1 Cannot reach the upstream mail server, try again later\r\n")
        }
        Error::UpstreamTls { .. } => Reply::closing(
            "421 4.4.2 No trusted TLS connection to the upstream mail server, try again later\r\n",
        ),
        Error::UpstreamProtocol { .. } => Reply::closing(
            "421 4.4.2 The upstream mail server broke off the login, try again later\r\n",
        ),
        Error::PreauthTimeout => {
            Reply::closing("421 4.4.2 Timeout waiting for login, closing connection\r\n")
        }
        Error::ShuttingDown => {
            Reply::closing("421 4.3.2 Service shutting down, try again later\r\n")
        }
        Error::SourceBlocked => Reply::closing(SOURCE_BLOCKED),
        Error::Untrusted => Reply::closing("554 5.7.1 Not on a trusted network\r\n"),
        Error::ClientIo(_) => Reply::closing(""),
    }
}

/// What the admin must do, in one line a client may show its user.
pub fn admin_hint(error: &crate::oauth::TokenError) -> &'static str {
    use crate::oauth::{IdpError, TokenError};
    match error {
        TokenError::NotAuthorized => {
            "it has not been signed in; run `m365-relay mailbox authorize`"
        }
        TokenError::UnknownMailbox => "it is not registered",
        TokenError::DelegateMissing(_) => {
            "the mailbox it takes its token from (--token-from) is not registered"
        }
        TokenError::Idp(IdpError::Rejected { error, .. }) if error == "invalid_client" => {
            "Entra ID refused the app's client credentials (secret expired or wrong?)"
        }
        TokenError::Idp(_) => {
            "Entra ID refused its refresh token; run `m365-relay mailbox authorize` again"
        }
        TokenError::Store(_) => "its token store cannot be read",
    }
}
