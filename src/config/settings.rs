//! The validated configuration that the relay runs with, every path resolved; `parse.rs`
//! builds it from the file.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

use super::address::ServerAddress;
use super::admin::AdminConfig;
use super::limits::Limits;
use super::listeners::ListenConfig;
use super::queue::{DeliveryLogConfig, QueueConfig};
use super::sending::{GraphConfig, TrustedConfig};
use super::state::StateBackend;

/// A validated configuration with every path resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from: the file, or `None` for the built-in default.
    pub source: Option<PathBuf>,
    /// Which backend keeps the state (`[state]`).
    pub state: StateBackend,
    pub state_dir: PathBuf,
    /// The key that encrypts refresh tokens and client secrets at rest, when
    /// `M365_RELAY_KEY` does not give one. Kept outside `state_dir` on purpose.
    pub key_file: PathBuf,
    pub allow_plaintext_on_loopback: bool,
    /// The load balancers whose connections start with a PROXY protocol header naming the
    /// real client ([`crate::protocol::proxy_header`]); every other peer's header is refused.
    pub proxy_protocol_from: Vec<IpNet>,
    pub tls: TlsConfig,
    pub smtp: ListenConfig,
    pub imap: ListenConfig,
    pub pop3: ListenConfig,
    pub upstream: UpstreamConfig,
    pub entra: EntraConfig,
    pub admin: AdminConfig,
    pub limits: Limits,
    /// The durable outbound queue.
    pub queue: QueueConfig,
    /// The delivery log.
    pub log: DeliveryLogConfig,
    /// Microsoft Graph, for mailboxes that send through it.
    pub graph: GraphConfig,
    /// The listener for devices on trusted networks that send without logging in.
    pub trusted: Option<TrustedConfig>,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Extra PEM trust anchors for upstream servers and the authority.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct EntraConfig {
    /// Login host without a trailing slash, e.g. `https://login.microsoftonline.com`.
    pub authority: String,
}

impl Config {
    /// Whether a connection from `peer` must start with a PROXY protocol header.
    pub fn is_proxy(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.proxy_protocol_from
            .iter()
            .any(|net| net.contains(&peer))
    }

    /// Refuses `cloud` for a mailbox when the configured upstreams are another cloud's
    /// ([`crate::cloud::check_upstreams`]).
    pub fn check_cloud(&self, cloud: crate::cloud::Cloud) -> Result<(), String> {
        fn upstream<'a>(
            key: &'static str,
            address: &'a ServerAddress,
        ) -> crate::cloud::Upstream<'a> {
            crate::cloud::Upstream {
                key,
                host: &address.host,
                address,
            }
        }
        crate::cloud::check_upstreams(
            cloud,
            [
                upstream("smtp.upstream", &self.smtp.upstream),
                upstream("imap.upstream", &self.imap.upstream),
                upstream("pop3.upstream", &self.pop3.upstream),
            ],
            &self.describe_source(),
        )
    }

    /// Where the config came from, for messages.
    pub fn describe_source(&self) -> String {
        match &self.source {
            Some(p) => p.display().to_string(),
            None => "built-in default config".into(),
        }
    }
}
