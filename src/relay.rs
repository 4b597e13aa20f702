//! After login: a dumb, bounded, back-pressured pipe between client and upstream.
//!
//! Each direction copies through one buffer of its own ([`flow`]): 16 KiB ([`BUFFER_SIZE`])
//! while the session is quiet, growing up to 256 KiB ([`MAX_BUFFER_SIZE`]) while reads keep
//! filling it, and given back once the direction has moved nothing for [`RELEASE_AFTER`].
//! A side that stops reading stops the other side from being read, so a session holds at
//! most two buffers (plus TLS state) however much data flows. The session caps each TLS
//! side's unsent data at its buffer's size ([`flow::Buffered`]; rustls's default is 64
//! KiB), and rustls holds at most one record received and 16 KiB decrypted but unread: an
//! idle logged-in session stays near 50 KiB over TLS (see BENCHMARKS.md), and a session
//! moving data at full speed holds at most two 256 KiB buffers and two 256 KiB TLS send
//! limits (about 1.2 MiB with the TLS state). End of input on one side is passed on as
//! a half-close (TLS close_notify / TCP FIN) to the other. A session with no traffic
//! either way for its protocol's idle time (`limits.idle_timeout_*_secs`) is closed.

mod flow;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

pub use flow::Buffered;
use flow::Flow;

/// Bytes buffered per direction while a session is quiet.
pub const BUFFER_SIZE: usize = flow::BASE;
/// Bytes buffered per direction at most, while data flows.
pub const MAX_BUFFER_SIZE: usize = flow::MAX;
/// A direction that moved nothing for this long gives its grown buffer back.
pub const RELEASE_AFTER: Duration = Duration::from_secs(1);

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
    /// The relay ended it: the mailbox was removed.
    Revoked,
}

/// Pipes `client` and `upstream` until both are done, one fails, `idle` passes with no
/// traffic, or `revoked` resolves. `client_residual` (what the client pipelined behind its
/// login) is sent upstream first, and `upstream_residual` to the client.
pub async fn pipe<C, U>(
    mut client: C,
    client_residual: &[u8],
    mut upstream: U,
    upstream_residual: &[u8],
    idle: Duration,
    revoked: impl Future<Output = ()>,
) -> Relayed
where
    C: AsyncRead + AsyncWrite + Buffered + Unpin,
    U: AsyncRead + AsyncWrite + Buffered + Unpin,
{
    let first = async {
        upstream.write_all(client_residual).await?;
        upstream.flush().await?;
        client.write_all(upstream_residual).await?;
        client.flush().await
    };
    let first = tokio::time::timeout(idle, first).await;
    let mut pipe = Pipe {
        client,
        upstream,
        up: Flow::new(),
        down: Flow::new(),
        idle,
        timer: Box::pin(tokio::time::sleep(idle)),
    };
    let end = match first {
        Err(_) => End::Idle,
        Ok(Err(_)) => End::Broken,
        Ok(Ok(())) => tokio::select! {
            end = &mut pipe => end,
            () = revoked => End::Revoked,
        },
    };
    // Counted as read, so that a session that ends badly (a peer that closes without TLS
    // close_notify is common) still reports what it moved.
    Relayed {
        client_to_upstream: client_residual.len() as u64 + pipe.up.moved(),
        upstream_to_client: upstream_residual.len() as u64 + pipe.down.moved(),
        end,
    }
}

/// Both directions and the one timer that ends an idle session and releases the buffers
/// of quiet directions.
struct Pipe<C, U> {
    client: C,
    upstream: U,
    /// Client to upstream.
    up: Flow,
    /// Upstream to client.
    down: Flow,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
}

impl<C, U> Pipe<C, U>
where
    C: AsyncRead + AsyncWrite + Buffered + Unpin,
    U: AsyncRead + AsyncWrite + Buffered + Unpin,
{
    /// Releases the buffers of directions quiet for [`RELEASE_AFTER`]; the next time to
    /// look again (a release or the idle time, whichever is first).
    fn next_deadline(&mut self, now: Instant) -> Instant {
        let last = self.up.last_read.max(self.down.last_read);
        let mut deadline = last + self.idle;
        for (flow, writer) in [
            (&mut self.up, &mut self.upstream as &mut dyn Buffered),
            (&mut self.down, &mut self.client as &mut dyn Buffered),
        ] {
            if !flow.is_grown() {
                continue;
            }
            let due = flow.last_read + RELEASE_AFTER;
            if due <= now && !flow.release(writer) {
                // Still holding bytes for a writer that does not take them: look later.
                deadline = deadline.min(now + RELEASE_AFTER);
            } else if due > now {
                deadline = deadline.min(due);
            }
        }
        deadline
    }
}

impl<C, U> Future for Pipe<C, U>
where
    C: AsyncRead + AsyncWrite + Buffered + Unpin,
    U: AsyncRead + AsyncWrite + Buffered + Unpin,
{
    type Output = End;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        let this = self.get_mut();
        let up = this.up.poll_copy(cx, &mut this.client, &mut this.upstream);
        let down = this
            .down
            .poll_copy(cx, &mut this.upstream, &mut this.client);
        match (up, down) {
            (Poll::Ready(Err(_)), _) | (_, Poll::Ready(Err(_))) => return Poll::Ready(End::Broken),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => return Poll::Ready(End::Closed),
            _ => {}
        }
        loop {
            let now = Instant::now();
            let last = this.up.last_read.max(this.down.last_read);
            if now >= last + this.idle {
                return Poll::Ready(End::Idle);
            }
            let deadline = this.next_deadline(now);
            if this.timer.deadline() != deadline {
                this.timer.as_mut().reset(deadline);
            }
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, DuplexStream, duplex};

    /// [`pipe`] with nothing left over from upstream's login and no revocation.
    async fn pipe_unrevoked<C, U>(
        client: C,
        residual: &[u8],
        upstream: U,
        idle: Duration,
    ) -> Relayed
    where
        C: AsyncRead + AsyncWrite + Buffered + Unpin,
        U: AsyncRead + AsyncWrite + Buffered + Unpin,
    {
        pipe(
            client,
            residual,
            upstream,
            b"",
            idle,
            std::future::pending(),
        )
        .await
    }

    /// Pipes `client` and `upstream` in a task, with no residuals and a minute's idle time.
    fn spawn_pipe<C, U>(client: C, upstream: U)
    where
        C: AsyncRead + AsyncWrite + Buffered + Unpin + Send + 'static,
        U: AsyncRead + AsyncWrite + Buffered + Unpin + Send + 'static,
    {
        tokio::spawn(pipe_unrevoked(
            client,
            b"",
            upstream,
            Duration::from_secs(60),
        ));
    }

    /// Writes `chunk` to `peer` until that blocks for 300 ms: the bytes written.
    async fn written_until_blocked(peer: &mut DuplexStream, chunk: &[u8]) -> usize {
        let mut written = 0usize;
        let write_until_blocked = async {
            loop {
                peer.write_all(chunk).await.unwrap();
                written += chunk.len();
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(300), write_until_blocked).await;
        written
    }

    #[tokio::test]
    async fn residuals_go_first_and_bytes_are_counted() {
        let (client, mut client_peer) = duplex(64);
        let (upstream, mut upstream_peer) = duplex(64);
        let relay = tokio::spawn(async move {
            let residual = b"MAIL FROM:<a@b>\r\n";
            pipe_unrevoked(client, residual, upstream, Duration::from_secs(5)).await
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
        let relayed = pipe_unrevoked(client, b"", upstream, Duration::from_secs(600)).await;
        assert_eq!(relayed.end, End::Idle);
    }

    #[tokio::test]
    async fn after_a_bulk_transfer_a_reader_that_stops_still_stops_the_other_side() {
        let (client, mut client_peer) = duplex(64 * 1024);
        let (upstream, mut upstream_peer) = duplex(64 * 1024);
        spawn_pipe(client, upstream);
        // 4 MB that the client reads: the buffer grows to its largest.
        let chunk = vec![b'x'; 64 * 1024];
        let writer = async {
            for _ in 0..64 {
                upstream_peer.write_all(&chunk).await.unwrap();
            }
            upstream_peer
        };
        let reader = async {
            let mut got = vec![0; 64 * 64 * 1024];
            client_peer.read_exact(&mut got).await.unwrap();
        };
        let (mut upstream_peer, ()) = tokio::join!(writer, reader);
        // Now the client stops reading.
        let written = written_until_blocked(&mut upstream_peer, &chunk).await;
        assert!(
            written <= 64 * 1024 + MAX_BUFFER_SIZE + 64 * 1024 + 64 * 1024,
            "wrote {written}"
        );
    }

    /// A duplex end that records the buffer limits the pipe gives it.
    struct Recording {
        inner: tokio::io::DuplexStream,
        limits: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl Buffered for Recording {
        fn limit_buffer(&mut self, bytes: usize) {
            self.limits.lock().unwrap().push(bytes);
        }
    }

    impl AsyncRead for Recording {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Recording {
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

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn a_direction_quiet_for_a_while_gives_its_grown_buffer_back() {
        let limits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (client, mut client_peer) = duplex(1024 * 1024);
        let client = Recording {
            inner: client,
            limits: limits.clone(),
        };
        let (upstream, mut upstream_peer) = duplex(1024 * 1024);
        spawn_pipe(client, upstream);
        let chunk = vec![b'x'; 1024 * 1024];
        upstream_peer.write_all(&chunk).await.unwrap();
        let mut got = vec![0; chunk.len()];
        client_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(limits.lock().unwrap().last(), Some(&MAX_BUFFER_SIZE));
        tokio::time::sleep(RELEASE_AFTER + Duration::from_millis(500)).await;
        assert_eq!(
            limits.lock().unwrap().last(),
            Some(&BUFFER_SIZE),
            "released"
        );
    }

    #[tokio::test]
    async fn a_reader_that_stops_stops_the_other_side() {
        // The client never reads: upstream can write only what fits in the buffers.
        let (client, _client_peer) = duplex(1024);
        let (upstream, mut upstream_peer) = duplex(1024);
        spawn_pipe(client, upstream);
        let chunk = vec![b'x'; 1024];
        let written = written_until_blocked(&mut upstream_peer, &chunk).await;
        assert!(
            written <= 1024 + BUFFER_SIZE + 1024 + 1024,
            "wrote {written}"
        );
    }
}
