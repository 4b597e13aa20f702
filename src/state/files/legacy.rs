//! `mailboxes.json` versions 2 and 1, still read: client secrets in plain text, wiped
//! from memory as soon as they move into a [`ClientSecret`].

use serde::Deserialize;

use super::records::{lower_case_address, token_from};
use super::verifier::serde_verifier;
use crate::cloud::Cloud;
use crate::mailbox::{Credential, Mailbox, PasswordVerifier, Registration, Sending};
use crate::secret::ClientSecret;

/// A checked [`Registration::App`] of a version 2 or 1 file (global, delegated);
/// `client_secret` moves into a [`ClientSecret`].
fn app_registration(
    address: &str,
    tenant: String,
    client_id: String,
    client_secret: Option<String>,
) -> Result<Registration, String> {
    if tenant.is_empty() || client_id.is_empty() {
        return Err(format!("{address}: tenant and client_id must not be empty"));
    }
    let credential = match client_secret {
        Some(mut s) if s.is_empty() => {
            zeroize::Zeroize::zeroize(&mut s);
            return Err(format!("{address}: empty client_secret"));
        }
        Some(s) => Credential::Secret {
            secret: ClientSecret::new(s),
            expires: None,
        },
        None => Credential::None,
    };
    Ok(Registration::App {
        tenant,
        client_id,
        credential,
        cloud: Cloud::Global,
        app_only: false,
    })
}

/// `mailboxes.json`, version 2.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegistryFileV2 {
    /// Read by [`VersionProbe`]; listed so that `deny_unknown_fields` lets it through.
    #[serde(rename = "version")]
    _version: u32,
    pub(super) mailboxes: Vec<MailboxRecordV2>,
}

/// One mailbox as version 2 stored it: the client secret in plain text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MailboxRecordV2 {
    address: String,
    registration: RegistrationRecordV2,
    #[serde(default, with = "serde_verifier")]
    password: Option<PasswordVerifier>,
    created: u64,
}

/// A [`Registration`] as version 2 stored it.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RegistrationRecordV2 {
    App {
        tenant: String,
        client_id: String,
        client_secret: Option<String>,
    },
    TokenFrom {
        delegate: String,
    },
}

impl Drop for RegistrationRecordV2 {
    fn drop(&mut self) {
        if let RegistrationRecordV2::App {
            client_secret: Some(s),
            ..
        } = self
        {
            zeroize::Zeroize::zeroize(s);
        }
    }
}

impl MailboxRecordV2 {
    pub(super) fn into_mailbox(mut self) -> Result<Mailbox, String> {
        let address = lower_case_address(&self.address)?;
        let registration = match &mut self.registration {
            RegistrationRecordV2::App {
                tenant,
                client_id,
                client_secret,
            } => app_registration(
                &address,
                std::mem::take(tenant),
                std::mem::take(client_id),
                client_secret.take(),
            )?,
            RegistrationRecordV2::TokenFrom { delegate } => token_from(&address, delegate)?,
        };
        Ok(Mailbox {
            address,
            registration,
            password: self.password.take(),
            created: self.created,
            sending: Sending::default(),
        })
    }
}

/// `mailboxes.json`, version 1.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegistryFileV1 {
    /// Read by [`VersionProbe`]; listed so that `deny_unknown_fields` lets it through.
    #[serde(rename = "version")]
    _version: u32,
    pub(super) mailboxes: Vec<MailboxRecordV1>,
}

/// One mailbox as version 1 stored it: always its own app registration.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MailboxRecordV1 {
    address: String,
    tenant: String,
    client_id: String,
    client_secret: Option<String>,
    #[serde(default, with = "serde_verifier")]
    password: Option<PasswordVerifier>,
    created: u64,
}

impl Drop for MailboxRecordV1 {
    fn drop(&mut self) {
        if let Some(s) = self.client_secret.as_mut() {
            zeroize::Zeroize::zeroize(s);
        }
    }
}

impl MailboxRecordV1 {
    /// The same mailbox as a version 2 record; the secret moves, it is not copied.
    pub(super) fn upgrade(mut self) -> MailboxRecordV2 {
        MailboxRecordV2 {
            address: std::mem::take(&mut self.address),
            registration: RegistrationRecordV2::App {
                tenant: std::mem::take(&mut self.tenant),
                client_id: std::mem::take(&mut self.client_id),
                client_secret: self.client_secret.take(),
            },
            password: self.password.take(),
            created: self.created,
        }
    }
}
