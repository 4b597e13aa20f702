//! The listeners: which ones the config wants, binding them, re-binding the ones whose
//! address changed on reload (the others keep their sockets), and the accept loops, which
//! admit a connection only within the bounds ([`super::admission`]). A connection from a
//! load balancer in `proxy_protocol_from` goes to [`super::proxied`], which reads its
//! PROXY header before anything else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::admission::{admit, admit_total, refuse};
use super::kind::{Kind, Protocol};
use super::services::{Services, write};
use crate::config::Config;

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serves {
    Mail(Kind),
    Admin,
}

/// A listener that is accepting.
struct Entry {
    name: &'static str,
    serves: Serves,
    /// The address asked for (port 0 stays 0 here; `bound` has the real one).
    configured: SocketAddr,
    bound: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

type BindError = (SocketAddr, &'static str, std::io::Error);

/// Connections the kernel queues for a listener before the relay accepts them. std's
/// default (128) made a burst of 1,000 clients lose SYNs and wait for retries (benchmark).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with a backlog of [`LISTEN_BACKLOG`] (the kernel caps it at somaxconn).
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The listeners of a running relay.
pub(super) struct Listeners {
    services: Arc<Services>,
    sessions: TaskTracker,
    shutdown: CancellationToken,
    running: Vec<Entry>,
}

/// Every listener `config` wants, by name.
fn wanted(config: &Config) -> Vec<(&'static str, Serves, SocketAddr)> {
    let mut out = Vec::new();
    for (protocol, section) in [
        (Protocol::Smtp, &config.smtp),
        (Protocol::Imap, &config.imap),
        (Protocol::Pop3, &config.pop3),
    ] {
        for (addr, implicit_tls) in [(section.listen_starttls, false), (section.listen_tls, true)] {
            let kind = Kind {
                protocol,
                implicit_tls,
                trusted: false,
            };
            if let Some(addr) = addr {
                out.push((kind.name(), Serves::Mail(kind), addr));
            }
        }
    }
    if let Some(trusted) = &config.trusted {
        let kind = Kind {
            protocol: Protocol::Smtp,
            implicit_tls: false,
            trusted: true,
        };
        out.push((kind.name(), Serves::Mail(kind), trusted.listen));
    }
    if let Some(addr) = config.admin.listen {
        out.push(("admin", Serves::Admin, addr));
    }
    out
}

impl Listeners {
    pub(super) fn new(
        services: Arc<Services>,
        sessions: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            services,
            sessions,
            shutdown,
            running: Vec::new(),
        }
    }

    /// Binds every listener of `config` (at start).
    pub(super) async fn bind(&mut self, config: &Config) -> Result<(), BindError> {
        self.rebind(config).await.map(drop)
    }

    /// Makes the listeners match `config`: binds new and moved ones first (if one cannot
    /// be bound, nothing changes), then stops the ones that moved or went away. Returns
    /// the names of those that were (re-)bound.
    pub(super) async fn rebind(&mut self, config: &Config) -> Result<Vec<String>, BindError> {
        let wanted = wanted(config);
        let mut fresh = Vec::new();
        for &(name, serves, addr) in &wanted {
            let current = self.running.iter().find(|e| e.name == name);
            if current.is_some_and(|e| e.configured == addr) {
                continue;
            }
            let listener = match bind(addr) {
                Ok(listener) => listener,
                // The port is held by the listener being moved (say 127.0.0.1:1587 to
                // 0.0.0.0:1587): let it go, then bind; if that fails, take the old one back.
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && current.is_some_and(|c| c.bound.port() == addr.port()) =>
                {
                    self.move_in_place(name, addr)
                        .await
                        .map_err(|e| (addr, name, e))?
                }
                Err(e) => return Err((addr, name, e)),
            };
            fresh.push((name, serves, addr, listener));
        }
        let names: Vec<String> = fresh.iter().map(|(n, ..)| (*n).to_owned()).collect();
        let keep: Vec<&str> = wanted.iter().map(|(n, ..)| *n).collect();
        let moved: Vec<&str> = fresh.iter().map(|(n, ..)| *n).collect();
        let stale: Vec<Entry> = {
            let (stale, kept) = std::mem::take(&mut self.running)
                .into_iter()
                .partition(|e| moved.contains(&e.name) || !keep.contains(&e.name));
            self.running = kept;
            stale
        };
        for entry in stale {
            stop(entry).await;
        }
        for (name, serves, configured, listener) in fresh {
            self.spawn(name, serves, configured, listener);
        }
        self.publish();
        Ok(names)
    }

    /// Stops the listener `name` and binds `addr` in its place; on failure, re-binds the
    /// old address so that the listener is not lost.
    async fn move_in_place(
        &mut self,
        name: &'static str,
        addr: SocketAddr,
    ) -> std::io::Result<TcpListener> {
        let Some(at) = self.running.iter().position(|e| e.name == name) else {
            return bind(addr);
        };
        let old = self.running.remove(at);
        let (serves, configured, bound) = (old.serves, old.configured, old.bound);
        stop(old).await;
        match bind(addr) {
            Ok(listener) => Ok(listener),
            Err(e) => {
                if let Ok(listener) = bind(bound) {
                    self.spawn(name, serves, configured, listener);
                }
                Err(e)
            }
        }
    }

    fn spawn(
        &mut self,
        name: &'static str,
        serves: Serves,
        configured: SocketAddr,
        listener: TcpListener,
    ) {
        let bound = listener.local_addr().unwrap_or(configured);
        tracing::info!(listener = name, addr = %bound, "listening");
        let stop = self.shutdown.child_token();
        let task = match serves {
            Serves::Mail(kind) => tokio::spawn(accept_loop(
                listener,
                kind,
                self.services.clone(),
                self.sessions.clone(),
                stop.clone(),
            )),
            Serves::Admin => tokio::spawn(crate::admin::serve(
                listener,
                self.services.clone() as crate::admin::Relay,
                stop.clone(),
            )),
        };
        self.running.push(Entry {
            name,
            serves,
            configured,
            bound,
            stop,
            task,
        });
    }

    /// Tells [`Services::listeners`] what is bound.
    fn publish(&self) {
        let names = self.running.iter().map(|e| (e.name, e.bound)).collect();
        write(&self.services.listeners, names);
    }

    /// Stops every listener (shutdown).
    pub(super) async fn stop_all(&mut self) {
        for entry in std::mem::take(&mut self.running) {
            stop(entry).await;
        }
    }
}

/// Stops a listener and waits until its socket is closed.
async fn stop(entry: Entry) {
    entry.stop.cancel();
    let _ = entry.task.await;
}

async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    services: Arc<Services>,
    sessions: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = kind.name(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let config = services.config();
        if config.is_proxy(peer.ip()) {
            // A load balancer: its header names the client, which is checked then.
            match admit_total(&services, kind, peer) {
                Ok(permit) => {
                    let run = super::proxied::run(tcp, peer, kind, services.clone(), permit);
                    sessions.spawn(run);
                }
                Err(why) => refuse(tcp, kind, why, &services),
            }
            continue;
        }
        match admit(&services, &config.limits, kind, peer) {
            Ok(admitted) => {
                let services = services.clone();
                sessions.spawn(async move {
                    super::session::run(tcp, peer, None, kind, services).await;
                    drop(admitted);
                });
            }
            Err(why) => refuse(tcp, kind, why, &services),
        }
    }
}
