//! A mailbox's sending settings, kept in its registration: how its SMTP submissions go
//! out, which senders it may use, and whether Graph keeps a copy in Sent Items.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How mail submitted over SMTP for a mailbox reaches Microsoft 365.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum SmtpVia {
    /// SMTP AUTH XOAUTH2 to smtp.office365.com; the relay streams each message.
    #[value(name = "xoauth2")]
    Xoauth2,
    /// Microsoft Graph `sendMail`: for tenants or mailboxes with SMTP AUTH switched off.
    #[value(name = "graph")]
    Graph,
    /// XOAUTH2 until Exchange answers `535 5.7.139` (SMTP AUTH disabled), then Graph from
    /// then on (remembered in the state folder).
    #[default]
    #[value(name = "auto")]
    Auto,
}

impl SmtpVia {
    pub fn name(self) -> &'static str {
        match self {
            SmtpVia::Xoauth2 => "xoauth2",
            SmtpVia::Graph => "graph",
            SmtpVia::Auto => "auto",
        }
    }
}

impl fmt::Display for SmtpVia {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The sending part of a mailbox's registration. The default is what the file holds when
/// it says nothing: `auto`, the default senders, a copy in Sent Items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sending {
    #[serde(default)]
    pub smtp_via: SmtpVia,
    /// Addresses (`billing@contoso.com`) and domains (`@contoso.com`) the mailbox may use as
    /// envelope and header sender, lower case. Empty: the mailbox itself and the shared
    /// mailboxes that take their token from it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_from: Vec<String>,
    /// Graph's `saveToSentItems`.
    #[serde(default = "yes")]
    pub save_to_sent_items: bool,
    /// Whether a client hears `250` after Microsoft accepted (`direct`) or once the
    /// message is stored in the relay's queue (`queue`).
    #[serde(default, skip_serializing_if = "Delivery::is_direct")]
    pub delivery: Delivery,
    /// This mailbox's own SMTP upstream (`host:port`, e.g. High Volume Email's
    /// `smtp.hve.mx.microsoft:587`) instead of the relay's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_server: Option<String>,
}

/// When a client's message counts as sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// `250` only after Microsoft accepted the message, during the session.
    #[default]
    #[value(name = "direct")]
    Direct,
    /// `250` once the message is stored durably in the relay's queue, which delivers it.
    #[value(name = "queue")]
    Queue,
}

impl Delivery {
    pub fn is_direct(&self) -> bool {
        *self == Delivery::Direct
    }

    pub fn name(self) -> &'static str {
        match self {
            Delivery::Direct => "direct",
            Delivery::Queue => "queue",
        }
    }
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn yes() -> bool {
    true
}

impl Default for Sending {
    fn default() -> Self {
        Self {
            smtp_via: SmtpVia::Auto,
            allowed_from: Vec::new(),
            save_to_sent_items: true,
            delivery: Delivery::Direct,
            smtp_server: None,
        }
    }
}

impl Sending {
    /// Whether the file needs to mention it at all.
    pub fn is_default(&self) -> bool {
        self == &Sending::default()
    }
}

/// Checks and normalises one `allowed_from` entry: an address, or `@domain`.
pub fn parse_allowed_sender(entry: &str) -> Result<String, String> {
    let entry = entry.trim();
    if let Some(domain) = entry.strip_prefix('@') {
        let domain = domain.to_ascii_lowercase();
        if !super::address::is_host_name(&domain) {
            return Err(format!("`{entry}` is not @ and a domain name"));
        }
        return Ok(format!("@{domain}"));
    }
    super::address::normalize_address(entry).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_stay_out_of_the_file() {
        let parsed: Sending = serde_json::from_str("{}").unwrap();
        assert_eq!(parsed, Sending::default());
        assert!(parsed.is_default());
        let graph = Sending {
            smtp_via: SmtpVia::Graph,
            allowed_from: vec!["@contoso.com".into()],
            save_to_sent_items: false,
            ..Sending::default()
        };
        let text = serde_json::to_string(&graph).unwrap();
        assert_eq!(
            text,
            r#"{"smtp_via":"graph","allowed_from":["@contoso.com"],"save_to_sent_items":false}"#
        );
        assert_eq!(serde_json::from_str::<Sending>(&text).unwrap(), graph);
    }

    #[test]
    fn allowed_senders_are_checked() {
        assert_eq!(
            parse_allowed_sender("@Contoso.COM").unwrap(),
            "@contoso.com"
        );
        assert_eq!(
            parse_allowed_sender(" Billing@Contoso.com ").unwrap(),
            "billing@contoso.com"
        );
        assert!(parse_allowed_sender("@").is_err());
        assert!(parse_allowed_sender("billing").is_err());
        assert!(parse_allowed_sender("@not a domain").is_err());
    }
}
