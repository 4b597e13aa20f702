//! The async side of SMTP pre-auth: reads client lines, writes the state machine's
//! replies, runs the STARTTLS handshake, and calls the [`Login`] for AUTH. Everything is
//! under one deadline; a client that does not log in within it is told so and dropped.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsAcceptor;

use super::{Action, MAX_AUTH_LINE, Session, reply};
use crate::codec::{Line, LineReader};
use crate::error::Error;
use crate::protocol::{Handoff, LoggedIn, Login, Reply, auth_allowed};
use crate::tls::Stream;

/// What an SMTP listener's sessions share.
#[derive(Clone)]
pub struct SmtpParams {
    /// Name in the greeting and EHLO reply.
    pub host: Arc<str>,
    /// EHLO keywords to advertise besides STARTTLS and AUTH.
    pub extensions: Arc<[String]>,
    pub tls: TlsAcceptor,
    pub allow_plaintext_on_loopback: bool,
    /// When pre-auth must be over.
    pub deadline: Instant,
}

/// Runs pre-auth on a fresh client connection (plaintext, or already TLS on an
/// implicit-TLS port). `Ok(None)` means the client left without logging in.
pub async fn preauth<L: Login>(
    stream: Stream,
    peer: SocketAddr,
    params: &SmtpParams,
    login: &L,
) -> Result<Option<Handoff<L::Upstream>>, Error> {
    let tls = stream.is_tls();
    let allow = |tls| auth_allowed(peer, tls, params.allow_plaintext_on_loopback);
    let mut session = Session::new(
        params.host.clone(),
        params.extensions.clone(),
        tls,
        allow(tls),
    );
    let mut reader = LineReader::new(stream, MAX_AUTH_LINE);
    send(reader.get_mut(), &session.greeting()).await?;

    loop {
        let line = match timeout_at(params.deadline, reader.read_line()).await {
            Err(_) => return fail(reader.get_mut(), Error::PreauthTimeout).await,
            Ok(Err(e)) => return Err(Error::ClientIo(e)),
            Ok(Ok(None)) => return Ok(None),
            Ok(Ok(Some(line))) => line,
        };
        let action = match line {
            Line::Complete(line) => session.on_line(&line),
            Line::TooLong => session.on_too_long(),
        };
        match action {
            Action::Reply(reply) => {
                send(reader.get_mut(), &reply).await?;
                if reply.close {
                    return Ok(None);
                }
            }
            Action::StartTls => {
                reader = start_tls(reader, params).await?;
                session.tls_started(allow(true));
            }
            Action::Login(credentials) => {
                let user = credentials.user.clone();
                match login.login(credentials).await {
                    Ok(LoggedIn { mailbox, upstream }) => {
                        send(reader.get_mut(), &session.login_succeeded()).await?;
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

/// Answers STARTTLS and runs the handshake. Input the client pipelined behind STARTTLS
/// is dropped (RFC 3207 §4.2; CVE-2011-0411 was a server that kept it).
async fn start_tls(
    reader: LineReader<Stream>,
    params: &SmtpParams,
) -> Result<LineReader<Stream>, Error> {
    let (mut stream, residual) = reader.into_parts();
    if !residual.is_empty() {
        tracing::debug!(
            bytes = residual.len(),
            "dropped input pipelined behind STARTTLS"
        );
    }
    send(&mut stream, &Reply::new(reply::READY_FOR_TLS)).await?;
    let Stream::Plain(tcp) = stream else {
        // The state machine refuses a second STARTTLS; keep the stream as it is.
        return Ok(LineReader::new(stream, MAX_AUTH_LINE));
    };
    let tls = match timeout_at(params.deadline, params.tls.accept(tcp)).await {
        Err(_) => return Err(Error::PreauthTimeout),
        Ok(Err(e)) => return Err(Error::ClientIo(e)),
        Ok(Ok(tls)) => tls,
    };
    Ok(LineReader::new(
        Stream::Server(Box::new(tls)),
        MAX_AUTH_LINE,
    ))
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
async fn fail<W: AsyncWrite + Unpin, T>(w: &mut W, error: Error) -> Result<T, Error> {
    let _ = send(w, &reply::reply_for(&error)).await;
    Err(error)
}
