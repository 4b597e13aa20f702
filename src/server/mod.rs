//! Runs the relay: [`Services`] is what every session shares, [`start`] binds the
//! listeners and spawns the accept loops, the background refresher and the admin endpoint,
//! and [`Running`] stops or reloads it. Reload (SIGHUP, `m365-relay reload`, or the admin
//! endpoint) re-reads the config, the mailboxes and the local certificate without dropping
//! established sessions; a listener whose address changed is re-bound, the others keep
//! their sockets. Shutdown stops accepting and gives open sessions a grace period.

mod admission;
mod kind;
mod listener;
mod login;
mod outbound;
mod proxied;
mod services;
mod session;
mod trusted;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::LiveRegistry;
use crate::config::Config;
use crate::oauth::refresher;
use crate::state::postgres::probe;
pub use kind::Protocol;
pub use listener::LISTEN_BACKLOG;
use listener::Listeners;
use services::{ReloadRequest, read, write};
pub use services::{Services, StartError};

/// A started relay: its services and the task that runs it.
pub struct Running {
    pub services: Arc<Services>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    /// The bound address of the listener named `name` (`smtp`, `smtps`, `imap`, `imaps`,
    /// `pop3`, `pop3s`, `admin`), if it is on.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        read(&self.services.listeners)
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| a)
    }

    /// Re-reads config, mailboxes and certificate (what SIGHUP does).
    pub async fn reload(&self) -> Result<String, String> {
        self.services.reload().await
    }

    /// Stops accepting, waits up to the grace period for sessions, and returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Waits until the relay stops (after its shutdown token is cancelled).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// How often the registry file is looked at, so that open sessions of a mailbox the CLI
/// removed end within this time (a `stat`; the file is read only when it changed).
pub const REGISTRY_WATCH: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads the registry anew whenever its file changed, until `shutdown`.
async fn watch_registry(registry: Arc<LiveRegistry>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(REGISTRY_WATCH);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => drop(registry.current_registry()),
        }
    }
}

/// Binds every configured listener and starts serving; stops when `shutdown` is cancelled.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, StartError> {
    let state = crate::state::create(&config).map_err(|e| match e {
        crate::state::StateError::Folder { dir, source } => {
            services::setup(format!("state_dir {}", dir.display()))(source.to_string())
        }
        crate::state::StateError::Key(e) => services::setup("state key")(e.to_string()),
        crate::state::StateError::Database(e) => services::setup("state database")(e.to_string()),
    })?;
    if let Some(db) = state.database() {
        tracing::info!(database = %db.server(), replica = %crate::state::leases::replica_id(),
            "state in PostgreSQL, shared with the fleet");
    }
    let services = Arc::new(Services::new(config, state)?);
    let sessions = TaskTracker::new();
    let background = TaskTracker::new();
    let mut listeners = Listeners::new(services.clone(), sessions.clone(), shutdown.clone());
    listeners
        .bind(&services.config())
        .await
        .map_err(|(addr, listener, source)| StartError::Bind {
            addr,
            listener,
            source,
        })?;
    let registry = {
        let services = services.clone();
        move || services.registry.current_registry()
    };
    background.spawn(refresher::run(
        services.tokens.clone(),
        registry,
        shutdown.clone(),
    ));
    background.spawn(watch_registry(services.registry.clone(), shutdown.clone()));
    if let Some(db) = services.state.database() {
        // Keeps the database's reachability (degraded mode) current while nothing calls it.
        background.spawn(probe::watch(
            db.clone(),
            probe::PROBE_EVERY,
            shutdown.clone(),
        ));
    }
    let delivery = outbound::start(&services, shutdown.clone());
    let (reloads, requests) = mpsc::channel::<ReloadRequest>(4);
    write(&services.reloads, Some(reloads));
    let task = tokio::spawn(run(
        services.clone(),
        (listeners, requests),
        (sessions, background, delivery),
        shutdown.clone(),
    ));
    Ok(Running {
        services,
        shutdown,
        task,
    })
}

/// The running relay: serves reload requests until `stop`, then stops the listeners and
/// the background tasks and gives open sessions their grace period.
async fn run(
    owner: Arc<Services>,
    (mut listeners, mut requests): (Listeners, mpsc::Receiver<ReloadRequest>),
    (sessions, background, delivery): (TaskTracker, TaskTracker, Option<JoinHandle<()>>),
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some(reply) = requests.recv() => {
                let outcome = reload(&owner, &mut listeners).await;
                match &outcome {
                    Ok(summary) => tracing::info!(%summary, "reloaded"),
                    Err(why) => tracing::warn!(%why, "reload refused; the old configuration stays in force"),
                }
                let _ = reply.send(outcome);
            }
        }
    }
    write(&owner.reloads, None);
    listeners.stop_all().await;
    background.close();
    background.wait().await;
    sessions.close();
    let grace = owner.config().limits.shutdown_grace();
    if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
        tracing::warn!(
            open = sessions.len(),
            "grace period over; closing open sessions"
        );
    }
    if let Some(delivery) = delivery {
        // Bounded by the same grace period, then the claims left are given back.
        let _ = delivery.await;
    }
}

/// One reload: check everything, bind what moved, then switch over.
async fn reload(services: &Services, listeners: &mut Listeners) -> Result<String, String> {
    let prepared = services.prepare_reload()?;
    services
        .registry
        .reload()
        .map_err(|e| format!("mailbox registry: {e}"))?;
    let moved = listeners
        .rebind(&prepared.config)
        .await
        .map_err(|(addr, name, e)| format!("cannot listen on {addr} ({name}): {e}"))?;
    services.apply(prepared);
    Ok(match moved.as_slice() {
        [] => "config, mailboxes and certificate re-read; listeners unchanged".to_owned(),
        moved => format!(
            "config, mailboxes and certificate re-read; re-bound {}",
            moved.join(", ")
        ),
    })
}
