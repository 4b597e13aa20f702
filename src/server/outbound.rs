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
use crate::delivery::policy::Attempt;
use crate::delivery::route::{Relay, RelayCourier, Sending, SmtpWay};
use crate::mailbox::Mailbox;
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

    fn smtp(&self) -> &dyn SmtpWay {
        &NoSharedConnections
    }
}

/// Stands in for the shared upstream SMTP connections until they are part of the relay.
struct NoSharedConnections;

impl SmtpWay for NoSharedConnections {
    fn send_message<'a>(
        &'a self,
        _mailbox: &'a Arc<Mailbox>,
        _sender: &'a str,
        _recipients: &'a [String],
        _message: &'a [u8],
    ) -> Sending<'a, Attempt> {
        Box::pin(async {
            Attempt::from_reply(
                "451 4.3.0 The relay has no shared SMTP connections yet; tried again later\r\n"
                    .to_owned(),
            )
        })
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
