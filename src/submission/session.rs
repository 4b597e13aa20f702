//! A logged-in SMTP session as the server starts it: the submission state every session
//! shares ([`Submissions`]), the way out of a mailbox (its XOAUTH2 connection, or Microsoft
//! Graph: [`Outbound`]), and the per-mailbox context of [`super::driver`].

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::driver::{self, Context, Served, Way};
use super::graph_sender::{GraphClients, GraphSender};
use super::limits::{SendingCounters, SendingLimits};
use super::route::Routes;
use super::rules::SenderRules;
use super::upstream::UpstreamSmtp;
use crate::auth::LiveRegistry;
use crate::config::Config;
use crate::error::Error;
use crate::mailbox::Mailbox;
use crate::oauth::cache::TokenCache;
use crate::protocol::smtp;
use crate::tls::Stream;
use crate::upstream::Upstream;

/// What all SMTP sessions share: the `auto` switches, the sending windows, and the
/// budget of held messages.
pub struct Submissions {
    pub routes: Routes,
    pub counters: SendingCounters,
    held_budget: Arc<Semaphore>,
    graphs: GraphClients,
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
    /// `fleet`: the sending counts shared with the other relays of the state, if any.
    pub fn new(
        config: &Config,
        switches: Arc<dyn crate::state::RouteSwitches>,
        fleet: Option<Arc<dyn crate::state::FleetCounters>>,
    ) -> Self {
        let units = config.limits.max_held_message_bytes / 1024;
        Self {
            routes: Routes::new(switches),
            counters: SendingCounters::default().with_fleet(fleet),
            held_budget: Arc::new(Semaphore::new(units.min(Semaphore::MAX_PERMITS))),
            graphs: Default::default(),
        }
    }
}

/// Where a logged-in SMTP session's messages go.
pub enum Outbound {
    /// The mailbox's logged-in XOAUTH2 connection to Exchange Online.
    Wire(Upstream),
    /// Microsoft Graph, with the token owner's Graph token.
    Graph(GraphSender),
}

/// Runs a logged-in SMTP session of `mailbox` until it ends.
pub async fn serve(
    client: Stream,
    residual: Vec<u8>,
    mailbox: &Mailbox,
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
    let (way, extensions) = match outbound {
        Outbound::Wire(upstream) => {
            let extensions = smtp::passthrough(&upstream.capabilities);
            let timeout = limits.upstream_timeout();
            (
                Way::Upstream(UpstreamSmtp::new(upstream, timeout)),
                extensions,
            )
        }
        Outbound::Graph(sender) => (
            Way::Held(Box::new(sender)),
            held_extensions(limits.max_message_bytes),
        ),
    };
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
    };
    driver::serve(client, residual, ctx, way, greeting).await
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
