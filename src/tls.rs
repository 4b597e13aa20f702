//! TLS on both legs: the local listeners' server config (from PEM files, or a self-signed
//! certificate created on first start), the client config for upstream servers and the
//! Entra authority (Mozilla roots plus an optional extra CA file), and [`Stream`], the one
//! stream type a session uses whether it is plaintext or TLS.
//!
//! **Policy.** Both sides speak TLS 1.3 and 1.2 only ([`PROTOCOL_VERSIONS`]; rustls has
//! never implemented anything older). Upstream certificates are always verified against
//! Mozilla's roots plus `upstream.ca_file`; nothing turns that off. The local certificate
//! is checked at start and on reload: its key must match it, an expired one is refused,
//! one that expires within [`EXPIRY_WARNING`] is warned about, and its expiry is logged.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub mod self_signed;

/// Why TLS could not be set up. Names files, never key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {why}", path.display())]
    File { path: PathBuf, why: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The TLS versions spoken on both sides. This is what rustls 0.23's
/// `with_safe_default_protocol_versions` gives too (with its `tls12` feature), written out
/// so that a change of rustls's defaults cannot change the relay's policy unnoticed.
pub static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// How long before its expiry the local certificate is warned about, at start and reload.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// The one crypto provider of the process (aws-lc-rs, see CRATES.md).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The local listeners' TLS config. When neither `cert` nor `key` exists, a self-signed
/// certificate for localhost, 127.0.0.1, ::1 and this host's name is created first (the
/// key written 0600). When only one of them exists, that is an error: the relay never
/// overwrites half of an admin's key pair.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    match (cert.exists(), key.exists()) {
        (false, false) => self_signed::create(cert, key)?,
        (true, true) => {}
        (true, false) => return Err(file_error(key, "missing, but its certificate exists")),
        (false, true) => return Err(file_error(cert, "missing, but its key exists")),
    }
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(cert, &format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(cert, "holds no certificate"));
    }
    if self_signed::renew_if_due(cert, key, &certs[0], SystemTime::now())? {
        return server_config(cert, key);
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_error(key, &format!("not a PEM private key: {e}")))?;
    let validity = Validity::of(&certs[0]).map_err(|why| file_error(cert, &why))?;
    validity
        .check(SystemTime::now())
        .map_err(|why| file_error(cert, &why))?;
    validity.log(cert, SystemTime::now());
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| file_error(cert, &format!("does not match its key: {e}")))?;
    config.alpn_protocols.clear();
    // TLS 1.3 lets the server send data with its first flight, before the client's
    // Finished: the IMAP and POP3 greetings go out then, a round trip earlier. The
    // greeting is public and there is no client authentication (the case rustls warns
    // about); nothing else is written before the handshake completes.
    config.send_half_rtt_data = true;
    Ok(Arc::new(config))
}

/// TLS client config for upstream mail servers and the authority: Mozilla's roots plus
/// every certificate in `ca_file`. Certificates are always verified; there is no switch to
/// turn that off.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| file_error(path, &format!("not a PEM certificate file: {e}")))?;
        if certs.is_empty() {
            return Err(file_error(path, "holds no certificate"));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| file_error(path, &format!("unusable trust anchor: {e}")))?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Upper bound on connecting (TCP and TLS) to an HTTP endpoint; the whole request has
/// its own, longer budget.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Sent as `User-Agent` to Microsoft's HTTP endpoints, so that their logs show which
/// program asked.
pub const USER_AGENT: &str = concat!("m365-relay/", env!("CARGO_PKG_VERSION"));

/// The HTTP client for one of Microsoft's endpoints (Entra, Graph) at `base`: trusts
/// exactly `tls`, speaks https only unless `base` is plain http (a loopback fake), never
/// follows redirects, and gives up after `timeout` (connecting: at most 10 s of it).
pub fn http_client(
    tls: &ClientConfig,
    base: &url::Url,
    timeout: Duration,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls.clone())
        .https_only(base.scheme() == "https")
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
        .timeout(timeout)
        .user_agent(USER_AGENT)
        .build()
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// The validity period of a DER certificate.
    pub fn of(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("the certificate cannot be parsed: {e}"))?;
        let validity = cert.validity();
        Ok(Self {
            not_before: from_unix(validity.not_before.timestamp()),
            not_after: from_unix(validity.not_after.timestamp()),
        })
    }

    /// Refuses a certificate that has expired by `now`.
    pub fn check(&self, now: SystemTime) -> Result<(), String> {
        if self.not_after <= now {
            return Err(format!(
                "the certificate expired on {}; put a renewed certificate and key in place \
                 (or remove both files to have a self-signed pair created)",
                crate::datetime::utc(self.not_after)
            ));
        }
        Ok(())
    }

    /// Whether it expires within [`EXPIRY_WARNING`] of `now`.
    pub fn expires_soon(&self, now: SystemTime) -> bool {
        self.not_after
            .duration_since(now)
            .is_ok_and(|left| left < EXPIRY_WARNING)
    }

    /// Logs the expiry: INFO, or WARN when it is near or the certificate is not valid yet.
    fn log(&self, path: &Path, now: SystemTime) {
        let expires = crate::datetime::utc(self.not_after);
        let days = self
            .not_after
            .duration_since(now)
            .map_or(0, |d| d.as_secs() / 86_400);
        let cert = path.display();
        if self.expires_soon(now) {
            tracing::warn!(%cert, %expires, days, "the local TLS certificate expires soon; renew it");
        } else {
            tracing::info!(%cert, %expires, days, "local TLS certificate loaded");
        }
        if self.not_before > now {
            let valid_from = crate::datetime::utc(self.not_before);
            tracing::warn!(%cert, %valid_from, "the local TLS certificate is not valid yet (is the clock right?)");
        }
    }
}

fn from_unix(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

fn file_error(path: &Path, why: &str) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        why: why.to_owned(),
    }
}

/// This machine's host name, for greetings and the self-signed certificate.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A connection, to a client or to upstream, plaintext or TLS.
pub enum Stream {
    Plain(TcpStream),
    /// A client connection after implicit TLS or STARTTLS.
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// An upstream connection after TLS.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A client connection over an in-memory pipe, plaintext or (`tls`) after STARTTLS:
    /// what the fuzz targets drive the real session drivers through.
    #[cfg(feature = "fuzzing")]
    #[doc(hidden)]
    InMemory {
        pipe: Box<dyn InMemoryPipe>,
        tls: bool,
    },
}

/// The byte pipe under [`Stream::InMemory`] (a `tokio::io::DuplexStream`, or TLS over one).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub trait InMemoryPipe: AsyncRead + AsyncWrite + Unpin + Send + Sync {}

#[cfg(feature = "fuzzing")]
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> InMemoryPipe for T {}

impl Stream {
    pub fn is_tls(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            #[cfg(feature = "fuzzing")]
            Stream::InMemory { tls, .. } => *tls,
            _ => true,
        }
    }

    /// Caps what rustls buffers of application data it could not send yet (64 KiB by
    /// default): with a peer that does not read, writes then wait instead of piling up.
    pub fn limit_tls_buffer(&mut self, bytes: usize) {
        match self {
            Stream::Plain(_) => {}
            Stream::Server(s) => s.get_mut().1.set_buffer_limit(Some(bytes)),
            Stream::Client(s) => s.get_mut().1.set_buffer_limit(Some(bytes)),
            #[cfg(feature = "fuzzing")]
            Stream::InMemory { .. } => {}
        }
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Plain(_) => "Stream::Plain",
            Stream::Server(_) => "Stream::Server",
            Stream::Client(_) => "Stream::Client",
            #[cfg(feature = "fuzzing")]
            Stream::InMemory { .. } => "Stream::InMemory",
        })
    }
}

/// Calls one poll method on whichever stream `self` holds.
macro_rules! on_each {
    ($stream:ident, $poll:ident($($arg:ident),*)) => {
        match $stream.get_mut() {
            Stream::Plain(s) => Pin::new(s).$poll($($arg),*),
            Stream::Server(s) => Pin::new(s).$poll($($arg),*),
            Stream::Client(s) => Pin::new(s).$poll($($arg),*),
            #[cfg(feature = "fuzzing")]
            Stream::InMemory { pipe, .. } => Pin::new(pipe).$poll($($arg),*),
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        on_each!(self, poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        on_each!(self, poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_each!(self, poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        on_each!(self, poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    /// A self-signed certificate valid from `from` until `until`: DER, PEM, key PEM.
    fn cert_valid(from: SystemTime, until: SystemTime) -> (Vec<u8>, String, String) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = from.into();
        params.not_after = until.into();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.der().to_vec(), cert.pem(), key.serialize_pem())
    }

    #[test]
    fn validity_is_read_and_checked() {
        let now = SystemTime::now();
        let (der, _, _) = cert_valid(now - 10 * DAY, now + 100 * DAY);
        let v = Validity::of(&der).unwrap();
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs(v.not_after), secs(now + 100 * DAY));
        assert!(v.check(now).is_ok());
        assert!(!v.expires_soon(now));
        assert!(v.expires_soon(now + 71 * DAY));
        let why = v.check(now + 101 * DAY).unwrap_err();
        assert!(why.starts_with("the certificate expired on 20"), "{why}");
        assert!(Validity::of(b"not a certificate").is_err());
    }

    #[test]
    fn an_expired_local_certificate_is_refused_with_the_file_and_the_date() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
        let now = SystemTime::now();
        let (_, cert, key) = cert_valid(now - 400 * DAY, now - DAY);
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        let e = server_config(&cert_path, &key_path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("relay.crt: the certificate expired on "), "{e}");

        let (_, cert, key) = cert_valid(now - DAY, now + 10 * DAY);
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        assert!(
            server_config(&cert_path, &key_path).is_ok(),
            "near expiry only warns"
        );
    }

    #[test]
    fn both_sides_speak_tls_1_2_and_1_3_only() {
        use rustls::ProtocolVersion;
        let versions: Vec<ProtocolVersion> = PROTOCOL_VERSIONS.iter().map(|v| v.version).collect();
        assert_eq!(
            versions,
            [ProtocolVersion::TLSv1_3, ProtocolVersion::TLSv1_2]
        );
        // The same as rustls's defaults today; if those change, this says so.
        let defaults: Vec<ProtocolVersion> =
            rustls::DEFAULT_VERSIONS.iter().map(|v| v.version).collect();
        assert_eq!(versions, defaults);
    }
}
