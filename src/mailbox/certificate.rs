//! Certificate credentials as data (PROTOCOL.md §B): a certificate and its RSA private
//! key, checked to belong together, with what Entra needs from them (thumbprints, expiry).
//! Signing the client assertion with it is the OAuth layer's (`oauth::assertion`).
//!
//! Only RSA keys are taken (Entra's certificate credentials are RSA), 2048 to 8192 bits,
//! unencrypted, in PKCS#8 (`PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`) PEM. The key must
//! belong to the certificate. The key lives in aws-lc-rs, which wipes it when freed; it
//! leaves it only as PKCS#8 to be sealed in the registry
//! ([`CertificateCredential::private_key_pkcs8`]). The certificate is read with
//! `x509-parser` for its notAfter and public key.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, SHA256, digest};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{KeyPair, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The signature algorithm of the assertion, and with it the thumbprint in its header.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum AssertionAlg {
    /// RSASSA-PSS with SHA-256, header `x5t#S256` (Microsoft's current documentation).
    #[default]
    #[value(name = "ps256")]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, header `x5t` (SHA-1 thumbprint; older documentation).
    #[value(name = "rs256")]
    Rs256,
}

impl AssertionAlg {
    /// The JWS `alg` value.
    pub fn jws_name(self) -> &'static str {
        match self {
            AssertionAlg::Ps256 => "PS256",
            AssertionAlg::Rs256 => "RS256",
        }
    }
}

/// Why a certificate or its key cannot serve as a credential. Names no key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CertificateError(String);

/// A certificate and its RSA private key, checked to belong together. Cloning is cheap.
/// `Debug` shows the thumbprint and expiry, never the key.
#[derive(Clone)]
pub struct CertificateCredential {
    inner: Arc<Inner>,
}

struct Inner {
    der: Vec<u8>,
    key: RsaKeyPair,
    alg: AssertionAlg,
    not_after: u64,
    x5t: String,
    x5t_s256: String,
}

impl CertificateCredential {
    /// Reads the first certificate of `cert_pem` and the private key of `key_pem` (a file
    /// may hold both) and checks that they belong together.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        alg: AssertionAlg,
    ) -> Result<Self, CertificateError> {
        let der = match CertificateDer::pem_slice_iter(cert_pem).next() {
            Some(Ok(der)) => der,
            Some(Err(e)) => return Err(bad(format!("the certificate PEM cannot be read: {e}"))),
            None => return Err(bad("no CERTIFICATE in the certificate file".into())),
        };
        let key = match PrivateKeyDer::from_pem_slice(key_pem) {
            Ok(PrivateKeyDer::Pkcs8(k)) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            Ok(PrivateKeyDer::Pkcs1(k)) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            Ok(_) => return Err(not_rsa()),
            Err(_) => {
                return Err(bad(
                    "no unencrypted private key (PRIVATE KEY or RSA PRIVATE KEY) in the key file"
                        .into(),
                ));
            }
        }
        .map_err(|e| match e.description_() {
            "WrongAlgorithm" => not_rsa(),
            why => bad(format!(
                "the private key is not a usable RSA key (2048 to 8192 bits): {why}"
            )),
        })?;
        Self::new(der.to_vec(), key, alg)
    }

    /// A credential from what the registry keeps: the certificate's DER and the key as
    /// PKCS#8 DER.
    pub fn from_der(
        cert_der: Vec<u8>,
        key_pkcs8: &[u8],
        alg: AssertionAlg,
    ) -> Result<Self, CertificateError> {
        let key = RsaKeyPair::from_pkcs8(key_pkcs8)
            .map_err(|e| bad(format!("the private key is not a usable RSA key: {e}")))?;
        Self::new(cert_der, key, alg)
    }

    fn new(der: Vec<u8>, key: RsaKeyPair, alg: AssertionAlg) -> Result<Self, CertificateError> {
        let (rest, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| bad(format!("the certificate cannot be parsed: {e}")))?;
        if !rest.is_empty() {
            return Err(bad("the certificate has trailing bytes".into()));
        }
        let not_after = u64::try_from(cert.validity().not_after.timestamp())
            .map_err(|_| bad("the certificate expires before 1970".into()))?;
        if *cert.public_key().subject_public_key.data != *key.public_key().as_ref() {
            return Err(bad(
                "the private key does not belong to the certificate (their public keys differ)"
                    .into(),
            ));
        }
        let x5t = URL_SAFE_NO_PAD.encode(digest(&SHA1_FOR_LEGACY_USE_ONLY, &der));
        let x5t_s256 = URL_SAFE_NO_PAD.encode(digest(&SHA256, &der));
        Ok(Self {
            inner: Arc::new(Inner {
                der,
                key,
                alg,
                not_after,
                x5t,
                x5t_s256,
            }),
        })
    }

    /// The certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.inner.der
    }

    /// The certificate in PEM (it is not secret).
    pub fn certificate_pem(&self) -> String {
        let b64 = STANDARD.encode(&self.inner.der);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }

    /// The private key as PKCS#8 DER, to be sealed. Wiped when dropped.
    pub fn private_key_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, CertificateError> {
        let der = self
            .inner
            .key
            .as_der()
            .map_err(|_| bad("the private key cannot be exported".into()))?;
        Ok(Zeroizing::new(der.as_ref().to_vec()))
    }

    pub fn alg(&self) -> AssertionAlg {
        self.inner.alg
    }

    /// The certificate's notAfter, in seconds since the Unix epoch.
    pub fn not_after(&self) -> u64 {
        self.inner.not_after
    }

    /// The SHA-1 thumbprint in upper-case hex, as the Entra admin center shows it.
    pub fn thumbprint_hex(&self) -> String {
        let sha1 = URL_SAFE_NO_PAD.decode(&self.inner.x5t).unwrap_or_default();
        sha1.iter().map(|b| format!("{b:02X}")).collect()
    }

    /// `x5t`: base64url of the SHA-1 of the certificate's DER.
    pub fn x5t(&self) -> &str {
        &self.inner.x5t
    }

    /// `x5t#S256`: base64url of the SHA-256 of the certificate's DER.
    pub fn x5t_s256(&self) -> &str {
        &self.inner.x5t_s256
    }

    /// The key that signs this credential's client assertions (`oauth::assertion`).
    pub(crate) fn signing_key(&self) -> &RsaKeyPair {
        &self.inner.key
    }
}

impl fmt::Debug for CertificateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateCredential")
            .field("thumbprint", &self.thumbprint_hex())
            .field("alg", &self.inner.alg)
            .field("not_after", &self.inner.not_after)
            .field("key", &"[redacted]")
            .finish()
    }
}

fn bad(why: String) -> CertificateError {
    CertificateError(why)
}

fn not_rsa() -> CertificateError {
    bad("the private key is not an RSA key (certificate credentials need RSA)".into())
}
