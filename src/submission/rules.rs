//! Sender rules: which addresses a mailbox may send as. Exchange refuses a From the
//! mailbox has no SendAs right for only after the whole message (`554 5.2.252
//! SendAsDenied`), and apps such as Odoo restrict each outgoing server to its own senders;
//! the relay refuses an unlisted sender early, with the list in the reply.

use std::fmt;

use crate::protocol::smtp::reply;

/// The senders one mailbox may use, lower case: addresses and `@domain` entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderRules {
    allowed: Vec<String>,
}

impl SenderRules {
    /// `configured` is the mailbox's `allowed_from`; when it is empty the mailbox itself
    /// and `dependents` (the shared mailboxes that take their token from it) are allowed.
    pub fn new(mailbox: &str, configured: &[String], dependents: &[String]) -> Self {
        let allowed = if configured.is_empty() {
            std::iter::once(mailbox.to_ascii_lowercase())
                .chain(dependents.iter().map(|d| d.to_ascii_lowercase()))
                .collect()
        } else {
            configured.iter().map(|a| a.to_ascii_lowercase()).collect()
        };
        Self { allowed }
    }

    /// Whether `address` may be used as a sender. The null reverse path (`<>`, for
    /// notifications) is allowed on the envelope; the header From still decides.
    pub fn allows(&self, address: &str) -> bool {
        let address = address.trim().to_ascii_lowercase();
        let Some((_, domain)) = address.rsplit_once('@') else {
            return false;
        };
        self.allowed
            .iter()
            .any(|entry| match entry.strip_prefix('@') {
                Some(allowed_domain) => allowed_domain == domain,
                None => *entry == address,
            })
    }

    /// The `550 5.7.1` reply refusing `address`, naming what is allowed.
    pub fn refusal(&self, what: &str, address: &str) -> String {
        let address: String = address
            .chars()
            .filter(|c| !c.is_control())
            .take(256)
            .collect();
        reply::sender_not_allowed(what, &address, self)
    }
}

impl fmt::Display for SenderRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.allowed.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_the_mailbox_and_its_shared_mailboxes() {
        let rules = SenderRules::new(
            "alice@contoso.com",
            &[],
            &["helpdesk@contoso.com".to_string()],
        );
        assert!(rules.allows("alice@contoso.com"));
        assert!(rules.allows("Alice@Contoso.COM"));
        assert!(rules.allows("helpdesk@contoso.com"));
        assert!(!rules.allows("bob@contoso.com"));
        assert!(!rules.allows("alice@contoso.com.evil.example"));
        assert!(!rules.allows(""));
    }

    #[test]
    fn configured_addresses_and_domains() {
        let rules = SenderRules::new(
            "odoo@contoso.com",
            &["@billing.contoso.com".into(), "sales@contoso.com".into()],
            &[],
        );
        assert!(rules.allows("invoices@billing.contoso.com"));
        assert!(rules.allows("sales@contoso.com"));
        assert!(
            !rules.allows("odoo@contoso.com"),
            "the list replaces the default"
        );
        assert!(!rules.allows("x@sub.billing.contoso.com"));
        assert!(!rules.allows("billing.contoso.com"));
        let refusal = rules.refusal("sender", "ceo@contoso.com");
        assert!(
            refusal.starts_with("550 5.7.1 sender <ceo@contoso.com>"),
            "{refusal}"
        );
        assert!(
            refusal.contains("@billing.contoso.com, sales@contoso.com"),
            "{refusal}"
        );
        assert!(refusal.ends_with("\r\n"));
        assert!(!rules.refusal("sender", "a\r\nb@c").contains("\r\nb"));
    }
}
