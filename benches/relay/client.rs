//! The benchmark's mail clients: an XOAUTH2 client that talks straight to the fakes, and a
//! password client that talks to the relay. Both reuse one line buffer and read literals
//! straight out of a large read buffer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const READ_BUF: usize = 256 * 1024;

/// How a client reaches its server.
#[derive(Clone)]
pub struct Dial {
    pub addr: SocketAddr,
    /// `Some` for implicit TLS.
    pub tls: Option<TlsConnector>,
}

async fn tcp(addr: SocketAddr) -> Result<TcpStream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

async fn wrap(tcp: TcpStream, tls: Option<&TlsConnector>) -> Result<Box<dyn Io>> {
    Ok(match tls {
        Some(connector) => {
            let name = rustls_pki_types::ServerName::IpAddress(
                std::net::IpAddr::from([127, 0, 0, 1]).into(),
            );
            Box::new(connector.connect(name, tcp).await?)
        }
        None => Box::new(tcp),
    })
}

/// One line-oriented connection.
pub struct Conn {
    r: BufReader<Box<dyn Io>>,
    line: Vec<u8>,
}

impl Conn {
    fn new(io: Box<dyn Io>) -> Conn {
        Conn {
            r: BufReader::with_capacity(READ_BUF, io),
            line: Vec::with_capacity(1024),
        }
    }

    pub async fn dial(dial: &Dial) -> Result<Conn> {
        Ok(Conn::new(
            wrap(tcp(dial.addr).await?, dial.tls.as_ref()).await?,
        ))
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let w = self.r.get_mut();
        w.write_all(bytes).await?;
        w.flush().await?;
        Ok(())
    }

    /// The next line, CRLF included.
    pub async fn line(&mut self) -> Result<&[u8]> {
        self.line.clear();
        if self.r.read_until(b'\n', &mut self.line).await? == 0 {
            return Err("connection closed".into());
        }
        Ok(&self.line)
    }

    /// Reads lines until one starts with `prefix`; fails unless it continues with `ok`.
    pub async fn until(&mut self, prefix: &[u8], ok: &[u8]) -> Result<()> {
        loop {
            let line = self.line().await?;
            if let Some(rest) = line.strip_prefix(prefix) {
                if rest.starts_with(ok) {
                    return Ok(());
                }
                return Err(format!(
                    "unexpected reply `{}`",
                    String::from_utf8_lossy(line).trim_end()
                )
                .into());
            }
        }
    }

    /// An SMTP reply (multi-line ones to their last line); fails unless its code is `code`.
    pub async fn reply(&mut self, code: &[u8; 3]) -> Result<()> {
        loop {
            let line = self.line().await?;
            if line.len() < 4 || &line[..3] != code {
                return Err(format!(
                    "expected {}, got `{}`",
                    String::from_utf8_lossy(code),
                    String::from_utf8_lossy(line).trim_end()
                )
                .into());
            }
            if line[3] != b'-' {
                return Ok(());
            }
        }
    }

    /// Discards `n` bytes straight from the read buffer.
    pub async fn skip(&mut self, mut n: u64) -> Result<()> {
        while n > 0 {
            let buf = self.r.fill_buf().await?;
            if buf.is_empty() {
                return Err("connection closed in a literal".into());
            }
            let take = buf.len().min(n as usize);
            self.r.consume(take);
            n -= take as u64;
        }
        Ok(())
    }
}

pub fn xoauth2(user: &str, token: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

fn plain(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

/// How an IMAP client logs in.
#[derive(Clone)]
pub enum Login {
    /// `AUTHENTICATE XOAUTH2` with an initial response, as to Microsoft.
    Xoauth2 { user: String, token: String },
    /// `LOGIN user password`, as a legacy client to the relay.
    Password { user: String, password: String },
}

/// Connects, (TLS,) reads the greeting, logs in, waits for the tagged OK.
pub async fn imap_login(dial: &Dial, login: &Login) -> Result<Conn> {
    let mut c = Conn::dial(dial).await?;
    c.until(b"* ", b"OK").await?;
    let command = match login {
        Login::Xoauth2 { user, token } => {
            format!("a1 AUTHENTICATE XOAUTH2 {}\r\n", xoauth2(user, token))
        }
        Login::Password { user, password } => format!("a1 LOGIN \"{user}\" \"{password}\"\r\n"),
    };
    c.send(command.as_bytes()).await?;
    c.until(b"a1 ", b"OK").await?;
    Ok(c)
}

/// `SELECT INBOX`.
pub async fn imap_select(c: &mut Conn) -> Result<()> {
    c.send(b"a2 SELECT INBOX\r\n").await?;
    c.until(b"a2 ", b"OK").await
}

/// Sends `FETCH 1 BODY[]`; returns the literal's announced size once its head is read.
pub async fn imap_fetch_head(c: &mut Conn) -> Result<u64> {
    c.send(b"a3 FETCH 1 BODY[]\r\n").await?;
    loop {
        let line = c.line().await?;
        if line.starts_with(b"* 1 FETCH") {
            let text = std::str::from_utf8(line)?;
            let size = text
                .rsplit('{')
                .next()
                .and_then(|s| s.split('}').next())
                .ok_or("no literal")?
                .parse()?;
            return Ok(size);
        }
        if line.starts_with(b"a3 ") {
            return Err("FETCH ended without a literal".into());
        }
    }
}

/// A whole `FETCH 1 BODY[]`; the literal's size.
pub async fn imap_fetch(c: &mut Conn) -> Result<u64> {
    let size = imap_fetch_head(c).await?;
    c.skip(size).await?;
    c.until(b"a3 ", b"OK").await?;
    Ok(size)
}

/// `IDLE`, until the server's continuation.
pub async fn imap_idle(c: &mut Conn) -> Result<()> {
    c.send(b"a4 IDLE\r\n").await?;
    c.until(b"+", b"").await
}

/// How an SMTP client logs in.
#[derive(Clone)]
pub enum SmtpLogin {
    /// Plaintext connect, EHLO, STARTTLS, EHLO, `AUTH XOAUTH2`, as to Microsoft.
    Xoauth2 {
        user: String,
        token: String,
        tls: TlsConnector,
    },
    /// `AUTH PLAIN` on the dialled connection, as a legacy client to the relay.
    Password { user: String, password: String },
}

/// Logs in and submits `message` (CRLF lines, none starting with a dot) from `from`.
/// Returns the time from DATA's 354 to the final 250.
pub async fn smtp_send(
    dial: &Dial,
    login: &SmtpLogin,
    from: &str,
    message: &[u8],
) -> Result<Duration> {
    let mut c = match login {
        SmtpLogin::Xoauth2 { user, token, tls } => {
            let mut c = Conn::new(Box::new(tcp(dial.addr).await?));
            c.reply(b"220").await?;
            c.send(b"EHLO bench\r\n").await?;
            c.reply(b"250").await?;
            c.send(b"STARTTLS\r\n").await?;
            c.reply(b"220").await?;
            let io = c.r.into_inner();
            let tcp: Box<dyn Io> = io;
            // The plain stream is a boxed TcpStream; TLS goes over it.
            let name = rustls_pki_types::ServerName::IpAddress(
                std::net::IpAddr::from([127, 0, 0, 1]).into(),
            );
            let mut c = Conn::new(Box::new(tls.connect(name, tcp).await?));
            c.send(b"EHLO bench\r\n").await?;
            c.reply(b"250").await?;
            c.send(format!("AUTH XOAUTH2 {}\r\n", xoauth2(user, token)).as_bytes())
                .await?;
            c.reply(b"235").await?;
            c
        }
        SmtpLogin::Password { user, password } => {
            let mut c = Conn::dial(dial).await?;
            c.reply(b"220").await?;
            c.send(b"EHLO bench\r\n").await?;
            c.reply(b"250").await?;
            c.send(format!("AUTH PLAIN {}\r\n", plain(user, password)).as_bytes())
                .await?;
            c.reply(b"235").await?;
            c
        }
    };
    c.send(format!("MAIL FROM:<{from}>\r\n").as_bytes()).await?;
    c.reply(b"250").await?;
    c.send(b"RCPT TO:<bench-sink@contoso.com>\r\n").await?;
    c.reply(b"250").await?;
    c.send(b"DATA\r\n").await?;
    c.reply(b"354").await?;
    let started = Instant::now();
    {
        let w = c.r.get_mut();
        w.write_all(message).await?;
        w.write_all(b".\r\n").await?;
        w.flush().await?;
    }
    c.reply(b"250").await?;
    let took = started.elapsed();
    let _ = c.send(b"QUIT\r\n").await;
    Ok(took)
}

/// A message from `from` of `size` bytes of CRLF lines, none starting with a dot.
pub fn message(from: &str, size: usize) -> Arc<Vec<u8>> {
    let mut m =
        format!("From: <{from}>\r\nTo: <bench-sink@contoso.com>\r\nSubject: benchmark\r\n\r\n")
            .into_bytes();
    let block = super::fakes::pattern_block();
    while m.len() < size {
        let n = (size - m.len()).min(block.len());
        m.extend_from_slice(&block[..n]);
    }
    if !m.ends_with(b"\r\n") {
        m.truncate(m.len() - 2);
        m.extend_from_slice(b"\r\n");
    }
    Arc::new(m)
}
