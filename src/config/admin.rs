//! `[admin]`: where the admin HTTP endpoint listens, where its bearer token lives, which
//! `Host` names it answers to, and the bounds on its connections. What the endpoint does
//! with them is in the `admin` module.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The token file's name when `admin.token_file` is not set: next to the state key.
pub const DEFAULT_TOKEN_FILE_NAME: &str = "admin.token";

/// Longest `Host` name accepted in `allowed_hosts` (RFC 1035 §2.3.4: 255 octets).
const MAX_HOST_NAME: usize = 255;

/// Most names in `allowed_hosts`: each request is compared with all of them.
const MAX_ALLOWED_HOSTS: usize = 64;

/// The admin HTTP endpoint: `/healthz`, `/readyz`, `/metrics`, `/status`, `/reload`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `None` turns the endpoint off.
    pub listen: Option<SocketAddr>,
    /// Whether `/readyz` fails while a mailbox needs re-authorization or has no token.
    pub ready_requires_tokens: bool,
    /// The file holding the bearer token (created on first use), unless
    /// `M365_RELAY_ADMIN_TOKEN` gives it. Default: `admin.token` next to `key_file`.
    pub token_file: PathBuf,
    /// Names (host names or IP addresses) that requests may give in `Host` besides
    /// loopback and the address they reached: lowercase, no port, no trailing dot.
    pub allowed_hosts: Vec<String>,
    /// How long a client may take to send a request's header section; also the longest
    /// wait for the next request on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// Most admin connections open at once; more are answered `503` and closed.
    pub max_connections: usize,
}

/// `[admin]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdmin {
    pub(super) listen: String,
    ready_requires_tokens: bool,
    token_file: String,
    allowed_hosts: Vec<String>,
    header_read_timeout_secs: u64,
    max_connections: usize,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9587".into(),
            ready_requires_tokens: false,
            token_file: String::new(),
            allowed_hosts: Vec::new(),
            header_read_timeout_secs: 10,
            max_connections: 16,
        }
    }
}

impl RawAdmin {
    /// Checks the section; `listen` is already parsed, `resolve` makes a path absolute.
    pub(super) fn validate(
        &self,
        listen: Option<SocketAddr>,
        key_file: &Path,
        resolve: &impl Fn(&str) -> PathBuf,
    ) -> Result<AdminConfig, (&'static str, String)> {
        let token_file = match self.token_file.trim() {
            "" => key_file
                .parent()
                .unwrap_or(Path::new(""))
                .join(DEFAULT_TOKEN_FILE_NAME),
            path => resolve(path),
        };
        if !(1..=300).contains(&self.header_read_timeout_secs) {
            return Err((
                "admin.header_read_timeout_secs",
                "must be between 1 and 300".into(),
            ));
        }
        if !(1..=1024).contains(&self.max_connections) {
            return Err(("admin.max_connections", "must be between 1 and 1024".into()));
        }
        if self.allowed_hosts.len() > MAX_ALLOWED_HOSTS {
            return Err((
                "admin.allowed_hosts",
                format!("at most {MAX_ALLOWED_HOSTS} names"),
            ));
        }
        let allowed_hosts = self
            .allowed_hosts
            .iter()
            .map(|name| {
                allowed_host(name).ok_or_else(|| {
                    (
                        "admin.allowed_hosts",
                        format!(
                            "{name:?} is not a host name or IP address (give it without \
                             scheme, port or wildcard, e.g. \"relay\" or \"10.0.0.5\")"
                        ),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(AdminConfig {
            listen,
            ready_requires_tokens: self.ready_requires_tokens,
            token_file,
            allowed_hosts,
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            max_connections: self.max_connections,
        })
    }
}

/// `name` in the form requests' `Host` names are compared in (lowercase, no trailing dot;
/// an IPv6 address without brackets), or `None` if it is neither a DNS name nor an IP
/// address.
fn allowed_host(name: &str) -> Option<String> {
    let name = name.trim();
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(ip.to_string());
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    (name.len() <= MAX_HOST_NAME && name.split('.').all(label_ok)).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(raw: RawAdmin) -> Result<AdminConfig, (&'static str, String)> {
        raw.validate(None, Path::new("/etc/relay/certs/state.key"), &|p| {
            Path::new("/etc/relay").join(p)
        })
    }

    #[test]
    fn the_token_file_defaults_to_the_state_keys_folder() {
        let config = validate(RawAdmin::default()).unwrap();
        assert_eq!(config.token_file, Path::new("/etc/relay/certs/admin.token"));
        let config = validate(RawAdmin {
            token_file: "secrets/admin".into(),
            ..RawAdmin::default()
        })
        .unwrap();
        assert_eq!(config.token_file, Path::new("/etc/relay/secrets/admin"));
    }

    #[test]
    fn allowed_hosts_are_names_or_addresses_only() {
        let config = validate(RawAdmin {
            allowed_hosts: vec!["Relay.Example.".into(), "[::1]".into(), "10.0.0.5".into()],
            ..RawAdmin::default()
        })
        .unwrap();
        assert_eq!(config.allowed_hosts, ["relay.example", "::1", "10.0.0.5"]);
        for bad in [
            "",
            "*.example.com",
            "relay:9587",
            "http://relay",
            "a b",
            "-x.example",
        ] {
            let e = validate(RawAdmin {
                allowed_hosts: vec![bad.into()],
                ..RawAdmin::default()
            })
            .unwrap_err();
            assert_eq!(e.0, "admin.allowed_hosts", "{bad}");
        }
    }

    #[test]
    fn the_shipped_default_says_what_the_defaults_are() {
        let shipped = crate::config::Config::parse(
            crate::config::DEFAULT_CONFIG,
            "default",
            Path::new("/etc/relay"),
            None,
        )
        .unwrap()
        .admin;
        let default = validate(RawAdmin::default()).unwrap();
        assert_eq!(shipped.token_file, default.token_file);
        assert_eq!(shipped.allowed_hosts, default.allowed_hosts);
        assert_eq!(shipped.header_read_timeout, default.header_read_timeout);
        assert_eq!(shipped.max_connections, default.max_connections);
    }

    #[test]
    fn bounds_are_checked() {
        let e = validate(RawAdmin {
            header_read_timeout_secs: 0,
            ..RawAdmin::default()
        })
        .unwrap_err();
        assert_eq!(e.0, "admin.header_read_timeout_secs");
        let e = validate(RawAdmin {
            max_connections: 0,
            ..RawAdmin::default()
        })
        .unwrap_err();
        assert_eq!(e.0, "admin.max_connections");
    }
}
