//! One whole message on a pooled connection, for the queue's delivery workers: MAIL FROM,
//! RCPT TO for each recipient, DATA and the dot-stuffed message, each reply read into an
//! [`SmtpSend`] verdict, and what state the connection is left in.

use super::connection::{Broken, DATA_END_TIMEOUT, Reply, SmtpConnection};
use crate::upstream::smtp::{dot_stuff_into, final_line_end};

/// How sending a message went, for the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmtpSend {
    /// The end of DATA was accepted (250); `refused`: recipients refused with 5xx at RCPT.
    Accepted {
        reply: String,
        refused: Vec<(String, String)>,
    },
    /// A 5xx at MAIL FROM or DATA or its end, or every recipient 5xx: permanent.
    Permanent { reply: String },
    /// A 4xx anywhere (a 4xx at RCPT: RSET, the whole message waits), no reply, a broken
    /// connection, a login or token failure: try again later.
    Temporary { reply: String },
}

/// What a transaction left the connection in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// No transaction open: reusable as it is.
    Clean,
    /// A transaction is open upstream: RSET before reuse.
    Open,
    /// The connection broke: drop it.
    Broken,
}

/// Bytes written upstream at a time while dot-stuffing a message.
const STUFF_CHUNK: usize = 64 * 1024;

/// Sends `message` (unstuffed, CRLF) from `sender` with its `MAIL FROM` `parameters`
/// (`SMTPUTF8`, `BODY=8BITMIME`: the client's, kept with the queued envelope) to
/// `recipients` on `conn`.
pub async fn transaction(
    conn: &mut SmtpConnection,
    sender: &str,
    parameters: &[String],
    recipients: &[String],
    message: &[u8],
) -> (SmtpSend, Left) {
    let sender = Sender {
        path: sender,
        parameters,
    };
    match steps(conn, &sender, recipients, message).await {
        Ok(done) => done,
        Err(broken) => {
            tracing::warn!(error = %broken, "upstream connection lost while sending");
            let reply = format!("upstream connection lost: {}", broken.0);
            (SmtpSend::Temporary { reply }, Left::Broken)
        }
    }
}

/// The reverse-path and the parameters of `MAIL FROM`.
struct Sender<'a> {
    path: &'a str,
    parameters: &'a [String],
}

impl Sender<'_> {
    /// `MAIL FROM:<path> PARAM ...` with its line end.
    fn command(&self) -> String {
        let mut line = format!("MAIL FROM:<{}>", self.path);
        for parameter in self.parameters {
            line.push(' ');
            line.push_str(parameter);
        }
        line.push_str("\r\n");
        line
    }
}

async fn steps(
    conn: &mut SmtpConnection,
    sender: &Sender<'_>,
    recipients: &[String],
    message: &[u8],
) -> Result<(SmtpSend, Left), Broken> {
    let mail = conn.command(sender.command().as_bytes()).await?;
    if !mail.is_positive() {
        return Ok((refusal(&mail), Left::Clean));
    }
    let mut refused = Vec::new();
    let mut last_refusal = None;
    for rcpt in recipients {
        let reply = conn
            .command(format!("RCPT TO:<{rcpt}>\r\n").as_bytes())
            .await?;
        match reply.code / 100 {
            2 => {}
            5 => {
                refused.push((rcpt.clone(), text(&reply)));
                last_refusal = Some(reply);
            }
            // A 4xx for one recipient: the whole message waits (a partial delivery
            // would leave that recipient to a separate retry the queue does not track).
            _ => return Ok((refusal(&reply), Left::Open)),
        }
    }
    if refused.len() == recipients.len() {
        let reply = last_refusal.map_or_else(|| "no recipients".into(), |r| text(&r));
        return Ok((SmtpSend::Permanent { reply }, Left::Open));
    }
    let data = conn.command(b"DATA\r\n").await?;
    if data.code != 354 {
        return Ok((refusal(&data), Left::Open));
    }
    write_stuffed(conn, message).await?;
    let verdict = conn.verdict(DATA_END_TIMEOUT).await?;
    let outcome = match verdict.code {
        250 => SmtpSend::Accepted {
            reply: text(&verdict),
            refused,
        },
        _ => refusal(&verdict),
    };
    Ok((outcome, Left::Clean))
}

/// A refusal as the queue reads it: 5xx permanent, anything else temporary.
fn refusal(reply: &Reply) -> SmtpSend {
    let reply_text = text(reply);
    if reply.code >= 500 {
        SmtpSend::Permanent { reply: reply_text }
    } else {
        SmtpSend::Temporary { reply: reply_text }
    }
}

/// A reply's text on one line.
fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.text)
        .lines()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes `message` dot-stuffed (RFC 5321 §4.5.2), ending in CRLF, then the end marker;
/// through one bounded buffer, never a whole copy of the message.
async fn write_stuffed(conn: &mut SmtpConnection, message: &[u8]) -> Result<(), Broken> {
    let mut buf = Vec::with_capacity(2 * STUFF_CHUNK);
    let mut line_start = true;
    for part in message.chunks(STUFF_CHUNK) {
        buf.clear();
        dot_stuff_into(part, &mut line_start, &mut buf);
        conn.write(&buf).await?;
    }
    buf.clear();
    buf.extend_from_slice(final_line_end(message));
    buf.extend_from_slice(b".\r\n");
    conn.write(&buf).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_by_class() {
        let permanent = Reply::local("550 5.1.1 no such user\r\n");
        assert!(
            matches!(refusal(&permanent), SmtpSend::Permanent { reply } if reply == "550 5.1.1 no such user")
        );
        let temporary = Reply::local("451 4.3.0 later\r\n");
        assert!(matches!(refusal(&temporary), SmtpSend::Temporary { .. }));
    }

    #[test]
    fn mail_from_carries_the_parameters() {
        let parameters = ["SMTPUTF8".to_owned(), "BODY=8BITMIME".to_owned()];
        let sender = Sender {
            path: "jörg@contoso.com",
            parameters: &parameters,
        };
        assert_eq!(
            sender.command(),
            "MAIL FROM:<jörg@contoso.com> SMTPUTF8 BODY=8BITMIME\r\n"
        );
        let bare = Sender {
            path: "",
            parameters: &[],
        };
        assert_eq!(bare.command(), "MAIL FROM:<>\r\n");
    }
}
