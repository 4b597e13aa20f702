//! The in-memory registry: the set of mailboxes keyed by lower-case address, with the
//! rules every change keeps (valid addresses, no duplicate, no token taken from itself, an
//! app-only mailbox has a credential) and the lookups the relay makes (a mailbox, the
//! owner of its token, its dependents).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::address::normalize_address;
use super::error::RegistryError;
use super::registration::{Credential, Mailbox, PasswordVerifier, Registration};
use super::sending::Sending;

/// The set of mailboxes, keyed by lower-case address.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    mailboxes: BTreeMap<String, Arc<Mailbox>>,
}

// === impl Registry ===
impl Registry {
    /// The mailbox with this address, compared case-insensitively.
    pub fn get(&self, address: &str) -> Option<&Mailbox> {
        self.get_arc(address).map(|m| &**m)
    }

    /// Like [`Registry::get`], as a shared handle that outlives the registry.
    pub fn get_arc(&self, address: &str) -> Option<&Arc<Mailbox>> {
        self.mailboxes.get(&address.to_ascii_lowercase())
    }

    /// Adds a mailbox; its address (and its delegate's) is validated and lower-cased.
    /// Refuses an address that is already registered, a mailbox that takes its token
    /// from itself, and an app-only mailbox without a secret or certificate. Whether the delegate is registered is not checked (the file may list a
    /// shared mailbox before its delegate); [`Registry::token_owner`] checks that.
    pub fn insert(&mut self, mut m: Mailbox) -> Result<(), RegistryError> {
        m.address = normalize_address(&m.address)?;
        match &mut m.registration {
            Registration::TokenFrom { delegate } => {
                *delegate = normalize_address(delegate)?;
                if *delegate == m.address {
                    return Err(RegistryError::OwnDelegate(m.address));
                }
            }
            Registration::App {
                credential,
                app_only: true,
                ..
            } if !credential.is_confidential() => {
                return Err(RegistryError::AppOnlyWithoutCredential(m.address));
            }
            Registration::App { .. } => {}
        }
        if self.mailboxes.contains_key(&m.address) {
            return Err(RegistryError::Duplicate(m.address));
        }
        self.mailboxes.insert(m.address.clone(), Arc::new(m));
        Ok(())
    }

    /// Removes the mailbox with this address (case-insensitive) and returns it. Mailboxes
    /// that take their token from it are left as they are; check [`Registry::dependents`]
    /// first to avoid that.
    pub fn remove(&mut self, address: &str) -> Option<Mailbox> {
        self.mailboxes
            .remove(&address.to_ascii_lowercase())
            .map(Arc::unwrap_or_clone)
    }

    /// Sets (or with `None`, clears) the local password verifier of a registered mailbox.
    pub fn set_password(
        &mut self,
        address: &str,
        password: Option<PasswordVerifier>,
    ) -> Result<(), RegistryError> {
        let m = self.mailbox_mut(address)?;
        m.password = password;
        Ok(())
    }

    /// Replaces the credential of a mailbox's own app registration (a mailbox that takes
    /// its token from another has none).
    pub fn set_credential(
        &mut self,
        address: &str,
        credential: Credential,
    ) -> Result<(), RegistryError> {
        let m = self.mailbox_mut(address)?;
        match &mut m.registration {
            Registration::App { credential: c, .. } => {
                *c = credential;
                Ok(())
            }
            Registration::TokenFrom { .. } => Err(RegistryError::UnknownMailbox(format!(
                "{address} (no app registration)"
            ))),
        }
    }

    /// The registered mailbox `address`, to change (copied first if shared).
    fn mailbox_mut(&mut self, address: &str) -> Result<&mut Mailbox, RegistryError> {
        self.mailboxes
            .get_mut(&address.to_ascii_lowercase())
            .map(Arc::make_mut)
            .ok_or_else(|| RegistryError::UnknownMailbox(address.to_owned()))
    }

    /// Replaces a mailbox's sending settings.
    pub fn set_sending(&mut self, address: &str, sending: Sending) -> Result<(), RegistryError> {
        let m = self.mailbox_mut(address)?;
        m.sending = sending;
        Ok(())
    }

    /// The mailbox whose refresh token serves `mailbox`: `mailbox` itself when it has its
    /// own app registration, else its delegate. This is the mailbox to pass to
    /// `oauth::cache::TokenCache::access_token`; the XOAUTH2 `user=` stays
    /// `mailbox.address` (PROTOCOL.md A6).
    ///
    /// Fails when the delegate is not registered, or itself takes its token from another
    /// mailbox (there are no chains: each token has one owner with an app registration).
    pub fn token_owner(&self, mailbox: &Mailbox) -> Result<Arc<Mailbox>, RegistryError> {
        let delegate = match &mailbox.registration {
            Registration::App { .. } => return Ok(self.handle_of(mailbox)),
            Registration::TokenFrom { delegate } => delegate,
        };
        let owner = self
            .get_arc(delegate)
            .ok_or_else(|| RegistryError::MissingDelegate {
                mailbox: mailbox.address.clone(),
                delegate: delegate.clone(),
            })?;
        match &owner.registration {
            Registration::App { .. } => Ok(owner.clone()),
            Registration::TokenFrom { delegate: next } => Err(RegistryError::DelegateChain {
                mailbox: mailbox.address.clone(),
                delegate: owner.address.clone(),
                next: next.clone(),
            }),
        }
    }

    /// The mailboxes that take their token from `address` (case-insensitive), ordered by
    /// address.
    pub fn dependents(&self, address: &str) -> Vec<&Mailbox> {
        let address = address.to_ascii_lowercase();
        self.iter()
            .filter(|m| {
                matches!(&m.registration, Registration::TokenFrom { delegate } if *delegate == address)
            })
            .collect()
    }

    /// A shared handle to `mailbox`: the registry's own when `mailbox` is the one it holds,
    /// else a copy (a mailbox from an older read of the registry).
    fn handle_of(&self, mailbox: &Mailbox) -> Arc<Mailbox> {
        match self.get_arc(&mailbox.address) {
            Some(held) if std::ptr::eq(&**held, mailbox) => held.clone(),
            _ => Arc::new(mailbox.clone()),
        }
    }

    /// All mailboxes, ordered by address.
    pub fn iter(&self) -> impl Iterator<Item = &Mailbox> {
        self.mailboxes.values().map(|m| &**m)
    }

    /// How many mailboxes are registered.
    pub fn len(&self) -> usize {
        self.mailboxes.len()
    }

    /// Whether no mailbox is registered.
    pub fn is_empty(&self) -> bool {
        self.mailboxes.is_empty()
    }
}
