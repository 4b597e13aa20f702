//! An app registration as the token endpoint sees it, and how it proves who it is in a
//! token request: its client secret, a client assertion signed by its certificate, or
//! nothing at all for a public client (AADSTS700025).

use url::form_urlencoded::Serializer;

use super::errors::unavailable;
use crate::cloud::Cloud;
use crate::mailbox::{Credential, Registration};
use crate::oauth::IdpError;
use crate::oauth::assertion::{ClientAssertion, JWT_BEARER};

/// An app registration as the token endpoint needs it.
#[derive(Debug, Clone, Copy)]
pub struct App<'a> {
    /// Tenant GUID or domain, or `common` / `organizations` (PROTOCOL.md A8).
    pub tenant: &'a str,
    /// The application (client) ID.
    pub client_id: &'a str,
    /// A secret or a certificate for a confidential client; a public client sends no
    /// credential at all (AADSTS700025).
    pub credential: &'a Credential,
    /// The cloud of the tenant: its login host (unless the authority is fixed) and the
    /// audience of a client assertion.
    pub cloud: Cloud,
}

/// The credential of a public client.
static PUBLIC_CLIENT: Credential = Credential::None;

impl<'a> App<'a> {
    /// A public client in the global cloud.
    pub fn public(tenant: &'a str, client_id: &'a str) -> Self {
        Self {
            tenant,
            client_id,
            credential: &PUBLIC_CLIENT,
            cloud: Cloud::Global,
        }
    }

    /// The app of a mailbox's own registration; `None` for one that takes its token from
    /// another mailbox.
    pub fn of(registration: &'a Registration) -> Option<Self> {
        match registration {
            Registration::App {
                tenant,
                client_id,
                credential,
                cloud,
                ..
            } => Some(Self {
                tenant,
                client_id,
                credential,
                cloud: *cloud,
            }),
            Registration::TokenFrom { .. } => None,
        }
    }

    /// Adds the app's credential to a token request for `token_url`: `client_secret`, or a
    /// fresh client assertion whose audience is `token_url`; nothing for a public client.
    /// Signing fails only if aws-lc-rs does (the key was checked when it was stored): that
    /// is reported as [`IdpError::Unavailable`], a failure that may pass.
    pub(super) fn authenticate(
        &self,
        form: &mut Serializer<'_, String>,
        token_url: &str,
    ) -> Result<(), IdpError> {
        match self.credential {
            Credential::None => {}
            Credential::Secret { secret, .. } => {
                form.append_pair("client_secret", secret.expose());
            }
            Credential::Certificate(certificate) => {
                let assertion = certificate
                    .assertion(self.client_id, token_url)
                    .map_err(|e| unavailable(e.to_string()))?;
                form.append_pair("client_assertion_type", JWT_BEARER)
                    .append_pair("client_assertion", &assertion);
            }
        }
        Ok(())
    }
}
