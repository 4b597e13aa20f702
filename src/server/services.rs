//! What every session shares ([`Services`]): configuration, certificate and connector
//! (swapped by a reload), the mailbox registry, the token cache, the connection bounds,
//! the failed-login guard and the metrics. It is also what the admin endpoint sees of the
//! relay ([`crate::admin::RelayView`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_rustls::TlsAcceptor;

use crate::abuse::{LoginGuard, SourceConnections};
use crate::admin::RelayView;
use crate::auth::{LiveRegistry, LocalAuth};
use crate::config::Config;
use crate::delivery::DeliveryCounters;
use crate::mailbox::Registry;
use crate::metrics::Metrics;
use crate::oauth::cache::TokenCache;
use crate::oauth::endpoint::TokenEndpoint;
use crate::protocol::smtp;
use crate::state::State;
use crate::submission::pool::Dialer;
use crate::submission::session::{Shared, Submissions};
use crate::tls;
use crate::upstream::{Connector, Preconnects};

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
    pub(super) host: Arc<str>,
    tls: RwLock<TlsAcceptor>,
    /// EHLO keywords to advertise, learned from the upstream server's last EHLO.
    smtp_extensions: RwLock<Arc<[String]>>,
    pub(super) connections: Arc<Semaphore>,
    /// Open connections per source address (`limits.max_connections_per_source`).
    pub(super) sources: Arc<SourceConnections>,
    /// Failed logins per source and mailbox: delays and refusals.
    pub abuse: LoginGuard,
    /// The bound on IMAP and POP3 upstream connections opened before their login.
    pub preconnects: Preconnects,
    pub metrics: Metrics,
    /// The bound listeners, by name.
    pub listeners: RwLock<Vec<(&'static str, SocketAddr)>>,
    pub started: std::time::SystemTime,
    /// Where reload requests go (the task that owns the listeners).
    pub(super) reloads: RwLock<Option<mpsc::Sender<ReloadRequest>>>,
    /// What SMTP sessions share after login.
    pub submissions: Submissions,
    /// What the queue's delivery workers did, for the metrics.
    pub deliveries: DeliveryCounters,
}

pub(super) type ReloadRequest = oneshot::Sender<Result<String, String>>;

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

pub(super) fn setup(what: impl Into<String>) -> impl FnOnce(String) -> StartError {
    let what = what.into();
    move |why| StartError::Setup { what, why }
}

pub(super) fn read<T: Clone>(lock: &RwLock<T>) -> T {
    lock.read().unwrap_or_else(PoisonError::into_inner).clone()
}

pub(super) fn write<T>(lock: &RwLock<T>, value: T) {
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
        let services = Self {
            connector: RwLock::new(Connector::new(
                client_tls,
                config.limits.upstream_timeout(),
                host.clone(),
            )),
            tokens: Arc::new(
                TokenCache::new(endpoint, state.tokens(), Some(state.statuses()))
                    .with_leases(state.leases(), config.limits.token_timeout()),
            ),
            registry,
            auth,
            host,
            tls: RwLock::new(TlsAcceptor::from(server_tls)),
            smtp_extensions: RwLock::new(extensions.into()),
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            sources: Arc::default(),
            abuse: LoginGuard::default().with_fleet(state.counters()),
            preconnects: Preconnects::new(
                metrics.speculative_connections.clone(),
                metrics.speculative_connections_open.clone(),
            ),
            metrics,
            listeners: RwLock::new(Vec::new()),
            started: std::time::SystemTime::now(),
            reloads: RwLock::new(None),
            submissions: Submissions::new(&config, &state),
            deliveries: DeliveryCounters::default(),
            state,
            config: RwLock::new(Arc::new(config)),
        };
        services.configure_pool();
        Ok(services)
    }

    /// Gives the shared upstream SMTP connections the configuration and connector in force.
    fn configure_pool(&self) {
        let dialer = Dialer {
            connector: self.connector(),
            tokens: self.tokens.clone(),
            registry: self.registry.clone(),
        };
        self.submissions.pool.configure(&self.config(), dialer);
    }

    /// What serving a logged-in SMTP session takes, under `config`.
    pub(super) fn shared<'a>(&'a self, config: &'a Config) -> Shared<'a> {
        Shared {
            config,
            registry: &self.registry,
            host: &self.host,
            submissions: &self.submissions,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        read(&self.config)
    }

    pub(super) fn tls(&self) -> TlsAcceptor {
        read(&self.tls)
    }

    pub(super) fn connector(&self) -> Connector {
        read(&self.connector)
    }

    pub(super) fn smtp_extensions(&self) -> Arc<[String]> {
        read(&self.smtp_extensions)
    }

    pub(super) fn learn_smtp_extensions(&self, upstream: &[String]) {
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
    pub(super) fn prepare_reload(&self) -> Result<Prepared, String> {
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

    pub(super) fn apply(&self, prepared: Prepared) {
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
        self.configure_pool();
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
pub(super) struct Prepared {
    /// The new configuration, checked.
    pub(super) config: Arc<Config>,
    tls: TlsAcceptor,
    connector: Connector,
}

impl RelayView for Services {
    fn config(&self) -> Arc<Config> {
        Services::config(self)
    }

    fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        read(&self.listeners)
    }

    fn registry(&self) -> Arc<Registry> {
        self.registry.current_registry()
    }

    fn tokens(&self) -> &TokenCache {
        &self.tokens
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn started(&self) -> SystemTime {
        self.started
    }

    fn database(&self) -> Option<crate::state::DatabaseHealth> {
        self.state.database().map(crate::state::Database::health)
    }

    fn queue(&self) -> Option<Arc<dyn crate::state::OutboundQueue>> {
        self.state.queue()
    }

    fn delivery_counters(&self) -> &crate::delivery::DeliveryCounters {
        &self.deliveries
    }

    fn delivery_log_dropped(&self) -> u64 {
        self.submissions.log.dropped()
    }

    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + '_>> {
        Box::pin(Services::reload(self))
    }
}
