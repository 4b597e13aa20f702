//! m365-relay lets legacy mail clients that only know a user name and a password use
//! Microsoft 365, which demands OAuth 2.0 (SASL XOAUTH2). A client logs in to a local
//! listener with a local password; the relay checks it, logs in upstream with XOAUTH2 and
//! an access token from its per-mailbox cache. IMAP and POP3 sessions are then relayed
//! byte for byte; SMTP transactions are read by the relay itself ([`submission`]), which
//! applies the sender rules and Microsoft's limits before anything goes out.
//!
//! # Layout
//! The layers, bottom first: a module imports only the ones before it (ARCHITECTURE.md,
//! checked by `tests/it/architecture.rs`).
//! - [`secret`]: redacting newtypes for passwords, tokens and client secrets.
//! - [`logfield`]: client-controlled text in logs, escaped and capped; error cause chains.
//! - [`codec`]: the one bounded line reader every protocol reads client input through.
//! - [`datetime`]: dates and durations in words, Unix seconds.
//! - [`cloud`]: the Microsoft clouds (global, US Government, China): login host, scopes,
//!   mail servers.
//! - [`mailbox`]: the pure mailbox domain: mailboxes, registrations, credentials, password
//!   verifiers, sending settings, address rules and the in-memory registry.
//! - [`config`]: the TOML configuration, defaults and validation.
//! - [`state`]: the one place that persists anything (registry, refresh tokens, statuses,
//!   route switches): traits, the `files` backend (atomic 0600 writes, the lock, the MAC),
//!   sealing with the state key.
//! - [`tls`]: TLS for the local listeners (self-signed if needed) and for upstream.
//! - [`oauth`]: token endpoint (one request path for every grant), sign-in flows,
//!   certificate assertions, the access-token cache, the refresher, token health.
//! - [`error`]: one error type that knows which side failed.
//! - [`protocol`]: per mail protocol, a pure pre-auth state machine and its small async
//!   driver, ending in a [`protocol::Handoff`]; SASL; every SMTP command and reply.
//! - [`upstream`]: connects to Microsoft 365 and logs in with XOAUTH2.
//! - [`relay`]: after an IMAP or POP3 login, a dumb, bounded, back-pressured byte pipe.
//! - [`abuse`]: failed-login counts, delays and refusals per source and mailbox, and open
//!   connections per source, in bounded memory.
//! - [`auth`]: the live mailbox registry (re-read when it changes) and the local password
//!   check against it.
//! - [`graph`]: sends a message received over SMTP through Microsoft Graph (`sendMail`,
//!   or a draft with upload sessions), for mailboxes without SMTP AUTH.
//! - [`submission`]: serves a logged-in SMTP session: the DATA/BDAT stream, the strict
//!   header and address readings behind the sender check, sending limits, and the two ways
//!   out (SMTP AUTH, Graph).
//! - [`delivery`]: the queue's workers: queued messages out through their mailbox's route
//!   within Microsoft's limits, retries with back-off, notices (RFC 3464) to senders.
//! - [`metrics`]: the Prometheus metrics.
//! - [`admin`]: the HTTP admin endpoint (health, readiness, metrics, status, reload),
//!   behind a bearer token, a Host check and connection bounds.
//! - [`server`]: builds the shared services, binds the listeners, accepts connections,
//!   runs a session per client, reloads and shuts down.
//! - [`cli`]: the command line (`serve`, `mailbox ...`); `main.rs` only calls it.
#![forbid(unsafe_code)]

pub mod abuse;
pub mod admin;
pub mod auth;
pub mod cli;
pub mod cloud;
pub mod codec;
pub mod config;
pub mod datetime;
pub mod delivery;
pub mod error;
pub mod graph;
pub mod logfield;
pub mod mailbox;
pub mod metrics;
pub mod oauth;
pub mod protocol;
pub mod relay;
pub mod secret;
pub mod server;
pub mod state;
pub mod submission;
pub mod tls;
pub mod upstream;
