//! The admin endpoint's connections: an accept loop with a cap on open connections, and
//! HTTP/1.1 on each with bounded headers and a header-read timeout, so that a client that
//! connects and dribbles (slowloris) or just sits there holds a slot for
//! `admin.header_read_timeout_secs` at most.
//!
//! Of `admin.max_connections`, a quarter is kept for loopback clients: a flood from the
//! network cannot lock out the container health check or `m365-relay status` on the same
//! host. A connection over the cap is answered `503` and closed at once.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::{Extension, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::gate::Reached;
use super::view::Relay;
use crate::config::is_loopback;

/// Largest request header section: the endpoint's requests are a line and a few headers.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Most header fields in a request.
const MAX_HEADERS: usize = 32;

/// A kept-alive connection (a Prometheus scraper's) is closed after this long, so that no
/// connection lives for ever; the client just opens another.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(10 * 60);

/// How long a connection may finish its request once asked to close (at shutdown or at
/// [`MAX_CONNECTION_AGE`]).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Sent to a connection over the cap.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Serves `app` on `listener` until `shutdown`; then waits up to [`CLOSE_GRACE`] for open
/// requests.
pub async fn accept_loop(
    listener: TcpListener,
    app: Router,
    services: Relay,
    shutdown: CancellationToken,
) {
    let open = Arc::new(AtomicUsize::new(0));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = "admin", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let config = services.config();
        let Some(slot) = Slot::take(&open, config.admin.max_connections, peer.ip()) else {
            tracing::debug!(%peer, "admin connection limit reached; refusing");
            // The send buffer is empty: one non-blocking write does, nothing is held.
            let _ = tcp.try_write(BUSY);
            continue;
        };
        let app = app.clone();
        let timeout = config.admin.header_read_timeout;
        let stop = shutdown.clone();
        let span = tracing::debug_span!("admin", %peer);
        connections.spawn(
            async move {
                serve_connection(tcp, app, timeout, stop).await;
                drop(slot);
            }
            .instrument(span),
        );
    }
    drop(listener);
    connections.close();
    let _ = tokio::time::timeout(CLOSE_GRACE, connections.wait()).await;
}

/// HTTP/1.1 on one connection, with the bounds above.
async fn serve_connection(
    tcp: TcpStream,
    app: Router,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
) {
    let reached = tcp.local_addr().map(|a: SocketAddr| a.ip()).ok();
    // The gate compares `Host` with the address this connection reached.
    let app = match reached {
        Some(ip) => app.layer(Extension(Reached(ip))),
        None => app,
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    let connection = builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app));
    tokio::pin!(connection);
    let closing = async {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = tokio::time::sleep(MAX_CONNECTION_AGE) => {}
        }
    };
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = closing => {
            // Let the request being served finish, then close.
            connection.as_mut().graceful_shutdown();
            tokio::time::timeout(CLOSE_GRACE, connection).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = served {
        // Timeouts, resets and malformed requests; nothing from the request is quoted.
        tracing::debug!(error = %e, "admin connection ended");
    }
}

/// One of the capped connection slots; given back on drop.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    /// A slot if fewer than `max` are open; a client from the network gets one only while
    /// a quarter of `max` stays free for loopback.
    fn take(open: &Arc<AtomicUsize>, max: usize, peer: IpAddr) -> Option<Slot> {
        let limit = if is_loopback(peer) {
            max
        } else {
            max - max / 4
        };
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarter_of_the_slots_is_kept_for_loopback() {
        let open = Arc::new(AtomicUsize::new(0));
        let remote: IpAddr = "10.0.0.9".parse().unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let remote_slots: Vec<Slot> = std::iter::from_fn(|| Slot::take(&open, 8, remote))
            .take(100)
            .collect();
        assert_eq!(remote_slots.len(), 6);
        let local_slots: Vec<Slot> = std::iter::from_fn(|| Slot::take(&open, 8, local))
            .take(100)
            .collect();
        assert_eq!(local_slots.len(), 2);
        drop(remote_slots);
        assert_eq!(open.load(Ordering::Acquire), 2);
        drop(local_slots);
        assert_eq!(open.load(Ordering::Acquire), 0);
    }
}
