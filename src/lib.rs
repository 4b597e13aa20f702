//! m365-relay lets legacy mail clients that only know a user name and a password use
//! Microsoft 365, which demands OAuth 2.0 (SASL XOAUTH2). A client logs in to a local
//! listener with a local password; the relay checks it, logs in upstream with XOAUTH2 and
//! an access token from its per-mailbox cache. IMAP and POP3 sessions are then relayed
//! byte for byte; SMTP transactions are read by the relay itself ([`submission`]), which
//! applies the sender rules and Microsoft's limits before anything goes out.
//!
//! # Layout
//! - [`config`]: the TOML configuration, defaults and validation.
//! - [`cli`]: the command line (`serve`, `mailbox ...`); `main.rs` only calls it.
//! - [`server`]: binds the listeners, accepts connections, runs a session per client.
//! - [`codec`]: the one bounded line reader every protocol reads client input through.
//! - [`protocol`]: per mail protocol, a pure pre-auth state machine and its small async
//!   driver, ending in a [`protocol::Handoff`].
//! - [`auth`]: the live mailbox registry (re-read when it changes) and the local password
//!   check against it.
//! - [`abuse`]: failed-login counts, delays and refusals per source and mailbox, and open
//!   connections per source, in bounded memory.
//! - [`mailbox`]: the pure mailbox domain: mailboxes, registrations, credentials, password
//!   verifiers, sending settings, address rules and the in-memory registry.
//! - [`upstream`]: connects to Microsoft 365 and logs in with XOAUTH2.
//! - [`relay`]: after login, a dumb, bounded, back-pressured pipe between the two sides.
//! - [`oauth`]: token endpoint, token cache, refresher, certificate assertions.
//! - [`cloud`]: the Microsoft clouds (global, US Government, China): login host, scopes,
//!   mail servers.
//! - [`datetime`]: dates and durations in words, Unix seconds.
//! - [`tls`]: TLS for the local listeners (self-signed if needed) and for upstream.
//! - [`graph`]: sends a message received over SMTP through Microsoft Graph (`sendMail`,
//!   or a draft with upload sessions), for mailboxes without SMTP AUTH.
//! - [`submission`]: SMTP after login: commands, the DATA stream, the strict header and
//!   address readings behind the sender check, sending limits, and the two ways out.
//! - [`admin`]: the HTTP admin endpoint (health, readiness, metrics, status, reload),
//!   behind a bearer token, a Host check and connection bounds.
//! - [`metrics`]: the Prometheus metrics.
//! - [`error`]: one error type that knows which side failed.
//! - [`logfield`]: client-controlled text in logs, escaped and capped.
//! - [`secret`]: redacting newtypes for passwords, tokens and client secrets.
//! - [`state`]: the one place that persists anything (registry, refresh tokens, statuses, route
//!   switches): traits, the `files` backend (atomic 0600 writes, the lock, the MAC), sealing.
#![forbid(unsafe_code)]

pub mod abuse;
pub mod admin;
pub mod auth;
pub mod cli;
pub mod cloud;
pub mod codec;
pub mod config;
pub mod datetime;
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
