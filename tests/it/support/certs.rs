//! Test PKI generated with rcgen at test time: a CA, leaf certificates and rustls configs (no checked-in keys).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate authority that exists only for the lifetime of one test.
pub struct TestPki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate issued by [`TestPki::issue`], both halves in PEM.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

// === impl TestPki ===

impl TestPki {
    /// Creates a fresh CA (ECDSA P-256, which is quick to generate).
    pub fn new() -> Self {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "m365-relay test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("generate CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("self-sign CA");
        Self { ca }
    }

    /// The CA certificate in PEM, for configs that take a trust anchor.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// The CA certificate in DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// Writes the CA certificate to `dir/test-ca.pem` and returns that path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, self.ca_pem()).expect("write CA PEM");
        path
    }

    /// Issues a server (and client) leaf for `names`. Each name becomes an IP-address SAN when it
    /// parses as an IP address and a DNS-name SAN otherwise.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        assert!(!names.is_empty(), "a leaf needs at least one name");
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        // CertificateParams::new detects IP addresses (std `IpAddr::from_str`) and uses DNS names otherwise.
        let mut params = CertificateParams::new(sans).expect("valid SAN names");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = params.signed_by(&key, &*self.ca).expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A rustls server config presenting a fresh leaf for `names` (aws-lc-rs provider).
    pub fn server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let leaf = self.issue(names);
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("default protocol versions")
            .with_no_client_auth()
            .with_single_cert(leaf.cert_chain(), leaf.private_key())
            .expect("server cert and key match");
        Arc::new(config)
    }

    /// A rustls client config that trusts only this CA (aws-lc-rs provider).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca_der())
            .expect("CA is a valid trust anchor");
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

// === impl Leaf ===

impl Leaf {
    /// The leaf certificate as a one-element chain.
    pub fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("parse leaf certificate PEM")
    }

    /// The leaf's private key (PKCS#8).
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("parse leaf key PEM")
    }

    /// Writes `dir/<stem>.crt` and `dir/<stem>.key` (key mode 0600, `dir` created if missing) and
    /// returns (cert path, key path).
    pub fn write_to(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).expect("create certificate folder");
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write leaf cert");
        std::fs::write(&key, &self.key_pem).expect("write leaf key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .expect("chmod 600 leaf key");
        }
        (cert, key)
    }
}
