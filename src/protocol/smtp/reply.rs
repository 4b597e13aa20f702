//! Every reply the relay itself sends an SMTP client, before and after login, with its
//! RFC, and the one function that maps an [`Error`] to a reply. Upstream detail is
//! logged, never shown to the client; after login, the upstream's own replies to MAIL,
//! RCPT and the message are passed on as they are.

use std::fmt::Display;

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

/// The greeting (RFC 5321 §4.2).
pub fn greeting(host: &str) -> String {
    format!("220 {host} ESMTP m365-relay ready\r\n")
}

/// The answer to HELO.
pub fn helo(host: &str) -> String {
    format!("250 {host}\r\n")
}

/// An AUTH challenge (RFC 4954 §4).
pub fn challenge(challenge: &str) -> String {
    format!("334 {challenge}\r\n")
}

// The trusted-network listener, which greets without AUTH.
pub fn untrusted(host: &str, client: impl Display) -> String {
    format!("554 5.7.1 {host} does not accept mail from {client} without login\r\n")
}

pub fn trusted_mailbox_missing(host: &str, mailbox: &str) -> String {
    format!("421 4.3.0 {host} is not configured: mailbox {mailbox} is not registered\r\n")
}

/// A reply turned into the `421` that may greet a client (RFC 5321 §3.1): the same text,
/// as a closing temporary failure.
pub fn closing(reply: &str) -> String {
    let text = reply.get(4..).unwrap_or("").trim_end();
    let text = text.split("\r\n").next().unwrap_or("");
    let text = text
        .strip_prefix(|c: char| c.is_ascii_digit())
        .map_or(text, |_| text.split_once(' ').map_or(text, |(_, t)| t));
    format!("421 4.4.0 {text}\r\n")
}

// After login (the relay as the submission server): RFC 5321 §4.2 and §4.5.3, RFC 3030
// (BDAT), RFC 1870 (SIZE).
pub const HELP_LOGGED_IN: &str = "214 2.0.0 See RFC 5321\r\n";
pub const VRFY_LOGGED_IN: &str = "252 2.5.0 Cannot VRFY user; try RCPT\r\n";
pub const UNRECOGNIZED_LOGGED_IN: &str = "500 5.5.1 Command unrecognized\r\n";
pub const NOT_UTF8: &str = "501 5.5.2 Command line is not UTF-8\r\n";
pub const MAIL_SYNTAX: &str = "501 5.5.4 Syntax: MAIL FROM:<address>\r\n";
pub const RCPT_SYNTAX: &str = "501 5.1.3 Syntax: RCPT TO:<address>, one address\r\n";
pub const STARTTLS_NOT_NOW: &str = "503 5.5.1 STARTTLS is not possible now\r\n";
pub const ALREADY_AUTHENTICATED: &str = "503 5.5.1 Already authenticated\r\n";
pub const SENDER_ALREADY_GIVEN: &str = "503 5.5.1 Sender already specified\r\n";
pub const NEED_MAIL_BEFORE_RCPT: &str = "503 5.5.1 Need MAIL before RCPT\r\n";
pub const NEED_MAIL: &str = "503 5.5.1 Need MAIL command\r\n";
pub const BDAT_IN_PROGRESS: &str = "503 5.5.1 BDAT in progress; DATA is not allowed\r\n";
pub const NO_VALID_RECIPIENTS: &str = "554 5.5.1 No valid recipients\r\n";
/// The chunk's end is unknown: nothing after the line can be read as a command.
pub const BAD_BDAT: &str = "421 4.5.4 Syntax: BDAT size [LAST]; closing connection\r\n";
pub const START_MAIL_INPUT: &str = "354 Start mail input; end with <CRLF>.<CRLF>\r\n";
/// What the relay answers for the upstream when the message is held (Graph).
pub const SENDER_OK: &str = "250 2.1.0 Sender OK\r\n";
pub const RECIPIENT_OK: &str = "250 2.1.5 Recipient OK\r\n";
pub const GRAPH_ACCEPTED: &str = "250 2.0.0 OK: accepted by Microsoft Graph for delivery\r\n";
/// A message with a CR or LF that is not part of a CRLF: what Postfix answers since the
/// SMTP smuggling reports (CVE-2023-51764), and nothing of it is sent.
pub const BARE_LINE_END: &str = "550 5.5.2 Error: bare <CR> or <LF> received; message not sent\r\n";
pub const HELD_BUDGET_FULL: &str =
    "452 4.3.1 Insufficient system storage: too many messages in flight; try again later\r\n";
/// The null sender `<>` on the queue way: Exchange takes no unauthorised null sender over
/// SMTP AUTH and a queued message it refused could tell no one.
pub const NULL_SENDER_QUEUED: &str =
    "550 5.7.1 The null sender is not accepted for queued delivery\r\n";
/// The queue could not store the message (disk full, `queue.max_bytes` reached): nothing
/// of it was kept (RFC 3463 4.3.1).
pub const QUEUE_STORAGE_FULL: &str =
    "452 4.3.1 Insufficient system storage: message not queued; try again later\r\n";
/// The upstream connection is gone (a command after it broke).
pub const UPSTREAM_GONE: &str = "421 4.4.2 Upstream connection lost\r\n";
/// All of the mailbox's upstream SMTP connections stayed busy for the whole wait
/// (RFC 3463 4.4.5, system congestion): Exchange's 4th connection is never tried.
pub const UPSTREAM_BUSY: &str = "451 4.4.5 All connections of this mailbox to the upstream server are busy; try again later\r\n";
/// A new upstream SMTP connection for a transaction could not log in.
pub const UPSTREAM_LOGIN_FAILED: &str =
    "451 4.4.1 Could not log in to the upstream server; message not sent, try again later\r\n";
/// The upstream connection broke just now: the session ends after this reply.
pub const UPSTREAM_LOST: &str =
    "421 4.4.2 Connection to the upstream server lost; message not sent, try again\r\n";

pub fn idle_timeout(host: &str) -> String {
    format!("421 4.4.2 {host} Idle timeout, closing\r\n")
}

/// A session held a shared upstream connection longer than `limits.upstream_timeout_secs`
/// between the commands of one transaction: it is closed and the connection goes back.
pub fn held_too_long(host: &str) -> String {
    format!("421 4.4.2 {host} transaction took too long, closing connection\r\n")
}

pub fn closing_channel(host: &str) -> String {
    format!("221 2.0.0 {host} Service closing transmission channel\r\n")
}

/// The mailbox was removed, or its password changed, since the session logged in.
pub fn revoked(host: &str) -> String {
    format!("421 4.7.0 {host} Mailbox removed or its password changed; log in again\r\n")
}

pub fn message_too_big(max: usize) -> String {
    format!("552 5.3.4 Message size exceeds the limit of {max} bytes\r\n")
}

pub fn header_too_long(max: usize) -> String {
    format!("552 5.3.4 Header section longer than {max} bytes\r\n")
}

/// A header section whose senders cannot be read for certain (fail closed).
pub fn header_unreadable(fault: impl Display) -> String {
    format!("550 5.7.1 Message refused: {fault}; nothing was sent\r\n")
}

pub fn bad_recipient(path: &str) -> String {
    format!("501 5.1.3 Bad recipient address syntax: <{path}>\r\n")
}

/// A BDAT chunk taken (RFC 3030 §2).
pub fn octets_received(size: u64) -> String {
    format!("250 2.0.0 {size} octets received\r\n")
}

/// A sender the mailbox may not send as (`what`: "Sender", "Header sender").
pub fn sender_not_allowed(what: &str, address: &str, allowed: impl Display) -> String {
    format!(
        "550 5.7.1 {what} <{address}> is not allowed for this mailbox; allowed senders: {allowed}\r\n"
    )
}

// Microsoft's sending limits, as temporary failures so that clients queue.
pub fn throttled(mailbox: &str, secs: u64) -> String {
    format!("451 4.7.0 Microsoft throttled mailbox {mailbox}; try again in {secs} seconds\r\n")
}

pub fn messages_per_minute(mailbox: &str, limit: u32, secs: u64) -> String {
    format!(
        "451 4.7.0 Mailbox {mailbox} sent {limit} messages in the last minute, Microsoft's limit; try again in {secs} seconds\r\n"
    )
}

/// RFC 5321 §4.5.3.1.10: the client sends the rest in another transaction.
pub fn recipients_per_message(limit: u32) -> String {
    format!(
        "452 4.5.3 Too many recipients: at most {limit} per message; send the rest in another message\r\n"
    )
}

pub fn recipients_per_day(mailbox: &str, limit: u32) -> String {
    format!(
        "451 4.7.0 Mailbox {mailbox} reached Microsoft's limit of {limit} recipients in 24 hours; try again later\r\n"
    )
}

/// Graph's per-mailbox concurrency is used up for longer than a message may wait.
pub fn graph_busy(mailbox: &str) -> String {
    format!(
        "451 4.4.5 Too many messages of {mailbox} in flight at Microsoft Graph; try again later\r\n"
    )
}

/// A message stored durably in the relay's queue under `id`, which delivers it (Postfix's
/// words).
pub fn queued_as(id: impl Display) -> String {
    format!("250 2.0.0 Ok: queued as {id}\r\n")
}

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
        Error::ClientIo(_) | Error::ProxyHeader(_) => Reply::closing(""),
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
