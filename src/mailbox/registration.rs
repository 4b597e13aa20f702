//! A mailbox the relay serves: its address, where its OAuth token comes from
//! ([`Registration`]), how its app proves itself to Entra ([`Credential`]), the verifier of
//! its local password and its sending settings.

use std::fmt;

use super::certificate::CertificateCredential;
use super::sending::Sending;
use crate::cloud::Cloud;
use crate::secret::ClientSecret;

/// One mailbox the relay serves.
#[derive(Clone)]
pub struct Mailbox {
    /// The mailbox address, lower-case (see [`super::normalize_address`]). Clients log in with it,
    /// and it is the `user=` of the XOAUTH2 login upstream.
    pub address: String,
    /// Where the mailbox's OAuth token comes from.
    pub registration: Registration,
    /// Checks the local password; `None` until one is set, and then no login succeeds.
    pub password: Option<PasswordVerifier>,
    /// When the mailbox was registered, in seconds since the Unix epoch.
    pub created: u64,
    /// How its SMTP submissions go out and which senders it may use.
    pub sending: Sending,
}

impl Mailbox {
    /// When the credential of the mailbox's own app registration expires, in seconds since
    /// the Unix epoch: a client secret's `--secret-expires`, a certificate's notAfter. `None`
    /// for a public client, a secret without a known expiry, and a mailbox that takes its
    /// token from another (whose credential is the delegate's).
    pub fn credential_expires(&self) -> Option<u64> {
        match &self.registration {
            Registration::App { credential, .. } => credential.expires(),
            Registration::TokenFrom { .. } => None,
        }
    }
}

impl fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailbox")
            .field("address", &self.address)
            .field("registration", &self.registration)
            .field("password", &self.password)
            .field("created", &self.created)
            .field("sending", &self.sending)
            .finish()
    }
}

/// Where a mailbox's OAuth token comes from. `Debug` shows no secret: [`ClientSecret`]
/// prints `[redacted]`, and so does a certificate's key.
#[derive(Debug, Clone)]
pub enum Registration {
    /// The mailbox's own app registration: its refresh token (or, app-only, its client
    /// credentials) is its own.
    App {
        /// The Entra tenant: a GUID, a verified domain, `organizations` or `common`.
        tenant: String,
        /// The application (client) id of the app registration, a GUID.
        client_id: String,
        /// How the app proves itself to Entra: nothing (public client), a secret, or a
        /// certificate.
        credential: Credential,
        /// The Microsoft cloud of the tenant: login host, scopes (see
        /// [`Cloud`]).
        cloud: Cloud,
        /// Tokens come from the client-credentials grant with the app's own permissions
        /// (PROTOCOL.md A5), with no user sign-in and no refresh token. Needs a secret or a
        /// certificate.
        app_only: bool,
    },
    /// A shared mailbox (or any other) that uses the token of the mailbox `delegate`,
    /// a user with rights on it (PROTOCOL.md A6).
    ///
    /// The relay logs in upstream with `user=` this mailbox and the delegate's access
    /// token, as Microsoft documents for delegated access to a shared mailbox. The
    /// delegate must have its own [`Registration::App`] (see [`super::Registry::token_owner`]).
    TokenFrom {
        /// The address of the mailbox whose token is used, lower-case.
        delegate: String,
    },
}

/// How an app registration authenticates to Entra's token endpoint.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A public client: it sends no secret (AADSTS700025 otherwise).
    None,
    /// A client secret, and when it expires (Unix seconds) if the administrator said.
    Secret {
        secret: ClientSecret,
        expires: Option<u64>,
    },
    /// A certificate: each grant carries a client assertion signed with its key.
    Certificate(CertificateCredential),
}

impl Credential {
    /// Whether the app is a confidential client (it has a secret or a certificate).
    pub fn is_confidential(&self) -> bool {
        !matches!(self, Credential::None)
    }

    /// `public`, `secret` or `certificate`.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::None => "public",
            Credential::Secret { .. } => "secret",
            Credential::Certificate(_) => "certificate",
        }
    }

    /// When the credential expires, in seconds since the Unix epoch, if known.
    pub fn expires(&self) -> Option<u64> {
        match self {
            Credential::None => None,
            Credential::Secret { expires, .. } => *expires,
            Credential::Certificate(c) => Some(c.not_after()),
        }
    }
}

/// What the relay keeps to check a mailbox's local password (the password itself is never
/// stored). Created and checked by `auth`.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordVerifier {
    /// A password the relay generated (at least 128 random bits): HMAC-SHA256 of it, keyed
    /// with a random per-mailbox salt. Fast to check, and brute force is hopeless.
    Generated {
        /// The HMAC key, random per mailbox.
        salt: [u8; 32],
        /// HMAC-SHA256(salt, password).
        tag: [u8; 32],
    },
    /// A password the administrator chose: an argon2id PHC string (`$argon2id$v=19$...`).
    Argon2 {
        /// The PHC string, holding parameters, salt and hash.
        phc: String,
    },
}

impl fmt::Debug for PasswordVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PasswordVerifier::Generated { .. } => "PasswordVerifier::Generated([redacted])",
            PasswordVerifier::Argon2 { .. } => "PasswordVerifier::Argon2([redacted])",
        })
    }
}
