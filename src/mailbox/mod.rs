//! The mailbox domain: which Microsoft 365 mailboxes the relay serves, where each one
//! gets its OAuth token (its own app registration, or another mailbox's token: see
//! [`Registration`]), how it authenticates to Entra ([`Credential`]), the verifier of its
//! local password ([`PasswordVerifier`]), how its submissions go out ([`Sending`]), the
//! address rules ([`normalize_address`]) and the in-memory [`Registry`] of them all.
//!
//! Pure data and rules: nothing here reads or writes a file, seals a secret or knows a
//! file format. Persisting the registry is the state layer's job (`mailboxes.json`, its
//! versions and its MAC: see `state::files`); signing with a certificate is
//! `oauth::assertion`'s. This module imports only [`crate::secret`] and the cloud table.

mod address;
pub mod certificate;
mod error;
mod registration;
mod registry;
pub mod sending;

#[cfg(test)]
pub(crate) mod tests;

pub use address::{MAX_ADDRESS_LEN, is_host_name, normalize_address};
pub use certificate::{AssertionAlg, CertificateCredential, CertificateError};
pub use error::RegistryError;
pub use registration::{Credential, Mailbox, PasswordVerifier, Registration};
pub use registry::Registry;
pub use sending::{Delivery, Sending, SmtpVia, parse_allowed_sender};
