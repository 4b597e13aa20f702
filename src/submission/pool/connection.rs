//! One logged-in upstream SMTP connection as the pool keeps it: commands and their
//! replies, each bounded in time; the liveness check before reuse (no round trip for a
//! fresh connection); QUIT.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout};

use crate::codec::{Line, LineReader};
use crate::tls::Stream;
use crate::upstream::smtp::parse_reply_line;
use crate::upstream::{MAX_REPLY_LINE, MAX_REPLY_LINES, Upstream};

/// A connection idle longer than this is asked `NOOP` before reuse; a fresher one is only
/// looked at (a pending EOF or a stray reply such as `421` means it is gone).
pub const NOOP_AFTER_IDLE: Duration = Duration::from_secs(30);

/// How long the upstream may take to answer the end of a message (RFC 5321 §4.5.3.2.6).
pub const DATA_END_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// A reply from the upstream server, complete with its CRLFs, ready to pass on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: Vec<u8>,
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// The first line, for logs.
    pub fn first_line(&self) -> String {
        let line = self.text.split(|&b| b == b'\r' || b == b'\n').next();
        String::from_utf8_lossy(line.unwrap_or_default()).into_owned()
    }

    /// A reply the relay makes itself, in the shape of an upstream one.
    pub fn local(text: &str) -> Reply {
        Reply {
            code: text.get(..3).and_then(|c| c.parse().ok()).unwrap_or(250),
            text: text.as_bytes().to_vec(),
        }
    }
}

/// Why the upstream conversation broke: the connection cannot be used any more.
#[derive(Debug, thiserror::Error)]
#[error("upstream SMTP server: {0}")]
pub struct Broken(pub String);

/// A logged-in XOAUTH2 connection to the upstream SMTP server.
pub struct SmtpConnection {
    reader: LineReader<Stream>,
    /// Bound on each command's reply.
    timeout: Duration,
    /// When it was last used (its last reply).
    pub(super) used: Instant,
}

impl SmtpConnection {
    pub fn new(upstream: Upstream, timeout: Duration) -> Self {
        Self {
            reader: LineReader::with_residual(upstream.stream, upstream.residual, MAX_REPLY_LINE),
            timeout,
            used: Instant::now(),
        }
    }

    /// Sends one command line (with its CRLF) and reads the reply.
    pub async fn command(&mut self, line: &[u8]) -> Result<Reply, Broken> {
        self.write(line).await?;
        self.flush().await?;
        self.reply(self.timeout).await
    }

    /// Writes bytes as they are (a DATA stream is already dot-stuffed).
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), Broken> {
        self.reader
            .get_mut()
            .write_all(bytes)
            .await
            .map_err(|e| Broken(format!("write failed: {e}")))
    }

    pub async fn flush(&mut self) -> Result<(), Broken> {
        self.reader
            .get_mut()
            .flush()
            .await
            .map_err(|e| Broken(format!("write failed: {e}")))
    }

    /// Flushes what was written and waits up to `wait` for the upstream's reply.
    pub async fn verdict(&mut self, wait: Duration) -> Result<Reply, Broken> {
        self.flush().await?;
        self.reply(wait).await
    }

    /// Reads one reply, which may have several lines, within `wait`.
    pub async fn reply(&mut self, wait: Duration) -> Result<Reply, Broken> {
        let reply = match timeout(wait, self.read_reply()).await {
            Ok(reply) => reply,
            Err(_) => Err(Broken(format!("no reply within {} s", wait.as_secs()))),
        };
        self.used = Instant::now();
        reply
    }

    async fn read_reply(&mut self) -> Result<Reply, Broken> {
        let mut text = Vec::new();
        for _ in 0..MAX_REPLY_LINES {
            let line = match self.reader.read_line().await {
                Ok(Some(Line::Complete(line))) => line,
                Ok(Some(Line::TooLong)) => return Err(Broken("reply line too long".into())),
                Ok(None) => return Err(Broken("closed the connection".into())),
                Err(e) => return Err(Broken(format!("read failed: {e}"))),
            };
            let Some((code, more, _)) = parse_reply_line(&line) else {
                return Err(Broken(format!(
                    "malformed reply `{}`",
                    String::from_utf8_lossy(&line)
                )));
            };
            text.extend_from_slice(&line);
            text.extend_from_slice(b"\r\n");
            if !more {
                return Ok(Reply { code, text });
            }
        }
        Err(Broken("reply has too many lines".into()))
    }

    /// Whether the connection may carry another transaction: nothing arrived while it was
    /// idle (an EOF or a stray `421` means the server is gone), and one idle longer than
    /// [`NOOP_AFTER_IDLE`] still answers `NOOP`.
    pub async fn is_alive(&mut self) -> bool {
        if !self.reader.take_buffered().is_empty() {
            return false;
        }
        let mut probe = [0u8; 512];
        // One poll of a read, without waiting: ready means EOF, an error or a stray reply.
        // (Not `timeout(Duration::ZERO, ..)`: tokio's timer rounds a deadline up to its next
        // millisecond, so that would wait up to 1 ms before every reuse.)
        if ready_at_once(std::pin::pin!(self.reader.get_mut().read(&mut probe))) {
            return false;
        }
        if self.used.elapsed() < NOOP_AFTER_IDLE {
            return true;
        }
        matches!(self.command(b"NOOP\r\n").await, Ok(reply) if reply.code == 250)
    }

    /// QUIT and close; best effort, the connection is done.
    pub async fn quit(mut self) {
        if self.command(b"QUIT\r\n").await.is_ok() {
            let (mut stream, _) = self.reader.into_parts();
            let _ = stream.shutdown().await;
        }
    }
}

/// Whether `future` is ready when polled once, now (nothing waits, nothing is woken).
fn ready_at_once<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> bool {
    let mut once = std::task::Context::from_waker(std::task::Waker::noop());
    future.poll(&mut once).is_ready()
}
