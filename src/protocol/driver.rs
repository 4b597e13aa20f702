//! The async side of pre-auth, shared by SMTP, IMAP and POP3: reads client lines (and IMAP
//! literals) through the bounded [`LineReader`], writes the state machine's replies, runs
//! the STARTTLS handshake, and calls the [`Login`]. Everything is under one deadline; a
//! client that does not log in within it is told so and dropped. Everything read is under
//! one byte budget ([`PreAuth::max_bytes`]), over-long lines that the reader discards
//! included; a client over it is told so and dropped.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsAcceptor;

use super::{Action, Handoff, LoggedIn, Login, PreAuth, Reply, auth_allowed};
use crate::codec::{Line, LineReader};
use crate::error::Error;
use crate::tls::Stream;

/// What the driver needs besides the session.
#[derive(Clone)]
pub struct PreauthParams {
    pub tls: TlsAcceptor,
    pub allow_plaintext_on_loopback: bool,
    /// When pre-auth must be over.
    pub deadline: Instant,
    /// The greeting already went out (with the TLS handshake).
    pub greeted: bool,
}

/// Whether a client may authenticate on `stream` from `peer`.
pub fn may_authenticate(stream: &Stream, peer: SocketAddr, params: &PreauthParams) -> bool {
    auth_allowed(peer, stream.is_tls(), params.allow_plaintext_on_loopback)
}

/// The client side of pre-auth: the line reader over the byte budget.
type Reader = LineReader<Budgeted<Stream>>;

/// Runs `session` on a fresh client connection (plaintext, or already TLS on an
/// implicit-TLS port). `Ok(None)` means the client left without logging in.
pub async fn preauth<S: PreAuth, L: Login>(
    stream: Stream,
    peer: SocketAddr,
    mut session: S,
    params: &PreauthParams,
    login: &L,
) -> Result<Option<Handoff<L::Upstream>>, Error> {
    let stream = Budgeted::new(stream, session.max_bytes());
    let mut reader = LineReader::new(stream, session.max_line());
    if !params.greeted {
        send(reader.get_mut(), &session.greeting()).await?;
    }
    let mut literal: Option<Vec<u8>> = None;
    loop {
        let action = match literal.take() {
            Some(bytes) => session.on_literal(bytes),
            None => match next_line(&mut reader, &mut session, params).await? {
                Some(action) => action,
                None => return Ok(None),
            },
        };
        match action {
            Action::Continue => {}
            Action::Reply(reply) => {
                send(reader.get_mut(), &reply).await?;
                if reply.close {
                    return Ok(None);
                }
            }
            Action::Literal { len, ack } => {
                if let Some(ack) = ack {
                    send(reader.get_mut(), &ack).await?;
                }
                let read = timeout_at(params.deadline, reader.read_exact(len)).await;
                match within(&mut reader, &session, read).await? {
                    Some(bytes) => literal = Some(bytes),
                    None => return Ok(None),
                }
            }
            Action::StartTls(go_ahead) => {
                reader = start_tls(reader, &go_ahead, params, session.max_line()).await?;
                session.tls_started(auth_allowed(peer, true, params.allow_plaintext_on_loopback));
            }
            Action::Login(credentials) => {
                if let Some(logged_in) =
                    log_in(&mut reader, &mut session, login, credentials).await?
                {
                    return hand_off(reader, &mut session, logged_in).await.map(Some);
                }
            }
        }
    }
}

/// What the session makes of the next client line; `None`: pre-auth ended without a
/// login (the client left, or sent too much).
async fn next_line<S: PreAuth>(
    reader: &mut Reader,
    session: &mut S,
    params: &PreauthParams,
) -> Result<Option<Action>, Error> {
    let read = timeout_at(params.deadline, reader.read_line()).await;
    Ok(match within(reader, session, read).await?.flatten() {
        None => None,
        Some(Line::Complete(line)) => {
            // Login lines carry passwords and SASL payloads: wiped once read.
            let line = zeroize::Zeroizing::new(line);
            reader.wipe_spare();
            Some(session.on_line(&line))
        }
        Some(Line::TooLong) => Some(session.on_too_long()),
    })
}

/// A read within the deadline and the byte budget: the client is told when it is over
/// either, and pre-auth ends (`None` when it ends without an error).
async fn within<S: PreAuth, T>(
    reader: &mut Reader,
    session: &S,
    read: Result<std::io::Result<T>, tokio::time::error::Elapsed>,
) -> Result<Option<T>, Error> {
    match read {
        Err(_) => farewell(reader.get_mut(), session, Error::PreauthTimeout).await,
        Ok(Err(_)) if reader.get_ref().spent() => too_much_input(reader.get_mut(), session).await,
        Ok(Err(e)) => Err(Error::ClientIo(e)),
        Ok(Ok(read)) => Ok(Some(read)),
    }
}

/// One login attempt. A failure is answered; `Err` when the session ends with it.
async fn log_in<S: PreAuth, L: Login>(
    reader: &mut Reader,
    session: &mut S,
    login: &L,
    credentials: super::Credentials,
) -> Result<Option<LoggedIn<L::Upstream>>, Error> {
    let user = credentials.user.clone();
    match login.login(credentials).await {
        Ok(logged_in) => Ok(Some(logged_in)),
        Err(error) => {
            tracing::warn!(user = %crate::logfield::Field(&user), error = %error, "login failed");
            let reply = session.login_failed(&error);
            send(reader.get_mut(), &reply).await?;
            match reply.close {
                true => Err(error),
                false => Ok(None),
            }
        }
    }
}

/// Tells the client it is logged in and hands the connection on.
async fn hand_off<S: PreAuth, U>(
    mut reader: Reader,
    session: &mut S,
    logged_in: LoggedIn<U>,
) -> Result<Handoff<U>, Error> {
    let LoggedIn {
        mailbox,
        upstream,
        upstream_ok,
    } = logged_in;
    send(reader.get_mut(), &session.login_succeeded(&upstream_ok)).await?;
    let (client, client_residual) = reader.into_parts();
    Ok(Handoff {
        client: client.inner,
        client_residual,
        mailbox,
        upstream,
    })
}

/// Sends the go-ahead and runs the handshake. Input the client pipelined behind
/// STARTTLS is dropped (RFC 3207 §4.2, RFC 2595 §3.1; CVE-2011-0411 was a server that
/// kept it).
async fn start_tls(
    reader: Reader,
    go_ahead: &Reply,
    params: &PreauthParams,
    max_line: usize,
) -> Result<Reader, Error> {
    let (mut stream, residual) = reader.into_parts();
    if !residual.is_empty() {
        tracing::debug!(
            bytes = residual.len(),
            "dropped input pipelined behind STARTTLS"
        );
    }
    send(&mut stream, go_ahead).await?;
    let Budgeted { inner, used, max } = stream;
    let inner = match inner {
        Stream::Plain(tcp) => Stream::Server(Box::new(handshake(params, tcp).await?)),
        #[cfg(feature = "fuzzing")]
        Stream::InMemory { pipe, tls: false } => Stream::InMemory {
            pipe: Box::new(handshake(params, pipe).await?),
            tls: true,
        },
        // The state machines refuse STARTTLS inside TLS; keep the stream as it is.
        inner => inner,
    };
    Ok(LineReader::new(Budgeted { inner, used, max }, max_line))
}

/// The server side of a TLS handshake on `io`, within the pre-auth deadline.
async fn handshake<IO: AsyncRead + AsyncWrite + Unpin>(
    params: &PreauthParams,
    io: IO,
) -> Result<tokio_rustls::server::TlsStream<IO>, Error> {
    match timeout_at(params.deadline, params.tls.accept(io)).await {
        Err(_) => Err(Error::PreauthTimeout),
        Ok(Err(e)) => Err(Error::ClientIo(e)),
        Ok(Ok(tls)) => Ok(tls),
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, reply: &Reply) -> Result<(), Error> {
    if !reply.text.is_empty() {
        w.write_all(reply.text.as_bytes())
            .await
            .map_err(Error::ClientIo)?;
        w.flush().await.map_err(Error::ClientIo)?;
    }
    Ok(())
}

/// Tells a client over the byte budget so, and ends the session (like a command limit:
/// no error, the client simply did not log in).
async fn too_much_input<W: AsyncWrite + Unpin, S: PreAuth, T>(
    w: &mut W,
    session: &S,
) -> Result<Option<T>, Error> {
    tracing::info!(
        limit = session.max_bytes(),
        "closing: too much input before login"
    );
    let _ = send(w, &session.too_much_input()).await;
    Ok(None)
}

/// A client stream that fails reads once more than `max` bytes came through it.
struct Budgeted<S> {
    inner: S,
    used: usize,
    max: usize,
}

impl<S> Budgeted<S> {
    fn new(inner: S, max: usize) -> Self {
        Self {
            inner,
            used: 0,
            max,
        }
    }

    /// Whether the budget is used up (and reads fail).
    fn spent(&self) -> bool {
        self.used > self.max
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Budgeted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.spent() {
            return Poll::Ready(Err(over_budget()));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            self.used += buf.filled().len() - before;
            if self.spent() {
                return Poll::Ready(Err(over_budget()));
            }
        }
        poll
    }
}

fn over_budget() -> std::io::Error {
    std::io::Error::other("too much input before login")
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Budgeted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Tells the client why the session ends, then ends it with `error`.
async fn farewell<W: AsyncWrite + Unpin, S: PreAuth, T>(
    w: &mut W,
    session: &S,
    error: Error,
) -> Result<T, Error> {
    let _ = send(w, &session.farewell(&error)).await;
    Err(error)
}
