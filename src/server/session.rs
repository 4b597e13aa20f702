//! One client session, from accept to close: TLS on implicit-TLS ports, the protocol's
//! pre-auth under the configured limits with the [`MailLogin`] (failed-login delays and
//! refusals, local password, token, XOAUTH2 upstream), then the relay pipe with the
//! protocol's idle timeout; one log line when it opens and one when it closes, and the
//! metrics. An IMAP or POP3 session starts connecting upstream as soon as its client is
//! accepted ([`crate::upstream::preconnect`]), so that its login only has XOAUTH2 left.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tracing::Instrument;

use super::listener::Kind;
use super::{Protocol, Services};
use crate::abuse::Policy;
use crate::error::Error;
use crate::metrics::{DirectionLabels, Metrics, OutcomeLabels, ProtocolLabel};
use crate::oauth::TokenError;
use crate::protocol::driver::{PreauthParams, may_authenticate, preauth};
use crate::protocol::{Credentials, LoggedIn, Login, PreAuth, PreauthLimits, imap, pop3, smtp};
use crate::relay;
use crate::tls::Stream;
use crate::upstream::{Greeted, Preconnect, Upstream};

/// One client, from accept to close, with one log line at each end.
pub(super) async fn run(tcp: TcpStream, peer: SocketAddr, kind: Kind, services: Arc<Services>) {
    let span = tracing::info_span!("session", listener = kind.name(), %peer, mailbox = tracing::field::Empty);
    async move {
        let started = Instant::now();
        tracing::info!("session opened");
        let protocol = ProtocolLabel { protocol: kind.protocol.name() };
        services.metrics.sessions.get_or_create(&protocol).inc();
        services.metrics.sessions_open.get_or_create(&protocol).inc();
        let _ = tcp.set_nodelay(true);
        let outcome = run_session(tcp, peer, kind, &services).await;
        services.metrics.sessions_open.get_or_create(&protocol).dec();
        let ms = started.elapsed().as_millis() as u64;
        if let Ok(Some(r)) = &outcome {
            let bytes = |direction, n| {
                let labels = DirectionLabels { protocol: protocol.protocol, direction };
                services.metrics.bytes.get_or_create(&labels).inc_by(n);
            };
            bytes("from_client", r.client_to_upstream);
            bytes("to_client", r.upstream_to_client);
        }
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
    let config = services.config();
    let limits = &config.limits;
    let deadline = Instant::now() + limits.preauth_timeout();
    let preconnect = preconnect(services, kind.protocol, peer);
    if preconnect.is_some() {
        // Let it start connecting (it waits in this worker's next-task slot, which no idle
        // worker takes) before the client's TLS handshake keeps this task busy.
        tokio::task::yield_now().await;
    }
    // IMAP and POP3 on implicit TLS greet in the handshake's first flight (TLS 1.3
    // half-RTT data, see `tls::server_config`): the client has it a round trip earlier.
    let early_greeting = match kind.protocol {
        Protocol::Imap if kind.implicit_tls => Some(imap::Session::new(true, true).greeting()),
        Protocol::Pop3 if kind.implicit_tls => Some(pop3::Session::new(true, true).greeting()),
        _ => None,
    };
    let stream = if kind.implicit_tls {
        let accept = services.tls().accept_with(tcp, |conn| {
            if let Some(greeting) = &early_greeting {
                // Buffered by rustls until it may send application data.
                let _ = std::io::Write::write_all(&mut conn.writer(), greeting.text.as_bytes());
            }
        });
        match timeout_at(deadline, accept).await {
            Err(_) => return Err(Error::PreauthTimeout),
            Ok(Err(e)) => return Err(Error::ClientIo(e)),
            Ok(Ok(tls)) => Stream::Server(Box::new(tls)),
        }
    } else {
        Stream::Plain(tcp)
    };
    let params = PreauthParams {
        tls: services.tls(),
        allow_plaintext_on_loopback: config.allow_plaintext_on_loopback,
        deadline,
        greeted: early_greeting.is_some(),
    };
    let (tls, auth) = (stream.is_tls(), may_authenticate(&stream, peer, &params));
    let login = MailLogin {
        services,
        protocol: kind.protocol,
        peer,
        preconnect: Mutex::new(preconnect),
    };
    let handoff = match kind.protocol {
        Protocol::Smtp => {
            let extensions = services.smtp_extensions();
            let session = smtp::Session::new(services.host.clone(), extensions, tls, auth)
                .with_limits(PreauthLimits::smtp(limits));
            preauth(stream, peer, session, &params, &login).await?
        }
        Protocol::Imap => {
            let session = imap::Session::new(tls, auth).with_limits(PreauthLimits::imap(limits));
            preauth(stream, peer, session, &params, &login).await?
        }
        Protocol::Pop3 => {
            let session = pop3::Session::new(tls, auth).with_limits(PreauthLimits::pop3(limits));
            preauth(stream, peer, session, &params, &login).await?
        }
    };
    let Some(handoff) = handoff else {
        return Ok(None);
    };
    tracing::Span::current().record("mailbox", handoff.mailbox.as_str());
    let (mut client, mut upstream) = (handoff.client, handoff.upstream.stream);
    client.limit_tls_buffer(relay::BUFFER_SIZE);
    upstream.limit_tls_buffer(relay::BUFFER_SIZE);
    // Nothing speculative outlives the login (it was taken, or dropped on failure).
    drop(login);
    let relayed = relay::pipe(
        client,
        &handoff.client_residual,
        upstream,
        &handoff.upstream.residual,
        kind.protocol.idle_timeout(limits),
    )
    .await;
    Ok(Some(relayed))
}

/// Logs a client in: local password, the access token of the mailbox's token owner, then
/// XOAUTH2 upstream as the mailbox. A token the upstream refuses is refreshed once and
/// tried again. Before the password is checked, a source or mailbox with failed logins
/// waits ([`crate::abuse`]), and a refused source is turned away.
struct MailLogin<'a> {
    services: &'a Services,
    protocol: Protocol,
    peer: SocketAddr,
    /// The upstream connection started when the client connected (IMAP and POP3), until
    /// a login takes it or fails.
    preconnect: Mutex<Option<Preconnect>>,
}

/// Starts connecting upstream for an IMAP or POP3 client that was just accepted (within
/// the connection limits), unless its address has failed logins: a password guesser must
/// not make the relay open connections to Microsoft.
fn preconnect(services: &Services, protocol: Protocol, peer: SocketAddr) -> Option<Preconnect> {
    let config = services.config();
    let policy = Policy::from_limits(&config.limits);
    if services
        .abuse
        .has_failures(peer.ip(), &policy, Instant::now().into_std())
    {
        return None;
    }
    let connector = services.connector();
    match protocol {
        Protocol::Smtp => None,
        Protocol::Imap => {
            let server = config.imap.upstream.clone();
            services
                .preconnects
                .start(async move { connector.imap_greet(&server).await })
        }
        Protocol::Pop3 => {
            let server = config.pop3.upstream.clone();
            services
                .preconnects
                .start(async move { connector.pop3_greet(&server).await })
        }
    }
}

impl Login for MailLogin<'_> {
    type Upstream = Upstream;

    async fn login(&self, credentials: Credentials) -> Result<LoggedIn<Upstream>, Error> {
        let result = self.guarded(credentials).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        let labels = OutcomeLabels {
            protocol: self.protocol.name(),
            outcome,
        };
        self.services.metrics.logins.get_or_create(&labels).inc();
        result
    }
}

impl MailLogin<'_> {
    /// The login under the failed-login policy: refused sources are turned away, a delay
    /// is waited out (in this task: no thread is held) before the password is checked, and
    /// the verdict is counted.
    async fn guarded(&self, credentials: Credentials) -> Result<LoggedIn<Upstream>, Error> {
        let (abuse, source) = (&self.services.abuse, self.peer.ip());
        let policy = Policy::from_limits(&self.services.config().limits);
        let now = || Instant::now().into_std();
        if abuse.is_blocked(source, &policy, now()) {
            return Err(Error::SourceBlocked);
        }
        let delay = abuse.delay(source, &credentials.user, &policy, now());
        if !delay.is_zero() {
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "earlier failed logins: waiting before checking the password"
            );
            let labels = ProtocolLabel {
                protocol: self.protocol.name(),
            };
            self.services
                .metrics
                .logins_delayed
                .get_or_create(&labels)
                .inc();
            tokio::time::sleep(delay).await;
            // Refused meanwhile (by the failures of its other connections)?
            if abuse.is_blocked(source, &policy, now()) {
                return Err(Error::SourceBlocked);
            }
        }
        let user = credentials.user.clone();
        let result = self.login_once_refreshed(credentials).await;
        if result.is_err() {
            // A retry on this session connects afresh, if it gets that far.
            drop(self.take_preconnect());
        }
        match &result {
            Ok(_) => abuse.succeeded(source),
            Err(Error::BadCredentials { .. }) => {
                let failure = abuse.failed(source, &user, &policy, now());
                if failure.newly_blocked {
                    tracing::warn!(
                        source = %crate::abuse::source_key(source),
                        failures = failure.source_failures,
                        minutes = policy.block_for.as_secs() / 60,
                        "too many failed logins from one address; refusing it for a while"
                    );
                }
            }
            Err(_) => {}
        }
        result
    }

    async fn login_once_refreshed(
        &self,
        credentials: Credentials,
    ) -> Result<LoggedIn<Upstream>, Error> {
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
    fn take_preconnect(&self) -> Option<Preconnect> {
        self.preconnect
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The speculative connection to `server`, if there is one (waiting for it if it is
    /// still being made) and it is to that server (a reload may have moved it).
    async fn preconnected(&self, server: &crate::config::ServerAddress) -> Option<Greeted> {
        let greeted = self.take_preconnect()?.take().await?;
        (greeted.server == *server).then_some(greeted)
    }

    /// One upstream login, timed and counted. IMAP and POP3 log in on the speculative
    /// connection when there is one, and on a fresh one if that fails (other than by the
    /// server refusing the token).
    async fn connect(
        &self,
        user: &str,
        token: &crate::secret::AccessToken,
    ) -> Result<Upstream, Error> {
        let (connector, config) = (self.services.connector(), self.services.config());
        let started = Instant::now();
        let server = match self.protocol {
            Protocol::Smtp => &config.smtp.upstream,
            Protocol::Imap => &config.imap.upstream,
            Protocol::Pop3 => &config.pop3.upstream,
        };
        let greeted = match self.protocol {
            Protocol::Smtp => None,
            Protocol::Imap | Protocol::Pop3 => self.preconnected(server).await,
        };
        let result = match (self.protocol, greeted) {
            (Protocol::Smtp, _) => connector.smtp(server, user, token).await,
            (Protocol::Imap, Some(g)) => match connector.imap_greeted(g, user, token).await {
                Err(e) if retry_fresh(&e) => connector.imap(server, user, token).await,
                other => other,
            },
            (Protocol::Imap, None) => connector.imap(server, user, token).await,
            (Protocol::Pop3, Some(g)) => match connector.pop3_greeted(g, user, token).await {
                Err(e) if retry_fresh(&e) => connector.pop3(server, user, token).await,
                other => other,
            },
            (Protocol::Pop3, None) => connector.pop3(server, user, token).await,
        };
        let metrics = &self.services.metrics;
        let protocol = self.protocol.name();
        let outcome = match &result {
            Ok(upstream) => {
                Metrics::observe(&metrics.upstream_connect, protocol, upstream.connected_in);
                Metrics::observe(&metrics.upstream_login, protocol, started.elapsed());
                "accepted"
            }
            Err(Error::UpstreamRejected { .. }) => "rejected",
            Err(_) => "error",
        };
        metrics
            .upstream_auth
            .get_or_create(&OutcomeLabels { protocol, outcome })
            .inc();
        result
    }
}

/// Whether a login on a speculative connection failed in a way a fresh connection may not
/// (the server closed it while it waited); a refused token is final.
fn retry_fresh(error: &Error) -> bool {
    let retry = !matches!(error, Error::UpstreamRejected { .. });
    if retry {
        tracing::debug!(%error, "the speculative upstream connection failed; connecting afresh");
    }
    retry
}
