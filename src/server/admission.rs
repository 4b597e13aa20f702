//! Admitting a connection within the bounds: the total, the per-source count, and no
//! source refused for failed logins ([`crate::abuse`]). A client outside them is told to
//! come back later (on plaintext ports; a TLS port just closes) without a task of its own.
//! A connection from a load balancer is checked in two steps: the total at once, the
//! source once its PROXY header has named the client ([`super::proxied`]).

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::kind::{Kind, Protocol};
use super::services::Services;
use crate::abuse::SourceSlot;
use crate::config::Limits;
use crate::protocol::{imap, pop3, smtp};

impl Kind {
    /// What a client refused for `why` is told on a plaintext port.
    fn refusal(self, why: Refusal) -> &'static str {
        match (self.protocol, why) {
            (Protocol::Smtp, Refusal::Total) => smtp::reply::TOO_MANY_CONNECTIONS,
            (Protocol::Imap, Refusal::Total) => imap::reply::TOO_MANY_CONNECTIONS,
            (Protocol::Pop3, Refusal::Total) => pop3::reply::TOO_MANY_CONNECTIONS,
            (Protocol::Smtp, Refusal::PerSource) => smtp::reply::TOO_MANY_FROM_SOURCE,
            (Protocol::Imap, Refusal::PerSource) => imap::reply::TOO_MANY_FROM_SOURCE,
            (Protocol::Pop3, Refusal::PerSource) => pop3::reply::TOO_MANY_FROM_SOURCE,
            (Protocol::Smtp, Refusal::Blocked) => smtp::reply::SOURCE_BLOCKED,
            (Protocol::Imap, Refusal::Blocked) => imap::reply::SOURCE_BLOCKED,
            (Protocol::Pop3, Refusal::Blocked) => pop3::reply::SOURCE_BLOCKED,
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `limits.max_connections` are open.
    Total,
    /// `limits.max_connections_per_source` (or `max_connections_per_local_source`) are
    /// open from the client's address.
    PerSource,
    /// The client's address failed to log in too often ([`crate::abuse`]).
    Blocked,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::Total => "max_connections",
            Refusal::PerSource => "max_connections_per_source",
            Refusal::Blocked => "source_blocked",
        }
    }
}

/// What an admitted connection holds until it closes.
pub(super) type Admitted = (OwnedSemaphorePermit, SourceSlot);

/// Checks a new connection against the bounds, cheapest refusal first. Refusals are logged
/// once per episode, not per connection: a flood must not flood the log.
pub(super) fn admit(
    services: &Services,
    limits: &Limits,
    kind: Kind,
    peer: SocketAddr,
) -> Result<Admitted, Refusal> {
    not_blocked(services, limits, kind, peer)?;
    let permit = admit_total(services, kind, peer)?;
    let slot = admit_per_source(services, limits, kind, peer)?;
    Ok((permit, slot))
}

/// The checks of the client's address: not refused for failed logins, and under its
/// per-source count.
pub(super) fn admit_source(
    services: &Services,
    limits: &Limits,
    kind: Kind,
    client: SocketAddr,
) -> Result<SourceSlot, Refusal> {
    not_blocked(services, limits, kind, client)?;
    admit_per_source(services, limits, kind, client)
}

fn not_blocked(
    services: &Services,
    limits: &Limits,
    kind: Kind,
    peer: SocketAddr,
) -> Result<(), Refusal> {
    let policy = crate::abuse::Policy::from_limits(limits);
    if services
        .abuse
        .is_blocked(peer.ip(), &policy, Instant::now().into_std())
    {
        tracing::debug!(listener = kind.name(), %peer, "refused: too many failed logins from this address");
        return Err(Refusal::Blocked);
    }
    Ok(())
}

/// A place under `limits.max_connections`.
pub(super) fn admit_total(
    services: &Services,
    kind: Kind,
    peer: SocketAddr,
) -> Result<OwnedSemaphorePermit, Refusal> {
    services
        .connections
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            tracing::warn!(listener = kind.name(), %peer, "connection limit reached; refusing");
            Refusal::Total
        })
}

fn admit_per_source(
    services: &Services,
    limits: &Limits,
    kind: Kind,
    peer: SocketAddr,
) -> Result<SourceSlot, Refusal> {
    let max = limits.max_connections_from(peer.ip());
    services.sources.open(peer.ip(), max).map_err(|over| {
        if over.first {
            tracing::warn!(
                listener = kind.name(),
                source = %crate::abuse::source_key(peer.ip()),
                limit = max,
                "too many connections from one address; refusing more until some close"
            );
        }
        Refusal::PerSource
    })
}

/// Tells a refused client why, on a plaintext port, and closes. The reply is short and
/// the socket's send buffer empty, so one non-blocking write does: no task, no timer,
/// nothing held, however many connections are refused. A TLS port just closes (a
/// handshake would cost more than the client deserves).
pub(super) fn refuse(tcp: TcpStream, kind: Kind, why: Refusal, services: &Services) {
    count_refusal(services, kind, why.label());
    if !kind.implicit_tls {
        let _ = tcp.try_write(kind.refusal(why).as_bytes());
    }
}

/// Counts a refused connection in `connections_refused`.
pub(super) fn count_refusal(services: &Services, kind: Kind, reason: &'static str) {
    services
        .metrics
        .connections_refused
        .get_or_create(&crate::metrics::ReasonLabels {
            protocol: kind.protocol.name(),
            reason,
        })
        .inc();
}
