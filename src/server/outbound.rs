//! The queue's delivery in the running relay: what its workers see of the relay
//! ([`delivery::route::Relay`]), and the dispatcher started beside the listeners when the
//! state keeps a queue, stopped with them.

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::services::Services;
use crate::auth::LiveRegistry;
use crate::config::Config;
use crate::delivery::dispatcher::{self, Delivery, Settings};
use crate::delivery::route::{Relay, RelayCourier};
use crate::oauth::cache::TokenCache;
use crate::submission::limits::SendingLimits;
use crate::submission::session::Submissions;

impl Relay for Services {
    fn config(&self) -> Arc<Config> {
        Services::config(self)
    }

    fn registry(&self) -> &LiveRegistry {
        &self.registry
    }

    fn tokens(&self) -> &Arc<TokenCache> {
        &self.tokens
    }

    fn submissions(&self) -> &Submissions {
        &self.submissions
    }
}

/// Starts the queue's dispatcher, if the state keeps a queue; it stops with `shutdown`.
pub(super) fn start(
    services: &Arc<Services>,
    shutdown: CancellationToken,
) -> Option<JoinHandle<()>> {
    let submissions = &services.submissions;
    let queue = submissions.queue.clone()?;
    let config = services.config();
    let settings = Settings {
        queue: config.queue,
        limits: SendingLimits::from_config(&config.limits),
        host: services.host.clone(),
        grace: config.limits.shutdown_grace(),
    };
    let shared = (
        submissions.counters.clone(),
        submissions.log.clone(),
        submissions.queued.clone(),
    );
    let courier = Arc::new(RelayCourier::new(services.clone()));
    let delivery = Delivery::new(
        queue,
        courier,
        shared,
        services.deliveries.clone(),
        settings,
    );
    Some(dispatcher::start(delivery, shutdown))
}
