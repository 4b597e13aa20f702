//! A logged-in SMTP session as the server starts it: the submission state every session
//! shares ([`Submissions`]), the way out of a mailbox (its pooled XOAUTH2 connections, or
//! Microsoft Graph: [`Outbound`]), and the per-mailbox context of [`super::driver`].

use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::{Notify, Semaphore};

use super::driver::{self, Context, Queued, Served, Way};
use super::graph_sender::{GraphClients, GraphSender};
use super::limits::{SendingCounters, SendingLimits};
use super::pool::{Proven, SmtpPool};
use super::route::Routes;
use super::rules::SenderRules;
use super::upstream::UpstreamSmtp;
use crate::auth::LiveRegistry;
use crate::config::Config;
use crate::error::Error;
use crate::mailbox::Mailbox;
use crate::oauth::cache::TokenCache;
use crate::protocol::smtp;
use crate::state::{DeliveryLog, OutboundQueue, State};
use crate::tls::Stream;
use crate::upstream::Upstream;

/// What all SMTP sessions share: the `auto` switches, the sending windows, the
/// budget of held messages, the shared upstream SMTP connections, the outbound queue and
/// the delivery log.
pub struct Submissions {
    pub routes: Arc<Routes>,
    /// The mailboxes' upstream SMTP connections.
    pub pool: Arc<SmtpPool>,
    pub counters: SendingCounters,
    held_budget: Arc<Semaphore>,
    graphs: GraphClients,
    /// The durable outbound queue (`None` only for a state without one).
    pub queue: Option<Arc<dyn OutboundQueue>>,
    /// Woken when a message was queued, so that the delivery workers look at once.
    pub queued: Arc<Notify>,
    /// The delivery log.
    pub log: DeliveryLog,
}

impl Submissions {
    /// Opens the Graph way out for `mailbox` ([`super::graph_sender::open`]); `owner` is
    /// the mailbox whose token serves it.
    pub async fn open_graph(
        &self,
        tokens: &Arc<TokenCache>,
        config: &Config,
        owner: Arc<Mailbox>,
        mailbox: &Mailbox,
    ) -> Result<GraphSender, Error> {
        let (graphs, counters) = (&self.graphs, &self.counters);
        super::graph_sender::open(graphs, counters, tokens, config, owner, mailbox).await
    }
}

/// What serving a logged-in session takes from the running relay.
pub struct Shared<'a> {
    /// The configuration in force when the session started.
    pub config: &'a Config,
    /// The live mailbox registry.
    pub registry: &'a Arc<LiveRegistry>,
    /// The relay's host name, for replies.
    pub host: &'a Arc<str>,
    pub submissions: &'a Submissions,
}

impl Submissions {
    /// What the sessions of a relay on `state` share: its route switches, the sending
    /// counts of its fleet (if any), its queue and its delivery log.
    pub fn new(config: &Config, state: &State) -> Self {
        let units = config.limits.max_held_message_bytes / 1024;
        let log = match state.delivery_log() {
            Some(store) => DeliveryLog::start(store, config.log.recipients),
            None => DeliveryLog::off(),
        };
        let routes = Arc::new(Routes::new(state.switches()));
        Self {
            pool: Arc::new(SmtpPool::new(config, routes.clone())),
            routes,
            counters: SendingCounters::default().with_fleet(state.counters()),
            held_budget: Arc::new(Semaphore::new(units.min(Semaphore::MAX_PERMITS))),
            graphs: Default::default(),
            queue: state.queue(),
            queued: Arc::new(Notify::new()),
            log,
        }
    }
}

/// Where a logged-in SMTP session's messages go.
pub enum Outbound {
    /// A logged-in XOAUTH2 connection (IMAP and POP3; an SMTP session does not take one).
    Wire(Upstream),
    /// The mailbox's pooled XOAUTH2 SMTP connections, whose login was proven.
    Smtp(Proven),
    /// Microsoft Graph, with the token owner's Graph token.
    Graph(GraphSender),
    /// The relay's queue (`delivery = queue`, and the trusted-network listener): no
    /// upstream login; the delivery workers send.
    Queue(Arc<dyn OutboundQueue>),
}

/// Runs a logged-in SMTP session of `mailbox` from `peer` until it ends.
pub async fn serve(
    client: Stream,
    residual: Vec<u8>,
    peer: IpAddr,
    mailbox: &Arc<Mailbox>,
    outbound: Outbound,
    shared: &Shared<'_>,
    greeting: Option<String>,
) -> Result<Served, Error> {
    let limits = &shared.config.limits;
    let registry = shared.registry.registry();
    let dependents: Vec<String> = registry
        .dependents(&mailbox.address)
        .iter()
        .map(|m| m.address.clone())
        .collect();
    let (way, extensions) = way_out(outbound, mailbox, shared);
    let standing = {
        let live = shared.registry.clone();
        let address = mailbox.address.clone();
        // A trusted-network device logged in with no password: only removal ends it.
        let verifier = greeting
            .is_none()
            .then(|| mailbox.password.clone())
            .flatten();
        Box::new(move || live.still_standing(&address, verifier.as_ref()))
    };
    let ctx = Context {
        standing,
        host: shared.host.clone(),
        mailbox: mailbox.address.clone(),
        rules: SenderRules::new(&mailbox.address, &mailbox.sending.allowed_from, &dependents),
        limits: SendingLimits::from_config(limits),
        counters: shared.submissions.counters.clone(),
        extensions,
        idle_timeout: limits.idle_timeout_smtp(),
        max_message: limits.max_message_bytes,
        held_budget: shared.submissions.held_budget.clone(),
        client: Some(peer.to_string()),
        log: shared.submissions.log.clone(),
    };
    driver::serve(client, residual, ctx, way, greeting).await
}

/// The driver's way out for `outbound`, and the EHLO keywords after login that go with it.
fn way_out(outbound: Outbound, mailbox: &Arc<Mailbox>, shared: &Shared<'_>) -> (Way, Vec<String>) {
    let limits = &shared.config.limits;
    match outbound {
        Outbound::Smtp(Proven { capabilities, .. })
        | Outbound::Wire(Upstream { capabilities, .. }) => {
            let pool = shared.submissions.pool.clone();
            let upstream = UpstreamSmtp::new(pool, mailbox.clone());
            (Way::Upstream(upstream), smtp::passthrough(&capabilities))
        }
        Outbound::Graph(sender) => (
            Way::Held(Box::new(sender)),
            held_extensions(limits.max_message_bytes),
        ),
        Outbound::Queue(queue) => {
            let wake = shared.submissions.queued.clone();
            (
                Way::Queue(Queued { queue, wake }),
                held_extensions(limits.max_message_bytes),
            )
        }
    }
}

/// The EHLO keywords of a session whose messages the relay holds and sends itself.
fn held_extensions(max_message: usize) -> Vec<String> {
    [
        format!("SIZE {max_message}"),
        "PIPELINING".into(),
        "ENHANCEDSTATUSCODES".into(),
        "8BITMIME".into(),
        "CHUNKING".into(),
        "SMTPUTF8".into(),
    ]
    .into()
}
