//! Fast in-process fakes of Microsoft 365 for the benchmark: Entra's token endpoint (plain
//! http on loopback), Exchange Online's IMAP server (implicit TLS) and SMTP submission
//! server (STARTTLS). They check nothing a benchmark does not need (tokens are not
//! verified) and stay out of the way: one reused line buffer per connection, large write
//! chunks, literals streamed from one shared block.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// Size of the block a FETCH literal is written from.
const BLOCK: usize = 256 * 1024;
/// Read buffer of every fake connection.
const READ_BUF: usize = 64 * 1024;

/// Binds `127.0.0.1:0` with a deep accept queue, so that bursts of connections are not
/// dropped or delayed here (std's backlog is 128).
async fn bind() -> TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind loopback");
    socket.listen(4096).expect("listen")
}

// === Entra ===

/// The token endpoint: answers every POST with a fresh Bearer token, like Entra's
/// refresh-token grant, after `latency`; counts the requests.
pub struct FakeEntra {
    pub addr: std::net::SocketAddr,
    requests: Arc<AtomicU64>,
}

impl FakeEntra {
    pub async fn start(latency: Duration) -> FakeEntra {
        let listener = bind().await;
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let _ = serve_entra(tcp, &counter, latency).await;
                });
            }
        });
        FakeEntra { addr, requests }
    }

    pub fn authority(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Token requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

/// One keep-alive HTTP/1.1 connection: head, `Content-Length` body, JSON answer.
async fn serve_entra(
    tcp: TcpStream,
    counter: &AtomicU64,
    latency: Duration,
) -> std::io::Result<()> {
    let mut r = BufReader::new(tcp);
    let mut line = Vec::with_capacity(512);
    loop {
        let mut length = 0usize;
        let mut first = true;
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line).await? == 0 {
                return Ok(());
            }
            if line == b"\r\n" && !first {
                break;
            }
            first = false;
            let text = String::from_utf8_lossy(&line).to_ascii_lowercase();
            if let Some(v) = text.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        r.read_exact(&mut body).await?;
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(latency).await;
        let json = format!(
            r#"{{"token_type":"Bearer","scope":"https://outlook.office.com/IMAP.AccessAsUser.All https://outlook.office.com/POP.AccessAsUser.All https://outlook.office.com/SMTP.Send","expires_in":3599,"ext_expires_in":3599,"access_token":"bench-access-token-{n}","refresh_token":"bench-refresh-token-{n}"}}"#
        );
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nCache-Control: no-store\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        );
        r.get_mut().write_all(reply.as_bytes()).await?;
    }
}

// === IMAP ===

/// Counters an IMAP fake shares with the benchmark.
#[derive(Default)]
pub struct ImapState {
    /// Size of the one message in INBOX (its `BODY[]`).
    pub message_size: AtomicU64,
    /// Literal bytes handed to the socket so far, all connections together.
    pub literal_bytes: AtomicU64,
}

/// Exchange Online's IMAP server, implicit TLS: greeting, `AUTHENTICATE XOAUTH2` with an
/// initial response, `SELECT`, `FETCH n BODY[]` of `message_size` bytes, `IDLE`,
/// `LOGOUT`.
pub struct FakeImap {
    pub addr: std::net::SocketAddr,
    pub state: Arc<ImapState>,
}

impl FakeImap {
    pub async fn start(tls: Arc<rustls::ServerConfig>) -> FakeImap {
        let listener = bind().await;
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(ImapState::default());
        let shared = state.clone();
        let acceptor = TlsAcceptor::from(tls);
        let block: Arc<[u8]> = pattern_block().into();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    // Out of descriptors: let some close.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, state, block) = (acceptor.clone(), shared.clone(), block.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = serve_imap(tls, &state, &block).await;
                    }
                });
            }
        });
        FakeImap { addr, state }
    }
}

/// 256 KiB of 80-byte CRLF lines, none starting with a dot.
pub fn pattern_block() -> Vec<u8> {
    let line =
        b"0123456789 the quick brown fox jumps over the lazy dog 0123456789 abcdefghijkl\r\n";
    line.iter().copied().cycle().take(BLOCK).collect()
}

async fn serve_imap<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    state: &ImapState,
    block: &[u8],
) -> std::io::Result<()> {
    let mut r = BufReader::with_capacity(READ_BUF, stream);
    r.get_mut()
        .write_all(b"* OK The Microsoft Exchange IMAP4 service is ready. [bench]\r\n")
        .await?;
    r.get_mut().flush().await?;
    let mut line = Vec::with_capacity(1024);
    let mut reply = Vec::with_capacity(256);
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let text = std::str::from_utf8(&line).unwrap_or("").trim_end();
        let mut words = text.splitn(3, ' ');
        let tag = words.next().unwrap_or("*");
        let command = words.next().unwrap_or("").to_ascii_uppercase();
        reply.clear();
        match command.as_str() {
            "AUTHENTICATE" | "LOGIN" => {
                reply.extend_from_slice(tag.as_bytes());
                reply.extend_from_slice(
                    b" OK [CAPABILITY IMAP4 IMAP4rev1 IDLE LITERAL+ MOVE UIDPLUS CHILDREN] AUTHENTICATE completed.\r\n",
                );
            }
            "CAPABILITY" => {
                reply.extend_from_slice(
                    b"* CAPABILITY IMAP4 IMAP4rev1 IDLE LITERAL+ MOVE UIDPLUS CHILDREN\r\n",
                );
                reply.extend_from_slice(tag.as_bytes());
                reply.extend_from_slice(b" OK CAPABILITY completed.\r\n");
            }
            "SELECT" | "EXAMINE" => {
                reply.extend_from_slice(b"* 1 EXISTS\r\n* 0 RECENT\r\n* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft)\r\n* OK [UIDVALIDITY 14] UIDVALIDITY value\r\n* OK [UIDNEXT 2] The next unique identifier value\r\n");
                reply.extend_from_slice(tag.as_bytes());
                reply.extend_from_slice(b" OK [READ-WRITE] SELECT completed.\r\n");
            }
            "FETCH" | "UID" => {
                let size = state.message_size.load(Ordering::Relaxed);
                let head = format!("* 1 FETCH (BODY[] {{{size}}}\r\n");
                let w = r.get_mut();
                w.write_all(head.as_bytes()).await?;
                let mut left = size as usize;
                while left > 0 {
                    let n = left.min(block.len());
                    w.write_all(&block[..n]).await?;
                    state.literal_bytes.fetch_add(n as u64, Ordering::Relaxed);
                    left -= n;
                }
                reply.extend_from_slice(b")\r\n");
                reply.extend_from_slice(tag.as_bytes());
                reply.extend_from_slice(b" OK FETCH completed.\r\n");
            }
            "IDLE" => {
                r.get_mut()
                    .write_all(b"+ IDLE accepted, awaiting DONE command.\r\n")
                    .await?;
                r.get_mut().flush().await?;
                // DONE goes into `reply`, which is cleared before use.
                if r.read_until(b'\n', &mut reply).await? == 0 {
                    return Ok(());
                }
                reply.clear();
                reply.extend_from_slice(tag.as_bytes());
                reply.extend_from_slice(b" OK IDLE completed.\r\n");
            }
            "LOGOUT" => {
                reply.extend_from_slice(
                    b"* BYE Microsoft Exchange Server IMAP4 server signing off.\r\n",
                );
                reply.extend_from_slice(tag.as_bytes());
                reply.extend_from_slice(b" OK LOGOUT completed.\r\n");
                r.get_mut().write_all(&reply).await?;
                r.get_mut().shutdown().await?;
                return Ok(());
            }
            _ => {
                reply.extend_from_slice(tag.as_bytes());
                reply.extend_from_slice(b" OK completed.\r\n");
            }
        }
        r.get_mut().write_all(&reply).await?;
        r.get_mut().flush().await?;
    }
}

// === SMTP ===

/// How long the fake SMTP server waits before each reply (its greeting included), in
/// microseconds: 0 (loopback) unless a figure sets a network's round trip.
pub static SMTP_REPLY_DELAY_US: AtomicU64 = AtomicU64::new(0);

/// Waits [`SMTP_REPLY_DELAY_US`].
async fn reply_delay() {
    let us = SMTP_REPLY_DELAY_US.load(Ordering::Relaxed);
    if us > 0 {
        tokio::time::sleep(Duration::from_micros(us)).await;
    }
}

/// Exchange Online's submission server: 220, EHLO (STARTTLS), STARTTLS, EHLO (AUTH
/// XOAUTH2), AUTH → 235, MAIL, RCPT, DATA read to the lone dot; counts message bytes.
pub struct FakeSmtp {
    pub addr: std::net::SocketAddr,
    pub data_bytes: Arc<AtomicU64>,
}

impl FakeSmtp {
    pub async fn start(tls: Arc<rustls::ServerConfig>) -> FakeSmtp {
        let listener = bind().await;
        let addr = listener.local_addr().expect("addr");
        let data_bytes = Arc::new(AtomicU64::new(0));
        let counter = data_bytes.clone();
        let acceptor = TlsAcceptor::from(tls);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, counter) = (acceptor.clone(), counter.clone());
                tokio::spawn(async move {
                    let _ = serve_smtp(tcp, &acceptor, &counter).await;
                });
            }
        });
        FakeSmtp { addr, data_bytes }
    }
}

const EHLO_PLAIN: &[u8] = b"250-bench.outlook.office365.com Hello\r\n250-SIZE 157286400\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 STARTTLS\r\n";
const EHLO_TLS: &[u8] = b"250-bench.outlook.office365.com Hello\r\n250-SIZE 157286400\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 AUTH LOGIN XOAUTH2\r\n";

async fn serve_smtp(
    tcp: TcpStream,
    acceptor: &TlsAcceptor,
    counter: &AtomicU64,
) -> std::io::Result<()> {
    let mut r = BufReader::with_capacity(READ_BUF, tcp);
    reply_delay().await;
    r.get_mut()
        .write_all(b"220 bench.outlook.office365.com Microsoft ESMTP MAIL Service ready\r\n")
        .await?;
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let verb = verb(&line);
        reply_delay().await;
        match &verb {
            b"EHLO  " | b"HELO  " => r.get_mut().write_all(EHLO_PLAIN).await?,
            b"STARTT" => {
                r.get_mut()
                    .write_all(b"220 2.0.0 SMTP server ready\r\n")
                    .await?;
                if !r.buffer().is_empty() {
                    return Ok(());
                }
                let tls = acceptor.accept(r.into_inner()).await?;
                return smtp_session(tls, counter).await;
            }
            b"QUIT  " => {
                r.get_mut()
                    .write_all(b"221 2.0.0 Service closing transmission channel\r\n")
                    .await?;
                return Ok(());
            }
            _ => {
                r.get_mut()
                    .write_all(b"530 5.7.57 Client not authenticated\r\n")
                    .await?
            }
        }
    }
}

/// The first (up to) six bytes of a command, upper-cased.
fn verb(line: &[u8]) -> [u8; 6] {
    let mut v = [b' '; 6];
    for (slot, b) in v
        .iter_mut()
        .zip(line.iter().take_while(|b| !b.is_ascii_whitespace()))
    {
        *slot = b.to_ascii_uppercase();
    }
    if v[4] == b' ' {
        // Four-letter verbs compare as `EHLO  `.
        let mut four = [b' '; 6];
        four[..4].copy_from_slice(&v[..4]);
        return four;
    }
    v
}

async fn smtp_session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    counter: &AtomicU64,
) -> std::io::Result<()> {
    let mut r = BufReader::with_capacity(READ_BUF, stream);
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        reply_delay().await;
        let reply: &[u8] = match &verb(&line) {
            b"EHLO  " | b"HELO  " => EHLO_TLS,
            b"AUTH  " => b"235 2.7.0 Authentication successful\r\n",
            b"MAIL  " => b"250 2.1.0 Sender OK\r\n",
            b"RCPT  " => b"250 2.1.5 Recipient OK\r\n",
            b"RSET  " | b"NOOP  " => b"250 2.0.0 OK\r\n",
            b"DATA  " => {
                r.get_mut()
                    .write_all(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n")
                    .await?;
                r.get_mut().flush().await?;
                let n = read_data(&mut r).await?;
                counter.fetch_add(n, Ordering::Relaxed);
                b"250 2.0.0 OK <bench@outlook.office365.com> [Hostname=bench]\r\n"
            }
            b"QUIT  " => {
                r.get_mut()
                    .write_all(b"221 2.0.0 Service closing transmission channel\r\n")
                    .await?;
                r.get_mut().flush().await?;
                return Ok(());
            }
            _ => b"500 5.3.3 Unrecognized command\r\n",
        };
        r.get_mut().write_all(reply).await?;
        r.get_mut().flush().await?;
    }
}

/// Reads a DATA body through `<CRLF>.<CRLF>` straight from the read buffer; its length.
async fn read_data<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<u64> {
    const END: u64 = u64::from_be_bytes([0, 0, 0, b'\r', b'\n', b'.', b'\r', b'\n']);
    const MASK: u64 = 0xff_ffff_ffff;
    // As if a line had just ended, so that an empty body's lone dot is seen.
    let mut window: u64 = u64::from(b'\r') << 8 | u64::from(b'\n');
    let mut total = 0u64;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        for (i, &b) in buf.iter().enumerate() {
            window = (window << 8 | u64::from(b)) & MASK;
            if window == END {
                let used = i + 1;
                total += used as u64;
                r.consume(used);
                return Ok(total);
            }
        }
        let used = buf.len();
        total += used as u64;
        r.consume(used);
    }
}
