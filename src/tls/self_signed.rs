//! The self-signed certificate the relay makes for its local listeners when the admin
//! gave none: valid for about two years (not for centuries, so that a copied key does not
//! stay useful forever), and renewed at start when less than [`RENEW_BEFORE`] remains.
//! Only a certificate the relay made itself is ever replaced; it is recognised by its
//! subject's common name.

use std::path::Path;
use std::time::{Duration, SystemTime};

use super::{TlsError, Validity, file_error, host_name};

/// The subject common name that marks a certificate as the relay's own.
pub const COMMON_NAME: &str = "m365-relay self-signed";
/// How long a new self-signed certificate is valid (two years).
pub const LIFETIME: Duration = Duration::from_secs(730 * 24 * 3600);
/// A self-signed certificate with less than this left is renewed at start.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Clock skew between the relay and its clients, allowed before now.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Writes a new self-signed certificate and key (0600) for localhost, 127.0.0.1, ::1 and
/// this host's name, valid from an hour ago for [`LIFETIME`].
pub fn create(cert: &Path, key: &Path) -> Result<(), TlsError> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
    let host = host_name();
    if host != "localhost" {
        names.push(host);
    }
    let now = SystemTime::now();
    let generated = generate(names, now - BACKDATE, now + LIFETIME)
        .map_err(|e| TlsError::Config(format!("cannot create a certificate: {e}")))?;
    crate::state::private::write_private(key, generated.1.as_bytes())
        .map_err(|e| file_error(key, &format!("cannot write: {e}")))?;
    crate::state::private::write_private(cert, generated.0.as_bytes())
        .map_err(|e| file_error(cert, &format!("cannot write: {e}")))?;
    tracing::info!(cert = %cert.display(), "created a self-signed certificate for the local listeners, valid for two years");
    Ok(())
}

/// A certificate and key (PEM) for `names`, valid from `from` until `until`.
fn generate(
    names: Vec<String>,
    from: SystemTime,
    until: SystemTime,
) -> Result<(String, String), rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, COMMON_NAME);
    params.not_before = from.into();
    params.not_after = until.into();
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// At start: renews `cert` (and `key`) if the relay made it and less than
/// [`RENEW_BEFORE`] of it remains at `now`. An admin's certificate is never touched.
pub fn renew_if_due(
    cert: &Path,
    key: &Path,
    der: &[u8],
    now: SystemTime,
) -> Result<bool, TlsError> {
    if !is_own(der) {
        return Ok(false);
    }
    let validity = Validity::of(der).map_err(|why| file_error(cert, &why))?;
    if validity.not_after > now + RENEW_BEFORE {
        return Ok(false);
    }
    create(cert, key)?;
    tracing::warn!(cert = %cert.display(), "renewed the relay's self-signed certificate: clients that trust it by file need the new one");
    Ok(true)
}

/// Whether a DER certificate is one the relay made (its subject's common name).
fn is_own(der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let mut names = cert.subject().iter_common_name();
    names.next().and_then(|cn| cn.as_str().ok()) == Some(COMMON_NAME) && names.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    const DAY: Duration = Duration::from_secs(86_400);

    fn der_of(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn a_new_certificate_is_valid_for_about_two_years() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        create(&cert, &key).unwrap();
        let der = der_of(&std::fs::read_to_string(&cert).unwrap());
        let v = Validity::of(&der).unwrap();
        let now = SystemTime::now();
        assert!(v.not_after > now + 729 * DAY && v.not_after < now + 731 * DAY);
        assert!(v.not_before < now && v.not_before > now - 2 * BACKDATE);
        assert!(is_own(&der));
        assert!(!renew_if_due(&cert, &key, &der, now).unwrap(), "not due");
    }

    #[test]
    fn the_relays_own_certificate_is_renewed_when_due_and_an_admins_never() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let now = SystemTime::now();
        let (pem, key_pem) =
            generate(vec!["localhost".into()], now - 700 * DAY, now + 20 * DAY).unwrap();
        std::fs::write(&cert, &pem).unwrap();
        std::fs::write(&key, &key_pem).unwrap();
        assert!(renew_if_due(&cert, &key, &der_of(&pem), now).unwrap());
        let renewed = std::fs::read_to_string(&cert).unwrap();
        let v = Validity::of(&der_of(&renewed)).unwrap();
        assert!(v.not_after > now + 700 * DAY);

        let mut params = rcgen::CertificateParams::new(vec!["mail.contoso.com".into()]).unwrap();
        params.not_after = (now + 5 * DAY).into();
        let admin_key = rcgen::KeyPair::generate().unwrap();
        let admins = params.self_signed(&admin_key).unwrap();
        assert!(
            !renew_if_due(&cert, &key, admins.der(), now).unwrap(),
            "an admin's certificate"
        );
    }
}
