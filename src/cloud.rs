//! The Microsoft clouds a mailbox can live in (PROTOCOL.md A9), and what each one changes:
//! the login host (Entra ID's authority), the host that prefixes the mail scopes (and so the
//! audience of the access token), and the Exchange Online hosts for SMTP, IMAP and POP3.
//!
//! | cloud | login host | scope host | IMAP / POP3 | SMTP |
//! |---|---|---|---|---|
//! | `global` | login.microsoftonline.com | outlook.office.com | outlook.office365.com | smtp.office365.com:587 |
//! | `usgov` (GCC High) | login.microsoftonline.us | outlook.office365.us | outlook.office365.us | smtp.office365.us:587 |
//! | `usgovdod` (DoD) | login.microsoftonline.us | outlook.office365.us | outlook-dod.office365.us | outlook-dod.office365.us:587 |
//! | `china` (21Vianet) | login.partner.microsoftonline.cn | partner.outlook.cn | partner.outlook.cn | smtp.partner.outlook.cn:587 |
//!
//! How sure each value is: the global row and the three login hosts are Microsoft's own
//! documentation. The US Government and China scope and mail hosts are reported by working
//! clients (sasl-xoauth2, EmailEngine, email-oauth2-proxy), not documented by Microsoft;
//! the DoD row is the least certain (one report for its SMTP host, and some tools use
//! `outlook-dod.office365.us` rather than `outlook.office365.us` as its scope host).
//!
//! # How a mailbox's cloud meets the configuration
//!
//! The configuration has one `[entra] authority` and one upstream per protocol, so:
//! - **Scopes and token audience** always follow the mailbox's cloud.
//! - **The login host** follows the mailbox's cloud while `entra.authority` is left at its
//!   default (`https://login.microsoftonline.com`). Any other value is used for every
//!   mailbox, whatever its cloud: it is how tests point the relay at a fake Entra, and how a
//!   deployment could send sign-ins through a proxy.
//! - **The upstream servers** are the configuration's: one relay serves one cloud's mail
//!   servers. `mailbox add --cloud` refuses a cloud whose mail hosts differ from the
//!   configured upstreams ([`check_upstreams`]); upstreams on hosts no cloud uses (a test
//!   server, a local proxy) are taken as they are.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A Microsoft cloud (national cloud) that hosts Entra ID and Exchange Online.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    /// The worldwide cloud (including GCC, which uses the worldwide endpoints).
    #[default]
    #[value(name = "global")]
    Global,
    /// US Government GCC High.
    #[value(name = "usgov")]
    UsGov,
    /// US Government DoD.
    #[value(name = "usgovdod")]
    UsGovDod,
    /// China, operated by 21Vianet.
    #[value(name = "china")]
    China,
}

/// What a cloud changes; one row of the table in the module documentation.
struct Hosts {
    name: &'static str,
    login: &'static str,
    delegated: &'static [&'static str],
    sign_in: &'static [&'static str],
    app_only: &'static [&'static str],
    smtp: &'static str,
    imap: &'static str,
    pop3: &'static str,
    /// Other names of this cloud's mail servers, recognised by [`check_upstreams`].
    aliases: &'static [&'static str],
    /// `Connect-ExchangeOnline -ExchangeEnvironmentName` for this cloud.
    exchange_environment: &'static str,
    /// Microsoft Graph v1.0 and its scopes (PROTOCOL.md A9, A11).
    graph: GraphHosts,
}

/// A cloud's Microsoft Graph: the v1.0 base URL; the delegated `Mail.Send` scope (with
/// `Mail.Send.Shared`, to send as a shared mailbox) and `offline_access`; the app-only
/// `.default`.
struct GraphHosts {
    endpoint: &'static str,
    delegated: &'static [&'static str],
    delegated_shared: &'static [&'static str],
    app_only: &'static [&'static str],
}

/// The Graph of the cloud whose Graph host is `$host` (a literal with a trailing slash).
macro_rules! graph {
    ($host:literal) => {
        GraphHosts {
            endpoint: concat!($host, "v1.0"),
            delegated: &[concat!($host, "Mail.Send"), "offline_access"],
            delegated_shared: &[
                concat!($host, "Mail.Send"),
                concat!($host, "Mail.Send.Shared"),
                "offline_access",
            ],
            app_only: &[concat!($host, ".default")],
        }
    };
}

/// The delegated mail scopes on `$host`, plus `offline_access` (PROTOCOL.md A4); with
/// `openid profile` for sign-ins.
macro_rules! scopes {
    ($host:literal) => {
        (
            &[
                concat!($host, "IMAP.AccessAsUser.All"),
                concat!($host, "POP.AccessAsUser.All"),
                concat!($host, "SMTP.Send"),
                "offline_access",
            ],
            &[
                concat!($host, "IMAP.AccessAsUser.All"),
                concat!($host, "POP.AccessAsUser.All"),
                concat!($host, "SMTP.Send"),
                "offline_access",
                "openid",
                "profile",
            ],
        )
    };
}

const GLOBAL_SCOPES: (&[&str], &[&str]) = scopes!("https://outlook.office.com/");
const US_SCOPES: (&[&str], &[&str]) = scopes!("https://outlook.office365.us/");
const CHINA_SCOPES: (&[&str], &[&str]) = scopes!("https://partner.outlook.cn/");

const GLOBAL: Hosts = Hosts {
    name: "global",
    login: "https://login.microsoftonline.com",
    delegated: GLOBAL_SCOPES.0,
    sign_in: GLOBAL_SCOPES.1,
    // PROTOCOL.md A4: app-only asks for the office365.com resource, not office.com.
    app_only: &["https://outlook.office365.com/.default"],
    smtp: "smtp.office365.com:587",
    imap: "outlook.office365.com:993",
    pop3: "outlook.office365.com:995",
    aliases: &["smtp-legacy.office365.com", "outlook.office.com"],
    exchange_environment: "O365Default",
    graph: graph!("https://graph.microsoft.com/"),
};

const US_GOV: Hosts = Hosts {
    name: "usgov",
    login: "https://login.microsoftonline.us",
    delegated: US_SCOPES.0,
    sign_in: US_SCOPES.1,
    app_only: &["https://outlook.office365.us/.default"],
    smtp: "smtp.office365.us:587",
    imap: "outlook.office365.us:993",
    pop3: "outlook.office365.us:995",
    aliases: &[],
    exchange_environment: "O365USGovGCCHigh",
    graph: graph!("https://graph.microsoft.us/"),
};

/// DoD signs in like GCC High (same login host, scopes and resource); its mail servers and
/// Graph are its own.
const US_GOV_DOD: Hosts = Hosts {
    name: "usgovdod",
    smtp: "outlook-dod.office365.us:587",
    imap: "outlook-dod.office365.us:993",
    pop3: "outlook-dod.office365.us:995",
    exchange_environment: "O365USGovDoD",
    graph: graph!("https://dod-graph.microsoft.us/"),
    ..US_GOV
};

const CHINA: Hosts = Hosts {
    name: "china",
    login: "https://login.partner.microsoftonline.cn",
    delegated: CHINA_SCOPES.0,
    sign_in: CHINA_SCOPES.1,
    app_only: &["https://partner.outlook.cn/.default"],
    smtp: "smtp.partner.outlook.cn:587",
    imap: "partner.outlook.cn:993",
    pop3: "partner.outlook.cn:995",
    aliases: &[],
    exchange_environment: "O365China",
    graph: graph!("https://microsoftgraph.chinacloudapi.cn/"),
};

// === impl Cloud ===

impl Cloud {
    /// Every cloud, in table order.
    pub const ALL: [Cloud; 4] = [Cloud::Global, Cloud::UsGov, Cloud::UsGovDod, Cloud::China];

    fn hosts(self) -> &'static Hosts {
        match self {
            Cloud::Global => &GLOBAL,
            Cloud::UsGov => &US_GOV,
            Cloud::UsGovDod => &US_GOV_DOD,
            Cloud::China => &CHINA,
        }
    }

    /// The name used on the command line and in the registry: `global`, `usgov`, ...
    pub fn name(self) -> &'static str {
        self.hosts().name
    }

    /// Entra ID's login host, e.g. `https://login.microsoftonline.us` (no trailing slash).
    pub fn login_authority(self) -> &'static str {
        self.hosts().login
    }

    /// The delegated mail scopes and `offline_access`, for refreshing (PROTOCOL.md A4).
    pub fn delegated_scopes(self) -> &'static [&'static str] {
        self.hosts().delegated
    }

    /// What a sign-in asks for: [`Cloud::delegated_scopes`] plus `openid profile`.
    pub fn sign_in_scopes(self) -> &'static [&'static str] {
        self.hosts().sign_in
    }

    /// The one scope of the client-credentials grant: the mail resource's `.default`.
    pub fn app_only_scopes(self) -> &'static [&'static str] {
        self.hosts().app_only
    }

    /// The Exchange Online SMTP submission server, `host:port` (STARTTLS).
    pub fn smtp_host(self) -> &'static str {
        self.hosts().smtp
    }

    /// The Exchange Online IMAP server, `host:port` (implicit TLS).
    pub fn imap_host(self) -> &'static str {
        self.hosts().imap
    }

    /// The Exchange Online POP3 server, `host:port` (implicit TLS).
    pub fn pop3_host(self) -> &'static str {
        self.hosts().pop3
    }

    /// The `-ExchangeEnvironmentName` of `Connect-ExchangeOnline` for this cloud.
    pub fn exchange_environment(self) -> &'static str {
        self.hosts().exchange_environment
    }

    /// Microsoft Graph v1.0's base URL, e.g. `https://graph.microsoft.com/v1.0`.
    pub fn graph_endpoint(self) -> &'static str {
        self.hosts().graph.endpoint
    }

    /// The delegated scopes of a Graph token that sends mail: `Mail.Send` (and
    /// `Mail.Send.Shared` for a delegate that sends as shared mailboxes) with
    /// `offline_access`.
    pub fn graph_delegated_scopes(self, shared: bool) -> &'static [&'static str] {
        let graph = &self.hosts().graph;
        if shared {
            graph.delegated_shared
        } else {
            graph.delegated
        }
    }

    /// The client-credentials scope for Graph: its `.default` (application `Mail.Send`).
    pub fn graph_app_only_scopes(self) -> &'static [&'static str] {
        self.hosts().graph.app_only
    }

    /// The cloud whose mail servers include `host` (case-insensitive), if any.
    pub fn of_mail_host(host: &str) -> Option<Cloud> {
        let host = host.trim_end_matches('.');
        Cloud::ALL.into_iter().find(|cloud| {
            let h = cloud.hosts();
            [h.smtp, h.imap, h.pop3]
                .iter()
                .map(|hp| hp.rsplit_once(':').map_or(*hp, |(name, _)| name))
                .chain(h.aliases.iter().copied())
                .any(|known| known.eq_ignore_ascii_case(host))
        })
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One configured upstream mail server, as [`check_upstreams`] reads it: its
/// configuration key (`smtp.upstream`), its host, and its address as written.
#[derive(Clone, Copy)]
pub struct Upstream<'a> {
    pub key: &'static str,
    pub host: &'a str,
    pub address: &'a dyn fmt::Display,
}

/// Refuses `cloud` for a mailbox when the configured upstream servers (SMTP, IMAP, POP3,
/// in that order) are another cloud's (see the module documentation); the message says
/// what to set, and names the configuration by `source`. Upstreams on hosts that no cloud
/// uses are accepted. The configuration calls it (`Config::check_cloud`).
pub fn check_upstreams(
    cloud: Cloud,
    upstreams: [Upstream<'_>; 3],
    source: &str,
) -> Result<(), String> {
    let defaults = [cloud.smtp_host(), cloud.imap_host(), cloud.pop3_host()];
    let wrong: Vec<String> = upstreams
        .iter()
        .filter_map(|u| {
            let other = Cloud::of_mail_host(u.host)?;
            (other != cloud).then(|| format!("{} = \"{}\" (cloud {other})", u.key, u.address))
        })
        .collect();
    if wrong.is_empty() {
        return Ok(());
    }
    let wanted: Vec<String> = upstreams
        .iter()
        .zip(defaults)
        .map(|(u, default)| format!("{} = \"{default}\"", u.key))
        .collect();
    Err(format!(
        "a mailbox in cloud {cloud} needs that cloud's mail servers, but {} in {}: one relay \
         serves the mail servers of one cloud. Set {} in the configuration (or run a relay per \
         cloud)",
        wrong.join(", "),
        source,
        wanted.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    #[test]
    fn the_table() {
        let expect = [
            (
                Cloud::Global,
                "https://login.microsoftonline.com",
                "https://outlook.office.com/",
                "https://outlook.office365.com/.default",
                "smtp.office365.com:587",
                "outlook.office365.com:993",
            ),
            (
                Cloud::UsGov,
                "https://login.microsoftonline.us",
                "https://outlook.office365.us/",
                "https://outlook.office365.us/.default",
                "smtp.office365.us:587",
                "outlook.office365.us:993",
            ),
            (
                Cloud::UsGovDod,
                "https://login.microsoftonline.us",
                "https://outlook.office365.us/",
                "https://outlook.office365.us/.default",
                "outlook-dod.office365.us:587",
                "outlook-dod.office365.us:993",
            ),
            (
                Cloud::China,
                "https://login.partner.microsoftonline.cn",
                "https://partner.outlook.cn/",
                "https://partner.outlook.cn/.default",
                "smtp.partner.outlook.cn:587",
                "partner.outlook.cn:993",
            ),
        ];
        for (cloud, login, scope_host, app_only, smtp, imap) in expect {
            assert_eq!(cloud.login_authority(), login, "{cloud}");
            assert_eq!(cloud.app_only_scopes(), [app_only], "{cloud}");
            assert_eq!(cloud.smtp_host(), smtp, "{cloud}");
            assert_eq!(cloud.imap_host(), imap, "{cloud}");
            assert_eq!(cloud.pop3_host(), imap.replace(":993", ":995"), "{cloud}");
            let delegated: Vec<String> = ["IMAP.AccessAsUser.All", "POP.AccessAsUser.All"]
                .into_iter()
                .chain(["SMTP.Send"])
                .map(|s| format!("{scope_host}{s}"))
                .chain(["offline_access".to_owned()])
                .collect();
            assert_eq!(cloud.delegated_scopes(), delegated, "{cloud}");
            assert_eq!(
                cloud.sign_in_scopes(),
                [cloud.delegated_scopes(), &["openid", "profile"]].concat(),
                "{cloud}"
            );
            for host in [smtp, imap] {
                let name = host.split(':').next().unwrap();
                assert_eq!(Cloud::of_mail_host(name), Some(cloud), "{name}");
                assert_eq!(
                    Cloud::of_mail_host(&name.to_uppercase()),
                    Some(cloud),
                    "{name}"
                );
            }
        }
        // The global scopes are the ones the relay always used.
        assert_eq!(
            Cloud::Global.delegated_scopes(),
            crate::oauth::DELEGATED_SCOPES
        );
        assert_eq!(Cloud::Global.sign_in_scopes(), crate::oauth::SIGN_IN_SCOPES);
        assert_eq!(Cloud::of_mail_host("127.0.0.1"), None);
        assert_eq!(Cloud::of_mail_host("mail.contoso.com"), None);
        assert_eq!(Cloud::default(), Cloud::Global);
    }

    #[test]
    fn names_on_the_command_line_and_on_disk() {
        use clap::ValueEnum;
        for cloud in Cloud::ALL {
            let value = cloud.to_possible_value().unwrap();
            assert_eq!(value.get_name(), cloud.name());
            assert_eq!(
                serde_json::to_string(&cloud).unwrap(),
                format!("\"{}\"", cloud.name())
            );
            assert_eq!(Cloud::from_str(cloud.name(), false).unwrap(), cloud);
        }
        assert!(serde_json::from_str::<Cloud>("\"mars\"").is_err());
    }

    fn config(upstreams: &str) -> Config {
        Config::parse(upstreams, "relay.toml", Path::new("/etc"), None).unwrap()
    }

    #[test]
    fn the_upstreams_must_be_the_clouds_or_unknown() {
        let default = config("");
        assert!(default.check_cloud(Cloud::Global).is_ok());
        let e = default.check_cloud(Cloud::UsGov).unwrap_err();
        assert!(
            e.starts_with(
                "a mailbox in cloud usgov needs that cloud's mail servers, but \
                 smtp.upstream = \"smtp.office365.com:587\" (cloud global), \
                 imap.upstream = \"outlook.office365.com:993\" (cloud global), "
            ),
            "{e}"
        );
        assert!(
            e.contains(
                "Set smtp.upstream = \"smtp.office365.us:587\", \
                 imap.upstream = \"outlook.office365.us:993\", \
                 pop3.upstream = \"outlook.office365.us:995\" in the configuration"
            ),
            "{e}"
        );

        let us = config(
            "[smtp]\nupstream = \"smtp.office365.us:587\"\n\
             [imap]\nupstream = \"OUTLOOK.office365.us:993\"\n\
             [pop3]\nupstream = \"outlook.office365.us:995\"\n",
        );
        assert!(us.check_cloud(Cloud::UsGov).is_ok());
        assert!(us.check_cloud(Cloud::Global).is_err());
        let e = us.check_cloud(Cloud::UsGovDod).unwrap_err();
        assert!(e.contains("(cloud usgov)"), "{e}");

        let local = config(
            "[smtp]\nupstream = \"127.0.0.1:2525\"\n[imap]\nupstream = \"localhost:993\"\n\
             [pop3]\nupstream = \"mail.contoso.com:995\"\n",
        );
        for cloud in Cloud::ALL {
            assert!(local.check_cloud(cloud).is_ok(), "{cloud}");
        }
    }
}
