//! SMTP submission login upstream, as Exchange Online expects it (PROTOCOL.md A2):
//! greeting, EHLO, STARTTLS, EHLO again, `AUTH XOAUTH2 <initial response>`. A `334`
//! error challenge is answered with an empty line before the final reply is read.

use zeroize::Zeroizing;

use super::connector::{CommandError, Connector, MAX_REPLY_LINES, Upstream, Wire};
use crate::config::ServerAddress;
use crate::error::Error;
use crate::protocol::sasl;
use crate::secret::AccessToken;
use crate::tls::Stream;

/// One SMTP reply: its code and the text of each line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl SmtpReply {
    /// The first line as the server sent it, for logs and errors.
    pub fn first_line(&self) -> String {
        format!(
            "{} {}",
            self.code,
            self.lines.first().map(String::as_str).unwrap_or("")
        )
    }
}

impl Connector {
    /// Connects to `server` and logs in as `user` with `token`.
    pub async fn smtp(
        &self,
        server: &ServerAddress,
        user: &str,
        token: &AccessToken,
    ) -> Result<Upstream, Error> {
        self.bounded(server, self.smtp_login(server, user, token))
            .await
    }

    async fn smtp_login(
        &self,
        server: &ServerAddress,
        user: &str,
        token: &AccessToken,
    ) -> Result<Upstream, Error> {
        let started = std::time::Instant::now();
        let tcp = self.connect_tcp(server).await?;
        let mut conn = Conversation::new(server, Stream::Plain(tcp));
        conn.expect(220, "greeting").await?;
        let ehlo = format!("EHLO {}\r\n", self.local_name);
        let plain_ext = conn.command(&ehlo, 250, "EHLO").await?.lines;
        if !offers(&plain_ext, "STARTTLS") {
            return Err(
                conn.broke("does not offer STARTTLS; the relay never sends a token in plaintext")
            );
        }
        conn.command("STARTTLS\r\n", 220, "STARTTLS").await?;
        let (stream, leftover) = conn.wire.into_parts();
        if !leftover.is_empty() {
            return Err(conn_error(server, "sent data before the TLS handshake"));
        }
        let Stream::Plain(tcp) = stream else {
            return Err(conn_error(server, "connection already in TLS"));
        };
        let mut conn = Conversation::new(server, self.start_tls(server, tcp).await?);
        let connected_in = started.elapsed();
        let extensions: Vec<String> = conn.command(&ehlo, 250, "EHLO").await?.lines.split_off(1);
        if !extensions.iter().any(|kw| offers_auth(kw, "XOAUTH2")) {
            return Err(conn.broke("does not offer AUTH XOAUTH2"));
        }

        let auth = Zeroizing::new(format!(
            "AUTH XOAUTH2 {}\r\n",
            sasl::xoauth2(user, token).as_str()
        ));
        conn.send(&auth).await?;
        let mut reply = conn.read_reply().await?;
        if reply.code == 334 {
            // An error challenge (JSON in base64): answer with an empty line, then read the
            // final verdict.
            conn.send("\r\n").await?;
            reply = conn.read_reply().await?;
        }
        if reply.code != 235 {
            return Err(Error::UpstreamRejected {
                server: server.to_string(),
                mailbox: user.to_owned(),
                reply: reply.first_line(),
            });
        }
        let (stream, residual) = conn.wire.into_parts();
        Ok(Upstream {
            stream,
            residual,
            ok: reply.lines.join(" "),
            capabilities: extensions,
            connected_in,
        })
    }
}

/// A message to submit: its envelope and its content.
#[derive(Debug, Clone, Copy)]
pub struct Submission<'a> {
    /// The reverse path (`MAIL FROM`).
    pub from: &'a str,
    /// The one recipient (`RCPT TO`).
    pub to: &'a str,
    /// Headers and body with CRLF line ends, not dot-stuffed (that is done here).
    pub message: &'a [u8],
}

impl Connector {
    /// On a connection that [`smtp`](Self::smtp) logged in: MAIL FROM, RCPT TO and DATA
    /// with `submission`, then QUIT. Returns the first line of the server's final reply
    /// to the message (e.g. `250 2.0.0 OK <id> [Hostname=...]`). Any other reply, at any
    /// step (e.g. `554 5.2.252 SendAsDenied` after the message), is
    /// [`CommandError::Refused`].
    pub async fn smtp_send(
        &self,
        server: &ServerAddress,
        upstream: Upstream,
        submission: Submission<'_>,
    ) -> Result<String, CommandError> {
        self.within(server, "sending a message", async {
            let mut conn = Conversation::resume(server, upstream);
            let mail = format!("MAIL FROM:<{}>\r\n", submission.from);
            conn.step(&mail, &[250], "MAIL FROM").await?;
            let rcpt = format!("RCPT TO:<{}>\r\n", submission.to);
            conn.step(&rcpt, &[250, 251], "RCPT TO").await?;
            conn.step("DATA\r\n", &[354], "DATA").await?;
            let mut data = dot_stuff(submission.message);
            data.extend_from_slice(b".\r\n");
            conn.wire.send_bytes(&data).await?;
            let verdict = conn.read_reply().await?;
            if verdict.code != 250 {
                return Err(refused(server, "the message", &verdict));
            }
            conn.quit().await;
            Ok(verdict.first_line())
        })
        .await
    }

    /// On a connection that [`smtp`](Self::smtp) logged in: QUIT, and close it.
    pub async fn smtp_quit(&self, server: &ServerAddress, upstream: Upstream) {
        let quit = async {
            Conversation::resume(server, upstream).quit().await;
            Ok::<(), Error>(())
        };
        let _ = self.within(server, "quitting", quit).await;
    }
}

/// The message as DATA sends it (RFC 5321 §4.5.2): each line that starts with `.` gets
/// another, and the last line ends in CRLF (the terminating `.` line is not added).
fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    let mut line_start = true;
    dot_stuff_into(message, &mut line_start, &mut out);
    out.extend_from_slice(final_line_end(message));
    out
}

/// Appends `bytes`, the next part of a message, dot-stuffed to `out`; `line_start` says
/// whether the part starts a line, and is left saying whether the next one does.
pub fn dot_stuff_into(bytes: &[u8], line_start: &mut bool, out: &mut Vec<u8>) {
    for &b in bytes {
        if *line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        *line_start = b == b'\n';
    }
}

/// What ends the last line of `message` with CRLF, if it does not already.
pub fn final_line_end(message: &[u8]) -> &'static [u8] {
    if message.is_empty() || message.ends_with(b"\r\n") {
        b""
    } else if message.ends_with(b"\r") {
        b"\n"
    } else {
        b"\r\n"
    }
}

fn refused(server: &ServerAddress, command: &'static str, reply: &SmtpReply) -> CommandError {
    CommandError::Refused {
        server: server.to_string(),
        command,
        reply: reply.first_line(),
    }
}

/// Whether an EHLO keyword list offers `keyword`.
fn offers(lines: &[String], keyword: &str) -> bool {
    lines.iter().skip(1).any(|l| {
        l.split(' ')
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
    })
}

/// Whether an EHLO line `AUTH m1 m2 ...` offers `mechanism`.
fn offers_auth(line: &str, mechanism: &str) -> bool {
    let mut words = line.split_ascii_whitespace();
    words.next().is_some_and(|k| k.eq_ignore_ascii_case("AUTH"))
        && words.any(|m| m.eq_ignore_ascii_case(mechanism))
}

fn conn_error(server: &ServerAddress, detail: &str) -> Error {
    Error::UpstreamProtocol {
        server: server.to_string(),
        detail: detail.to_owned(),
    }
}

/// An SMTP exchange: the shared [`Wire`] plus SMTP's reply syntax.
struct Conversation<'a> {
    wire: Wire<'a>,
}

impl<'a> Conversation<'a> {
    fn new(server: &'a ServerAddress, stream: Stream) -> Self {
        Self {
            wire: Wire::new(server, stream),
        }
    }

    /// Picks up a connection after its login.
    fn resume(server: &'a ServerAddress, upstream: Upstream) -> Self {
        Self {
            wire: Wire::resume(server, upstream),
        }
    }

    fn broke(&self, detail: &str) -> Error {
        self.wire.broke(detail)
    }

    /// Sends a command after login; a reply other than `codes` is a refusal.
    async fn step(
        &mut self,
        line: &str,
        codes: &[u16],
        command: &'static str,
    ) -> Result<SmtpReply, CommandError> {
        self.send(line).await?;
        let reply = self.read_reply().await?;
        if !codes.contains(&reply.code) {
            return Err(refused(self.wire.server, command, &reply));
        }
        Ok(reply)
    }

    /// QUIT, its reply, and close; best effort, as the session is over.
    async fn quit(mut self) {
        if self.send("QUIT\r\n").await.is_ok() {
            let _ = self.read_reply().await;
        }
        self.wire.close().await;
    }

    async fn send(&mut self, line: &str) -> Result<(), Error> {
        self.wire.send(line).await
    }

    async fn command(&mut self, line: &str, code: u16, what: &str) -> Result<SmtpReply, Error> {
        self.send(line).await?;
        self.expect(code, what).await
    }

    async fn expect(&mut self, code: u16, what: &str) -> Result<SmtpReply, Error> {
        let reply = self.read_reply().await?;
        if reply.code != code {
            return Err(self.broke(&format!(
                "unexpected reply to {what}: {}",
                reply.first_line()
            )));
        }
        Ok(reply)
    }

    /// Reads one (possibly multi-line) reply.
    async fn read_reply(&mut self) -> Result<SmtpReply, Error> {
        let mut lines = Vec::new();
        loop {
            let line = self.wire.read_line().await?;
            let (code, more, text) = parse_reply_line(&line).ok_or_else(|| {
                self.broke(&format!(
                    "malformed reply `{}`",
                    String::from_utf8_lossy(&line)
                ))
            })?;
            lines.push(text);
            if !more {
                return Ok(SmtpReply { code, lines });
            }
            if lines.len() >= MAX_REPLY_LINES {
                return Err(self.broke("reply has too many lines"));
            }
        }
    }
}

/// `250-text` → (250, true, "text"); `250 text` or `250` → (250, false, "text").
pub fn parse_reply_line(line: &[u8]) -> Option<(u16, bool, String)> {
    let code = line.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code: u16 = std::str::from_utf8(code).ok()?.parse().ok()?;
    let more = match line.get(3) {
        None | Some(b' ') => false,
        Some(b'-') => true,
        Some(_) => return None,
    };
    let text = String::from_utf8_lossy(line.get(4..).unwrap_or_default()).into_owned();
    Some((code, more, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines() {
        assert_eq!(
            parse_reply_line(b"250-SIZE 157286400"),
            Some((250, true, "SIZE 157286400".into()))
        );
        assert_eq!(
            parse_reply_line(b"235 2.7.0 Authentication successful"),
            Some((235, false, "2.7.0 Authentication successful".into()))
        );
        assert_eq!(parse_reply_line(b"334"), Some((334, false, String::new())));
        assert_eq!(parse_reply_line(b"25"), None);
        assert_eq!(parse_reply_line(b"2x0 hi"), None);
        assert_eq!(parse_reply_line(b"250_hi"), None);
    }

    #[test]
    fn data_is_dot_stuffed() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n..c\r\n"), b"a\r\n..b\r\n...c\r\n");
        assert_eq!(dot_stuff(b".\r\nx.y\r\n"), b"..\r\nx.y\r\n");
        assert_eq!(dot_stuff(b"no line end"), b"no line end\r\n");
        assert_eq!(dot_stuff(b"cr only\r"), b"cr only\r\n");
        assert_eq!(dot_stuff(b""), b"");
    }

    #[test]
    fn auth_offers() {
        assert!(offers_auth("AUTH LOGIN XOAUTH2", "XOAUTH2"));
        assert!(offers_auth("auth xoauth2", "XOAUTH2"));
        assert!(!offers_auth("AUTH LOGIN PLAIN", "XOAUTH2"));
        assert!(!offers_auth("X-AUTH XOAUTH2", "XOAUTH2"));
        let ehlo = vec!["host Hello".to_string(), "SIZE 1".into(), "STARTTLS".into()];
        assert!(offers(&ehlo, "starttls"));
        assert!(!offers(&ehlo[..1], "STARTTLS"));
    }
}
