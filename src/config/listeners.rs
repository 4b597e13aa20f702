//! The listeners of the mail protocols as written (`[smtp]`, `[imap]`, `[pop3]`) and as
//! validated, their defaults, and the rule that at least one is on and no two share an
//! address.

use std::net::SocketAddr;

use serde::Deserialize;

use super::address::ServerAddress;
use super::sending::RawTrusted;

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    pub(super) listen_starttls: Option<String>,
    pub(super) listen_tls: Option<String>,
    pub(super) upstream: Option<String>,
    /// `[smtp.trusted]` only.
    pub(super) trusted: Option<RawTrusted>,
}

impl RawListen {
    pub(super) const fn empty() -> Self {
        Self {
            listen_starttls: None,
            listen_tls: None,
            upstream: None,
            trusted: None,
        }
    }
}

/// Default listeners and upstream of one protocol.
pub(super) struct ListenDefaults {
    pub(super) section: &'static str,
    pub(super) listen_starttls: &'static str,
    pub(super) listen_tls: &'static str,
    pub(super) upstream: &'static str,
}

pub(super) const SMTP_DEFAULTS: ListenDefaults = ListenDefaults {
    section: "smtp",
    listen_starttls: "127.0.0.1:1587",
    listen_tls: "127.0.0.1:1465",
    upstream: "smtp.office365.com:587",
};
pub(super) const IMAP_DEFAULTS: ListenDefaults = ListenDefaults {
    section: "imap",
    listen_starttls: "127.0.0.1:1143",
    listen_tls: "127.0.0.1:1993",
    upstream: "outlook.office365.com:993",
};
pub(super) const POP3_DEFAULTS: ListenDefaults = ListenDefaults {
    section: "pop3",
    listen_starttls: "127.0.0.1:1110",
    listen_tls: "127.0.0.1:1995",
    upstream: "outlook.office365.com:995",
};

/// The keys of the listeners, in the order [`check_listeners`] reports them.
const LISTENER_KEYS: [&str; 8] = [
    "smtp.listen_starttls",
    "smtp.listen_tls",
    "imap.listen_starttls",
    "imap.listen_tls",
    "pop3.listen_starttls",
    "pop3.listen_tls",
    "admin.listen",
    "smtp.trusted.listen",
];

/// Every listener by its key, in the order [`check_listeners`] reports them.
pub(super) fn all_listeners(
    [smtp, imap, pop3]: [&ListenConfig; 3],
    admin: Option<SocketAddr>,
    trusted: Option<SocketAddr>,
) -> [(&'static str, Option<SocketAddr>); 8] {
    let addresses = [
        smtp.listen_starttls,
        smtp.listen_tls,
        imap.listen_starttls,
        imap.listen_tls,
        pop3.listen_starttls,
        pop3.listen_tls,
        admin,
        trusted,
    ];
    std::array::from_fn(|i| (LISTENER_KEYS[i], addresses[i]))
}

/// At least one mail listener must be on, and no two listeners on the same address.
pub(super) fn check_listeners(
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
