//! TLS on both legs: the local listeners' server config (from PEM files, or a self-signed
//! certificate created on first start), the client config for upstream servers and the
//! Entra authority (Mozilla roots plus an optional extra CA file), and [`Stream`], the one
//! stream type a session uses whether it is plaintext or TLS.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Why TLS could not be set up. Names files, never key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {why}", path.display())]
    File { path: PathBuf, why: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

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
        (false, false) => create_self_signed(cert, key)?,
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
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_error(key, &format!("not a PEM private key: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| file_error(cert, &format!("does not match its key: {e}")))?;
    config.alpn_protocols.clear();
    Ok(Arc::new(config))
}

fn create_self_signed(cert: &Path, key: &Path) -> Result<(), TlsError> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".into(), "::1".into()];
    let host = host_name();
    if host != "localhost" {
        names.push(host);
    }
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsError::Config(format!("cannot create a certificate: {e}")))?;
    crate::statefile::write_private(key, generated.signing_key.serialize_pem().as_bytes())
        .map_err(|e| file_error(key, &format!("cannot write: {e}")))?;
    crate::statefile::write_private(cert, generated.cert.pem().as_bytes())
        .map_err(|e| file_error(cert, &format!("cannot write: {e}")))?;
    tracing::info!(cert = %cert.display(), "created a self-signed certificate for the local listeners");
    Ok(())
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
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
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
}

impl Stream {
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Plain(_) => "Stream::Plain",
            Stream::Server(_) => "Stream::Server",
            Stream::Client(_) => "Stream::Client",
        })
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(s).poll_flush(cx),
            Stream::Client(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Server(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Client(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
