//! The relay's configuration: the TOML file, its defaults (the commented file in
//! `config/m365-relay.toml`, built into the binary), and the checks that refuse unknown keys
//! and unsafe combinations before anything starts.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod admin;
mod sending;
pub use admin::AdminConfig;
use admin::RawAdmin;
pub use sending::{DEFAULT_GRAPH_ENDPOINT, GraphConfig, TrustedConfig};
use sending::{RawGraph, RawTrusted};

/// The commented default configuration, as shipped in `config/m365-relay.toml`.
pub const DEFAULT_CONFIG: &str = include_str!("../config/m365-relay.toml");

/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "M365_RELAY_CONFIG";

/// A validated configuration with every path resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from: the file, or `None` for the built-in default.
    pub source: Option<PathBuf>,
    pub state_dir: PathBuf,
    /// The key that encrypts refresh tokens and client secrets at rest, when
    /// `M365_RELAY_KEY` does not give one. Kept outside `state_dir` on purpose.
    pub key_file: PathBuf,
    pub allow_plaintext_on_loopback: bool,
    pub tls: TlsConfig,
    pub smtp: ListenConfig,
    pub imap: ListenConfig,
    pub pop3: ListenConfig,
    pub upstream: UpstreamConfig,
    pub entra: EntraConfig,
    pub admin: AdminConfig,
    pub limits: Limits,
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

/// The listeners of one mail protocol and the upstream server they relay to.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    /// Plaintext listener offering STARTTLS (STLS for POP3); `None` when turned off.
    pub listen_starttls: Option<SocketAddr>,
    /// Implicit-TLS listener (RFC 8314); `None` when turned off.
    pub listen_tls: Option<SocketAddr>,
    /// SMTP: STARTTLS on connect; IMAP and POP3: implicit TLS.
    pub upstream: ServerAddress,
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

/// Resource bounds. Each one keeps a broken or hostile peer from holding the relay; the
/// pre-auth ones are deliberately small, because before login nobody is trusted (Redis's
/// CVE-2021-32675 was a server that gave unauthenticated clients its authenticated limits).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open client connections over all listeners.
    pub max_connections: usize,
    /// Open client connections from one source address (an IPv6 client's /64 counts as
    /// one address), unless it is in `local_networks`.
    pub max_connections_per_source: usize,
    /// Open client connections from one address in `local_networks`: the applications
    /// the relay is there for, which may open hundreds of sessions at once. Never less
    /// than `max_connections_per_source`.
    pub max_connections_per_local_source: usize,
    /// The networks whose addresses get `max_connections_per_local_source` (CIDR or
    /// single addresses); loopback by default. `[]` gives loopback the ordinary limit
    /// (behind a port forwarder that makes every client look like 127.0.0.1).
    #[serde(deserialize_with = "networks")]
    pub local_networks: Vec<ipnet::IpNet>,
    /// An IMAP or POP3 client gets its upstream connection opened while it logs in (it
    /// saves the login a connection to Microsoft) only if its address logged in
    /// successfully within this time; 0 turns that off.
    pub preconnect_after_login_secs: u64,
    /// Such speculative upstream connections at once, over all clients.
    pub max_speculative_connections: usize,
    /// Time a client has from connecting to logging in.
    pub preauth_timeout_secs: u64,
    /// Longest SMTP command line before login, CRLF included: RFC 5321 §4.5.3.1.4 says 512.
    /// AUTH lines may always be 12288 octets (RFC 4954 §4).
    pub max_line_smtp: usize,
    /// Longest IMAP line before login, CRLF included.
    pub max_line_imap: usize,
    /// Longest POP3 line before login, CRLF included (RFC 2449 allows commands 255
    /// octets, but SASL responses are longer).
    pub max_line_pop3: usize,
    /// Largest IMAP literal before login: a user name or a password needs no more.
    pub max_literal_imap: usize,
    /// Commands a client may send before it has logged in.
    pub preauth_max_commands: u32,
    /// Bytes a client may send before it has logged in, over-long lines included.
    pub preauth_max_bytes: usize,
    /// Failed logins from one source (or for one mailbox, see [`crate::abuse`]) before
    /// each further login waits: 1 s, then doubling up to `login_delay_max_secs`.
    pub login_failures_before_delay: u32,
    /// The longest such wait.
    pub login_delay_max_secs: u64,
    /// Failed logins from one source within `login_failure_window_secs` after which the
    /// source is refused for `login_block_secs`.
    pub login_failures_before_block: u32,
    /// How long failed logins are remembered.
    pub login_failure_window_secs: u64,
    /// How long a source that failed too often is refused.
    pub login_block_secs: u64,
    /// A logged-in SMTP session with no traffic in either direction for this long is
    /// closed (RFC 5321 §4.5.3.2.7 asks servers to wait at least 5 minutes).
    pub idle_timeout_smtp_secs: u64,
    /// The same for IMAP: longer than IDLE's 29 minutes (RFC 2177: clients re-issue IDLE
    /// at least that often).
    pub idle_timeout_imap_secs: u64,
    /// The same for POP3 (RFC 1939 §3: at least 10 minutes).
    pub idle_timeout_pop3_secs: u64,
    /// Connecting to and logging in to the upstream server.
    pub upstream_timeout_secs: u64,
    /// One request to the token endpoint.
    pub token_timeout_secs: u64,
    /// On SIGTERM/SIGINT, how long open sessions may go on before they are closed.
    pub shutdown_grace_secs: u64,
    /// Messages one mailbox may submit in a minute (Microsoft: 30 through SMTP).
    pub smtp_messages_per_minute: u32,
    /// Recipients of one message (Microsoft: 500 by default, 1 to 1,000).
    pub smtp_recipients_per_message: u32,
    /// Recipients of one mailbox in any 24 hours (Microsoft: 10,000).
    pub smtp_recipients_per_day: u32,
    /// Largest message the relay holds to send it through Microsoft Graph (or receives
    /// with BDAT): Exchange Online's default send limit is 35 MB.
    pub max_message_bytes: usize,
    /// All messages held at once, over all sessions; beyond it a message is refused with
    /// a temporary error.
    pub max_held_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1000,
            max_connections_per_source: 20,
            max_connections_per_local_source: 500,
            local_networks: vec![sending::loopback_v4().trunc(), sending::loopback_v6()],
            preconnect_after_login_secs: 24 * 3600,
            max_speculative_connections: 64,
            preauth_timeout_secs: 60,
            max_line_smtp: 512,
            max_line_imap: 8192,
            max_line_pop3: 8192,
            max_literal_imap: 4096,
            preauth_max_commands: 100,
            preauth_max_bytes: 64 * 1024,
            login_failures_before_delay: 3,
            login_delay_max_secs: 16,
            login_failures_before_block: 10,
            login_failure_window_secs: 600,
            login_block_secs: 900,
            idle_timeout_smtp_secs: 300,
            idle_timeout_imap_secs: 1800,
            idle_timeout_pop3_secs: 600,
            upstream_timeout_secs: 30,
            token_timeout_secs: 30,
            shutdown_grace_secs: 30,
            smtp_messages_per_minute: 30,
            smtp_recipients_per_message: 500,
            smtp_recipients_per_day: 10_000,
            max_message_bytes: 35 * 1024 * 1024,
            max_held_message_bytes: 256 * 1024 * 1024,
        }
    }
}

/// The shortest line limit a client can live with (RFC 5321 §4.5.3.1.4's 512 octets).
pub const MIN_LINE: usize = 512;
/// The longest line limit the config accepts; no login needs more.
pub const MAX_LINE: usize = 64 * 1024;
/// The longest SMTP AUTH line (RFC 4954 §4), which `preauth_max_bytes` must hold.
pub const SMTP_AUTH_LINE: usize = 12288;

/// `local_networks` as written: each a network or an address.
fn networks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    let written = Vec::<String>::deserialize(d)?;
    written
        .iter()
        .map(|text| sending::parse_network(text).map_err(serde::de::Error::custom))
        .collect()
}

impl Limits {
    /// The connection limit of one source address.
    pub fn max_connections_from(&self, source: IpAddr) -> usize {
        let source = match source {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(source, IpAddr::V4),
            v4 => v4,
        };
        if self.local_networks.iter().any(|net| net.contains(&source)) {
            // Never stricter than a remote address: raising the general limit raises it here.
            self.max_connections_per_local_source
                .max(self.max_connections_per_source)
        } else {
            self.max_connections_per_source
        }
    }

    pub fn preconnect_after_login(&self) -> Duration {
        Duration::from_secs(self.preconnect_after_login_secs)
    }

    pub fn preauth_timeout(&self) -> Duration {
        Duration::from_secs(self.preauth_timeout_secs)
    }
    pub fn idle_timeout_smtp(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_smtp_secs)
    }
    pub fn idle_timeout_imap(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_imap_secs)
    }
    pub fn idle_timeout_pop3(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_pop3_secs)
    }
    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream_timeout_secs)
    }
    pub fn token_timeout(&self) -> Duration {
        Duration::from_secs(self.token_timeout_secs)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// Refuses zeros and limits no client could live with; names the key.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, value) in [
            ("limits.max_connections", self.max_connections as u64),
            (
                "limits.max_connections_per_source",
                self.max_connections_per_source as u64,
            ),
            (
                "limits.max_connections_per_local_source",
                self.max_connections_per_local_source as u64,
            ),
            ("limits.preauth_timeout_secs", self.preauth_timeout_secs),
            ("limits.max_literal_imap", self.max_literal_imap as u64),
            (
                "limits.preauth_max_commands",
                u64::from(self.preauth_max_commands),
            ),
            ("limits.login_delay_max_secs", self.login_delay_max_secs),
            (
                "limits.login_failures_before_block",
                u64::from(self.login_failures_before_block),
            ),
            (
                "limits.login_failure_window_secs",
                self.login_failure_window_secs,
            ),
            ("limits.login_block_secs", self.login_block_secs),
            ("limits.idle_timeout_smtp_secs", self.idle_timeout_smtp_secs),
            ("limits.idle_timeout_imap_secs", self.idle_timeout_imap_secs),
            ("limits.idle_timeout_pop3_secs", self.idle_timeout_pop3_secs),
            ("limits.upstream_timeout_secs", self.upstream_timeout_secs),
            ("limits.token_timeout_secs", self.token_timeout_secs),
            ("limits.shutdown_grace_secs", self.shutdown_grace_secs),
            (
                "limits.smtp_messages_per_minute",
                u64::from(self.smtp_messages_per_minute),
            ),
            (
                "limits.smtp_recipients_per_message",
                u64::from(self.smtp_recipients_per_message),
            ),
            (
                "limits.smtp_recipients_per_day",
                u64::from(self.smtp_recipients_per_day),
            ),
            ("limits.max_message_bytes", self.max_message_bytes as u64),
        ] {
            if value == 0 {
                return Err((key, "must be greater than 0".into()));
            }
        }
        for (key, value) in [
            ("limits.max_line_smtp", self.max_line_smtp),
            ("limits.max_line_imap", self.max_line_imap),
            ("limits.max_line_pop3", self.max_line_pop3),
        ] {
            if !(MIN_LINE..=MAX_LINE).contains(&value) {
                return Err((key, format!("must be from {MIN_LINE} to {MAX_LINE}")));
            }
        }
        if self.max_literal_imap > MAX_LINE {
            return Err((
                "limits.max_literal_imap",
                format!("must be at most {MAX_LINE}"),
            ));
        }
        let longest = [
            SMTP_AUTH_LINE,
            self.max_line_smtp,
            self.max_line_imap,
            self.max_line_pop3,
        ]
        .into_iter()
        .max()
        .unwrap_or(SMTP_AUTH_LINE);
        if self.preauth_max_bytes < longest {
            return Err((
                "limits.preauth_max_bytes",
                format!("must hold the longest line a login may need ({longest} octets)"),
            ));
        }
        if self.max_held_message_bytes < self.max_message_bytes {
            return Err((
                "limits.max_held_message_bytes",
                "must hold at least one message of `limits.max_message_bytes`".into(),
            ));
        }
        if self.login_failures_before_delay >= self.login_failures_before_block {
            return Err((
                "limits.login_failures_before_delay",
                "must be less than `limits.login_failures_before_block`".into(),
            ));
        }
        Ok(())
    }
}

/// A `host:port` pair of an upstream server; `host` is also the TLS server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl ServerAddress {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` is not host:port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{port}` in `{s}` is not a port number"))?;
        if host.is_empty() || port == 0 {
            return Err(format!("`{s}` is not host:port"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

/// Why a configuration was refused: which file, which key, and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {}{why}", key.as_deref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
pub struct ConfigError {
    pub file: String,
    pub key: Option<String>,
    pub why: String,
}

// === the file as written ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    state_dir: String,
    key_file: String,
    allow_plaintext_on_loopback: bool,
    tls: RawTls,
    smtp: RawListen,
    imap: RawListen,
    pop3: RawListen,
    upstream: RawUpstream,
    entra: RawEntra,
    admin: RawAdmin,
    limits: Limits,
    graph: RawGraph,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    cert: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    listen_starttls: Option<String>,
    listen_tls: Option<String>,
    upstream: Option<String>,
    /// `[smtp.trusted]` only.
    trusted: Option<RawTrusted>,
}

impl RawListen {
    const fn empty() -> Self {
        Self {
            listen_starttls: None,
            listen_tls: None,
            upstream: None,
            trusted: None,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawUpstream {
    ca_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEntra {
    authority: String,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            state_dir: "state".into(),
            key_file: "certs/state.key".into(),
            allow_plaintext_on_loopback: true,
            tls: RawTls::default(),
            smtp: RawListen::empty(),
            imap: RawListen::empty(),
            pop3: RawListen::empty(),
            upstream: RawUpstream::default(),
            entra: RawEntra::default(),
            admin: RawAdmin::default(),
            limits: Limits::default(),
            graph: RawGraph::default(),
        }
    }
}

impl Default for RawTls {
    fn default() -> Self {
        Self {
            cert: "certs/relay.crt".into(),
            key: "certs/relay.key".into(),
        }
    }
}

/// Default listeners and upstream of one protocol.
struct ListenDefaults {
    section: &'static str,
    listen_starttls: &'static str,
    listen_tls: &'static str,
    upstream: &'static str,
}

const SMTP_DEFAULTS: ListenDefaults = ListenDefaults {
    section: "smtp",
    listen_starttls: "127.0.0.1:1587",
    listen_tls: "127.0.0.1:1465",
    upstream: "smtp.office365.com:587",
};
const IMAP_DEFAULTS: ListenDefaults = ListenDefaults {
    section: "imap",
    listen_starttls: "127.0.0.1:1143",
    listen_tls: "127.0.0.1:1993",
    upstream: "outlook.office365.com:993",
};
const POP3_DEFAULTS: ListenDefaults = ListenDefaults {
    section: "pop3",
    listen_starttls: "127.0.0.1:1110",
    listen_tls: "127.0.0.1:1995",
    upstream: "outlook.office365.com:995",
};

impl Default for RawEntra {
    fn default() -> Self {
        Self {
            authority: "https://login.microsoftonline.com".into(),
        }
    }
}

// === loading and validation ===

impl Config {
    /// Loads `path`, or the built-in default when `path` is `None` (paths then resolve
    /// against the working directory).
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(path) => {
                let file = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    file: file.clone(),
                    key: None,
                    why: format!("cannot read: {e}"),
                })?;
                let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
                Self::parse(&text, &file, &base, Some(path.to_path_buf()))
            }
            None => {
                let base = std::env::current_dir().unwrap_or_default();
                Self::parse(DEFAULT_CONFIG, "built-in default config", &base, None)
            }
        }
    }

    /// Parses and validates TOML `text`; relative paths resolve against `base`.
    pub fn parse(
        text: &str,
        file: &str,
        base: &Path,
        source: Option<PathBuf>,
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_owned(),
            key: None,
            why: e.message().to_owned() + &line_of(text, e.span()),
        })?;
        let err = |key: &str, why: String| ConfigError {
            file: file.to_owned(),
            key: Some(key.to_owned()),
            why,
        };
        let resolve = |p: &str| {
            let p = Path::new(p);
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let listen = |key: &str, value: &str| -> Result<Option<SocketAddr>, ConfigError> {
            if value.trim().is_empty() {
                return Ok(None);
            }
            value
                .parse()
                .map(Some)
                .map_err(|_| err(key, format!("`{value}` is not an IP address and port")))
        };

        if raw.state_dir.trim().is_empty() {
            return Err(err("state_dir", "must name a folder".into()));
        }
        if raw.key_file.trim().is_empty() {
            return Err(err("key_file", "must name a file".into()));
        }
        for (key, value) in [("tls.cert", &raw.tls.cert), ("tls.key", &raw.tls.key)] {
            if value.trim().is_empty() {
                return Err(err(key, "must name a PEM file".into()));
            }
        }
        let section = |raw: &RawListen, d: &ListenDefaults| -> Result<ListenConfig, ConfigError> {
            let key = |k: &str| format!("{}.{k}", d.section);
            let upstream = raw.upstream.as_deref().unwrap_or(d.upstream);
            Ok(ListenConfig {
                listen_starttls: listen(
                    &key("listen_starttls"),
                    raw.listen_starttls.as_deref().unwrap_or(d.listen_starttls),
                )?,
                listen_tls: listen(
                    &key("listen_tls"),
                    raw.listen_tls.as_deref().unwrap_or(d.listen_tls),
                )?,
                upstream: ServerAddress::parse(upstream)
                    .map_err(|why| err(&key("upstream"), why))?,
            })
        };
        for (key, section) in [("imap.trusted", &raw.imap), ("pop3.trusted", &raw.pop3)] {
            if section.trusted.is_some() {
                return Err(err(key, "only SMTP has a trusted-network listener".into()));
            }
        }
        let trusted = match &raw.smtp.trusted {
            Some(t) => t.validate().map_err(|(key, why)| err(key, why))?,
            None => None,
        };
        let graph = raw
            .graph
            .validate()
            .map_err(|why| err("graph.endpoint", why))?;
        let smtp = section(&raw.smtp, &SMTP_DEFAULTS)?;
        let imap = section(&raw.imap, &IMAP_DEFAULTS)?;
        let pop3 = section(&raw.pop3, &POP3_DEFAULTS)?;
        let key_file = resolve(&raw.key_file);
        let admin = raw
            .admin
            .validate(
                listen("admin.listen", &raw.admin.listen)?,
                &key_file,
                &resolve,
            )
            .map_err(|(key, why)| err(key, why))?;
        check_listeners(&[
            ("smtp.listen_starttls", smtp.listen_starttls),
            ("smtp.listen_tls", smtp.listen_tls),
            ("imap.listen_starttls", imap.listen_starttls),
            ("imap.listen_tls", imap.listen_tls),
            ("pop3.listen_starttls", pop3.listen_starttls),
            ("pop3.listen_tls", pop3.listen_tls),
            ("admin.listen", admin.listen),
            ("smtp.trusted.listen", trusted.as_ref().map(|t| t.listen)),
        ])
        .map_err(|(key, why)| err(key, why))?;
        let ca_file = match raw.upstream.ca_file.trim() {
            "" => None,
            p => {
                let p = resolve(p);
                if !p.is_file() {
                    return Err(err(
                        "upstream.ca_file",
                        format!("{} does not exist", p.display()),
                    ));
                }
                Some(p)
            }
        };
        let authority =
            validate_authority(&raw.entra.authority).map_err(|why| err("entra.authority", why))?;
        let limits = raw.limits;
        limits.validate().map_err(|(key, why)| err(key, why))?;

        Ok(Self {
            source,
            state_dir: resolve(&raw.state_dir),
            key_file,
            allow_plaintext_on_loopback: raw.allow_plaintext_on_loopback,
            tls: TlsConfig {
                cert: resolve(&raw.tls.cert),
                key: resolve(&raw.tls.key),
            },
            smtp,
            imap,
            pop3,
            upstream: UpstreamConfig { ca_file },
            entra: EntraConfig { authority },
            admin,
            limits,
            graph,
            trusted,
        })
    }

    /// Where the config came from, for messages.
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

    pub fn describe_source(&self) -> String {
        match &self.source {
            Some(p) => p.display().to_string(),
            None => "built-in default config".into(),
        }
    }
}

/// The authority must be https; plain http is allowed only for a loopback address, where
/// tests run their fake Entra.
pub(crate) fn validate_authority(value: &str) -> Result<String, String> {
    let value = value.trim().trim_end_matches('/');
    let url = reqwest::Url::parse(value).map_err(|e| format!("`{value}` is not a URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => return Err(format!("`{value}` has no host")),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "`{value}` must use https (plain http is allowed only on a loopback address)"
            ));
        }
        other => return Err(format!("scheme `{other}` is not https")),
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("`{value}` must not have a query or fragment"));
    }
    Ok(value.to_owned())
}

/// At least one mail listener must be on, and no two listeners on the same address.
fn check_listeners(
    listeners: &[(&'static str, Option<SocketAddr>)],
) -> Result<(), (&'static str, String)> {
    let on: Vec<_> = listeners
        .iter()
        .filter_map(|(key, addr)| addr.map(|a| (*key, a)))
        .collect();
    let mail = on
        .iter()
        .filter(|(key, _)| !key.starts_with("admin."))
        .count();
    let Some((first_key, _)) = listeners.first() else {
        return Ok(());
    };
    if mail == 0 {
        return Err((
            first_key,
            "every listener is turned off; nothing to serve".into(),
        ));
    }
    for (i, (key, addr)) in on.iter().enumerate() {
        if let Some((other, _)) = on[..i].iter().find(|(_, a)| a == addr && addr.port() != 0) {
            return Err((key, format!("{addr} is already used by `{other}`")));
        }
    }
    Ok(())
}

/// Whether `ip` is a loopback address (127.0.0.0/8, ::1, or an IPv4-mapped loopback).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    span.map(|s| {
        let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
        format!(" (line {line})")
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", Path::new("/etc/relay"), None)
    }

    #[test]
    fn the_shipped_default_parses() {
        let config = parse(DEFAULT_CONFIG).unwrap();
        assert_eq!(config.state_dir, Path::new("/etc/relay/state"));
        assert_eq!(config.tls.cert, Path::new("/etc/relay/certs/relay.crt"));
        assert_eq!(config.key_file, Path::new("/etc/relay/certs/state.key"));
        assert_eq!(
            config.smtp.listen_starttls,
            Some("127.0.0.1:1587".parse().unwrap())
        );
        assert_eq!(
            config.smtp.listen_tls,
            Some("127.0.0.1:1465".parse().unwrap())
        );
        assert_eq!(config.smtp.upstream.to_string(), "smtp.office365.com:587");
        assert_eq!(
            config.imap.listen_starttls,
            Some("127.0.0.1:1143".parse().unwrap())
        );
        assert_eq!(
            config.imap.listen_tls,
            Some("127.0.0.1:1993".parse().unwrap())
        );
        assert_eq!(
            config.imap.upstream.to_string(),
            "outlook.office365.com:993"
        );
        assert_eq!(
            config.pop3.listen_starttls,
            Some("127.0.0.1:1110".parse().unwrap())
        );
        assert_eq!(
            config.pop3.listen_tls,
            Some("127.0.0.1:1995".parse().unwrap())
        );
        assert_eq!(
            config.pop3.upstream.to_string(),
            "outlook.office365.com:995"
        );
        assert_eq!(config.entra.authority, "https://login.microsoftonline.com");
        assert!(config.allow_plaintext_on_loopback);
        assert_eq!(config.admin.listen, Some("127.0.0.1:9587".parse().unwrap()));
        assert_eq!(config.limits.shutdown_grace_secs, 30);
        assert_eq!(
            config.limits,
            Limits::default(),
            "the commented file says what the defaults are"
        );
    }

    #[test]
    fn limits_no_client_could_live_with_are_refused() {
        let cases = [
            (
                "max_connections_per_source = 0",
                "limits.max_connections_per_source",
            ),
            ("max_line_smtp = 100", "limits.max_line_smtp"),
            ("max_line_imap = 1000000", "limits.max_line_imap"),
            ("preauth_max_commands = 0", "limits.preauth_max_commands"),
            ("preauth_max_bytes = 4096", "limits.preauth_max_bytes"),
            (
                "idle_timeout_imap_secs = 0",
                "limits.idle_timeout_imap_secs",
            ),
            (
                "login_failures_before_delay = 10",
                "limits.login_failures_before_delay",
            ),
        ];
        for (line, key) in cases {
            let e = parse(&format!("[limits]\n{line}\n")).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{line}: {e}");
        }
        let e = parse("[limits]\nidle_timeout_secs = 600\n").unwrap_err();
        assert!(e.to_string().contains("idle_timeout_secs"), "{e}");
        let c = parse("[limits]\nmax_line_pop3 = 512\npreauth_max_bytes = 12288\n").unwrap();
        assert_eq!(
            (c.limits.max_line_pop3, c.limits.preauth_max_bytes),
            (512, 12288)
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_file_and_line() {
        let e = parse("[smtp]\nlisten_startls = \"127.0.0.1:25\"\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("test.toml: "), "{msg}");
        assert!(msg.contains("listen_startls"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn an_empty_listen_address_turns_the_listener_off() {
        let config = parse("[smtp]\nlisten_tls = \"\"\n").unwrap();
        assert_eq!(config.smtp.listen_tls, None);
        assert!(config.smtp.listen_starttls.is_some());
    }

    #[test]
    fn http_authority_only_on_loopback() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://[::1]:9",
            "http://localhost:1/",
        ] {
            let c = parse(&format!("[entra]\nauthority = \"{ok}\"\n")).unwrap();
            assert!(!c.entra.authority.ends_with('/'));
        }
        let e = parse("[entra]\nauthority = \"http://login.example.com\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("entra.authority"));
        assert!(e.to_string().contains("must use https"), "{e}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[smtp]\nlisten_tls = \"localhost\"\n", "smtp.listen_tls"),
            (
                "[smtp]\nupstream = \"smtp.office365.com\"\n",
                "smtp.upstream",
            ),
            (
                "[upstream]\nca_file = \"missing.pem\"\n",
                "upstream.ca_file",
            ),
            (
                "[limits]\npreauth_timeout_secs = 0\n",
                "limits.preauth_timeout_secs",
            ),
            ("state_dir = \"\"\n", "state_dir"),
            (
                "[smtp]\nlisten_tls = \"127.0.0.1:1587\"\n",
                "smtp.listen_tls",
            ),
            (
                "[imap]\nlisten_tls = \"127.0.0.1:1587\"\n",
                "imap.listen_tls",
            ),
            (
                "[smtp]\nlisten_tls = \"\"\nlisten_starttls = \"\"\n[imap]\nlisten_tls = \"\"\nlisten_starttls = \"\"\n[pop3]\nlisten_tls = \"\"\nlisten_starttls = \"\"\n",
                "smtp.listen_starttls",
            ),
            ("[pop3]\nupstream = \"pop\"\n", "pop3.upstream"),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key.as_deref(), Some(key), "{text}: {e}");
            assert!(
                e.to_string().starts_with(&format!("test.toml: `{key}`: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn local_addresses_get_their_own_connection_limit_never_a_lower_one() {
        let mut limits = Limits::default();
        let (local, remote) = ("127.0.0.1".parse().unwrap(), "192.0.2.1".parse().unwrap());
        assert_eq!(limits.max_connections_from(local), 500);
        assert_eq!(
            limits.max_connections_from("::ffff:127.0.0.2".parse().unwrap()),
            500
        );
        assert_eq!(limits.max_connections_from(remote), 20);
        limits.max_connections_per_source = 30_000;
        assert_eq!(limits.max_connections_from(local), 30_000);
        limits.local_networks.clear();
        limits.max_connections_per_source = 20;
        assert_eq!(limits.max_connections_from(local), 20);
    }

    #[test]
    fn server_address_forms() {
        let a = ServerAddress::parse("[::1]:993").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 993));
        assert_eq!(a.to_string(), "[::1]:993");
        assert!(ServerAddress::parse("host:0").is_err());
        assert!(ServerAddress::parse(":25").is_err());
    }
}
