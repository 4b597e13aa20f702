//! The configuration of mail submission beyond relaying SMTP AUTH: the Microsoft Graph
//! endpoint (for mailboxes whose SMTP AUTH is switched off) and the `[smtp.trusted]`
//! listener, where devices on listed networks send without logging in, as one mailbox.

use std::net::SocketAddr;

use ipnet::IpNet;
use serde::Deserialize;

use super::address::is_loopback;

/// Microsoft Graph v1.0 in the worldwide cloud. Left at this value, each mailbox uses its
/// own cloud's Graph host ([`crate::cloud::Cloud::graph_endpoint`]); any other
/// value is used for every mailbox (a proxy, or a fake Graph in tests).
pub const DEFAULT_GRAPH_ENDPOINT: &str = "https://graph.microsoft.com/v1.0";

/// `[graph]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphConfig {
    /// The base URL with its version and no trailing slash.
    pub endpoint: String,
}

impl GraphConfig {
    /// The Graph base URL for a mailbox in `cloud`.
    pub fn endpoint_for(&self, cloud: crate::cloud::Cloud) -> &str {
        if self.endpoint == DEFAULT_GRAPH_ENDPOINT {
            cloud.graph_endpoint()
        } else {
            &self.endpoint
        }
    }
}

/// `[smtp.trusted]`: a listener without AUTH for devices (scanners, printers) on trusted
/// networks. Every message goes out as `mailbox`, under its sender rules and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedConfig {
    pub listen: SocketAddr,
    /// Sources that may connect; any other is refused at once.
    pub networks: Vec<IpNet>,
    /// The registered mailbox the devices send as (lower case).
    pub mailbox: String,
}

impl TrustedConfig {
    /// Whether a client at `peer` may use the listener.
    pub fn admits(&self, peer: std::net::IpAddr) -> bool {
        let peer = match peer {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.networks.iter().any(|net| net.contains(&peer))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawGraph {
    endpoint: String,
}

impl Default for RawGraph {
    fn default() -> Self {
        Self {
            endpoint: DEFAULT_GRAPH_ENDPOINT.into(),
        }
    }
}

impl RawGraph {
    pub(super) fn validate(&self) -> Result<GraphConfig, String> {
        let endpoint = super::address::validate_authority(&self.endpoint)?;
        Ok(GraphConfig { endpoint })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTrusted {
    listen: String,
    networks: Vec<String>,
    mailbox: String,
}

impl RawTrusted {
    /// `None` when the listener is off (`listen` empty). A listener on a loopback address
    /// admits loopback clients unless `networks` says otherwise; any other address needs
    /// an explicit network list, so that turning it on never opens it to everyone.
    pub(super) fn validate(&self) -> Result<Option<TrustedConfig>, (&'static str, String)> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        let listen: SocketAddr = listen.parse().map_err(|_| {
            (
                "smtp.trusted.listen",
                format!("`{listen}` is not an IP address and port"),
            )
        })?;
        let mut networks = Vec::new();
        for text in &self.networks {
            networks.push(parse_network(text).map_err(|why| ("smtp.trusted.networks", why))?);
        }
        if networks.is_empty() {
            if !is_loopback(listen.ip()) {
                return Err((
                    "smtp.trusted.networks",
                    format!(
                        "the listener on {listen} is not on loopback: list the networks that \
                         may send without logging in (CIDR, e.g. \"192.168.10.0/24\")"
                    ),
                ));
            }
            networks = vec![loopback_v4(), loopback_v6()];
        }
        let mailbox = crate::mailbox::normalize_address(&self.mailbox)
            .map_err(|e| ("smtp.trusted.mailbox", e.to_string()))?;
        Ok(Some(TrustedConfig {
            listen,
            networks,
            mailbox,
        }))
    }
}

/// `192.168.10.0/24`, `2001:db8::/64`, or a single address (a /32 or /128).
pub(super) fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        if net.network() != net.addr() {
            return Err(format!(
                "`{text}` has host bits set: did you mean `{}`?",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    text.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("`{text}` is not a network in CIDR notation"))
}

pub(super) fn loopback_v4() -> IpNet {
    IpNet::V4(ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::LOCALHOST, 8))
}

pub(super) fn loopback_v6() -> IpNet {
    IpNet::V6(ipnet::Ipv6Net::new_assert(
        std::net::Ipv6Addr::LOCALHOST,
        128,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(listen: &str, networks: &[&str]) -> RawTrusted {
        RawTrusted {
            listen: listen.into(),
            networks: networks.iter().map(|s| s.to_string()).collect(),
            mailbox: "Scanner@Contoso.com".into(),
        }
    }

    #[test]
    fn off_unless_listening() {
        assert_eq!(raw("", &[]).validate(), Ok(None));
    }

    #[test]
    fn loopback_listener_admits_loopback_by_default() {
        let t = raw("127.0.0.1:2525", &[]).validate().unwrap().unwrap();
        assert_eq!(t.mailbox, "scanner@contoso.com");
        assert!(t.admits("127.0.0.1".parse().unwrap()));
        assert!(t.admits("::1".parse().unwrap()));
        assert!(t.admits("::ffff:127.0.0.9".parse().unwrap()));
        assert!(!t.admits("192.168.1.5".parse().unwrap()));
    }

    #[test]
    fn other_binds_need_a_network_list() {
        let (key, why) = raw("0.0.0.0:2525", &[]).validate().unwrap_err();
        assert_eq!(key, "smtp.trusted.networks");
        assert!(why.contains("CIDR"), "{why}");
        let t = raw("0.0.0.0:2525", &["192.168.10.0/24", "10.1.2.3"])
            .validate()
            .unwrap()
            .unwrap();
        assert!(t.admits("192.168.10.77".parse().unwrap()));
        assert!(t.admits("10.1.2.3".parse().unwrap()));
        assert!(!t.admits("10.1.2.4".parse().unwrap()));
        assert!(!t.admits("192.168.11.1".parse().unwrap()));
    }

    #[test]
    fn bad_networks_are_named() {
        let (_, why) = raw("0.0.0.0:2525", &["192.168.10.1/24"])
            .validate()
            .unwrap_err();
        assert!(why.contains("192.168.10.0/24"), "{why}");
        assert!(raw("0.0.0.0:2525", &["lan"]).validate().is_err());
        assert!(raw("127.0.0.1:2525", &[]).validate().is_ok());
        let mut no_mailbox = raw("127.0.0.1:2525", &[]);
        no_mailbox.mailbox = String::new();
        assert_eq!(no_mailbox.validate().unwrap_err().0, "smtp.trusted.mailbox");
    }
}
