//! One direction of the pipe: bytes read from one side and written to the other through
//! one buffer that grows while data flows and is given back when the direction goes quiet.
//!
//! A [`Flow`] starts with [`BASE`] bytes (what an idle session holds). When one round of
//! reading fills its buffer (the reader had at least that much ready), the next round uses
//! a buffer twice as large, up to [`MAX`]: a bulk transfer then moves up to 256 KiB per
//! write instead of 16 KiB, which means fewer system calls, fewer TLS flushes and, above
//! all, fewer wake-ups of the processes on both ends. [`Flow::release`] (called by the
//! pipe once the direction has been quiet for a while) goes back to [`BASE`].
//!
//! **Back-pressure** is as with a fixed buffer: nothing more is read while the buffer is
//! full, so a writer that stops accepting stops the reader after at most [`MAX`] bytes.
//! The writer's own buffering (rustls's unsent records) is capped at the buffer's size
//! through [`Buffered::limit_buffer`], so that it follows the buffer up and down.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Bytes buffered per direction while a session is quiet.
pub const BASE: usize = 16 * 1024;
/// Bytes buffered per direction at most, while data flows.
pub const MAX: usize = 256 * 1024;

/// A writer with a buffer of its own that the pipe sizes with the flow's buffer.
pub trait Buffered {
    /// Caps what the writer holds that it could not send yet.
    fn limit_buffer(&mut self, bytes: usize);
}

impl Buffered for crate::tls::Stream {
    fn limit_buffer(&mut self, bytes: usize) {
        self.limit_tls_buffer(bytes);
    }
}

impl Buffered for tokio::io::DuplexStream {
    /// A duplex stream's buffer is fixed when it is made.
    fn limit_buffer(&mut self, _bytes: usize) {}
}

/// One direction's copy state.
pub struct Flow {
    buf: Vec<u8>,
    /// Buffered bytes not written yet: `buf[start..end]`.
    start: usize,
    end: usize,
    /// The reader reached its end.
    read_done: bool,
    /// The writer's end was shut down (the direction is over).
    done: bool,
    /// Something was written since the last flush.
    need_flush: bool,
    /// The last round of reading filled the buffer.
    filled: bool,
    /// Bytes read so far.
    moved: u64,
    /// When a read last returned data (or the flow was made, or last checked for release).
    pub last_read: Instant,
}

impl Flow {
    pub fn new() -> Self {
        Self {
            buf: vec![0; BASE],
            start: 0,
            end: 0,
            read_done: false,
            done: false,
            need_flush: false,
            filled: false,
            moved: 0,
            last_read: Instant::now(),
        }
    }

    /// Bytes read from the reader so far.
    pub fn moved(&self) -> u64 {
        self.moved
    }

    /// Whether end of input was passed on (the writer is shut down).
    #[cfg(test)]
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The buffer's size now.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Whether the buffer is larger than [`BASE`].
    pub fn is_grown(&self) -> bool {
        self.buf.len() > BASE
    }

    /// Goes back to a [`BASE`]-sized buffer if nothing is buffered; returns whether it did.
    pub fn release(&mut self, writer: &mut dyn Buffered) -> bool {
        if !self.is_grown() || self.start != self.end {
            return false;
        }
        self.resize(BASE, writer);
        true
    }

    fn resize(&mut self, size: usize, writer: &mut dyn Buffered) {
        // Empty: nothing to keep, so a fresh buffer (a realloc would copy the old bytes).
        self.buf = vec![0; size];
        (self.start, self.end) = (0, 0);
        // Growing again takes a round that fills this buffer.
        self.filled = false;
        writer.limit_buffer(size);
    }

    /// Copies until the reader is done and the writer shut down (`Ready(Ok)`), an error,
    /// or neither side can go on now (`Pending`, with both wakers registered as needed).
    pub fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Buffered + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.start == self.end && !self.read_done {
                (self.start, self.end) = (0, 0);
                if self.filled && self.buf.len() < MAX {
                    let grown = (self.buf.len() * 2).min(MAX);
                    self.resize(grown, writer);
                }
                if self.fill(cx, reader)?.is_pending() {
                    // Nothing to write: what was written must not wait in a buffer.
                    if self.need_flush {
                        ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            }
            while self.start < self.end {
                let chunk = &self.buf[self.start..self.end];
                match Pin::new(&mut *writer).poll_write(cx, chunk) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        self.start += n;
                        self.need_flush = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // While the writer is busy, read into the free tail (bounded by
                        // the buffer, so back-pressure holds).
                        if !self.read_done && self.end < self.buf.len() {
                            let _ = self.read_once(cx, reader)?;
                        }
                        return Poll::Pending;
                    }
                }
            }
            if self.read_done {
                if self.need_flush {
                    ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                    self.need_flush = false;
                }
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }

    /// Reads what is ready, until the buffer is full, the reader ends, or it has nothing
    /// more now. `Pending` only if nothing at all was read.
    fn fill<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
    ) -> io::Result<Poll<()>> {
        let before = self.end;
        loop {
            if self.end == self.buf.len() {
                self.filled = true;
                return Ok(Poll::Ready(()));
            }
            match self.read_once(cx, reader)? {
                Poll::Ready(0) => return Ok(Poll::Ready(())),
                Poll::Ready(_) => {}
                Poll::Pending if self.end > before => {
                    self.filled = false;
                    return Ok(Poll::Ready(()));
                }
                Poll::Pending => return Ok(Poll::Pending),
            }
        }
    }

    /// One read into the free tail: how many bytes (0 = end of input, which is noted).
    fn read_once<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
    ) -> io::Result<Poll<usize>> {
        let mut tail = ReadBuf::new(&mut self.buf[self.end..]);
        let n = match Pin::new(&mut *reader).poll_read(cx, &mut tail) {
            Poll::Pending => return Ok(Poll::Pending),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Ready(Ok(())) => tail.filled().len(),
        };
        if n == 0 {
            self.read_done = true;
        } else {
            self.end += n;
            self.moved += n as u64;
            self.last_read = Instant::now();
        }
        Ok(Poll::Ready(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    /// A duplex end that records the limits it is given.
    struct Limited {
        inner: tokio::io::DuplexStream,
        limit: Option<usize>,
    }

    impl Buffered for Limited {
        fn limit_buffer(&mut self, bytes: usize) {
            self.limit = Some(bytes);
        }
    }

    impl AsyncWrite for Limited {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn the_buffer_grows_while_reads_fill_it_and_shrinks_when_released() {
        let (mut source, mut reader) = duplex(4 * MAX);
        let (writer, mut sink) = duplex(4 * MAX);
        let mut writer = Limited {
            inner: writer,
            limit: None,
        };
        let data: Vec<u8> = (0..3 * MAX).map(|i| (i % 251) as u8).collect();
        let expected = data.clone();
        let feed = tokio::spawn(async move {
            source.write_all(&data).await.unwrap();
        });
        let drain = tokio::spawn(async move {
            let mut got = Vec::new();
            sink.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut flow = Flow::new();
        assert_eq!(flow.capacity(), BASE);
        feed.await.unwrap();
        // The source is dropped: its end of input ends the copy.
        std::future::poll_fn(|cx| flow.poll_copy(cx, &mut reader, &mut writer))
            .await
            .unwrap();
        assert!(flow.is_done());
        assert_eq!(flow.moved(), expected.len() as u64);
        assert_eq!(flow.capacity(), MAX, "grown while reads filled it");
        assert_eq!(writer.limit, Some(MAX), "the writer's buffer follows");
        assert!(flow.release(&mut writer));
        assert_eq!(flow.capacity(), BASE);
        assert_eq!(writer.limit, Some(BASE));
        assert!(
            !flow.filled,
            "a small message after a release does not grow it"
        );
        drop(writer);
        assert!(drain.await.unwrap() == expected, "bytes arrive intact");
    }

    #[tokio::test]
    async fn small_reads_keep_the_buffer_small() {
        let (mut source, mut reader) = duplex(1024);
        let (writer, mut sink) = duplex(1024);
        let mut writer = Limited {
            inner: writer,
            limit: None,
        };
        let mut flow = Flow::new();
        for _ in 0..50 {
            source.write_all(b"a3 NOOP\r\n").await.unwrap();
            let poll = std::future::poll_fn(|cx| {
                let _ = flow.poll_copy(cx, &mut reader, &mut writer);
                Poll::Ready(())
            });
            poll.await;
            let mut line = [0u8; 9];
            sink.read_exact(&mut line).await.unwrap();
            assert_eq!(&line, b"a3 NOOP\r\n");
        }
        assert_eq!(flow.capacity(), BASE);
        assert_eq!(writer.limit, None);
    }
}
