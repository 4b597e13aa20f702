//! Speculative upstream connections: an IMAP or POP3 session starts connecting to its
//! upstream server (TCP, TLS, greeting) as soon as its client connects, while the client
//! is still doing its own TLS handshake, reading the greeting and sending its login. At
//! login only the XOAUTH2 exchange is left to do, instead of a whole connection in series.
//!
//! **Who gets one.** Only a client whose address logged in successfully not long ago
//! (`limits.preconnect_after_login_secs`): a stranger that connects and leaves costs no
//! connection to Microsoft. The session decides (never SMTP).
//!
//! **Bounds.** At most `limits.max_speculative_connections` (by default
//! [`MAX_IN_FLIGHT`]) speculative connections exist at a time, counted
//! from the start of connecting until a login takes the connection or it is dropped; when
//! they are all in use a session simply connects at login, as without speculation. A
//! connection not taken within [`MAX_AGE`] of its greeting is closed (the server would
//! time it out, and it ties up one of the permits). Dropping the [`Preconnect`] (the
//! client left, failed to log in, or its session ended) closes the connection as soon as
//! it is made: politely (close_notify, the server's last bytes read, within
//! [`CLOSE_WITHIN`]), as a connection reset would look like an error to the server.
//! They are counted in the metrics `m365_relay_speculative_connections_total` (made) and
//! `m365_relay_speculative_connections_open` (existing now).
//!
//! A [`Greeted`] connection that turns out to be broken at login (the server closed it
//! meanwhile) is the caller's to replace with a fresh one.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::config::ServerAddress;
use crate::error::Error;
use crate::tls::Stream;

/// Speculative connections at most, across all sessions, by default.
pub const MAX_IN_FLIGHT: usize = 64;
/// How long a greeted connection waits for its login before it is closed.
pub const MAX_AGE: Duration = Duration::from_secs(10);
/// How long closing an unused connection may take.
pub const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// An upstream connection whose server greeted, not logged in yet.
#[derive(Debug)]
pub struct Greeted {
    /// The server it is connected to.
    pub server: ServerAddress,
    pub(super) stream: Stream,
    /// Bytes read past the greeting.
    pub(super) residual: Vec<u8>,
    /// How long connecting and the TLS handshake took.
    pub(super) connected_in: Duration,
}

/// The bound on speculative connections, shared by every session, and their metrics.
#[derive(Debug, Clone, Default)]
pub struct Preconnects {
    open: Arc<AtomicUsize>,
    /// Speculative connections started.
    started: Counter,
    /// Speculative connections existing now.
    open_gauge: Gauge,
}

/// Where a session's request for its connection goes: the task answers on the inner
/// channel.
type Want = oneshot::Sender<Greeted>;

/// One speculative connection counted; dropping it uncounts it.
struct Slot {
    open: Arc<AtomicUsize>,
    gauge: Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

impl Preconnects {
    /// Counted in `started` and `open`.
    pub fn new(started: Counter, open: Gauge) -> Self {
        Self {
            open: Arc::default(),
            started,
            open_gauge: open,
        }
    }

    /// Speculative connections that exist now (connecting, or greeted and waiting).
    pub fn in_flight(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Counts one more, unless `max` exist.
    fn slot(&self, max: usize) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.started.inc();
        self.open_gauge.inc();
        Some(Slot {
            open: self.open.clone(),
            gauge: self.open_gauge.clone(),
        })
    }

    /// Starts `connect` (bounded by the caller) in a task of its own, unless `max` are in
    /// flight (`None`: connect at login instead).
    pub fn start<F>(&self, max: usize, connect: F) -> Option<Preconnect>
    where
        F: Future<Output = Result<Greeted, Error>> + Send + 'static,
    {
        let permit = self.slot(max)?;
        let (want, wanted) = oneshot::channel::<Want>();
        tokio::spawn(async move {
            let _permit = permit;
            let mut greeted = match connect.await {
                Ok(greeted) => greeted,
                Err(e) => {
                    tracing::debug!(error = %e, "speculative upstream connection failed");
                    return;
                }
            };
            tokio::select! {
                want = wanted => {
                    if let Ok(reply) = want {
                        match reply.send(greeted) {
                            Ok(()) => return,
                            Err(back) => greeted = back,
                        }
                    }
                }
                () = tokio::time::sleep(MAX_AGE) => {
                    tracing::debug!("speculative upstream connection unused; closing it");
                }
            }
            close(greeted).await;
        });
        Some(Preconnect { want })
    }
}

/// Ends an unused connection politely: TLS close_notify, then whatever the server still
/// sends is read to its end (closing a socket with unread data resets it), within
/// [`CLOSE_WITHIN`].
async fn close(mut greeted: Greeted) {
    let polite = async {
        let _ = greeted.stream.shutdown().await;
        let mut sink = [0u8; 1024];
        while let Ok(1..) = greeted.stream.read(&mut sink).await {}
    };
    let _ = tokio::time::timeout(CLOSE_WITHIN, polite).await;
}

/// A speculative connection being made, or made and waiting. Dropping it tells its task
/// to close the connection (once made: it is bounded by the connector's time limit).
#[derive(Debug)]
pub struct Preconnect {
    want: oneshot::Sender<Want>,
}

impl Preconnect {
    /// The greeted connection, once it is ready (it is bounded by the connector's time
    /// limit); `None` if it failed or expired.
    pub async fn take(self) -> Option<Greeted> {
        let (reply, answer) = oneshot::channel();
        self.want.send(reply).ok()?;
        answer.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeted(stream: tokio::net::TcpStream) -> Greeted {
        Greeted {
            server: ServerAddress {
                host: "localhost".into(),
                port: 993,
            },
            stream: Stream::Plain(stream),
            residual: Vec::new(),
            connected_in: Duration::ZERO,
        }
    }

    async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    #[tokio::test]
    async fn a_taken_connection_is_the_one_made_and_frees_its_permit() {
        let pool = Preconnects::default();
        let (ours, theirs) = tcp_pair().await;
        let local = ours.local_addr().unwrap();
        let p = pool.start(2, async move { Ok(greeted(ours)) }).unwrap();
        assert_eq!(pool.in_flight(), 1);
        let got = p.take().await.expect("the connection");
        let Stream::Plain(tcp) = &got.stream else {
            panic!("not the stream made");
        };
        assert_eq!(tcp.local_addr().unwrap(), local);
        tokio::task::yield_now().await;
        assert_eq!(pool.in_flight(), 0);
        drop(theirs);
    }

    #[tokio::test]
    async fn the_cap_holds_and_dropping_frees_the_permit_and_closes_the_connection() {
        let pool = Preconnects::default();
        let (ours, mut theirs) = tcp_pair().await;
        let first = pool.start(2, async move { Ok(greeted(ours)) }).unwrap();
        let second = pool
            .start(2, async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err(Error::UpstreamProtocol {
                    server: "x:1".into(),
                    detail: "test".into(),
                })
            })
            .unwrap();
        assert!(
            pool.start(2, std::future::pending()).is_none(),
            "over the cap"
        );
        assert_eq!(pool.in_flight(), 2);
        tokio::task::yield_now().await;
        drop(first);
        drop(second);
        // The upstream side sees the connection close.
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut theirs, &mut byte),
        )
        .await
        .expect("closed in time");
        assert_eq!(
            read.unwrap(),
            0,
            "close_notify is not sent on plain TCP: FIN"
        );
        // The server closes too: the relay's side is done.
        drop(theirs);
        for _ in 0..100 {
            if pool.in_flight() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(pool.in_flight(), 0);
        assert!(pool.start(2, std::future::pending()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unused_connection_expires() {
        let pool = Preconnects::default();
        let (ours, _theirs) = tcp_pair().await;
        let p = pool.start(2, async move { Ok(greeted(ours)) }).unwrap();
        tokio::time::sleep(MAX_AGE + CLOSE_WITHIN + Duration::from_secs(1)).await;
        assert_eq!(pool.in_flight(), 0);
        assert!(p.take().await.is_none());
    }

    #[tokio::test]
    async fn a_failed_connection_gives_nothing() {
        let pool = Preconnects::default();
        let p = pool
            .start(1, async {
                Err(Error::UpstreamProtocol {
                    server: "x:1".into(),
                    detail: "test".into(),
                })
            })
            .unwrap();
        assert!(p.take().await.is_none());
        assert_eq!(pool.in_flight(), 0);
    }
}
