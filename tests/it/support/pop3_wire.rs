//! Wire-level pieces of the fake Exchange Online POP3 server: Exchange's reply texts, the command
//! parser with Exchange's argument rules, and the streaming dot-stuffing writer. `pop3_session`
//! uses them; the bounded line reader is the shared `line_io`.

use std::io;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::line_io::trim_eol;

/// RFC 2449 §4: a command line, CRLF included, is at most 255 octets. RFC 5034 §4 applies the same
/// limit to `AUTH` with an initial response; SASL responses sent after `+ ` are not limited by it
/// (the shared `LineIo` still caps every line at 64 KiB).
pub(super) const MAX_COMMAND: usize = 255;

/// How many bytes of a message the fake buffers before writing them out during RETR and TOP.
const WRITE_CHUNK: usize = 64 * 1024;

/// Exchange Online's reply texts (Exchange's POP3 service, `Microsoft.Exchange.Pop3`).
pub(super) mod reply {
    pub const GREETING: &str = "+OK The Microsoft Exchange POP3 service is ready. [UABBADIAUABSADEAMgBDAEEAMAAwADEANQAuAG4AYQBtAHAAcgBkADEAMgAuAHAAcgBvAGQALgBvAHUAdABsAG8AbwBrAC4AYwBvAG0A]";
    pub const CAPA: &str = "+OK\r\nTOP\r\nUIDL\r\nSASL PLAIN XOAUTH2\r\nUSER\r\n.";
    /// `AUTH` without a mechanism lists the mechanisms.
    pub const MECHANISMS: &str = "+OK\r\nPLAIN\r\nXOAUTH2\r\n.";
    pub const OK: &str = "+OK";
    /// The SASL continuation: a plus and one space, no challenge data.
    pub const CONTINUE: &str = "+ ";
    pub const AUTH_OK: &str = "+OK User successfully authenticated.";
    pub const AUTH_FAILED: &str = "-ERR Authentication failure: unknown user name or bad password.";
    pub const AUTH_CANCELLED: &str = "-ERR The AUTH protocol exchange was canceled by the client.";
    /// USER/PASS: basic authentication is switched off at Microsoft.
    pub const LOGON_FAILED: &str = "-ERR Logon failure: unknown user name or bad password.";
    pub const SIGNING_OFF: &str = "+OK Microsoft Exchange Server POP3 server signing off.";
    pub const INVALID_STATE: &str = "-ERR Command is not valid in this state.";
    pub const UNKNOWN_COMMAND: &str = "-ERR Protocol error. 19";
    pub const BAD_ARGUMENT: &str = "-ERR Protocol error. 14";
    pub const BAD_ARGUMENT_COUNT: &str = "-ERR Protocol error. 16";
    pub const NOT_ASCII: &str = "-ERR Protocol error. 17";
    /// Appended to the third invalid command's reply; Exchange then closes the connection.
    pub const CLOSING_AFTER_ERRORS: &str = "\r\nConnection is closed. 21";
    /// Exchange's answer to an over-long command line, after which it closes the connection.
    pub const COMMAND_TOO_LONG: &str = "-ERR Protocol error. Connection is closed. 10";
    pub const OUT_OF_RANGE: &str = "-ERR The specified message is out of range.";
    pub const DELETED: &str =
        "-ERR The requested message is no longer available; it may have been deleted.";
}

/// One POP3 command line, parsed with Exchange's argument rules.
#[derive(Debug, PartialEq)]
pub(super) enum Command {
    Capa,
    User(String),
    Pass,
    /// `mechanism` is upper-cased; `initial` is the RFC 5034 initial response on the AUTH line.
    Auth {
        mechanism: Option<String>,
        initial: Option<String>,
    },
    Stat,
    List(Option<usize>),
    Uidl(Option<usize>),
    Retr(usize),
    Top {
        message: usize,
        lines: usize,
    },
    Dele(usize),
    Rset,
    Noop,
    Quit,
    /// A known command whose arguments do not parse; `reply` is Exchange's `Protocol error` text.
    BadArguments(&'static str),
    Unknown,
}

impl Command {
    pub(super) fn parse(line: &str) -> Command {
        let (verb, args) = line.split_once(' ').unwrap_or((line, ""));
        let words: Vec<&str> = args.split_whitespace().collect();
        let numbers = |optional: bool, count: usize| message_numbers(&words, optional, count);
        let bad = Command::BadArguments;
        match verb.to_ascii_uppercase().as_str() {
            "CAPA" => Command::Capa,
            "USER" if words.is_empty() => bad(reply::BAD_ARGUMENT_COUNT),
            "USER" => Command::User(args.trim().to_string()),
            "PASS" => Command::Pass,
            "AUTH" => match words.as_slice() {
                [] => Command::Auth {
                    mechanism: None,
                    initial: None,
                },
                [mechanism, rest @ ..] if rest.len() <= 1 => Command::Auth {
                    mechanism: Some(mechanism.to_ascii_uppercase()),
                    initial: rest.first().map(|s| s.to_string()),
                },
                _ => bad(reply::BAD_ARGUMENT_COUNT),
            },
            "STAT" => Command::Stat,
            "LIST" => numbers(true, 1).map_or_else(bad, |n| Command::List(n.first().copied())),
            "UIDL" => numbers(true, 1).map_or_else(bad, |n| Command::Uidl(n.first().copied())),
            "RETR" => numbers(false, 1).map_or_else(bad, |n| Command::Retr(n[0])),
            "TOP" => numbers(false, 2).map_or_else(bad, |n| Command::Top {
                message: n[0],
                lines: n[1],
            }),
            "DELE" => numbers(false, 1).map_or_else(bad, |n| Command::Dele(n[0])),
            "RSET" => Command::Rset,
            "NOOP" => Command::Noop,
            "QUIT" => Command::Quit,
            _ => Command::Unknown,
        }
    }
}

/// Exchange's rules: exactly `count` numbers (or none when `optional`), the message number at
/// least 1, a TOP line count at least 0. The error is Exchange's `Protocol error` reply.
fn message_numbers(
    words: &[&str],
    optional: bool,
    count: usize,
) -> Result<Vec<usize>, &'static str> {
    if words.len() != count && !(optional && words.is_empty()) {
        return Err(reply::BAD_ARGUMENT_COUNT);
    }
    let numbers: Option<Vec<usize>> = words.iter().map(|w| w.parse().ok()).collect();
    match numbers {
        Some(numbers) if numbers.first() != Some(&0) => Ok(numbers),
        _ => Err(reply::BAD_ARGUMENT),
    }
}

/// Writes `message` as a POP3 multi-line response body straight from the stored bytes: lines
/// starting with `.` get another `.` (RFC 1939 §3), a CRLF is added if the message does not end
/// with a line break, then the terminating `.` line. With `body_lines` (TOP) only the header,
/// the blank line and that many body lines are sent. At most [`WRITE_CHUNK`] bytes are copied at
/// a time, so a large message costs no per-client copy.
pub(super) async fn send_message<W>(
    out: &mut W,
    message: &[u8],
    body_lines: Option<usize>,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = Vec::with_capacity(WRITE_CHUNK + 3);
    let mut in_body = false;
    let mut body_sent = 0;
    for line in message.split_inclusive(|&b| b == b'\n') {
        if let Some(limit) = body_lines {
            if in_body {
                if body_sent == limit {
                    break;
                }
                body_sent += 1;
            } else if trim_eol(line).is_empty() {
                in_body = true;
            }
        }
        if line.starts_with(b".") {
            buf.push(b'.');
        }
        if buf.len() + line.len() > WRITE_CHUNK {
            out.write_all(&buf).await?;
            buf.clear();
        }
        if line.len() > WRITE_CHUNK {
            out.write_all(line).await?;
        } else {
            buf.extend_from_slice(line);
        }
        if !line.ends_with(b"\n") {
            buf.extend_from_slice(b"\r\n");
        }
    }
    buf.extend_from_slice(b".\r\n");
    out.write_all(&buf).await?;
    out.flush().await
}
