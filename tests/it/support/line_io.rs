//! The bounded line reader the fake mail servers share (IMAP, POP3, SMTP): lines of at most
//! [`MAX_LINE`] bytes, exact byte counts (literals, BDAT chunks), and replies.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest line (command or DATA line) the fake buffers, so a test bug cannot eat memory.
pub(super) const MAX_LINE: usize = 64 * 1024;

pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A stream with a read buffer that hands out lines of at most [`MAX_LINE`] bytes.
pub(super) struct LineIo {
    pub(super) stream: Box<dyn Stream>,
    pub(super) buf: Vec<u8>,
}

impl LineIo {
    pub(super) fn new(stream: Box<dyn Stream>) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// The next line including its `\n`; `None` on a clean EOF between lines.
    pub(super) async fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                return Ok(Some(self.buf.drain(..=end).collect()));
            }
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "line longer than 64 KiB",
                ));
            }
            let filled = match self.fill().await {
                // A TLS peer that closes without close_notify: at a line boundary that is a plain close.
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof && self.buf.is_empty() => 0,
                other => other?,
            };
            if filled == 0 {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(io::ErrorKind::UnexpectedEof.into()),
                };
            }
        }
    }

    /// Exactly `n` bytes (a BDAT chunk).
    pub(super) async fn read_exact_bytes(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Sends `prompt` (a SASL continuation) and reads the client's answer: one line, as text
    /// without its line ending; a connection closed instead is an error.
    pub(super) async fn prompt(&mut self, prompt: &str) -> io::Result<String> {
        self.send(prompt).await?;
        let line = self.read_line().await?;
        let line = line.ok_or(io::ErrorKind::UnexpectedEof)?;
        Ok(String::from_utf8_lossy(trim_eol(&line)).into_owned())
    }

    /// Writes `text` (one or more lines without the final CRLF) and flushes.
    pub(super) async fn send(&mut self, text: &str) -> io::Result<()> {
        self.stream
            .write_all(format!("{text}\r\n").as_bytes())
            .await?;
        self.stream.flush().await
    }
}

pub(super) fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}
