//! Shared upstream SMTP connections: per mailbox and upstream server at most
//! `limits.smtp_connections_per_mailbox` logged-in XOAUTH2 connections (Exchange Online
//! answers a 4th concurrent one `432 4.3.2`, PROTOCOL.md A12), shared by the client
//! sessions of that mailbox and the queue's deliveries. A connection is checked out per
//! transaction (MAIL FROM to the final reply), not per session; a checkout that finds all
//! of them busy waits at most `limits.upstream_timeout_secs`, then the client gets the
//! relay's own temporary reply ([`reply::UPSTREAM_BUSY`]). A kept connection is looked at
//! before reuse ([`SmtpConnection::is_alive`]), `RSET` when a transaction was left open,
//! and closed with `QUIT` after `limits.smtp_connection_idle_secs` idle, or once older than
//! `limits.smtp_connection_max_age_secs` (then the mailbox logs in afresh: Microsoft sees
//! its token and delegation again).
//!
//! - [`connection`]: one logged-in connection.
//! - [`slot`]: one mailbox's connections to one server.
//! - [`dial`]: logging in with the mailbox's token, refreshed once if refused.
//! - [`send`]: a whole message for the queue ([`SmtpPool::send_message`]).

pub mod connection;
pub mod dial;
pub mod send;
pub mod slot;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::timeout;

pub use self::connection::{Broken, Reply, SmtpConnection};
use self::send::Left;
pub use self::send::SmtpSend;
use self::slot::{Lease, Slot};
use super::SmtpVia;
use super::route::{Routes, is_smtp_auth_disabled};
use crate::auth::LiveRegistry;
use crate::cloud::Cloud;
use crate::config::{Config, ServerAddress};
use crate::error::Error;
use crate::mailbox::Mailbox;
use crate::oauth::cache::TokenCache;
use crate::protocol::smtp::reply;
use crate::upstream::Connector;

/// How long a token must still be valid for an SMTP login: High Volume Email refuses
/// tokens close to expiry (PROTOCOL.md A3), so a mailbox with its own SMTP server asks
/// for more.
const MIN_TOKEN_VALIDITY: Duration = Duration::from_secs(5 * 60);
const MIN_TOKEN_VALIDITY_OWN_SERVER: Duration = Duration::from_secs(10 * 60);

/// What the pool dials with; the server gives it at start and on each reload.
#[derive(Clone)]
pub struct Dialer {
    pub connector: Connector,
    pub tokens: Arc<TokenCache>,
    pub registry: Arc<LiveRegistry>,
}

/// The pool's settings, from `[limits]` and `smtp.upstream`.
#[derive(Clone)]
struct Settings {
    per_mailbox: usize,
    idle: Duration,
    /// Connections older than this are not reused, nor prove a login.
    max_age: Duration,
    /// Bound on a checkout's wait and on each command's reply.
    wait: Duration,
    server: ServerAddress,
}

impl Settings {
    fn from_config(config: &Config) -> Self {
        let limits = &config.limits;
        Self {
            per_mailbox: limits.smtp_connections_per_mailbox as usize,
            idle: Duration::from_secs(limits.smtp_connection_idle_secs),
            max_age: Duration::from_secs(limits.smtp_connection_max_age_secs),
            wait: limits.upstream_timeout(),
            server: config.smtp.upstream.clone(),
        }
    }
}

/// Why no connection could be checked out.
#[derive(Debug)]
pub enum Unavailable {
    /// All the mailbox's connections stayed busy for the whole wait.
    Busy,
    /// Dialling a new one failed.
    Login(Error),
}

impl Unavailable {
    /// The relay's own reply for a client transaction.
    pub fn reply(&self) -> &'static str {
        match self {
            Unavailable::Busy => reply::UPSTREAM_BUSY,
            Unavailable::Login(_) => reply::UPSTREAM_LOGIN_FAILED,
        }
    }
}

/// What a login through the pool learnt: the server's EHLO keywords and `235` text, and
/// how long connecting took when it dialled.
pub struct Proven {
    pub capabilities: Vec<String>,
    pub ok: String,
    pub connected_in: Option<Duration>,
}

/// Counts for the metrics and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections dialled, and checkouts served by a kept connection.
    pub dials: u64,
    pub reuses: u64,
    /// Per mailbox and server: connections open (busy or idle), and idle.
    pub open: Vec<(String, String, usize, usize)>,
}

/// Reads a mailbox's own SMTP upstream as `mailbox sending --smtp-server` takes it:
/// `default` (the relay's `smtp.upstream`: `None`), or `HOST:PORT` checked like
/// `smtp.upstream`: a host name (or address) TLS can verify, a port, and not another
/// Microsoft cloud's server than the mailbox's `cloud`. Its certificate is verified
/// against the system roots or `upstream.ca_file`, as the relay's upstream's is.
pub fn own_server(value: &str, cloud: Option<Cloud>) -> Result<Option<String>, String> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("default") {
        return Ok(None);
    }
    let address = ServerAddress::parse(value)?;
    rustls_pki_types::ServerName::try_from(address.host.as_str())
        .map_err(|e| format!("`{}` is not a valid server name: {e}", address.host))?;
    if let (Some(cloud), Some(other)) = (cloud, Cloud::of_mail_host(&address.host))
        && other != cloud
    {
        return Err(format!(
            "`{address}` is a mail server of cloud {other}, but the mailbox is in cloud {cloud}"
        ));
    }
    Ok(Some(address.to_string()))
}

/// The relay's shared upstream SMTP connections.
pub struct SmtpPool {
    settings: RwLock<Settings>,
    dialer: RwLock<Option<Dialer>>,
    slots: Mutex<HashMap<(String, String), Arc<Slot>>>,
    routes: Arc<Routes>,
}

impl SmtpPool {
    pub fn new(config: &Config, routes: Arc<Routes>) -> Self {
        Self {
            settings: RwLock::new(Settings::from_config(config)),
            dialer: RwLock::new(None),
            slots: Mutex::default(),
            routes,
        }
    }

    /// Gives the pool what it dials with, and the configuration in force (at start and
    /// on a reload; kept connections stay until they idle out).
    pub fn configure(&self, config: &Config, dialer: Dialer) {
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Settings::from_config(config);
        *self.dialer.write().unwrap_or_else(PoisonError::into_inner) = Some(dialer);
    }

    /// How long a client session may hold a checked-out connection between the commands
    /// of its transaction (before DATA, and between BDAT chunks):
    /// `limits.upstream_timeout_secs`, what another transaction waits for one at most.
    pub fn hold_limit(&self) -> Duration {
        self.settings().wait
    }

    fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The upstream server `mailbox` sends through: its own (`sending.smtp_server`), or
    /// the relay's `smtp.upstream`.
    pub fn server_for(&self, mailbox: &Mailbox) -> Result<ServerAddress, Error> {
        match &mailbox.sending.smtp_server {
            Some(own) => ServerAddress::parse(own).map_err(|detail| Error::UpstreamProtocol {
                server: own.clone(),
                detail,
            }),
            None => Ok(self.settings().server),
        }
    }

    fn slot(&self, mailbox: &Mailbox, server: &ServerAddress) -> Arc<Slot> {
        let settings = self.settings();
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (mailbox.address.clone(), server.to_string());
        slots
            .entry(key)
            .or_insert_with(|| {
                let (limit, idle, max_age) =
                    (settings.per_mailbox, settings.idle, settings.max_age);
                Arc::new(Slot::new(limit, idle, max_age))
            })
            .clone()
    }

    /// A connection of `mailbox` for one transaction: a kept one that is still alive, or a
    /// new one; waiting at most `limits.upstream_timeout_secs` for one to be free.
    pub async fn checkout(&self, mailbox: &Mailbox) -> Result<Lease, Unavailable> {
        let server = self.server_for(mailbox).map_err(Unavailable::Login)?;
        let slot = self.slot(mailbox, &server);
        let wait = self.settings().wait;
        let permit = match timeout(wait, slot.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            _ => return Err(Unavailable::Busy),
        };
        while let Some(mut kept) = slot.take_idle() {
            if !slot.young(&kept) {
                tracing::debug!(mailbox = %mailbox.address, "kept upstream SMTP connection past its maximum age; closing it");
                kept.quit().await;
                continue;
            }
            if kept.conn.is_alive().await {
                slot.reuses.fetch_add(1, Ordering::Relaxed);
                return Ok(Lease::new(kept, permit, slot));
            }
            tracing::debug!(mailbox = %mailbox.address, "kept upstream SMTP connection is gone; dropping it");
        }
        let upstream = self
            .dial(mailbox, &server)
            .await
            .map_err(Unavailable::Login)?;
        let (capabilities, ok) = (upstream.capabilities.clone(), upstream.ok.clone());
        let connected_in = Some(upstream.connected_in);
        let tracked = slot.track(SmtpConnection::new(upstream, wait), capabilities, ok);
        let mut lease = Lease::new(tracked, permit, slot);
        lease.connected_in = connected_in;
        Ok(lease)
    }

    /// Logs `mailbox` in upstream with its token owner's access token, once more with a
    /// fresh token if the server refuses it.
    async fn dial(
        &self,
        mailbox: &Mailbox,
        server: &ServerAddress,
    ) -> Result<crate::upstream::Upstream, Error> {
        let dialer = self
            .dialer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(Error::ShuttingDown)?;
        let owner = dial::token_owner(&dialer.registry, mailbox)?;
        let min_validity = match mailbox.sending.smtp_server {
            Some(_) => MIN_TOKEN_VALIDITY_OWN_SERVER,
            None => MIN_TOKEN_VALIDITY,
        };
        let (connector, user) = (&dialer.connector, mailbox.address.as_str());
        dial::with_token(
            &dialer.tokens,
            &owner,
            user,
            min_validity,
            |token| async move { connector.smtp(server, user, &token).await },
        )
        .await
    }

    /// An SMTP login of `mailbox` proven through the pool: a connection of it that is busy
    /// or kept and alive proves it without a round trip, if that login is younger than
    /// `limits.smtp_connection_max_age_secs`; else one is dialled (and kept).
    /// Its errors are the upstream's, so that `auto` still sees `535 5.7.139`.
    pub async fn log_in(&self, mailbox: &Mailbox) -> Result<Proven, Error> {
        let server = self.server_for(mailbox)?;
        let slot = self.slot(mailbox, &server);
        let (open, idle) = slot.counts();
        if open > idle
            && let Some((capabilities, ok)) = slot.recent_login()
        {
            let connected_in = None;
            return Ok(Proven {
                capabilities,
                ok,
                connected_in,
            });
        }
        let lease = match self.checkout(mailbox).await {
            Ok(lease) => lease,
            Err(Unavailable::Login(e)) => return Err(e),
            Err(Unavailable::Busy) => {
                return Err(Error::UpstreamTimeout {
                    server: server.to_string(),
                    during: "waiting for a free connection of the mailbox",
                });
            }
        };
        let connected_in = lease.connected_in;
        lease.check_in(Left::Clean);
        let (capabilities, ok) = slot.login().unwrap_or_default();
        Ok(Proven {
            capabilities,
            ok,
            connected_in,
        })
    }

    /// Sends `message` (unstuffed, CRLF) from `sender` (with its `MAIL FROM` `parameters`,
    /// e.g. `SMTPUTF8`) to `recipients` as `mailbox`, for the queue: on a pooled
    /// connection, waiting for one like a client transaction.
    pub async fn send_message(
        &self,
        mailbox: &Arc<Mailbox>,
        sender: &str,
        parameters: &[String],
        recipients: &[String],
        message: &[u8],
    ) -> SmtpSend {
        let mut lease = match self.checkout(mailbox).await {
            Ok(lease) => lease,
            Err(unavailable) => return self.not_sent(mailbox, unavailable),
        };
        let (outcome, left) = send::transaction(
            &mut lease.conn.conn,
            sender,
            parameters,
            recipients,
            message,
        )
        .await;
        lease.check_in(left);
        outcome
    }

    /// The queue's verdict when no connection could be had; a `535 5.7.139` switches an
    /// `auto` mailbox to Microsoft Graph for its next attempt.
    fn not_sent(&self, mailbox: &Mailbox, unavailable: Unavailable) -> SmtpSend {
        if let Unavailable::Login(Error::UpstreamRejected { reply, .. }) = &unavailable
            && mailbox.sending.smtp_via == SmtpVia::Auto
            && is_smtp_auth_disabled(reply)
        {
            self.routes.switch_to_graph(&mailbox.address, reply);
        }
        let reply = match &unavailable {
            Unavailable::Busy => unavailable.reply().trim_end().to_owned(),
            Unavailable::Login(e) => format!("upstream login failed: {e}"),
        };
        SmtpSend::Temporary { reply }
    }

    /// Connections open per mailbox and server, dials and reuses so far.
    pub fn stats(&self) -> PoolStats {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let mut stats = PoolStats::default();
        for ((mailbox, server), slot) in slots.iter() {
            stats.dials += slot.dials.load(Ordering::Relaxed);
            stats.reuses += slot.reuses.load(Ordering::Relaxed);
            let (open, idle) = slot.counts();
            stats
                .open
                .push((mailbox.clone(), server.clone(), open, idle));
        }
        stats.open.sort();
        stats
    }
}
