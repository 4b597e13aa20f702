//! Reading the configuration: the file (or the built-in default), parsed and checked
//! section by section into a [`Config`]. The first problem found is the error, naming its
//! file and key. The file as written ([`RawConfig`]) is at the end, with the defaults of the
//! keys a file leaves out (the shipped `config/m365-relay.toml` spells them out).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use super::address::{ServerAddress, validate_authority};
use super::admin::RawAdmin;
use super::error::{ConfigError, line_of};
use super::limits::Limits;
use super::listeners::{
    IMAP_DEFAULTS, ListenConfig, ListenDefaults, POP3_DEFAULTS, RawListen, SMTP_DEFAULTS,
    all_listeners, check_listeners,
};
use super::queue::{DeliveryLogConfig, QueueConfig};
use super::sending::{RawGraph, TrustedConfig, parse_network};
use super::settings::{Config, EntraConfig, TlsConfig, UpstreamConfig};
use super::state::{DATABASE_URL_ENV, RawState, StateBackend};

/// The commented default configuration, as shipped in `config/m365-relay.toml`.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/m365-relay.toml");

/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "M365_RELAY_CONFIG";

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
        let r = Reader { file, base };
        r.required_paths(&raw)?;
        let trusted = r.trusted(&raw)?;
        let graph = (raw.graph.validate()).map_err(|why| r.err("graph.endpoint", why))?;
        let smtp = r.section(&raw.smtp, &SMTP_DEFAULTS)?;
        let imap = r.section(&raw.imap, &IMAP_DEFAULTS)?;
        let pop3 = r.section(&raw.pop3, &POP3_DEFAULTS)?;
        let key_file = r.resolve(&raw.key_file);
        let admin_listen = r.listen("admin.listen", &raw.admin.listen)?;
        let admin = raw
            .admin
            .validate(admin_listen, &key_file, &|p: &str| r.resolve(p))
            .map_err(|(key, why)| r.err(key, why))?;
        check_listeners(&all_listeners(
            [&smtp, &imap, &pop3],
            admin.listen,
            trusted.as_ref().map(|t| t.listen),
        ))
        .map_err(|(key, why)| r.err(key, why))?;
        let ca_file = r.ca_file(&raw.upstream.ca_file)?;
        let authority = validate_authority(&raw.entra.authority)
            .map_err(|why| r.err("entra.authority", why))?;
        r.check_tables(&raw)?;
        let limits = raw.limits;
        Ok(Self {
            source,
            state: r.state(&raw.state)?,
            state_dir: r.resolve(&raw.state_dir),
            key_file,
            allow_plaintext_on_loopback: raw.allow_plaintext_on_loopback,
            proxy_protocol_from: r.networks("proxy_protocol_from", &raw.proxy_protocol_from)?,
            tls: TlsConfig {
                cert: r.resolve(&raw.tls.cert),
                key: r.resolve(&raw.tls.key),
            },
            smtp,
            imap,
            pop3,
            upstream: UpstreamConfig { ca_file },
            entra: EntraConfig { authority },
            admin,
            limits,
            queue: raw.queue,
            log: raw.log,
            graph,
            trusted,
        })
    }
}

/// What checking each section needs: the file's name for errors, and the folder that
/// relative paths resolve against.
struct Reader<'a> {
    file: &'a str,
    base: &'a Path,
}

impl Reader<'_> {
    /// `[limits]`, `[queue]` and `[log]`, which need nothing else to be checked.
    fn check_tables(&self, raw: &RawConfig) -> Result<(), ConfigError> {
        (raw.limits.validate())
            .and(raw.queue.validate())
            .and(raw.log.validate())
            .map_err(|(key, why)| self.err(key, why))
    }

    /// The error for `key`.
    fn err(&self, key: &str, why: String) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            key: Some(key.to_owned()),
            why,
        }
    }

    /// `p` as written, resolved against the config file's folder unless absolute.
    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// A listen address; empty turns the listener off.
    fn listen(&self, key: &str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
        if value.trim().is_empty() {
            return Ok(None);
        }
        value
            .parse()
            .map(Some)
            .map_err(|_| self.err(key, format!("`{value}` is not an IP address and port")))
    }

    /// A list of networks (CIDR, or single addresses).
    fn networks(&self, key: &str, written: &[String]) -> Result<Vec<IpNet>, ConfigError> {
        written
            .iter()
            .map(|text| parse_network(text).map_err(|why| self.err(key, why)))
            .collect()
    }

    /// `[state]`, with the database URL of the environment first.
    fn state(&self, raw: &RawState) -> Result<StateBackend, ConfigError> {
        raw.validate(std::env::var(DATABASE_URL_ENV).ok(), &|p: &str| {
            self.resolve(p)
        })
        .map_err(|(key, why)| self.err(key, why))
    }

    /// The state folder, the key file and the TLS files must be named.
    fn required_paths(&self, raw: &RawConfig) -> Result<(), ConfigError> {
        if raw.state_dir.trim().is_empty() {
            return Err(self.err("state_dir", "must name a folder".into()));
        }
        if raw.key_file.trim().is_empty() {
            return Err(self.err("key_file", "must name a file".into()));
        }
        for (key, value) in [("tls.cert", &raw.tls.cert), ("tls.key", &raw.tls.key)] {
            if value.trim().is_empty() {
                return Err(self.err(key, "must name a PEM file".into()));
            }
        }
        Ok(())
    }

    /// `[smtp.trusted]`, the only trusted-network listener.
    fn trusted(&self, raw: &RawConfig) -> Result<Option<TrustedConfig>, ConfigError> {
        for (key, section) in [("imap.trusted", &raw.imap), ("pop3.trusted", &raw.pop3)] {
            if section.trusted.is_some() {
                return Err(self.err(key, "only SMTP has a trusted-network listener".into()));
            }
        }
        match &raw.smtp.trusted {
            Some(t) => t.validate().map_err(|(key, why)| self.err(key, why)),
            None => Ok(None),
        }
    }

    /// One protocol's listeners and upstream, defaults filled in.
    fn section(&self, raw: &RawListen, d: &ListenDefaults) -> Result<ListenConfig, ConfigError> {
        let key = |k: &str| format!("{}.{k}", d.section);
        let upstream = raw.upstream.as_deref().unwrap_or(d.upstream);
        Ok(ListenConfig {
            listen_starttls: self.listen(
                &key("listen_starttls"),
                raw.listen_starttls.as_deref().unwrap_or(d.listen_starttls),
            )?,
            listen_tls: self.listen(
                &key("listen_tls"),
                raw.listen_tls.as_deref().unwrap_or(d.listen_tls),
            )?,
            upstream: ServerAddress::parse(upstream)
                .map_err(|why| self.err(&key("upstream"), why))?,
        })
    }

    /// `upstream.ca_file`: none when empty, else a file that exists.
    fn ca_file(&self, written: &str) -> Result<Option<PathBuf>, ConfigError> {
        match written.trim() {
            "" => Ok(None),
            p => {
                let p = self.resolve(p);
                if !p.is_file() {
                    return Err(self.err(
                        "upstream.ca_file",
                        format!("{} does not exist", p.display()),
                    ));
                }
                Ok(Some(p))
            }
        }
    }
}

// === the file as written, with the defaults of the keys it leaves out ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    state: RawState,
    state_dir: String,
    key_file: String,
    allow_plaintext_on_loopback: bool,
    proxy_protocol_from: Vec<String>,
    tls: RawTls,
    smtp: RawListen,
    imap: RawListen,
    pop3: RawListen,
    upstream: RawUpstream,
    entra: RawEntra,
    admin: RawAdmin,
    limits: Limits,
    queue: QueueConfig,
    log: DeliveryLogConfig,
    graph: RawGraph,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    cert: String,
    key: String,
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
            state: RawState::default(),
            state_dir: "state".into(),
            key_file: "certs/state.key".into(),
            allow_plaintext_on_loopback: true,
            proxy_protocol_from: Vec::new(),
            tls: RawTls::default(),
            smtp: RawListen::empty(),
            imap: RawListen::empty(),
            pop3: RawListen::empty(),
            upstream: RawUpstream::default(),
            entra: RawEntra::default(),
            admin: RawAdmin::default(),
            limits: Limits::default(),
            queue: QueueConfig::default(),
            log: DeliveryLogConfig::default(),
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

impl Default for RawEntra {
    fn default() -> Self {
        Self {
            authority: "https://login.microsoftonline.com".into(),
        }
    }
}
