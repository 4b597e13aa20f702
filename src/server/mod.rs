//! Runs the relay: [`Services`] is what every session shares, [`start`] binds the
//! listeners and spawns the accept loops, the background refresher and the admin endpoint,
//! and [`Running`] stops or reloads it. Reload (SIGHUP, `m365-relay reload`, or the admin
//! endpoint) re-reads the config, the mailboxes and the local certificate without dropping
//! established sessions; a listener whose address changed is re-bound, the others keep
//! their sockets. Shutdown stops accepting and gives open sessions a grace period.

mod graph_sender;
mod listener;
mod session;
mod submit;

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::abuse::{LoginGuard, SourceConnections};
use crate::auth::{LiveRegistry, LocalAuth};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::oauth::cache::TokenCache;
use crate::oauth::endpoint::TokenEndpoint;
use crate::oauth::refresher;
use crate::protocol::smtp;
use crate::state::{self, State, StateError};
use crate::tls;
use crate::upstream::{Connector, Preconnects};
pub use listener::LISTEN_BACKLOG;
use listener::Listeners;

/// What every session shares. Config, certificate and connector can be swapped by a
/// reload; a session keeps the ones it started with.
pub struct Services {
    config: RwLock<Arc<Config>>,
    /// The state, opened once at start.
    pub state: State,
    /// The mailbox registry as last read, re-read when it changes.
    pub registry: Arc<LiveRegistry>,
    pub auth: Arc<LocalAuth>,
    pub tokens: Arc<TokenCache>,
    connector: RwLock<Connector>,
    host: Arc<str>,
    tls: RwLock<TlsAcceptor>,
    /// EHLO keywords to advertise, learned from the upstream server's last EHLO.
    smtp_extensions: RwLock<Arc<[String]>>,
    connections: Arc<Semaphore>,
    /// Open connections per source address (`limits.max_connections_per_source`).
    sources: Arc<SourceConnections>,
    /// Failed logins per source and mailbox: delays and refusals.
    pub abuse: LoginGuard,
    /// The bound on IMAP and POP3 upstream connections opened before their login.
    pub preconnects: Preconnects,
    pub metrics: Metrics,
    /// The bound listeners, by name.
    pub listeners: RwLock<Vec<(&'static str, SocketAddr)>>,
    pub started: std::time::SystemTime,
    /// Where reload requests go (the task that owns the listeners).
    reloads: RwLock<Option<mpsc::Sender<ReloadRequest>>>,
    /// What SMTP sessions share after login.
    pub submissions: submit::Submissions,
}

type ReloadRequest = oneshot::Sender<Result<String, String>>;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{what}: {why}")]
    Setup { what: String, why: String },
    #[error("cannot listen on {addr} ({listener}): {source}")]
    Bind {
        addr: SocketAddr,
        listener: &'static str,
        source: std::io::Error,
    },
}

fn setup(what: impl Into<String>) -> impl FnOnce(String) -> StartError {
    let what = what.into();
    move |why| StartError::Setup { what, why }
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(PoisonError::into_inner).clone()
}

fn write<T>(lock: &RwLock<T>, value: T) {
    *lock.write().unwrap_or_else(PoisonError::into_inner) = value;
}

impl Services {
    /// Loads everything a session needs: TLS material, the mailbox registry (from
    /// `state`) and the token endpoint.
    pub fn new(config: Config, state: State) -> Result<Self, StartError> {
        let server_tls = tls::server_config(&config.tls.cert, &config.tls.key)
            .map_err(|e| setup("local TLS certificate")(e.to_string()))?;
        let client_tls = tls::client_config(config.upstream.ca_file.as_deref())
            .map_err(|e| setup("upstream.ca_file")(e.to_string()))?;
        let endpoint = TokenEndpoint::new(
            &config.entra.authority,
            client_tls.clone(),
            config.limits.token_timeout(),
        )
        .map_err(|e| setup("entra.authority")(e.to_string()))?;
        admin_token(&config).map_err(setup("admin.token_file"))?;
        let registry = LiveRegistry::open(state.registry())
            .map(Arc::new)
            .map_err(|e| setup("mailbox registry")(e.to_string()))?;
        let auth = Arc::new(LocalAuth::new(registry.clone()));
        let host: Arc<str> = tls::host_name().into();
        let extensions: Vec<String> = smtp::EXCHANGE_ONLINE_EXTENSIONS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let metrics = Metrics::new();
        Ok(Self {
            connector: RwLock::new(Connector::new(
                client_tls,
                config.limits.upstream_timeout(),
                host.clone(),
            )),
            tokens: Arc::new(TokenCache::new(
                endpoint,
                state.tokens(),
                Some(state.statuses()),
            )),
            registry,
            auth,
            host,
            tls: RwLock::new(TlsAcceptor::from(server_tls)),
            smtp_extensions: RwLock::new(extensions.into()),
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            sources: Arc::default(),
            abuse: LoginGuard::default(),
            preconnects: Preconnects::new(
                metrics.speculative_connections.clone(),
                metrics.speculative_connections_open.clone(),
            ),
            metrics,
            listeners: RwLock::new(Vec::new()),
            started: std::time::SystemTime::now(),
            reloads: RwLock::new(None),
            submissions: submit::Submissions::new(&config, state.switches()),
            state,
            config: RwLock::new(Arc::new(config)),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        read(&self.config)
    }

    fn tls(&self) -> TlsAcceptor {
        read(&self.tls)
    }

    fn connector(&self) -> Connector {
        read(&self.connector)
    }

    fn smtp_extensions(&self) -> Arc<[String]> {
        read(&self.smtp_extensions)
    }

    fn learn_smtp_extensions(&self, upstream: &[String]) {
        let learned: Arc<[String]> = smtp::passthrough(upstream).into();
        let mut current = self
            .smtp_extensions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if *current != learned {
            tracing::info!(extensions = ?learned, "advertising the upstream server's SMTP extensions");
            *current = learned;
        }
    }

    /// Asks the running relay to reload; answers with a summary or the reason it refused.
    pub async fn reload(&self) -> Result<String, String> {
        let sender = read(&self.reloads).ok_or("the relay is not running")?;
        let (tx, rx) = oneshot::channel();
        sender
            .send(tx)
            .await
            .map_err(|_| "the relay is shutting down")?;
        rx.await
            .map_err(|_| "the relay is shutting down".to_owned())?
    }

    /// Checks and applies a new configuration. Keys that only a restart can change are
    /// refused; so is a config, certificate or registry that does not load. Nothing is
    /// applied unless everything checks out.
    fn prepare_reload(&self) -> Result<Prepared, String> {
        let old = self.config();
        let new = Config::load(old.source.as_deref()).map_err(|e| e.to_string())?;
        for (key, same) in [
            ("state_dir", old.state_dir == new.state_dir),
            ("key_file", old.key_file == new.key_file),
            (
                "entra.authority",
                old.entra.authority == new.entra.authority,
            ),
            (
                "upstream.ca_file",
                old.upstream.ca_file == new.upstream.ca_file,
            ),
            (
                "limits.token_timeout_secs",
                old.limits.token_timeout_secs == new.limits.token_timeout_secs,
            ),
        ] {
            if !same {
                return Err(format!("`{key}` changed: that needs a restart"));
            }
        }
        admin_token(&new)?;
        let server_tls =
            tls::server_config(&new.tls.cert, &new.tls.key).map_err(|e| e.to_string())?;
        let client_tls =
            tls::client_config(new.upstream.ca_file.as_deref()).map_err(|e| e.to_string())?;
        Ok(Prepared {
            tls: TlsAcceptor::from(server_tls),
            connector: Connector::new(client_tls, new.limits.upstream_timeout(), self.host.clone()),
            config: Arc::new(new),
        })
    }

    fn apply(&self, prepared: Prepared) {
        let old = self.config();
        let (was, now) = (
            old.limits.max_connections,
            prepared.config.limits.max_connections,
        );
        if now > was {
            self.connections.add_permits(now - was);
        } else if now < was {
            // Permits in use come back and are then not given out again.
            self.connections.forget_permits(was - now);
        }
        write(&self.tls, prepared.tls);
        write(&self.connector, prepared.connector);
        write(&self.config, prepared.config);
    }
}

/// Makes sure the admin endpoint, if on, has its bearer token (created on first use).
fn admin_token(config: &Config) -> Result<(), String> {
    match config.admin.listen {
        Some(_) => crate::admin::token::AdminToken::load_or_create(&config.admin.token_file)
            .map(drop)
            .map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// A reload that checked out, ready to apply.
struct Prepared {
    config: Arc<Config>,
    tls: TlsAcceptor,
    connector: Connector,
}

/// The mail protocols the relay speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Smtp,
    Imap,
    Pop3,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
        }
    }

    /// How much life an access token handed to a new session must have left. Exchange
    /// ends an IMAP session when its token expires (`* BYE Session invalidated -
    /// AccessTokenExpired`), so IMAP gets more, and a client that reconnects after such a
    /// BYE always gets a token that lasts (PROTOCOL.md A3).
    pub fn min_token_validity(self) -> Duration {
        match self {
            Protocol::Smtp | Protocol::Pop3 => Duration::from_secs(5 * 60),
            Protocol::Imap => Duration::from_secs(10 * 60),
        }
    }

    /// How long a logged-in session may be silent both ways.
    pub fn idle_timeout(self, limits: &crate::config::Limits) -> Duration {
        match self {
            Protocol::Smtp => limits.idle_timeout_smtp(),
            Protocol::Imap => limits.idle_timeout_imap(),
            Protocol::Pop3 => limits.idle_timeout_pop3(),
        }
    }
}

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
    let state = state::create(&config).map_err(|e| match e {
        StateError::Folder { dir, source } => {
            setup(format!("state_dir {}", dir.display()))(source.to_string())
        }
        StateError::Key(e) => setup("state key")(e.to_string()),
    })?;
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

    let (reloads, mut requests) = mpsc::channel::<ReloadRequest>(4);
    write(&services.reloads, Some(reloads));
    let owner = services.clone();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
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
    });
    Ok(Running {
        services,
        shutdown,
        task,
    })
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
