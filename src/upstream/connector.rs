//! What every upstream protocol shares: the [`Connector`] (TCP, verified TLS, greeting,
//! deadlines), the logged-in [`Upstream`], and the [`Login`] each implicit-TLS protocol
//! implements with its small XOAUTH2 exchange.
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::preconnect::Greeted;
use crate::codec::{Line, LineReader};
use crate::config::ServerAddress;
use crate::error::Error;
use crate::secret::AccessToken;
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
    /// How long connecting and the TLS handshake took (SMTP: up to the EHLO after
    /// STARTTLS), for the latency metrics.
    pub connected_in: std::time::Duration,
}

/// Why a command after login (e.g. IMAP `SELECT INBOX`) did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The server answered the command with a refusal.
    #[error("upstream {server} refused {command}: {reply}")]
    Refused {
        server: String,
        command: &'static str,
        /// The server's reply line (it never holds a secret).
        reply: String,
    },
    /// The connection failed, timed out, or the server broke the protocol.
    #[error(transparent)]
    Failed(#[from] Error),
}

/// The per-protocol part of an implicit-TLS login (IMAP, POP3): what a ready greeting looks
/// like, and the XOAUTH2 exchange after it. [`Connector`] does the rest.
pub trait Login {
    /// Whether the server's first line says it is ready (IMAP `* OK`, POP3 `+OK`).
    fn greets_ready(greeting: &[u8]) -> bool;

    /// Logs in as `user` with `token` on a connection whose greeting was read; the
    /// connector bounds it in time.
    fn login(
        greeted: Greeted,
        user: &str,
        token: &AccessToken,
    ) -> impl Future<Output = Result<Upstream, Error>> + Send;
}

/// Opens logged-in connections to upstream servers.
#[derive(Clone)]
pub struct Connector {
    tls: TlsConnector,
    /// Bound on connecting and logging in, together.
    timeout: Duration,
    /// Our name in EHLO.
    pub(super) local_name: Arc<str>,
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

    pub(super) async fn connect_tcp(&self, server: &ServerAddress) -> Result<TcpStream, Error> {
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
    pub(super) async fn start_tls(
        &self,
        server: &ServerAddress,
        tcp: TcpStream,
    ) -> Result<Stream, Error> {
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

    /// Connects to `server` over implicit TLS and reads its greeting, which must pass
    /// `greeted_ok` (IMAP `* OK`, POP3 `+OK`).
    async fn greet(
        &self,
        server: &ServerAddress,
        greeted_ok: impl FnOnce(&[u8]) -> bool,
    ) -> Result<Greeted, Error> {
        let started = std::time::Instant::now();
        let tcp = self.connect_tcp(server).await?;
        let mut wire = Wire::new(server, self.start_tls(server, tcp).await?);
        let connected_in = started.elapsed();
        let greeting = wire.read_line().await?;
        if !greeted_ok(&greeting) {
            return Err(wire.broke(&format!(
                "greeted with `{}`",
                String::from_utf8_lossy(&greeting)
            )));
        }
        let (stream, residual) = wire.into_parts();
        Ok(Greeted {
            server: server.clone(),
            stream,
            residual,
            connected_in,
        })
    }

    /// Connects to `server` (implicit TLS) and logs in as `user` with `token`, speaking `P`.
    pub async fn login<P: Login>(
        &self,
        server: &ServerAddress,
        user: &str,
        token: &AccessToken,
    ) -> Result<Upstream, Error> {
        self.bounded(server, async {
            let greeted = self.greet(server, P::greets_ready).await?;
            P::login(greeted, user, token).await
        })
        .await
    }

    /// Connects to `server` (implicit TLS) and reads its `P` greeting, for a login later
    /// ([`login_greeted`](Self::login_greeted)); bounded by the connector's time limit.
    pub async fn greet_for<P: Login>(&self, server: &ServerAddress) -> Result<Greeted, Error> {
        self.within(server, "connecting", self.greet(server, P::greets_ready))
            .await
    }

    /// Logs in as `user` on a connection [`greet_for`](Self::greet_for) made.
    pub async fn login_greeted<P: Login>(
        &self,
        greeted: Greeted,
        user: &str,
        token: &AccessToken,
    ) -> Result<Upstream, Error> {
        let server = greeted.server.clone();
        self.bounded(&server, P::login(greeted, user, token)).await
    }

    /// Runs `login` under the connector's time bound.
    pub(super) async fn bounded<T>(
        &self,
        server: &ServerAddress,
        login: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        self.within(server, "connecting and logging in", login)
            .await
    }

    /// Runs `work` under the connector's time bound; `during` names it in the timeout error.
    pub(super) async fn within<T, E: From<Error>>(
        &self,
        server: &ServerAddress,
        during: &'static str,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(E::from(Error::UpstreamTimeout {
                    server: server.to_string(),
                    during,
                }))
            })
    }
}

/// A line-by-line exchange with an upstream server during login, bounded per line.
pub(super) struct Wire<'a> {
    pub(super) server: &'a ServerAddress,
    reader: LineReader<Stream>,
}

impl<'a> Wire<'a> {
    pub(super) fn new(server: &'a ServerAddress, stream: Stream) -> Self {
        Self {
            server,
            reader: LineReader::new(stream, MAX_REPLY_LINE),
        }
    }

    /// Picks up a greeted connection where its greeting left it.
    pub(super) fn greeted(server: &'a ServerAddress, greeted: Greeted) -> Self {
        Self {
            server,
            reader: LineReader::with_residual(greeted.stream, greeted.residual, MAX_REPLY_LINE),
        }
    }

    /// Picks up a logged-in connection where its login left it.
    pub(super) fn resume(server: &'a ServerAddress, upstream: Upstream) -> Self {
        Self {
            server,
            reader: LineReader::with_residual(upstream.stream, upstream.residual, MAX_REPLY_LINE),
        }
    }

    /// The error for a command the server refused with `reply`.
    pub(super) fn refused(&self, command: &'static str, reply: &[u8]) -> CommandError {
        CommandError::Refused {
            server: self.server.to_string(),
            command,
            reply: String::from_utf8_lossy(reply).into_owned(),
        }
    }

    /// Ends the connection with a TLS close_notify; best effort, as the session is over.
    pub(super) async fn close(self) {
        let (mut stream, _) = self.reader.into_parts();
        let _ = stream.shutdown().await;
    }

    pub(super) fn broke(&self, detail: &str) -> Error {
        Error::UpstreamProtocol {
            server: self.server.to_string(),
            detail: detail.to_owned(),
        }
    }

    /// Sends `line` (with its CRLF). It may hold a token: never log it.
    pub(super) async fn send(&mut self, line: &str) -> Result<(), Error> {
        self.send_bytes(line.as_bytes()).await
    }

    /// Sends `bytes` as they are (e.g. a message after SMTP DATA).
    pub(super) async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let w = self.reader.get_mut();
        let sent = async {
            w.write_all(bytes).await?;
            w.flush().await
        };
        sent.await
            .map_err(|e| self.broke(&format!("write failed: {e}")))
    }

    pub(super) async fn read_line(&mut self) -> Result<Vec<u8>, Error> {
        match self.reader.read_line().await {
            Ok(Some(Line::Complete(line))) => Ok(line),
            Ok(Some(Line::TooLong)) => Err(self.broke("reply line too long")),
            Ok(None) => Err(self.broke("closed the connection")),
            Err(e) => Err(self.broke(&format!("read failed: {e}"))),
        }
    }

    /// The logged-in connection, `ok` being the text of the server's success reply.
    pub(super) fn logged_in(self, ok: String, connected_in: Duration) -> Upstream {
        let (stream, residual) = self.into_parts();
        Upstream {
            stream,
            residual,
            ok,
            capabilities: Vec::new(),
            connected_in,
        }
    }

    pub(super) fn into_parts(self) -> (Stream, Vec<u8>) {
        self.reader.into_parts()
    }
}

/// The error for an upstream that refused the login.
pub(super) fn rejected(server: &ServerAddress, user: &str, reply: &[u8]) -> Error {
    Error::UpstreamRejected {
        server: server.to_string(),
        mailbox: user.to_owned(),
        reply: String::from_utf8_lossy(reply).into_owned(),
    }
}
