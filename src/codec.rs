//! The one bounded line reader that every protocol reads its peer through before login.
//!
//! Lines end in LF (CRLF is stripped to the bare line). A line longer than the limit is
//! never buffered: the reader reports [`Line::TooLong`] once, after it has discarded input
//! up to and including the next LF, so framing stays in step with the peer (the idea of
//! smtp-proto's receiver and imap-codec's fragmentizer). Bytes read beyond the current line
//! stay buffered and are handed on as the `residual` when the session leaves pre-auth,
//! because clients pipeline.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes asked of the stream per read while no line is complete.
const READ_CHUNK: usize = 4096;

/// One line of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line without its CRLF (or LF).
    Complete(Vec<u8>),
    /// A line over the limit; it has been discarded through its LF.
    TooLong,
}

/// Reads bounded lines from `S`, keeping what it read beyond them.
pub struct LineReader<S> {
    stream: S,
    buf: Vec<u8>,
    /// Longest accepted line, counting its CRLF.
    max_line: usize,
    /// Inside an over-long line: dropping input until the next LF.
    discarding: bool,
    /// How far `buf` has held input since the last [`LineReader::wipe_spare`]: past its
    /// length, the bytes of lines already taken may linger there.
    filled: usize,
}

impl<S: AsyncRead + Unpin> LineReader<S> {
    pub fn new(stream: S, max_line: usize) -> Self {
        Self::with_residual(stream, Vec::new(), max_line)
    }

    /// A reader whose first bytes are `residual`, read earlier from the same stream.
    pub fn with_residual(stream: S, residual: Vec<u8>, max_line: usize) -> Self {
        Self {
            stream,
            filled: residual.len(),
            buf: residual,
            max_line: max_line.max(2),
            discarding: false,
        }
    }

    /// The next line, or `None` at end of input (an unterminated last line is dropped:
    /// a command is only a command once its line ends).
    /// Zeroes the buffer's spare capacity, where the bytes of lines already read may
    /// linger (pre-auth lines carry passwords).
    pub fn wipe_spare(&mut self) {
        use zeroize::Zeroize as _;
        let len = self.buf.len();
        let dirty = self.filled.max(len);
        self.buf.resize(dirty, 0);
        self.buf[len..].zeroize();
        self.buf.truncate(len);
        self.filled = len;
    }

    pub async fn read_line(&mut self) -> std::io::Result<Option<Line>> {
        let mut scanned = 0;
        loop {
            if let Some(at) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + at;
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                if std::mem::take(&mut self.discarding) || line.len() > self.max_line {
                    return Ok(Some(Line::TooLong));
                }
                return Ok(Some(Line::Complete(strip_line_end(line))));
            }
            if self.buf.len() >= self.max_line {
                // Over the limit with no LF in sight: drop what we hold and keep dropping.
                self.discarding = true;
                self.buf.clear();
            }
            scanned = self.buf.len();
            let want = if self.discarding {
                READ_CHUNK
            } else {
                READ_CHUNK.min(self.max_line - self.buf.len())
            };
            let start = self.buf.len();
            self.buf.resize(start + want, 0);
            let n = match self.stream.read(&mut self.buf[start..]).await {
                Ok(n) => n,
                Err(e) => {
                    self.buf.truncate(start);
                    return Err(e);
                }
            };
            self.buf.truncate(start + n);
            self.filled = self.filled.max(start + n);
            if n == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads exactly `n` bytes (an IMAP literal, say); the caller bounds `n`.
    pub async fn read_exact(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let have = self.buf.len().min(n);
        let mut out: Vec<u8> = self.buf.drain(..have).collect();
        if out.len() < n {
            let start = out.len();
            out.resize(n, 0);
            self.stream.read_exact(&mut out[start..]).await?;
        }
        Ok(out)
    }

    /// Drops input read beyond the current line (RFC 3207 §4.2: nothing a client sent
    /// before the TLS handshake may count after it). Returns how many bytes were dropped.
    pub fn discard_buffered(&mut self) -> usize {
        let n = self.buf.len();
        self.buf.clear();
        n
    }

    /// Takes the bytes read beyond the current line (e.g. the start of an SMTP DATA
    /// stream, which is not made of bounded lines).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Puts `bytes` back in front of the buffered input: what a reader of the raw stream
    /// read past its end (the client's next command after a DATA stream).
    pub fn unread(&mut self, bytes: &[u8]) {
        self.buf.splice(0..0, bytes.iter().copied());
        self.filled = self.filled.max(self.buf.len());
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The stream and the bytes read from it but not yet consumed.
    pub fn into_parts(self) -> (S, Vec<u8>) {
        (self.stream, self.buf)
    }
}

fn strip_line_end(mut line: Vec<u8>) -> Vec<u8> {
    line.pop(); // the LF
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8], chunk: usize, max: usize) -> (Vec<Line>, Vec<u8>) {
        let mut builder = tokio_test_io(input, chunk);
        let mut reader = LineReader::new(&mut builder, max);
        let mut out = Vec::new();
        while let Some(line) = reader.read_line().await.unwrap() {
            out.push(line);
        }
        let (_, rest) = reader.into_parts();
        (out, rest)
    }

    /// A reader that hands out `input` in chunks of at most `chunk` bytes.
    fn tokio_test_io(input: &[u8], chunk: usize) -> Chunked {
        Chunked {
            data: input.to_vec(),
            pos: 0,
            chunk,
        }
    }

    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = self
                .chunk
                .min(buf.remaining())
                .min(self.data.len() - self.pos);
            let pos = self.pos;
            buf.put_slice(&self.data[pos..pos + n]);
            self.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn same_lines_whatever_the_chunking() {
        let input = b"EHLO a\r\nAUTH PLAIN AGEAYg==\r\nbare lf\nMAIL FROM:<a@b>\r\npartial";
        for chunk in 1..=input.len() {
            let (lines, rest) = lines_of(input, chunk, 512).await;
            assert_eq!(
                lines,
                vec![
                    Line::Complete(b"EHLO a".to_vec()),
                    Line::Complete(b"AUTH PLAIN AGEAYg==".to_vec()),
                    Line::Complete(b"bare lf".to_vec()),
                    Line::Complete(b"MAIL FROM:<a@b>".to_vec()),
                ],
                "chunk size {chunk}"
            );
            assert_eq!(
                rest, b"partial",
                "an unterminated line is not a line, but stays buffered"
            );
        }
    }

    #[tokio::test]
    async fn an_over_long_line_is_reported_once_and_framing_survives() {
        let mut input = b"NOOP\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 10_000));
        input.extend(b"\r\nQUIT\r\n");
        for chunk in [1, 7, 100, 4096, 20_000] {
            let (lines, _) = lines_of(&input, chunk, 512).await;
            assert_eq!(
                lines,
                vec![
                    Line::Complete(b"NOOP".to_vec()),
                    Line::TooLong,
                    Line::Complete(b"QUIT".to_vec()),
                ],
                "chunk size {chunk}"
            );
        }
    }

    #[tokio::test]
    async fn the_limit_counts_the_line_end() {
        let exact = [vec![b'a'; 510], b"\r\n".to_vec()].concat();
        let (lines, _) = lines_of(&exact, 64, 512).await;
        assert_eq!(lines, vec![Line::Complete(vec![b'a'; 510])]);
        let over = [vec![b'a'; 511], b"\r\n".to_vec()].concat();
        let (lines, _) = lines_of(&over, 64, 512).await;
        assert_eq!(lines, vec![Line::TooLong]);
    }

    #[tokio::test]
    async fn bytes_after_a_line_stay_as_residual() {
        let input = b"AUTH PLAIN x\r\nMAIL FROM:<a@b>\r\nRCPT";
        let mut io = tokio_test_io(input, input.len());
        let mut reader = LineReader::new(&mut io, 512);
        assert_eq!(
            reader.read_line().await.unwrap(),
            Some(Line::Complete(b"AUTH PLAIN x".to_vec()))
        );
        let (_, residual) = reader.into_parts();
        assert_eq!(residual, b"MAIL FROM:<a@b>\r\nRCPT");
    }

    #[tokio::test]
    async fn read_exact_takes_buffered_bytes_first() {
        let input = b"A1 LOGIN {5}\r\nab cd\r\n";
        let mut io = tokio_test_io(input, 3);
        let mut reader = LineReader::new(&mut io, 512);
        reader.read_line().await.unwrap();
        assert_eq!(reader.read_exact(5).await.unwrap(), b"ab cd");
        assert_eq!(
            reader.read_line().await.unwrap(),
            Some(Line::Complete(Vec::new()))
        );
    }
}
