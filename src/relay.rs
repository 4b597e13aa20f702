//! After login: a dumb, bounded, back-pressured pipe between client and upstream.
//!
//! Each direction copies through one fixed buffer ([`BUFFER_SIZE`]); a side that stops
//! reading stops the other side from being read, so a session holds at most two buffers
//! (plus TLS state) however much data flows. The session caps each TLS side's unsent data
//! at the same size ([`crate::tls::Stream::limit_tls_buffer`]; rustls's default is 64
//! KiB), and rustls holds at most one record received and 16 KiB decrypted but unread: a
//! logged-in session stays under about 200 KiB (measured: 53 KiB at rest over TLS, a peak
//! of about 130 KiB while relaying 30 MB; see the README). End of input on one side is
//! passed on as a half-close (TLS close_notify / TCP FIN) to the other. A session with no
//! traffic either way for its protocol's idle time (`limits.idle_timeout_*_secs`) is
//! closed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// Bytes buffered per direction.
pub const BUFFER_SIZE: usize = 16 * 1024;

/// How a relayed session ended, with what it moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Bytes from the client to upstream (including the pipelined residual).
    pub client_to_upstream: u64,
    /// Bytes from upstream to the client.
    pub upstream_to_client: u64,
    pub end: End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides finished.
    Closed,
    /// No traffic for the idle time.
    Idle,
    /// A read or write failed (reset, broken TLS).
    Broken,
}

/// Pipes `client` and `upstream` until both are done, one fails, or `idle` passes with no
/// traffic. `client_residual` (what the client pipelined behind its login) is sent upstream
/// first, and `upstream_residual` to the client.
pub async fn pipe<C, U>(
    client: C,
    client_residual: &[u8],
    upstream: U,
    upstream_residual: &[u8],
    idle: Duration,
) -> Relayed
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let clock = Arc::new(Activity::new());
    let mut client = Watched::new(client, clock.clone());
    let mut upstream = Watched::new(upstream, clock.clone());

    let first = async {
        upstream.write_all(client_residual).await?;
        upstream.flush().await?;
        client.write_all(upstream_residual).await?;
        client.flush().await
    };
    let end = match first.await {
        Err(_) => End::Broken,
        Ok(()) => {
            let copy = tokio::io::copy_bidirectional_with_sizes(
                &mut client,
                &mut upstream,
                BUFFER_SIZE,
                BUFFER_SIZE,
            );
            tokio::select! {
                result = copy => if result.is_ok() { End::Closed } else { End::Broken },
                () = clock.idle_for(idle) => End::Idle,
            }
        }
    };
    // Counted as read, so that a session that ends badly (a peer that closes without TLS
    // close_notify is common) still reports what it moved.
    Relayed {
        client_to_upstream: client_residual.len() as u64 + client.bytes_read(),
        upstream_to_client: upstream_residual.len() as u64 + upstream.bytes_read(),
        end,
    }
}

/// When either side last moved a byte.
struct Activity {
    start: Instant,
    /// Milliseconds since `start` of the last read that returned data.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    /// Completes once `idle` has passed without a touch.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A stream that records activity on every successful read, and counts what it read.
struct Watched<S> {
    inner: S,
    clock: Arc<Activity>,
    read: u64,
}

impl<S> Watched<S> {
    fn new(inner: S, clock: Arc<Activity>) -> Self {
        Self {
            inner,
            clock,
            read: 0,
        }
    }

    fn bytes_read(&self) -> u64 {
        self.read
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.touch();
            self.read += (buf.filled().len() - before) as u64;
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, duplex};

    #[tokio::test]
    async fn residuals_go_first_and_bytes_are_counted() {
        let (client, mut client_peer) = duplex(64);
        let (upstream, mut upstream_peer) = duplex(64);
        let relay = tokio::spawn(async move {
            pipe(
                client,
                b"MAIL FROM:<a@b>\r\n",
                upstream,
                b"",
                Duration::from_secs(5),
            )
            .await
        });
        let mut got = vec![0; 17];
        upstream_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"MAIL FROM:<a@b>\r\n");
        upstream_peer
            .write_all(b"250 2.1.0 Sender OK\r\n")
            .await
            .unwrap();
        let mut reply = vec![0; 21];
        client_peer.read_exact(&mut reply).await.unwrap();
        assert_eq!(reply, b"250 2.1.0 Sender OK\r\n");
        drop(client_peer);
        drop(upstream_peer);
        let relayed = relay.await.unwrap();
        assert_eq!(
            (relayed.client_to_upstream, relayed.upstream_to_client),
            (17, 21)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_session_is_closed() {
        let (client, _client_peer) = duplex(64);
        let (upstream, _upstream_peer) = duplex(64);
        let relayed = pipe(client, b"", upstream, b"", Duration::from_secs(600)).await;
        assert_eq!(relayed.end, End::Idle);
    }

    #[tokio::test]
    async fn a_reader_that_stops_stops_the_other_side() {
        // The client never reads: upstream can write only what fits in the buffers.
        let (client, _client_peer) = duplex(1024);
        let (upstream, mut upstream_peer) = duplex(1024);
        tokio::spawn(pipe(client, b"", upstream, b"", Duration::from_secs(60)));
        let chunk = vec![b'x'; 1024];
        let mut written = 0usize;
        let write_until_blocked = async {
            loop {
                upstream_peer.write_all(&chunk).await.unwrap();
                written += chunk.len();
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(300), write_until_blocked).await;
        assert!(
            written <= 1024 + BUFFER_SIZE + 1024 + 1024,
            "wrote {written}"
        );
    }
}
