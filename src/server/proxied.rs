//! A connection from a load balancer listed in `proxy_protocol_from`: it must start with a
//! PROXY protocol header ([`crate::protocol::proxy_header`]), read before the relay says
//! anything, within [`HEADER_TIMEOUT`] (or the pre-auth timeout, if shorter). The client
//! the header names is then the session's peer for everything after it: the per-source
//! count and blocking, trusted networks, the plaintext-on-loopback rule and the logs. A
//! balancer's own health check (v2 `LOCAL`, v1 `UNKNOWN`) keeps the balancer's address.
//! A missing, invalid or late header closes the connection without a word (it is logged).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::admission::{admit_source, count_refusal, refuse};
use super::kind::Kind;
use super::services::Services;
use crate::error::Error;
use crate::protocol::proxy_header;

/// How long a balancer has for its header (it sends it at once on connecting).
pub(super) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the header of a connection from `balancer`, admits the client it names, and runs
/// the session as that client's. `permit` is its place under `limits.max_connections`.
pub(super) async fn run(
    mut tcp: TcpStream,
    balancer: SocketAddr,
    kind: Kind,
    services: Arc<Services>,
    permit: OwnedSemaphorePermit,
) {
    let config = services.config();
    let wait = config.limits.preauth_timeout().min(HEADER_TIMEOUT);
    let header = match tokio::time::timeout(wait, proxy_header::read(&mut tcp)).await {
        Ok(Ok(header)) => header,
        Ok(Err(error)) => return closed(&services, kind, balancer, &error),
        Err(_) => {
            let error = Error::ProxyHeader("no header within the time limit");
            return closed(&services, kind, balancer, &error);
        }
    };
    let client = header.client.unwrap_or(balancer);
    tracing::debug!(listener = kind.name(), %balancer, %client, version = ?header.version, "PROXY header");
    let slot = match admit_source(&services, &config.limits, kind, client) {
        Ok(slot) => slot,
        Err(why) => return refuse(tcp, kind, why, &services),
    };
    drop(config);
    super::session::run(tcp, client, Some(balancer), kind, services).await;
    drop((permit, slot));
}

/// Logs and counts a connection closed for its header.
fn closed(services: &Services, kind: Kind, balancer: SocketAddr, error: &Error) {
    tracing::warn!(listener = kind.name(), %balancer, error = %error, "connection from a load balancer closed: no valid PROXY header");
    count_refusal(services, kind, "proxy_header");
}
