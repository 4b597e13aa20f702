//! `[state]`: where the relay keeps its state. `files` (the default) is the state folder
//! of one relay; `postgres` is a PostgreSQL database that several relays share. The
//! database URL is a secret (it may hold a password): only [`DatabaseConfig::server`]
//! (host, port, database) is ever shown.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::address::is_loopback;
use crate::secret::DatabaseUrl;

/// The environment variable that gives the database URL; it wins over `state.url`.
pub const DATABASE_URL_ENV: &str = "M365_RELAY_DATABASE_URL";

/// Which backend keeps the state.
#[derive(Debug, Clone)]
pub enum StateBackend {
    /// The state folder (`state_dir`) of this relay alone.
    Files,
    /// A PostgreSQL database shared by every relay of a fleet.
    Postgres(DatabaseConfig),
}

/// How TLS to the database is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseTls {
    /// Plaintext; allowed only to a loopback address or a Unix socket.
    Disable,
    /// TLS when the server offers it (verified when used); loopback or Unix socket only.
    Prefer,
    /// TLS, with the certificate chain and the host name verified (`verify-full`).
    Require,
}

/// The PostgreSQL backend's settings.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// The URL without its `sslmode` and `sslrootcert` parameters, which are read into
    /// `tls` and `ca_file`.
    pub url: DatabaseUrl,
    pub tls: DatabaseTls,
    /// PEM trust anchors for the server's certificate; the public web roots when `None`.
    pub ca_file: Option<PathBuf>,
    /// Connections each relay keeps at most.
    pub pool_size: usize,
    /// The bound of each database call (connecting included).
    pub timeout: Duration,
    /// `host:port/database`, for messages.
    pub server: String,
}

/// `[state]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawState {
    backend: String,
    url: String,
    ca_file: String,
    pool_size: usize,
    timeout_secs: u64,
}

impl Default for RawState {
    fn default() -> Self {
        Self {
            backend: "files".into(),
            url: String::new(),
            ca_file: String::new(),
            pool_size: 8,
            timeout_secs: 5,
        }
    }
}

impl RawState {
    /// The checked `[state]`: `env_url` (from [`DATABASE_URL_ENV`]) wins over `url`;
    /// `resolve` turns a written path into a real one. Errors name the key.
    pub fn validate(
        &self,
        env_url: Option<String>,
        resolve: &dyn Fn(&str) -> PathBuf,
    ) -> Result<StateBackend, (&'static str, String)> {
        match self.backend.as_str() {
            "files" => return Ok(StateBackend::Files),
            "postgres" => {}
            other => {
                return Err((
                    "state.backend",
                    format!("`{other}` is neither \"files\" nor \"postgres\""),
                ));
            }
        }
        if !(1..=256).contains(&self.pool_size) {
            return Err(("state.pool_size", "must be between 1 and 256".into()));
        }
        if !(1..=600).contains(&self.timeout_secs) {
            return Err(("state.timeout_secs", "must be between 1 and 600".into()));
        }
        let written = env_url.filter(|u| !u.trim().is_empty());
        let written = written.unwrap_or_else(|| self.url.clone());
        if written.trim().is_empty() {
            return Err((
                "state.url",
                format!("backend \"postgres\" needs a URL here or in {DATABASE_URL_ENV}"),
            ));
        }
        let parsed = parse_url(written.trim()).map_err(|why| ("state.url", why))?;
        let ca_file = match (self.ca_file.trim(), parsed.root_cert) {
            ("", None) => None,
            ("", Some(p)) => Some(resolve(&p)),
            (p, _) => Some(resolve(p)),
        };
        if let Some(p) = ca_file.as_ref().filter(|p| !p.is_file()) {
            return Err(("state.ca_file", format!("{} does not exist", p.display())));
        }
        Ok(StateBackend::Postgres(DatabaseConfig {
            url: DatabaseUrl::new(parsed.url),
            tls: parsed.tls,
            ca_file,
            pool_size: self.pool_size,
            timeout: Duration::from_secs(self.timeout_secs),
            server: parsed.server,
        }))
    }
}

/// A URL taken apart: the rest, and what the relay reads itself.
struct ParsedUrl {
    url: String,
    tls: DatabaseTls,
    root_cert: Option<String>,
    server: String,
}

/// Reads `postgres://…` (or `postgresql://…`): libpq's `sslmode` (`disable`, `allow`,
/// `prefer`, `require`, `verify-ca`, `verify-full`; every TLS mode verifies fully) and
/// `sslrootcert` are taken out; the rest must be a URL tokio-postgres accepts. Errors never
/// hold the URL, which may hold a password.
fn parse_url(written: &str) -> Result<ParsedUrl, String> {
    let mut url = url::Url::parse(written)
        .map_err(|e| format!("not a postgres:// URL ({e}); the URL itself is not shown"))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err("must start with postgres:// or postgresql://".into());
    }
    let (mut sslmode, mut root_cert, mut rest) = (None, None, Vec::new());
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "sslmode" => sslmode = Some(v.into_owned()),
            "sslrootcert" => root_cert = Some(v.into_owned()),
            _ => rest.push((k.into_owned(), v.into_owned())),
        }
    }
    url.set_query(None);
    if !rest.is_empty() {
        url.query_pairs_mut().extend_pairs(rest);
    }
    let config = tokio_postgres::Config::from_str(url.as_str())
        .map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
    let local = only_local_hosts(&config);
    let tls = match sslmode.as_deref() {
        Some("disable") => DatabaseTls::Disable,
        Some("allow" | "prefer") | None if local => DatabaseTls::Prefer,
        Some("allow" | "prefer" | "require" | "verify-ca" | "verify-full") | None => {
            DatabaseTls::Require
        }
        Some(other) => return Err(format!("sslmode `{other}` is not one libpq knows")),
    };
    if tls != DatabaseTls::Require && !local {
        return Err(
            "TLS is required to a database that is not on a loopback address or a Unix \
             socket (sslmode=disable is refused)"
                .into(),
        );
    }
    Ok(ParsedUrl {
        url: url.to_string(),
        tls,
        root_cert,
        server: server_of(&config),
    })
}

/// Whether every host of `config` is a loopback address, `localhost` or a Unix socket, and
/// so is every `hostaddr` (which tokio-postgres connects to instead of the host's address).
/// A URL that names neither is not local.
fn only_local_hosts(config: &tokio_postgres::Config) -> bool {
    let (hosts, addrs) = (config.get_hosts(), config.get_hostaddrs());
    let named = hosts.iter().all(|h| match h {
        tokio_postgres::config::Host::Unix(_) => true,
        tokio_postgres::config::Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name.trim_matches(['[', ']']).parse().is_ok_and(is_loopback)
        }
    });
    let addressed = addrs.iter().all(|ip| is_loopback(*ip));
    named && addressed && !(hosts.is_empty() && addrs.is_empty())
}

/// `host:port/database` of `config`, for messages (no user, no password).
fn server_of(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("(default)");
    format!("{host}:{port}/{db}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str) -> Result<StateBackend, (&'static str, String)> {
        let raw = RawState {
            backend: "postgres".into(),
            url: url.into(),
            ..RawState::default()
        };
        raw.validate(None, &|p| PathBuf::from(p))
    }

    fn db(url: &str) -> DatabaseConfig {
        match check(url) {
            Ok(StateBackend::Postgres(db)) => db,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn files_is_the_default() {
        let raw = RawState::default();
        assert!(matches!(
            raw.validate(None, &|p| PathBuf::from(p)),
            Ok(StateBackend::Files)
        ));
    }

    #[test]
    fn a_remote_database_needs_tls_and_every_tls_mode_verifies() {
        let e = check("postgres://relay:pw@db.example.com/relay?sslmode=disable").unwrap_err();
        assert!(e.1.contains("TLS is required"), "{e:?}");
        for mode in [
            "",
            "?sslmode=prefer",
            "?sslmode=require",
            "?sslmode=verify-full",
        ] {
            let d = db(&format!("postgres://relay:pw@db.example.com/relay{mode}"));
            assert_eq!(d.tls, DatabaseTls::Require, "{mode}");
            assert_eq!(d.server, "db.example.com:5432/relay");
        }
    }

    #[test]
    fn a_remote_hostaddr_behind_a_local_host_name_still_needs_tls() {
        for url in [
            "postgres://relay:pw@localhost/relay?hostaddr=203.0.113.9&sslmode=disable",
            "postgres:///relay?hostaddr=203.0.113.9&user=relay&password=pw&sslmode=disable",
            "postgres:///relay?user=relay&password=pw&sslmode=disable",
        ] {
            let e = check(url).unwrap_err();
            assert!(e.1.contains("TLS is required"), "{url}: {e:?}");
        }
        assert_eq!(
            db("postgres://relay:pw@localhost/relay?hostaddr=203.0.113.9").tls,
            DatabaseTls::Require
        );
        let local = db("postgres://relay:pw@localhost/relay?hostaddr=127.0.0.1&sslmode=disable");
        assert_eq!(local.tls, DatabaseTls::Disable);
    }

    #[test]
    fn loopback_may_be_plaintext() {
        let d = db("postgres://relay:pw@127.0.0.1:5433/relay?sslmode=disable");
        assert_eq!(d.tls, DatabaseTls::Disable);
        assert_eq!(
            db("postgresql://relay@localhost/relay").tls,
            DatabaseTls::Prefer
        );
        assert!(!d.url.expose().contains("sslmode"));
    }

    #[test]
    fn the_password_is_never_in_an_error_or_debug() {
        for url in [
            "postgres://relay:hunter2@db.example.com/relay?sslmode=bogus",
            "mysql://relay:hunter2@db.example.com/relay",
            "postgres://relay:hunter2@db.example.com:notaport/relay",
        ] {
            let e = check(url).unwrap_err();
            assert!(!e.1.contains("hunter2"), "{e:?}");
        }
        let d = db("postgres://relay:hunter2@db.example.com/relay");
        assert!(!format!("{d:?}").contains("hunter2"));
    }

    #[test]
    fn the_environment_wins_and_sslrootcert_is_the_ca_file() {
        let raw = RawState {
            backend: "postgres".into(),
            url: "postgres://file@127.0.0.1/relay".into(),
            ..RawState::default()
        };
        let env = "postgres://env@127.0.0.1/relay?sslrootcert=/nonexistent.pem".to_owned();
        let e = raw.validate(Some(env), &|p| PathBuf::from(p)).unwrap_err();
        assert_eq!(e.0, "state.ca_file");
        let ok = raw.validate(Some("postgres://env@127.0.0.1/x".into()), &|p| {
            PathBuf::from(p)
        });
        match ok {
            Ok(StateBackend::Postgres(d)) => assert!(d.url.expose().contains("env@")),
            other => panic!("{other:?}"),
        }
    }
}
