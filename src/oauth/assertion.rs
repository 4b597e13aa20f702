//! Certificate credentials (PROTOCOL.md §B): instead of a client secret, the app proves
//! itself with a short JWT, the *client assertion*, signed with the private key of a
//! certificate uploaded to its app registration. Every grant sends it as
//! `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` and
//! `client_assertion=<JWT>` (RFC 7523 §2.2).
//!
//! The JWT:
//! - header: `alg` PS256 (RSASSA-PSS, SHA-256) with `x5t#S256`, the base64url SHA-256 of
//!   the certificate's DER, as Microsoft documents today; or, with
//!   [`AssertionAlg::Rs256`], `alg` RS256 (PKCS#1 v1.5) with `x5t`, the base64url SHA-1, as
//!   older revisions did. `typ` is `JWT`.
//! - claims: `aud` the token endpoint the assertion is sent to (the tenant's, in the
//!   mailbox's cloud), `iss` = `sub` = the client id, `jti` a fresh random GUID, `nbf` =
//!   `iat` = now, `exp` = now + [`ASSERTION_LIFETIME`].
//!
//! The credential itself (certificate, key, algorithm, thumbprints) is mailbox data:
//! [`CertificateCredential`], from [`crate::mailbox::certificate`]; this module signs with it
//! ([`ClientAssertion`]).
//!
//! The JWT is built here rather than with a JWT crate: it is two small JSON objects and
//! one signature, and aws-lc-rs (the relay's crypto provider) signs PS256 and RS256
//! itself.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RSA_PSS_SHA256};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

pub use crate::mailbox::certificate::{AssertionAlg, CertificateCredential, CertificateError};

/// `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long an assertion is valid: Entra sets no maximum; Microsoft's samples and
/// email-oauth2-proxy use 5 to 10 minutes (PROTOCOL.md §B).
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// Why no assertion could be signed (aws-lc-rs refused; not expected with a checked key).
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot sign the client assertion: {0}")]
pub struct AssertionError(String);

/// The JOSE header of an assertion.
#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    x5t: Option<&'a str>,
    #[serde(rename = "x5t#S256", skip_serializing_if = "Option::is_none")]
    x5t_s256: Option<&'a str>,
}

/// The claims of an assertion (Microsoft's "certificate credentials" page).
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Claims {
    pub aud: String,
    pub iss: String,
    pub sub: String,
    pub jti: String,
    pub nbf: u64,
    pub iat: u64,
    pub exp: u64,
}

/// Signing client assertions with a certificate credential.
pub trait ClientAssertion {
    /// A fresh client assertion for `client_id`, to be sent to the token endpoint
    /// `audience`.
    fn assertion(&self, client_id: &str, audience: &str) -> Result<String, AssertionError>;
}

impl ClientAssertion for CertificateCredential {
    /// A fresh client assertion for `client_id`, to be sent to the token endpoint
    /// `audience`.
    fn assertion(&self, client_id: &str, audience: &str) -> Result<String, AssertionError> {
        assertion_at(self, client_id, audience, SystemTime::now(), &new_guid()?)
    }
}

/// The assertion as of `now`, with `jti`.
fn assertion_at(
    credential: &CertificateCredential,
    client_id: &str,
    audience: &str,
    now: SystemTime,
    jti: &str,
) -> Result<String, AssertionError> {
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (alg, x5t, x5t_s256) = match credential.alg() {
        AssertionAlg::Ps256 => (&RSA_PSS_SHA256, None, Some(credential.x5t_s256())),
        AssertionAlg::Rs256 => (&RSA_PKCS1_SHA256, Some(credential.x5t()), None),
    };
    let header = Header {
        alg: credential.alg().jws_name(),
        typ: "JWT",
        x5t,
        x5t_s256,
    };
    let claims = Claims {
        aud: audience.to_owned(),
        iss: client_id.to_owned(),
        sub: client_id.to_owned(),
        jti: jti.to_owned(),
        nbf: now,
        iat: now,
        exp: now + ASSERTION_LIFETIME.as_secs(),
    };
    let json = |e: serde_json::Error| AssertionError(format!("JSON: {e}"));
    let mut jwt = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).map_err(json)?),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).map_err(json)?)
    );
    let mut signature = vec![0; credential.signing_key().public_modulus_len()];
    credential
        .signing_key()
        .sign(alg, &SystemRandom::new(), jwt.as_bytes(), &mut signature)
        .map_err(|e| AssertionError(e.to_string()))?;
    jwt.push('.');
    jwt.push_str(&URL_SAFE_NO_PAD.encode(&signature));
    Ok(jwt)
}

/// A random (version 4) GUID in its 8-4-4-4-12 lower-case form.
fn new_guid() -> Result<String, AssertionError> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| AssertionError("no randomness".into()))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, SHA256, digest};
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{
        RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey,
    };
    use base64::engine::general_purpose::STANDARD;
    use rcgen::{CertificateParams, KeyPair};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    use super::*;
    use crate::oauth::testing::{TEST_CERT_NOT_AFTER, new_rsa_certificate, rsa_pair};

    const CLIENT_ID: &str = "6731de76-14a6-49ae-97bc-6eba6914391e";
    const AUDIENCE: &str =
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token";

    fn credential(alg: AssertionAlg) -> CertificateCredential {
        let (cert, key) = rsa_pair();
        CertificateCredential::from_pem(cert.as_bytes(), key.as_bytes(), alg).unwrap()
    }

    fn decode_json(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    /// The RSA public key (PKCS#1) of the test certificate, read independently of the
    /// credential.
    fn public_key() -> Vec<u8> {
        let (cert, _) = rsa_pair();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        parsed.public_key().subject_public_key.data.to_vec()
    }

    #[test]
    fn the_documented_thumbprint_vector() {
        // PROTOCOL.md §B: hex 84E05C1D98BCE3A5421D225B140B36E86A3D5534 is x5t
        // hOBcHZi846VCHSJbFAs26Go9VTQ.
        let hex = "84E05C1D98BCE3A5421D225B140B36E86A3D5534";
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(URL_SAFE_NO_PAD.encode(bytes), "hOBcHZi846VCHSJbFAs26Go9VTQ");

        // And the thumbprints are of the certificate's DER, in both forms.
        let c = credential(AssertionAlg::Ps256);
        let der = c.certificate_der();
        let sha1 = digest(&SHA1_FOR_LEGACY_USE_ONLY, der);
        let hex: String = sha1.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(c.thumbprint_hex(), hex);
        assert_eq!(c.x5t(), URL_SAFE_NO_PAD.encode(sha1));
        assert_eq!(c.x5t().len(), 27);
        assert_eq!(c.x5t_s256(), URL_SAFE_NO_PAD.encode(digest(&SHA256, der)));
        assert_eq!(c.x5t_s256().len(), 43);
        // SHA-1 and SHA-256 of "abc" (FIPS 180 examples), base64url.
        assert_eq!(
            URL_SAFE_NO_PAD.encode(digest(&SHA1_FOR_LEGACY_USE_ONLY, b"abc")),
            "qZk-NkcGgWq6PiVxeFDCbJzQ2J0"
        );
    }

    #[test]
    fn claims_and_header_follow_the_documentation() {
        let c = credential(AssertionAlg::Ps256);
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let jti = "0b7a2e52-5d8b-4c2f-9a3e-6f1d2c3b4a59";
        let jwt = assertion_at(&c, CLIENT_ID, AUDIENCE, now, jti).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            decode_json(parts[0]),
            serde_json::json!({"alg": "PS256", "typ": "JWT", "x5t#S256": c.x5t_s256()})
        );
        let claims: Claims = serde_json::from_value(decode_json(parts[1])).unwrap();
        assert_eq!(
            claims,
            Claims {
                aud: AUDIENCE.into(),
                iss: CLIENT_ID.into(),
                sub: CLIENT_ID.into(),
                jti: jti.into(),
                nbf: 1_800_000_000,
                iat: 1_800_000_000,
                exp: 1_800_000_300,
            }
        );

        let c = credential(AssertionAlg::Rs256);
        let jwt = assertion_at(&c, CLIENT_ID, AUDIENCE, now, jti).unwrap();
        let header = jwt.split('.').next().unwrap();
        assert_eq!(
            decode_json(header),
            serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": c.x5t()})
        );
    }

    #[test]
    fn each_assertion_is_fresh() {
        let c = credential(AssertionAlg::Ps256);
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = |jwt: &str| -> Claims {
            serde_json::from_value(decode_json(jwt.split('.').nth(1).unwrap())).unwrap()
        };
        let (a, b) = (
            claims(&c.assertion(CLIENT_ID, AUDIENCE).unwrap()),
            claims(&c.assertion(CLIENT_ID, AUDIENCE).unwrap()),
        );
        assert_ne!(a.jti, b.jti);
        for claims in [a, b] {
            assert!(
                claims.iat >= before && claims.iat <= before + 5,
                "{claims:?}"
            );
            assert_eq!(claims.exp, claims.iat + 300);
            let jti = claims.jti.as_bytes();
            assert_eq!(claims.jti.len(), 36);
            assert_eq!(
                (jti[8], jti[13], jti[14], jti[18]),
                (b'-', b'-', b'4', b'-')
            );
            assert!(
                matches!(jti[19], b'8' | b'9' | b'a' | b'b'),
                "{}",
                claims.jti
            );
        }
    }

    #[test]
    fn signatures_verify_with_the_certificates_public_key() {
        for (alg, verify) in [
            (AssertionAlg::Ps256, &RSA_PSS_2048_8192_SHA256),
            (AssertionAlg::Rs256, &RSA_PKCS1_2048_8192_SHA256),
        ] {
            let jwt = credential(alg).assertion(CLIENT_ID, AUDIENCE).unwrap();
            let (signed, signature) = jwt.rsplit_once('.').unwrap();
            let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
            assert_eq!(signature.len(), 256, "{alg:?}");
            let key = UnparsedPublicKey::new(verify, public_key());
            key.verify(signed.as_bytes(), &signature)
                .unwrap_or_else(|_| panic!("{alg:?} signature does not verify"));
            // The other padding does not verify: the algorithm is really the one named.
            let other = if alg == AssertionAlg::Ps256 {
                &RSA_PKCS1_2048_8192_SHA256
            } else {
                &RSA_PSS_2048_8192_SHA256
            };
            let other = UnparsedPublicKey::new(other, public_key());
            assert!(other.verify(signed.as_bytes(), &signature).is_err());
        }
    }

    #[test]
    fn the_key_goes_to_the_registry_and_back() {
        let c = credential(AssertionAlg::Rs256);
        assert_eq!(c.not_after(), TEST_CERT_NOT_AFTER);
        let pkcs8 = c.private_key_pkcs8().unwrap();
        let back =
            CertificateCredential::from_der(c.certificate_der().to_vec(), &pkcs8, c.alg()).unwrap();
        assert_eq!(back.thumbprint_hex(), c.thumbprint_hex());
        assert_eq!(back.alg(), AssertionAlg::Rs256);
        let pem = c.certificate_pem();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
        assert!(pem.lines().all(|l| l.len() <= 64));
        let reread = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(&*reread, c.certificate_der());
        let shown = format!("{c:?}");
        assert!(shown.contains(&c.thumbprint_hex()), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
    }

    #[test]
    fn pkcs1_keys_and_combined_files_are_read() {
        let (cert, key) = rsa_pair();
        let pkcs8 = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let pkcs1 = RsaKeyPair::from_pkcs8(pkcs8.secret_der()).unwrap();
        // PKCS#1 inside PKCS#8: the OCTET STRING at the end of the PrivateKeyInfo.
        let inner = &pkcs8.secret_der()[26..];
        assert!(RsaKeyPair::from_der(inner).is_ok());
        let pem = format!(
            "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\n",
            STANDARD.encode(inner)
        );
        let c =
            CertificateCredential::from_pem(cert.as_bytes(), pem.as_bytes(), AssertionAlg::Ps256)
                .unwrap();
        assert_eq!(
            c.private_key_pkcs8().unwrap().as_slice(),
            pkcs1.as_der().unwrap().as_ref()
        );
        let both = format!("{key}{cert}");
        assert!(
            CertificateCredential::from_pem(both.as_bytes(), both.as_bytes(), AssertionAlg::Ps256)
                .is_ok()
        );
    }

    #[test]
    fn unusable_certificates_and_keys_are_refused() {
        let (cert, key) = rsa_pair();
        let (other_cert, _) = new_rsa_certificate("another app");
        let ec = KeyPair::generate().unwrap();
        let ec_cert = CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&ec)
            .unwrap();
        let cases: [(&str, &str, &str); 5] = [
            (&other_cert, key, "does not belong to the certificate"),
            ("", key, "no CERTIFICATE"),
            (cert, cert, "no unencrypted private key"),
            (&ec_cert.pem(), &ec.serialize_pem(), "not an RSA key"),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                key,
                "cannot be parsed",
            ),
        ];
        for (cert, key, expected) in cases {
            let e = CertificateCredential::from_pem(
                cert.as_bytes(),
                key.as_bytes(),
                AssertionAlg::Ps256,
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(expected), "{expected}: {e}");
            assert!(!e.contains("PRIVATE KEY-----"), "{e}");
        }
    }
}
