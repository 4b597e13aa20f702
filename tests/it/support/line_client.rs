//! A tiny line-oriented test client (SMTP/IMAP/POP3 style) over TCP, with an in-place TLS upgrade.
//! Every read has a timeout so a silent server fails the test instead of hanging it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long a read may wait before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub struct LineClient {
    io: BufReader<Box<dyn Stream>>,
}

impl LineClient {
    /// Connects over plain TCP.
    pub async fn connect(addr: SocketAddr) -> LineClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        LineClient {
            io: BufReader::new(Box::new(stream)),
        }
    }

    /// Connects and does a TLS handshake at once (implicit TLS, as on ports 993/995).
    pub async fn connect_tls(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> LineClient {
        Self::connect(addr).await.upgrade(config, server_name).await
    }

    /// Upgrades to TLS (after the server said yes to STARTTLS/STLS). Unread plaintext is discarded.
    pub async fn upgrade(self, config: Arc<rustls::ClientConfig>, server_name: &str) -> LineClient {
        let name = ServerName::try_from(server_name.to_string()).expect("valid server name");
        let tls = TlsConnector::from(config)
            .connect(name, self.io.into_inner())
            .await
            .expect("TLS handshake");
        LineClient {
            io: BufReader::new(Box::new(tls)),
        }
    }

    /// Sends `line` followed by CRLF.
    pub async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
    }

    /// Sends bytes exactly as given.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let stream = self.io.get_mut();
        stream.write_all(bytes).await.expect("write");
        stream.flush().await.expect("flush");
    }

    /// The next line without its line ending; `None` when the server closed the connection.
    pub async fn read_line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        let read = tokio::time::timeout(READ_TIMEOUT, self.io.read_until(b'\n', &mut line))
            .await
            .expect("timed out waiting for a line from the server");
        match read {
            Ok(0) => None,
            Ok(_) => {
                let text = String::from_utf8(line).expect("server line is UTF-8");
                Some(
                    text.trim_end_matches('\n')
                        .trim_end_matches('\r')
                        .to_string(),
                )
            }
            Err(err) => panic!("read failed: {err}"),
        }
    }

    /// A complete SMTP reply; multi-line replies are joined with `\n`.
    pub async fn read_smtp_reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let line = self
                .read_line()
                .await
                .expect("server closed instead of replying");
            let done = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if done {
                return lines.join("\n");
            }
        }
    }

    /// Sends one SMTP command and returns its reply.
    pub async fn smtp(&mut self, line: &str) -> String {
        self.send(line).await;
        self.read_smtp_reply().await
    }

    /// Asserts that the server closes the connection without sending anything more.
    pub async fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(READ_TIMEOUT, self.io.read_to_end(&mut rest))
            .await
            .expect("timed out waiting for the server to close");
        // A TLS peer that closes without close_notify shows up as an error; that is still a close.
        if read.is_ok() {
            assert!(
                rest.is_empty(),
                "expected close, got {:?}",
                String::from_utf8_lossy(&rest)
            );
        }
    }
}
