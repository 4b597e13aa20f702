//! The configuration file as written: its sections before validation, with the defaults of
//! the keys a file leaves out (the shipped `config/m365-relay.toml` spells them out).

use serde::Deserialize;

use super::admin::RawAdmin;
use super::limits::Limits;
use super::listeners::RawListen;
use super::sending::RawGraph;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) state_dir: String,
    pub(super) key_file: String,
    pub(super) allow_plaintext_on_loopback: bool,
    pub(super) tls: RawTls,
    pub(super) smtp: RawListen,
    pub(super) imap: RawListen,
    pub(super) pop3: RawListen,
    pub(super) upstream: RawUpstream,
    pub(super) entra: RawEntra,
    pub(super) admin: RawAdmin,
    pub(super) limits: Limits,
    pub(super) graph: RawGraph,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTls {
    pub(super) cert: String,
    pub(super) key: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUpstream {
    pub(super) ca_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawEntra {
    pub(super) authority: String,
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

impl Default for RawEntra {
    fn default() -> Self {
        Self {
            authority: "https://login.microsoftonline.com".into(),
        }
    }
}
