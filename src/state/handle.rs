//! [`State`]: the handle on one relay's state, built once by `state::open` and
//! passed down; cheap to clone.

use std::sync::Arc;

use crate::state::counters::FleetCounters;
use crate::state::delivery_log::DeliveryLogStore;
use crate::state::files::leases::LocalLeases;
use crate::state::leases::TokenLeases;
use crate::state::postgres::counters::SharedCounters;
use crate::state::postgres::database::Database;
use crate::state::queue::OutboundQueue;
use crate::state::traits::{MailboxStatuses, RefreshTokens, RegistryStore, RouteSwitches};

/// The state of one relay: cheap to clone, handing out each store.
#[derive(Debug, Clone)]
pub struct State {
    registry: Arc<dyn RegistryStore>,
    tokens: Arc<dyn RefreshTokens>,
    statuses: Arc<dyn MailboxStatuses>,
    switches: Arc<dyn RouteSwitches>,
    /// The fleet's token leases; a relay alone's own by default.
    leases: Arc<dyn TokenLeases>,
    /// The shared database, for the `postgres` backend.
    database: Option<Database>,
    /// The fleet's sending and failed-login counts, kept in `database`.
    counters: Option<Arc<dyn FleetCounters>>,
    /// The outbound queue.
    queue: Option<Arc<dyn OutboundQueue>>,
    /// The delivery log.
    delivery_log: Option<Arc<dyn DeliveryLogStore>>,
}

impl State {
    /// The state of these stores.
    pub fn new(
        registry: Arc<dyn RegistryStore>,
        tokens: Arc<dyn RefreshTokens>,
        statuses: Arc<dyn MailboxStatuses>,
        switches: Arc<dyn RouteSwitches>,
    ) -> Self {
        Self {
            registry,
            leases: Arc::new(LocalLeases::new(tokens.clone())),
            tokens,
            statuses,
            switches,
            database: None,
            counters: None,
            queue: None,
            delivery_log: None,
        }
    }

    /// This state, kept in `database`.
    pub fn with_database(mut self, database: Database) -> Self {
        self.counters = Some(Arc::new(SharedCounters::new(database.clone())));
        self.database = Some(database);
        self
    }

    /// This state, its relays coordinating token refreshes through `leases`.
    pub fn with_leases(mut self, leases: Arc<dyn TokenLeases>) -> Self {
        self.leases = leases;
        self
    }

    /// This state, keeping the outbound queue in `queue` and the delivery log in `log`.
    pub fn with_outbound(
        mut self,
        queue: Arc<dyn OutboundQueue>,
        log: Arc<dyn DeliveryLogStore>,
    ) -> Self {
        self.queue = Some(queue);
        self.delivery_log = Some(log);
        self
    }

    /// The outbound queue (every backend's `open` sets it).
    pub fn queue(&self) -> Option<Arc<dyn OutboundQueue>> {
        self.queue.clone()
    }

    /// The delivery log (every backend's `open` sets it).
    pub fn delivery_log(&self) -> Option<Arc<dyn DeliveryLogStore>> {
        self.delivery_log.clone()
    }

    /// The fleet's token leases (a relay alone's own with the files backend).
    pub fn leases(&self) -> Arc<dyn TokenLeases> {
        self.leases.clone()
    }

    /// The shared database, when the state is kept in one: its reachability tells
    /// whether the relay is degraded.
    pub fn database(&self) -> Option<&Database> {
        self.database.as_ref()
    }

    /// The counts every relay of this state shares (sending windows, failed logins);
    /// `None` when this relay's memory is the whole fleet (the `files` backend).
    pub fn counters(&self) -> Option<Arc<dyn FleetCounters>> {
        self.counters.clone()
    }

    /// The mailbox registry.
    pub fn registry(&self) -> Arc<dyn RegistryStore> {
        self.registry.clone()
    }

    /// The refresh tokens.
    pub fn tokens(&self) -> Arc<dyn RefreshTokens> {
        self.tokens.clone()
    }

    /// The mailboxes' token statuses.
    pub fn statuses(&self) -> Arc<dyn MailboxStatuses> {
        self.statuses.clone()
    }

    /// The Graph route switches.
    pub fn switches(&self) -> Arc<dyn RouteSwitches> {
        self.switches.clone()
    }
}
