//! The async side of pre-auth, shared by SMTP, IMAP and POP3: reads client lines (and IMAP
//! literals) through the bounded [`LineReader`], writes the state machine's replies, runs
//! the STARTTLS handshake, and calls the [`Login`]. Everything is under one deadline; a
//! client that does not log in within it is told so and dropped.

use std::net::SocketAddr;

use tokio::io::{AsyncWrite, AsyncWriteExt};
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
}

/// Whether a client may authenticate on `stream` from `peer`.
pub fn may_authenticate(stream: &Stream, peer: SocketAddr, params: &PreauthParams) -> bool {
    auth_allowed(peer, stream.is_tls(), params.allow_plaintext_on_loopback)
}

/// Runs `session` on a fresh client connection (plaintext, or already TLS on an
/// implicit-TLS port). `Ok(None)` means the client left without logging in.
pub async fn preauth<S: PreAuth, L: Login>(
    stream: Stream,
    peer: SocketAddr,
    mut session: S,
    params: &PreauthParams,
    login: &L,
) -> Result<Option<Handoff<L::Upstream>>, Error> {
    let mut reader = LineReader::new(stream, S::MAX_LINE);
    send(reader.get_mut(), &session.greeting()).await?;
    let mut literal: Option<Vec<u8>> = None;

    loop {
        let action = match literal.take() {
            Some(bytes) => session.on_literal(bytes),
            None => match timeout_at(params.deadline, reader.read_line()).await {
                Err(_) => return farewell(reader.get_mut(), &session, Error::PreauthTimeout).await,
                Ok(Err(e)) => return Err(Error::ClientIo(e)),
                Ok(Ok(None)) => return Ok(None),
                Ok(Ok(Some(Line::Complete(line)))) => session.on_line(&line),
                Ok(Ok(Some(Line::TooLong))) => session.on_too_long(),
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
                literal = Some(match read {
                    Err(_) => {
                        return farewell(reader.get_mut(), &session, Error::PreauthTimeout).await;
                    }
                    Ok(Err(e)) => return Err(Error::ClientIo(e)),
                    Ok(Ok(bytes)) => bytes,
                });
            }
            Action::StartTls(go_ahead) => {
                reader = start_tls(reader, &go_ahead, params, S::MAX_LINE).await?;
                session.tls_started(auth_allowed(peer, true, params.allow_plaintext_on_loopback));
            }
            Action::Login(credentials) => {
                let user = credentials.user.clone();
                match login.login(credentials).await {
                    Ok(LoggedIn {
                        mailbox,
                        upstream,
                        upstream_ok,
                    }) => {
                        send(reader.get_mut(), &session.login_succeeded(&upstream_ok)).await?;
                        let (client, client_residual) = reader.into_parts();
                        return Ok(Some(Handoff {
                            client,
                            client_residual,
                            mailbox,
                            upstream,
                        }));
                    }
                    Err(error) => {
                        tracing::warn!(user = %user, error = %error, "login failed");
                        let reply = session.login_failed(&error);
                        send(reader.get_mut(), &reply).await?;
                        if reply.close {
                            return Err(error);
                        }
                    }
                }
            }
        }
    }
}

/// Sends the go-ahead and runs the handshake. Input the client pipelined behind
/// STARTTLS is dropped (RFC 3207 §4.2, RFC 2595 §3.1; CVE-2011-0411 was a server that
/// kept it).
async fn start_tls(
    reader: LineReader<Stream>,
    go_ahead: &Reply,
    params: &PreauthParams,
    max_line: usize,
) -> Result<LineReader<Stream>, Error> {
    let (mut stream, residual) = reader.into_parts();
    if !residual.is_empty() {
        tracing::debug!(
            bytes = residual.len(),
            "dropped input pipelined behind STARTTLS"
        );
    }
    send(&mut stream, go_ahead).await?;
    let Stream::Plain(tcp) = stream else {
        // The state machines refuse STARTTLS inside TLS; keep the stream as it is.
        return Ok(LineReader::new(stream, max_line));
    };
    let tls = match timeout_at(params.deadline, params.tls.accept(tcp)).await {
        Err(_) => return Err(Error::PreauthTimeout),
        Ok(Err(e)) => return Err(Error::ClientIo(e)),
        Ok(Ok(tls)) => tls,
    };
    Ok(LineReader::new(Stream::Server(Box::new(tls)), max_line))
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

/// Tells the client why the session ends, then ends it with `error`.
async fn farewell<W: AsyncWrite + Unpin, S: PreAuth, T>(
    w: &mut W,
    session: &S,
    error: Error,
) -> Result<T, Error> {
    let _ = send(w, &session.farewell(&error)).await;
    Err(error)
}
