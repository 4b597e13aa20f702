//! The relay's configuration: the TOML file, its defaults (the commented file in
//! `config/m365-relay.toml`, built into the binary), and the checks that refuse unknown keys
//! and unsafe combinations before anything starts.
//!
//! [`parse`] reads the file section by section into the
//! validated [`Config`] of [`settings`]; [`listeners`], [`limits`], [`admin`] and
//! [`sending`] (Graph and the trusted-network listener), `state` (the backend), `queue` (`[queue]` and `[log]`) are the sections with their
//! defaults and checks; [`address`] holds the address forms they share.

mod address;
mod admin;
mod error;
mod limits;
mod listeners;
mod parse;
mod queue;
mod sending;
mod settings;
mod state;
#[cfg(test)]
mod tests;

pub use address::{ServerAddress, is_loopback};
pub use admin::AdminConfig;
pub use error::ConfigError;
pub use limits::{Limits, MAX_LINE, MIN_LINE, SMTP_AUTH_LINE};
pub use listeners::ListenConfig;
pub use parse::{CONFIG_ENV, DEFAULT_CONFIG};
pub use queue::{DeliveryLogConfig, LogRecipients, QueueConfig};
pub use sending::{DEFAULT_GRAPH_ENDPOINT, GraphConfig, TrustedConfig};
pub use settings::{Config, EntraConfig, TlsConfig, UpstreamConfig};
pub use state::{DATABASE_URL_ENV, DatabaseConfig, DatabaseTls, StateBackend};
