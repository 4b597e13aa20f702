//! The records of `mailboxes.json` versions 5, 4 and 3 (see [`super::registry`]), and
//! their conversions to and from [`Mailbox`], where secrets are sealed and opened.

use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::verifier::serde_verifier;
use crate::cloud::Cloud;
use crate::mailbox::{
    AssertionAlg, CertificateCredential, Credential, Mailbox, PasswordVerifier, Registration,
    Sending, normalize_address,
};
use crate::secret::ClientSecret;
use crate::state::error::RegistryStoreError;
use crate::state::seal::{SealError, StateKey};

/// The on-disk format version this build writes: version 4 with a MAC ([`super::integrity`]).
pub(super) const FORMAT_VERSION: u32 = 5;

/// The fourth format, still read once (see [`super::integrity`]): secrets sealed, with clouds,
/// app-only mailboxes, certificate credentials and credential expiry, but no MAC.
pub(super) const FORMAT_VERSION_4: u32 = 4;

/// The third format, still read: as version 4, without its new fields.
pub(super) const FORMAT_VERSION_3: u32 = 3;

/// The second format, still read: as version 3, with client secrets in plain text.
pub(super) const FORMAT_VERSION_2: u32 = 2;

/// The first format, still read: one app registration per mailbox, in flat fields.
pub(super) const FORMAT_VERSION_1: u32 = 1;

/// A serde_json error's category and position: its message could quote the file, and the
/// file holds secrets.
pub(crate) fn json_why(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "unexpected structure or value",
        serde_json::error::Category::Eof => "truncated",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// `mailboxes.json`, version 5 without its `mac`, 4, and 3 (which lacks some of its fields).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegistryFile {
    pub(super) version: u32,
    pub(super) mailboxes: Vec<MailboxRecord>,
}

/// One mailbox as stored (versions 4 and 3).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MailboxRecord {
    address: String,
    registration: RegistrationRecord,
    #[serde(default, with = "serde_verifier")]
    password: Option<PasswordVerifier>,
    created: u64,
    #[serde(default, skip_serializing_if = "Sending::is_default")]
    sending: Sending,
}

/// A [`Registration`] as stored (version 4): the client secret and the certificate's key
/// sealed. Version 3 has only `tenant`, `client_id` and `client_secret_sealed`; the other
/// fields take their defaults.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum RegistrationRecord {
    App {
        tenant: String,
        client_id: String,
        #[serde(default)]
        cloud: Cloud,
        #[serde(default)]
        app_only: bool,
        client_secret_sealed: Option<String>,
        #[serde(default)]
        certificate: Option<CertificateRecord>,
        #[serde(default)]
        credential_expires: Option<u64>,
    },
    TokenFrom {
        delegate: String,
    },
}

/// A certificate credential as stored: the certificate in PEM (public), its RSA private
/// key in PKCS#8 DER, sealed.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateRecord {
    pem: String,
    private_key_sealed: String,
    alg: AssertionAlg,
}

/// Why a version 4 or 3 record gave no mailbox.
pub(super) enum OpenError {
    Corrupt(String),
    Sealed {
        address: String,
        what: &'static str,
        why: SealError,
    },
}

/// What a mailbox's client secret is sealed for: it can't be moved to another mailbox.
fn secret_purpose(address: &str) -> String {
    format!("client-secret:{address}")
}

/// What a mailbox's certificate private key is sealed for.
fn private_key_purpose(address: &str) -> String {
    format!("private-key:{address}")
}

const CLIENT_SECRET: &str = "client secret";
const PRIVATE_KEY: &str = "private key";

impl MailboxRecord {
    /// The record of `m`, its client secret sealed with `key`.
    pub(super) fn from_mailbox(m: &Mailbox, key: &StateKey) -> Result<Self, RegistryStoreError> {
        let registration = match m.registration {
            Registration::App {
                ref tenant,
                ref client_id,
                ref credential,
                cloud,
                app_only,
            } => {
                let (client_secret_sealed, certificate) = seal_credential(m, credential, key)?;
                RegistrationRecord::App {
                    tenant: tenant.clone(),
                    client_id: client_id.clone(),
                    cloud,
                    app_only,
                    client_secret_sealed,
                    certificate,
                    credential_expires: credential.expires(),
                }
            }
            Registration::TokenFrom { ref delegate } => RegistrationRecord::TokenFrom {
                delegate: delegate.clone(),
            },
        };
        Ok(Self {
            address: m.address.clone(),
            registration,
            password: m.password.clone(),
            created: m.created,
            sending: m.sending.clone(),
        })
    }

    /// The mailbox of a record read from a file of format `version` (4 or 3).
    pub(super) fn into_mailbox(self, key: &StateKey, version: u32) -> Result<Mailbox, OpenError> {
        let address = lower_case_address(&self.address).map_err(OpenError::Corrupt)?;
        let opener = Opener {
            address: &address,
            key,
        };
        let registration = match self.registration {
            RegistrationRecord::App {
                tenant,
                client_id,
                cloud,
                app_only,
                client_secret_sealed,
                certificate,
                credential_expires,
            } => {
                let newer = cloud != Cloud::Global
                    || app_only
                    || certificate.is_some()
                    || credential_expires.is_some();
                if version == FORMAT_VERSION_3 && newer {
                    return Err(opener.corrupt(
                        "format version 3 has no cloud, app_only, certificate or credential_expires",
                    ));
                }
                let credential =
                    opener.credential(client_secret_sealed, certificate, credential_expires)?;
                if tenant.is_empty() || client_id.is_empty() {
                    return Err(opener.corrupt("tenant and client_id must not be empty"));
                }
                Registration::App {
                    tenant,
                    client_id,
                    credential,
                    cloud,
                    app_only,
                }
            }
            RegistrationRecord::TokenFrom { delegate } => {
                token_from(&address, &delegate).map_err(OpenError::Corrupt)?
            }
        };
        Ok(Mailbox {
            address,
            registration,
            password: self.password,
            created: self.created,
            sending: self.sending,
        })
    }
}

/// The sealed client secret or certificate record of `m`'s `credential`.
fn seal_credential(
    m: &Mailbox,
    credential: &Credential,
    key: &StateKey,
) -> Result<(Option<String>, Option<CertificateRecord>), RegistryStoreError> {
    let sealing = |what| {
        move |why| RegistryStoreError::Seal {
            address: m.address.clone(),
            what,
            why,
        }
    };
    match credential {
        Credential::None => Ok((None, None)),
        Credential::Secret { secret, .. } => {
            let sealed = key
                .seal(&secret_purpose(&m.address), secret.expose().as_bytes())
                .map_err(sealing(CLIENT_SECRET))?;
            Ok((Some(sealed), None))
        }
        Credential::Certificate(c) => {
            let pkcs8 = c
                .private_key_pkcs8()
                .map_err(|e| RegistryStoreError::Certificate {
                    address: m.address.clone(),
                    why: e.to_string(),
                })?;
            let sealed = key
                .seal(&private_key_purpose(&m.address), &pkcs8)
                .map_err(sealing(PRIVATE_KEY))?;
            let record = CertificateRecord {
                pem: c.certificate_pem(),
                private_key_sealed: sealed,
                alg: c.alg(),
            };
            Ok((None, Some(record)))
        }
    }
}

/// Opens the sealed secrets of one mailbox's record.
struct Opener<'a> {
    address: &'a str,
    key: &'a StateKey,
}

impl Opener<'_> {
    fn corrupt(&self, why: &str) -> OpenError {
        OpenError::Corrupt(format!("{}: {why}", self.address))
    }

    /// The plain text of `sealed` (the record's `field`, holding the mailbox's `what`).
    fn open(
        &self,
        purpose: String,
        sealed: &str,
        field: &str,
        what: &'static str,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, OpenError> {
        self.key.open(&purpose, sealed).map_err(|why| match why {
            SealError::Malformed(_) => self.corrupt(&format!("{field} is {why}")),
            why => OpenError::Sealed {
                address: self.address.to_owned(),
                what,
                why,
            },
        })
    }

    /// The credential of a record: none, a client secret or a certificate.
    fn credential(
        &self,
        client_secret_sealed: Option<String>,
        certificate: Option<CertificateRecord>,
        credential_expires: Option<u64>,
    ) -> Result<Credential, OpenError> {
        match (client_secret_sealed, certificate) {
            (Some(_), Some(_)) => Err(self.corrupt("both a client secret and a certificate")),
            (None, None) if credential_expires.is_some() => {
                Err(self.corrupt("credential_expires without a credential"))
            }
            (None, None) => Ok(Credential::None),
            (Some(sealed), None) => self.secret(&sealed, credential_expires),
            (None, Some(cert)) => self.certificate(&cert),
        }
    }

    fn secret(&self, sealed: &str, expires: Option<u64>) -> Result<Credential, OpenError> {
        let plain = self.open(
            secret_purpose(self.address),
            sealed,
            "client_secret_sealed",
            CLIENT_SECRET,
        )?;
        let text = std::str::from_utf8(&plain)
            .map_err(|_| self.corrupt("the client secret is not text"))?;
        if text.is_empty() {
            return Err(self.corrupt("empty client secret"));
        }
        Ok(Credential::Secret {
            secret: ClientSecret::new(text),
            expires,
        })
    }

    fn certificate(&self, cert: &CertificateRecord) -> Result<Credential, OpenError> {
        let pkcs8 = self.open(
            private_key_purpose(self.address),
            &cert.private_key_sealed,
            "private_key_sealed",
            PRIVATE_KEY,
        )?;
        let der = rustls_pki_types::CertificateDer::pem_slice_iter(cert.pem.as_bytes())
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| self.corrupt("the certificate PEM cannot be read"))?;
        let credential = CertificateCredential::from_der(der.to_vec(), &pkcs8, cert.alg)
            .map_err(|e| self.corrupt(&format!("certificate: {e}")))?;
        Ok(Credential::Certificate(credential))
    }
}

/// A checked [`Registration::TokenFrom`].
pub(super) fn token_from(address: &str, delegate: &str) -> Result<Registration, String> {
    let delegate = lower_case_address(delegate).map_err(|why| format!("{address}: {why}"))?;
    Ok(Registration::TokenFrom { delegate })
}

/// An address from the file: valid, and already lower-case as [`super::registry::save`] writes it.
pub(super) fn lower_case_address(stored: &str) -> Result<String, String> {
    let address = normalize_address(stored).map_err(|e| e.to_string())?;
    if address != stored {
        return Err(format!("address `{stored}` is not lower-case"));
    }
    Ok(address)
}
