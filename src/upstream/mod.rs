//! The upstream side: connects to the Microsoft 365 (or other XOAUTH2) mail server,
//! always over verified TLS, and logs in with XOAUTH2. One module per protocol; what they
//! share (connecting, TLS, deadlines) lives here.

pub mod imap;
pub mod pop3;
pub mod smtp;

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::codec::{Line, LineReader};
use crate::config::ServerAddress;
use crate::error::Error;
use crate::tls::Stream;

/// Longest reply line accepted from an upstream server.
pub const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one multi-line reply (an EHLO list is about a dozen).
pub const MAX_REPLY_LINES: usize = 64;

/// A logged-in upstream connection, ready to be relayed.
#[derive(Debug)]
pub struct Upstream {
    pub stream: Stream,
    /// Bytes read past the login reply (none from a well-behaved server).
    pub residual: Vec<u8>,
    /// The text of the server's success reply (IMAP: after the tag and `OK`).
    pub ok: String,
    /// What the server offers: SMTP's EHLO keywords after STARTTLS; empty otherwise.
    pub capabilities: Vec<String>,
}

/// Opens logged-in connections to upstream servers.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    /// Bound on connecting and logging in, together.
    timeout: Duration,
    /// Our name in EHLO.
    local_name: Arc<str>,
}

impl Connector {
    pub fn new(tls: Arc<ClientConfig>, timeout: Duration, local_name: Arc<str>) -> Self {
        Self {
            tls: TlsConnector::from(tls),
            timeout,
            local_name,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn connect_tcp(&self, server: &ServerAddress) -> Result<TcpStream, Error> {
        let tcp = TcpStream::connect((server.host.as_str(), server.port))
            .await
            .map_err(|source| Error::UpstreamUnreachable {
                server: server.to_string(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    /// TLS handshake with `server`, verifying its certificate for its host name.
    async fn start_tls(&self, server: &ServerAddress, tcp: TcpStream) -> Result<Stream, Error> {
        let tls_error = |detail: String| Error::UpstreamTls {
            server: server.to_string(),
            detail,
        };
        let name = ServerName::try_from(server.host.clone())
            .map_err(|e| tls_error(format!("`{}` is not a valid server name: {e}", server.host)))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| tls_error(e.to_string()))?;
        Ok(Stream::Client(Box::new(tls)))
    }

    /// Runs `login` under the connector's time bound.
    async fn bounded<T>(
        &self,
        server: &ServerAddress,
        login: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::time::timeout(self.timeout, login)
            .await
            .unwrap_or_else(|_| {
                Err(Error::UpstreamTimeout {
                    server: server.to_string(),
                    during: "connecting and logging in",
                })
            })
    }
}

/// A line-by-line exchange with an upstream server during login, bounded per line.
struct Wire<'a> {
    server: &'a ServerAddress,
    reader: LineReader<Stream>,
}

impl<'a> Wire<'a> {
    fn new(server: &'a ServerAddress, stream: Stream) -> Self {
        Self {
            server,
            reader: LineReader::new(stream, MAX_REPLY_LINE),
        }
    }

    fn broke(&self, detail: &str) -> Error {
        Error::UpstreamProtocol {
            server: self.server.to_string(),
            detail: detail.to_owned(),
        }
    }

    /// Sends `line` (with its CRLF). It may hold a token: never log it.
    async fn send(&mut self, line: &str) -> Result<(), Error> {
        let w = self.reader.get_mut();
        let sent = async {
            w.write_all(line.as_bytes()).await?;
            w.flush().await
        };
        sent.await
            .map_err(|e| self.broke(&format!("write failed: {e}")))
    }

    async fn read_line(&mut self) -> Result<Vec<u8>, Error> {
        match self.reader.read_line().await {
            Ok(Some(Line::Complete(line))) => Ok(line),
            Ok(Some(Line::TooLong)) => Err(self.broke("reply line too long")),
            Ok(None) => Err(self.broke("closed the connection")),
            Err(e) => Err(self.broke(&format!("read failed: {e}"))),
        }
    }

    fn into_parts(self) -> (Stream, Vec<u8>) {
        self.reader.into_parts()
    }
}

/// The error for an upstream that refused the login.
fn rejected(server: &ServerAddress, user: &str, reply: &[u8]) -> Error {
    Error::UpstreamRejected {
        server: server.to_string(),
        mailbox: user.to_owned(),
        reply: String::from_utf8_lossy(reply).into_owned(),
    }
}
