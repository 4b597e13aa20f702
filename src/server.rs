//! Binds the listeners, accepts connections under a connection bound, and runs one session
//! per client: pre-auth (protocol driver), then the relay pipe. Shutdown stops accepting
//! and waits a grace period for sessions in flight.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::auth::LocalAuth;
use crate::config::Config;
use crate::error::Error;
use crate::oauth::TokenError;
use crate::oauth::cache::TokenCache;
use crate::oauth::endpoint::TokenEndpoint;
use crate::oauth::refresher;
use crate::oauth::seal::StateKey;
use crate::oauth::store::TokenStore;
use crate::protocol::driver::{PreauthParams, may_authenticate, preauth};
use crate::protocol::{Credentials, LoggedIn, Login, imap, pop3, smtp};
use crate::relay;
use crate::tls::{self, Stream};
use crate::upstream::{Connector, Upstream};

/// How long shutdown waits for sessions in flight before it drops them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What every session shares.
pub struct Services {
    pub config: Config,
    pub auth: LocalAuth,
    pub tokens: Arc<TokenCache>,
    pub connector: Connector,
    host: Arc<str>,
    tls: TlsAcceptor,
    /// EHLO keywords to advertise, learned from the upstream server's last EHLO.
    smtp_extensions: RwLock<Arc<[String]>>,
    connections: Arc<Semaphore>,
}

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

impl Services {
    /// Loads everything a session needs: TLS material, the mailbox registry, the token
    /// store and the token endpoint.
    pub fn new(config: Config) -> Result<Self, StartError> {
        crate::statefile::ensure_private_dir(&config.state_dir).map_err(|e| {
            setup(format!("state_dir {}", config.state_dir.display()))(e.to_string())
        })?;
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
        let key =
            StateKey::load(&config.key_file).map_err(|e| setup("state key")(e.to_string()))?;
        let auth = LocalAuth::new(config.state_dir.clone(), key.clone())
            .map_err(|e| setup("mailbox registry")(e.to_string()))?;
        let store = Arc::new(TokenStore::new(&config.state_dir, key));
        let host: Arc<str> = tls::host_name().into();
        let extensions: Vec<String> = smtp::EXCHANGE_ONLINE_EXTENSIONS
            .iter()
            .map(|s| s.to_string())
            .collect();
        Ok(Self {
            connector: Connector::new(client_tls, config.limits.upstream_timeout(), host.clone()),
            tokens: Arc::new(TokenCache::new(
                endpoint,
                store,
                Some(config.state_dir.clone()),
            )),
            auth,
            host,
            tls: TlsAcceptor::from(server_tls),
            smtp_extensions: RwLock::new(extensions.into()),
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            config,
        })
    }

    fn smtp_extensions(&self) -> Arc<[String]> {
        self.smtp_extensions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn learn_smtp_extensions(&self, upstream: &[String]) {
        let learned: Arc<[String]> = smtp::passthrough(upstream).into();
        let mut current = self
            .smtp_extensions
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if *current != learned {
            tracing::info!(extensions = ?learned, "advertising the upstream server's SMTP extensions");
            *current = learned;
        }
    }
}

/// The mail protocols the relay speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Smtp,
    Imap,
    Pop3,
}

impl Protocol {
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
}

/// Which kind of port a listener is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kind {
    protocol: Protocol,
    /// Implicit TLS (RFC 8314) rather than plaintext with STARTTLS.
    implicit_tls: bool,
}

impl Kind {
    fn name(self) -> &'static str {
        match (self.protocol, self.implicit_tls) {
            (Protocol::Smtp, false) => "smtp",
            (Protocol::Smtp, true) => "smtps",
            (Protocol::Imap, false) => "imap",
            (Protocol::Imap, true) => "imaps",
            (Protocol::Pop3, false) => "pop3",
            (Protocol::Pop3, true) => "pop3s",
        }
    }

    /// What a client over the connection limit is told on a plaintext port.
    fn too_many_connections(self) -> &'static str {
        match self.protocol {
            Protocol::Smtp => smtp::reply::TOO_MANY_CONNECTIONS,
            Protocol::Imap => imap::reply::TOO_MANY_CONNECTIONS,
            Protocol::Pop3 => pop3::reply::TOO_MANY_CONNECTIONS,
        }
    }
}

/// A started relay: its bound addresses and the task that runs it.
pub struct Running {
    /// Each listener's name (`smtp`, `smtps`, `imap`, `imaps`, `pop3`, `pop3s`) and address.
    pub listeners: Vec<(&'static str, SocketAddr)>,
    pub services: Arc<Services>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    /// The bound address of the listener named `name` (e.g. `imaps`), if it is on.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
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

/// Binds every configured listener and starts serving; stops when `shutdown` is cancelled.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, StartError> {
    let services = Arc::new(Services::new(config)?);
    let config = &services.config;
    let mut listeners = Vec::new();
    for (protocol, section) in [
        (Protocol::Smtp, &config.smtp),
        (Protocol::Imap, &config.imap),
        (Protocol::Pop3, &config.pop3),
    ] {
        for (addr, implicit_tls) in [(section.listen_starttls, false), (section.listen_tls, true)] {
            let Some(addr) = addr else { continue };
            let kind = Kind {
                protocol,
                implicit_tls,
            };
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    addr,
                    listener: kind.name(),
                    source,
                })?;
            let bound = listener.local_addr().unwrap_or(addr);
            tracing::info!(listener = kind.name(), addr = %bound, "listening");
            listeners.push((listener, kind, bound));
        }
    }
    let names = listeners.iter().map(|(_, k, a)| (k.name(), *a)).collect();

    let sessions = TaskTracker::new();
    let accepting = TaskTracker::new();
    let registry = {
        let services = services.clone();
        move || services.auth.current_registry()
    };
    accepting.spawn(refresher::run(
        services.tokens.clone(),
        registry,
        shutdown.clone(),
    ));
    for (listener, kind, _) in listeners {
        accepting.spawn(accept_loop(
            listener,
            kind,
            services.clone(),
            sessions.clone(),
            shutdown.clone(),
        ));
    }
    accepting.close();
    let task = tokio::spawn(async move {
        accepting.wait().await;
        sessions.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = sessions.len(),
                "grace period over; dropping open sessions"
            );
        }
    });
    Ok(Running {
        listeners: names,
        services,
        shutdown,
        task,
    })
}

async fn accept_loop(
    listener: TcpListener,
    kind: Kind,
    services: Arc<Services>,
    sessions: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = kind.name(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match services.connections.clone().try_acquire_owned() {
            Ok(permit) => {
                let services = services.clone();
                sessions.spawn(async move {
                    session(tcp, peer, kind, services).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tracing::warn!(listener = kind.name(), %peer, "connection limit reached; refusing");
                sessions.spawn(refuse(tcp, kind));
            }
        }
    }
}

/// Tells a client over the connection limit to come back later (plaintext ports only;
/// a TLS port just closes).
async fn refuse(mut tcp: TcpStream, kind: Kind) {
    use tokio::io::AsyncWriteExt;
    if !kind.implicit_tls {
        let write = tcp.write_all(kind.too_many_connections().as_bytes());
        let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
    }
}

/// One client, from accept to close, with one log line at each end.
async fn session(tcp: TcpStream, peer: SocketAddr, kind: Kind, services: Arc<Services>) {
    let span = tracing::info_span!("session", listener = kind.name(), %peer, mailbox = tracing::field::Empty);
    async move {
        let started = Instant::now();
        tracing::info!("session opened");
        let _ = tcp.set_nodelay(true);
        let outcome = run_session(tcp, peer, kind, &services).await;
        let ms = started.elapsed().as_millis() as u64;
        match outcome {
            Ok(Some(r)) => tracing::info!(
                outcome = "relayed",
                end = ?r.end,
                bytes_from_client = r.client_to_upstream,
                bytes_to_client = r.upstream_to_client,
                duration_ms = ms,
                "session closed"
            ),
            Ok(None) => tracing::info!(outcome = "no_login", duration_ms = ms, "session closed"),
            Err(e) => tracing::info!(outcome = e.outcome(), side = ?e.side(), error = %e, duration_ms = ms, "session closed"),
        }
    }
    .instrument(span)
    .await
}

async fn run_session(
    tcp: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    services: &Services,
) -> Result<Option<relay::Relayed>, Error> {
    let deadline = Instant::now() + services.config.limits.preauth_timeout();
    let stream = if kind.implicit_tls {
        match timeout_at(deadline, services.tls.accept(tcp)).await {
            Err(_) => return Err(Error::PreauthTimeout),
            Ok(Err(e)) => return Err(Error::ClientIo(e)),
            Ok(Ok(tls)) => Stream::Server(Box::new(tls)),
        }
    } else {
        Stream::Plain(tcp)
    };
    let params = PreauthParams {
        tls: services.tls.clone(),
        allow_plaintext_on_loopback: services.config.allow_plaintext_on_loopback,
        deadline,
    };
    let (tls, auth) = (stream.is_tls(), may_authenticate(&stream, peer, &params));
    let login = MailLogin {
        services,
        protocol: kind.protocol,
    };
    let handoff = match kind.protocol {
        Protocol::Smtp => {
            let extensions = services.smtp_extensions();
            let session = smtp::Session::new(services.host.clone(), extensions, tls, auth);
            preauth(stream, peer, session, &params, &login).await?
        }
        Protocol::Imap => {
            let session = imap::Session::new(tls, auth);
            preauth(stream, peer, session, &params, &login).await?
        }
        Protocol::Pop3 => {
            let session = pop3::Session::new(tls, auth);
            preauth(stream, peer, session, &params, &login).await?
        }
    };
    let Some(handoff) = handoff else {
        return Ok(None);
    };
    tracing::Span::current().record("mailbox", handoff.mailbox.as_str());
    let relayed = relay::pipe(
        handoff.client,
        &handoff.client_residual,
        handoff.upstream.stream,
        &handoff.upstream.residual,
        services.config.limits.idle_timeout(),
    )
    .await;
    Ok(Some(relayed))
}

/// Logs a client in: local password, the access token of the mailbox's token owner, then
/// XOAUTH2 upstream as the mailbox. A token the upstream refuses is refreshed once and
/// tried again.
struct MailLogin<'a> {
    services: &'a Services,
    protocol: Protocol,
}

impl Login for MailLogin<'_> {
    type Upstream = Upstream;

    async fn login(&self, credentials: Credentials) -> Result<LoggedIn<Upstream>, Error> {
        let services = self.services;
        let mailbox = services
            .auth
            .check(&credentials.user, &credentials.password)
            .await
            .ok_or_else(|| Error::BadCredentials {
                mailbox: credentials.user.clone(),
            })?;
        let token_error = |source| Error::Token {
            mailbox: mailbox.address.clone(),
            source,
        };
        // A shared mailbox logs in upstream as itself with its delegate's token
        // (PROTOCOL.md A6).
        let owner = services
            .auth
            .registry()
            .token_owner(&mailbox)
            .map_err(|e| token_error(TokenError::DelegateMissing(e.to_string())))?;
        let min_validity = self.protocol.min_token_validity();
        let token = services
            .tokens
            .access_token(&owner, min_validity)
            .await
            .map_err(token_error)?;
        let upstream = match self.connect(&mailbox.address, &token).await {
            Err(Error::UpstreamRejected { reply, .. }) => {
                tracing::warn!(mailbox = %mailbox.address, %reply, "upstream refused the access token; refreshing it once");
                services.tokens.invalidate(&owner.address, &token);
                let token = services
                    .tokens
                    .access_token(&owner, min_validity)
                    .await
                    .map_err(token_error)?;
                self.connect(&mailbox.address, &token).await?
            }
            other => other?,
        };
        if self.protocol == Protocol::Smtp {
            services.learn_smtp_extensions(&upstream.capabilities);
        }
        Ok(LoggedIn {
            mailbox: mailbox.address.clone(),
            upstream_ok: upstream.ok.clone(),
            upstream,
        })
    }
}

impl MailLogin<'_> {
    async fn connect(
        &self,
        user: &str,
        token: &crate::secret::AccessToken,
    ) -> Result<Upstream, Error> {
        let (connector, config) = (&self.services.connector, &self.services.config);
        match self.protocol {
            Protocol::Smtp => connector.smtp(&config.smtp.upstream, user, token).await,
            Protocol::Imap => connector.imap(&config.imap.upstream, user, token).await,
            Protocol::Pop3 => connector.pop3(&config.pop3.upstream, user, token).await,
        }
    }
}
