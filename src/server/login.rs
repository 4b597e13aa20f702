//! Logging a client in ([`MailLogin`]): the failed-login policy, the local password, the
//! token owner's access token, then XOAUTH2 upstream (for SMTP through the mailbox's
//! shared connections, [`crate::submission::pool`]; or Microsoft Graph for an SMTP mailbox
//! that sends that way); and the speculative upstream connection an IMAP or POP3
//! client that logged in recently gets as soon as it is accepted ([`preconnect`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::{Instant, timeout_at};

use super::kind::Protocol;
use super::services::Services;
use crate::abuse::{Policy, Refused};
use crate::error::Error;
use crate::mailbox::{Delivery, Mailbox};
use crate::metrics::{Metrics, OutcomeLabels, ProtocolLabel};
use crate::protocol::{Credentials, LoggedIn, Login};
use crate::submission::SmtpVia;
use crate::submission::pool::{Proven, dial};
use crate::submission::route::{Route, is_smtp_auth_disabled};
use crate::submission::session::Outbound;
use crate::upstream::{Greeted, Imap, Pop3, Preconnect, Upstream};

/// Logs a client in: local password, the access token of the mailbox's token owner, then
/// XOAUTH2 upstream as the mailbox. A token the upstream refuses is refreshed once and
/// tried again. Before the password is checked, a source or mailbox with failed logins
/// waits ([`crate::abuse`]), and a refused source is turned away.
pub(super) struct MailLogin<'a> {
    pub(super) services: &'a Services,
    pub(super) protocol: Protocol,
    pub(super) peer: SocketAddr,
    /// The upstream connection started when the client connected (IMAP and POP3), until
    /// a login takes it or fails.
    pub(super) preconnect: Mutex<Option<Preconnect>>,
    /// When the password check must be done (the session's pre-auth deadline): waiting in
    /// line for it is bounded by that.
    pub(super) deadline: Instant,
}

/// Starts connecting upstream for an IMAP or POP3 client that was just accepted (within
/// the connection limits), if its address logged in successfully within
/// `limits.preconnect_after_login_secs` and has no failed login on record: a stranger or a
/// guesser must not make the relay open connections to Microsoft.
pub(super) fn preconnect(
    services: &Services,
    protocol: Protocol,
    peer: SocketAddr,
) -> Option<Preconnect> {
    let config = services.config();
    let within = config.limits.preconnect_after_login();
    let (abuse, now) = (&services.abuse, Instant::now().into_std());
    let policy = Policy::from_limits(&config.limits);
    let returning = !within.is_zero() && abuse.recently_logged_in(peer.ip(), within, now);
    if protocol == Protocol::Smtp || !returning || abuse.has_failures(peer.ip(), &policy, now) {
        return None;
    }
    let max = config.limits.max_speculative_connections;
    let connector = services.connector();
    match protocol {
        Protocol::Smtp => None,
        Protocol::Imap => {
            let server = config.imap.upstream.clone();
            services.preconnects.start(
                max,
                async move { connector.greet_for::<Imap>(&server).await },
            )
        }
        Protocol::Pop3 => {
            let server = config.pop3.upstream.clone();
            services.preconnects.start(
                max,
                async move { connector.greet_for::<Pop3>(&server).await },
            )
        }
    }
}

/// What a login hands on: the mailbox the password check found, and its way out.
pub(super) struct Opened {
    pub(super) mailbox: Arc<Mailbox>,
    pub(super) outbound: Outbound,
    /// The client's address (the one a PROXY header named, behind a balancer).
    pub(super) client: IpAddr,
}

impl Login for MailLogin<'_> {
    type Upstream = Opened;

    async fn login(&self, credentials: Credentials) -> Result<LoggedIn<Opened>, Error> {
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
    /// The login: the password under the failed-login policy, within the session's
    /// deadline, then the upstream login.
    async fn guarded(&self, credentials: Credentials) -> Result<LoggedIn<Opened>, Error> {
        let checked = timeout_at(self.deadline, self.checked_password(&credentials)).await;
        let result = match checked {
            Err(_) => Err(Error::PreauthTimeout),
            Ok(Err(e)) => Err(e),
            Ok(Ok(mailbox)) => self.log_in_upstream(mailbox).await,
        };
        if result.is_err() {
            // A retry on this session connects afresh, if it gets that far.
            drop(self.take_preconnect());
        }
        result
    }

    /// The local password check under the failed-login policy ([`crate::abuse`]): a
    /// refused source is turned away, the login waits its turn and its delay (in this
    /// task: no thread is held) before the password is checked, and the verdict is
    /// counted (an abandoned check counts as a failure).
    async fn checked_password(&self, credentials: &Credentials) -> Result<Arc<Mailbox>, Error> {
        let (abuse, source) = (&self.services.abuse, self.peer.ip());
        let policy = Policy::from_limits(&self.services.config().limits);
        let attempt = abuse
            .begin(source, &credentials.user, &policy)
            .await
            .map_err(|Refused::Blocked| Error::SourceBlocked)?;
        let delay = attempt.delay();
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
            attempt.wait().await;
        }
        let auth = &self.services.auth;
        let checked = auth
            .check_with_priority(&credentials.user, &credentials.password, attempt.priority())
            .await;
        let Some(mailbox) = checked else {
            let failure = attempt.failed().await;
            if failure.newly_blocked {
                tracing::warn!(
                    source = %crate::abuse::source_key(source),
                    failures = failure.source_failures,
                    minutes = policy.block_for.as_secs() / 60,
                    "too many failed logins from one address; refusing it for a while"
                );
            }
            return Err(Error::BadCredentials {
                mailbox: credentials.user.clone(),
            });
        };
        attempt.succeeded();
        Ok(mailbox)
    }

    /// Logs `mailbox` in upstream: its XOAUTH2 connection, or Graph for SMTP.
    async fn log_in_upstream(&self, mailbox: Arc<Mailbox>) -> Result<LoggedIn<Opened>, Error> {
        let outbound = match self.protocol {
            Protocol::Smtp => self.open_outbound(&mailbox).await?,
            _ => Outbound::Wire(self.wire_login(&mailbox).await?),
        };
        let upstream_ok = match &outbound {
            Outbound::Wire(upstream) => upstream.ok.clone(),
            Outbound::Smtp(proven) => proven.ok.clone(),
            Outbound::Graph(_) | Outbound::Queue(_) => String::new(),
        };
        let client = self.peer.ip();
        Ok(LoggedIn {
            mailbox: mailbox.address.clone(),
            upstream_ok,
            upstream: Opened {
                mailbox,
                outbound,
                client,
            },
        })
    }

    /// Where an SMTP session of `mailbox` sends: the relay's queue when its `delivery` says
    /// so (no upstream login, no token: the queue takes mail while Microsoft is away);
    /// its XOAUTH2 connection, or Microsoft Graph when its `smtp_via` says so, or (`auto`)
    /// when Exchange refuses SMTP AUTH with `535 5.7.139`, which switches the mailbox to
    /// Graph for good.
    pub(super) async fn open_outbound(&self, mailbox: &Mailbox) -> Result<Outbound, Error> {
        if mailbox.sending.delivery == Delivery::Queue
            && let Some(queue) = queued(self.services)
        {
            return Ok(queue);
        }
        let routes = &self.services.submissions.routes;
        if routes.route(&mailbox.address, mailbox.sending.smtp_via) == Route::Graph {
            return self.open_graph(mailbox).await;
        }
        match self.smtp_login(mailbox).await {
            Err(Error::UpstreamRejected { reply, .. })
                if mailbox.sending.smtp_via == SmtpVia::Auto && is_smtp_auth_disabled(&reply) =>
            {
                routes.switch_to_graph(&mailbox.address, &reply);
                self.open_graph(mailbox).await
            }
            other => other.map(Outbound::Smtp),
        }
    }

    /// The SMTP XOAUTH2 login, proven through the mailbox's shared connections: a live
    /// one proves it without a round trip, else one is dialled (timed and counted).
    async fn smtp_login(&self, mailbox: &Mailbox) -> Result<Proven, Error> {
        let started = Instant::now();
        let result = self.services.submissions.pool.log_in(mailbox).await;
        let (metrics, protocol) = (&self.services.metrics, self.protocol.name());
        let outcome = match &result {
            Ok(Proven {
                connected_in: None, ..
            }) => None,
            Ok(proven) => {
                let connected_in = proven.connected_in.unwrap_or_default();
                Metrics::observe(&metrics.upstream_connect, protocol, connected_in);
                Metrics::observe(&metrics.upstream_login, protocol, started.elapsed());
                Some("accepted")
            }
            Err(Error::UpstreamRejected { .. }) => Some("rejected"),
            Err(_) => Some("error"),
        };
        if let Some(outcome) = outcome {
            let labels = OutcomeLabels { protocol, outcome };
            metrics.upstream_auth.get_or_create(&labels).inc();
        }
        let proven = result?;
        self.services.learn_smtp_extensions(&proven.capabilities);
        Ok(proven)
    }

    /// The Graph way out for `mailbox`, with its token owner's Graph token.
    async fn open_graph(&self, mailbox: &Mailbox) -> Result<Outbound, Error> {
        let owner = token_owner(self.services, mailbox)?;
        let (services, config) = (self.services, self.services.config());
        let submissions = &services.submissions;
        let sender = submissions
            .open_graph(&services.tokens, &config, owner, mailbox)
            .await?;
        Ok(Outbound::Graph(sender))
    }

    /// The IMAP or POP3 XOAUTH2 login upstream as `mailbox` with its token owner's access
    /// token, refreshed once if the upstream refuses it ([`dial::with_token`]).
    async fn wire_login(&self, mailbox: &Mailbox) -> Result<Upstream, Error> {
        let owner = token_owner(self.services, mailbox)?;
        let (user, min_validity) = (&mailbox.address, self.protocol.min_token_validity());
        let tokens = &self.services.tokens;
        dial::with_token(tokens, &owner, user, min_validity, |token| async move {
            self.connect(user, &token).await
        })
        .await
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
            (Protocol::Imap, Some(g)) => {
                match connector.login_greeted::<Imap>(g, user, token).await {
                    Err(e) if retry_fresh(&e) => connector.login::<Imap>(server, user, token).await,
                    other => other,
                }
            }
            (Protocol::Imap, None) => connector.login::<Imap>(server, user, token).await,
            (Protocol::Pop3, Some(g)) => {
                match connector.login_greeted::<Pop3>(g, user, token).await {
                    Err(e) if retry_fresh(&e) => connector.login::<Pop3>(server, user, token).await,
                    other => other,
                }
            }
            (Protocol::Pop3, None) => connector.login::<Pop3>(server, user, token).await,
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

/// The queue way out, when the state keeps a queue (every backend's does); without one a
/// queued mailbox sends directly, as the log says.
pub(super) fn queued(services: &Services) -> Option<Outbound> {
    let queue = services.submissions.queue.clone();
    if queue.is_none() {
        tracing::error!("this state keeps no outbound queue: sending directly");
    }
    queue.map(Outbound::Queue)
}

/// The mailbox whose token serves `mailbox`: itself, or the delegate it takes its token
/// from.
fn token_owner(services: &Services, mailbox: &Mailbox) -> Result<Arc<Mailbox>, Error> {
    dial::token_owner(&services.registry, mailbox)
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
