//! What the admin endpoint knows of the running relay ([`RelayView`]): the server passes
//! an implementation in, so that this module does not depend on the server.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::Config;
use crate::delivery::DeliveryCounters;
use crate::mailbox::Registry;
use crate::metrics::Metrics;
use crate::oauth::cache::TokenCache;
use crate::state::DatabaseHealth;
use crate::state::queue::OutboundQueue;

/// What the endpoint shows and does, as the running relay provides it: the admin
/// endpoint knows the relay only through this.
pub trait RelayView: Send + Sync + 'static {
    /// The configuration in force (the `[admin]` section, `ready_requires_tokens`).
    fn config(&self) -> Arc<Config>;
    /// The bound listeners, by name.
    fn listeners(&self) -> Vec<(&'static str, SocketAddr)>;
    /// The mailbox registry in force.
    fn registry(&self) -> Arc<Registry>;
    /// The token cache: each mailbox's token state, and the refresh counts.
    fn tokens(&self) -> &TokenCache;
    fn metrics(&self) -> &Metrics;
    /// When the relay started.
    fn started(&self) -> SystemTime;
    /// The state database's reachability (`postgres` backend; `None` for `files`).
    fn database(&self) -> Option<DatabaseHealth>;
    /// The outbound queue (`None` when the state keeps none).
    fn queue(&self) -> Option<Arc<dyn OutboundQueue>>;
    /// What the queue's delivery workers counted.
    fn delivery_counters(&self) -> &DeliveryCounters;
    /// Delivery log events dropped because its writer was behind.
    fn delivery_log_dropped(&self) -> u64;
    /// Asks the relay to reload; answers with a summary or the reason it refused.
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>>;
}

/// The relay as the handlers share it.
pub type Relay = Arc<dyn RelayView>;
