//! One client session, from accept to close: TLS on implicit-TLS ports, the protocol's
//! pre-auth under the configured limits with the [`MailLogin`] (failed-login delays and
//! refusals, local password, token, XOAUTH2 upstream), then the relay pipe with the
//! protocol's idle timeout; one log line when it opens and one when it closes, and the
//! metrics. An IMAP or POP3 session starts connecting upstream as soon as its client is
//! accepted ([`crate::upstream::preconnect`]), so that its login only has XOAUTH2 left.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tracing::Instrument;

use super::kind::{Kind, Protocol};
use super::login::{MailLogin, Opened, preconnect};
use super::services::Services;
use crate::config::{Config, Limits};
use crate::error::Error;
use crate::metrics::{DirectionLabels, ProtocolLabel};
use crate::protocol::driver::{PreauthParams, may_authenticate, preauth};
use crate::protocol::{Handoff, PreAuth, PreauthLimits, imap, pop3, proxy_header, smtp};
use crate::relay;
use crate::submission::driver::Served;
use crate::submission::session::{self as submission, Outbound};
use crate::tls::Stream;

/// One client, from accept to close, with one log line at each end. `peer` is the client:
/// the one a load balancer's PROXY header named when it came through `balancer`.
pub(super) async fn run(
    tcp: TcpStream,
    peer: SocketAddr,
    balancer: Option<SocketAddr>,
    kind: Kind,
    services: Arc<Services>,
) {
    async move {
        let started = Instant::now();
        tracing::info!("session opened");
        let protocol = ProtocolLabel { protocol: kind.protocol.name() };
        services.metrics.sessions.get_or_create(&protocol).inc();
        services.metrics.sessions_open.get_or_create(&protocol).inc();
        let _ = tcp.set_nodelay(true);
        let outcome = if kind.trusted {
            super::trusted::run(tcp, peer, &services)
                .await
                .map(|served| served.map(Ended::Submitted))
        } else {
            run_session(tcp, peer, kind, &services).await
        };
        services.metrics.sessions_open.get_or_create(&protocol).dec();
        let ms = started.elapsed().as_millis() as u64;
        count_bytes(&services, protocol, &outcome);
        match outcome {
            Ok(Some(Ended::Submitted(s))) => tracing::info!(
                outcome = "submitted",
                end = s.end,
                messages = s.accepted,
                bytes_from_client = s.bytes_from_client,
                bytes_to_client = s.bytes_to_client,
                duration_ms = ms,
                "session closed"
            ),
            Ok(Some(Ended::Relayed(r))) => tracing::info!(
                outcome = "relayed",
                end = ?r.end,
                bytes_from_client = r.client_to_upstream,
                bytes_to_client = r.upstream_to_client,
                duration_ms = ms,
                "session closed"
            ),
            Ok(None) => tracing::info!(outcome = "no_login", duration_ms = ms, "session closed"),
            Err(e) => tracing::info!(outcome = e.outcome(), side = ?e.side(), error = %e, duration_ms = ms, "session closed"),
        }
    }
    .instrument(span(kind, peer, balancer))
    .await
}

/// Counts a session's bytes both ways in the metrics.
fn count_bytes(
    services: &Services,
    protocol: ProtocolLabel,
    outcome: &Result<Option<Ended>, Error>,
) {
    let bytes = |direction, n| {
        let labels = DirectionLabels {
            protocol: protocol.protocol,
            direction,
        };
        services.metrics.bytes.get_or_create(&labels).inc_by(n);
    };
    match outcome {
        Ok(Some(Ended::Relayed(r))) => {
            bytes("from_client", r.client_to_upstream);
            bytes("to_client", r.upstream_to_client);
        }
        Ok(Some(Ended::Submitted(s))) => {
            bytes("from_client", s.bytes_from_client);
            bytes("to_client", s.bytes_to_client);
        }
        _ => {}
    }
}

/// The session's span: its listener, client, load balancer (if any) and, once logged in,
/// mailbox.
fn span(kind: Kind, peer: SocketAddr, balancer: Option<SocketAddr>) -> tracing::Span {
    let span = tracing::info_span!("session", listener = kind.name(), %peer, balancer = tracing::field::Empty, mailbox = tracing::field::Empty);
    if let Some(balancer) = balancer {
        span.record("balancer", tracing::field::display(balancer));
    }
    span
}

/// How a session that logged in ended.
pub(super) enum Ended {
    /// IMAP, POP3: bytes piped both ways.
    Relayed(relay::Relayed),
    /// SMTP: transactions read and submitted.
    Submitted(Served),
}

/// A client of a mail listener: TLS, pre-auth and login, then its logged-in session.
async fn run_session(
    tcp: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    services: &Services,
) -> Result<Option<Ended>, Error> {
    let config = services.config();
    let deadline = Instant::now() + config.limits.preauth_timeout();
    let preconnect = preconnect(services, kind.protocol, peer);
    if preconnect.is_some() {
        // Let it start connecting (it waits in this worker's next-task slot, which no idle
        // worker takes) before the client's TLS handshake keeps this task busy.
        tokio::task::yield_now().await;
    }
    let (stream, greeted) = accept_tls(tcp, kind, services, deadline).await?;
    let params = PreauthParams {
        tls: services.tls(),
        allow_plaintext_on_loopback: config.allow_plaintext_on_loopback,
        deadline,
        greeted,
    };
    let login = MailLogin {
        services,
        protocol: kind.protocol,
        peer,
        preconnect: Mutex::new(preconnect),
        deadline,
    };
    let handoff = log_in(stream, peer, kind, &params, &login, &config.limits).await?;
    let Some(handoff) = handoff else {
        return Ok(None);
    };
    tracing::Span::current().record("mailbox", handoff.mailbox.as_str());
    // Nothing speculative outlives the login (it was taken, or dropped on failure).
    drop(login);
    logged_in(handoff, kind, services, &config).await.map(Some)
}

/// The client's stream: TLS first on an implicit-TLS port. IMAP and POP3 there greet in
/// the handshake's first flight (TLS 1.3 half-RTT data, see `tls::server_config`): the
/// client has it a round trip earlier. `true` when the greeting was sent so.
async fn accept_tls(
    tcp: TcpStream,
    kind: Kind,
    services: &Services,
    deadline: Instant,
) -> Result<(Stream, bool), Error> {
    if !kind.implicit_tls {
        return Ok((Stream::Plain(tcp), false));
    }
    // The client speaks first in TLS: its first bytes are a ClientHello, not a PROXY header.
    proxy_header::refuse_stray(&tcp, deadline).await?;
    let early_greeting = match kind.protocol {
        Protocol::Imap => Some(imap::Session::new(true, true).greeting()),
        Protocol::Pop3 => Some(pop3::Session::new(true, true).greeting()),
        Protocol::Smtp => None,
    };
    let accept = services.tls().accept_with(tcp, |conn| {
        if let Some(greeting) = &early_greeting {
            // Buffered by rustls until it may send application data.
            let _ = std::io::Write::write_all(&mut conn.writer(), greeting.text.as_bytes());
        }
    });
    match timeout_at(deadline, accept).await {
        Err(_) => Err(Error::PreauthTimeout),
        Ok(Err(e)) => Err(Error::ClientIo(e)),
        Ok(Ok(tls)) => Ok((Stream::Server(Box::new(tls)), early_greeting.is_some())),
    }
}

/// The protocol's pre-auth conversation under the configured limits, up to a login.
async fn log_in(
    stream: Stream,
    peer: SocketAddr,
    kind: Kind,
    params: &PreauthParams,
    login: &MailLogin<'_>,
    limits: &Limits,
) -> Result<Option<Handoff<Opened>>, Error> {
    let (tls, auth) = (stream.is_tls(), may_authenticate(&stream, peer, params));
    match kind.protocol {
        Protocol::Smtp => {
            let services = login.services;
            let extensions = services.smtp_extensions();
            let session = smtp::Session::new(services.host.clone(), extensions, tls, auth)
                .with_limits(PreauthLimits::smtp(limits));
            converse(stream, peer, session, params, login).await
        }
        Protocol::Imap => {
            let session = imap::Session::new(tls, auth).with_limits(PreauthLimits::imap(limits));
            converse(stream, peer, session, params, login).await
        }
        Protocol::Pop3 => {
            let session = pop3::Session::new(tls, auth).with_limits(PreauthLimits::pop3(limits));
            converse(stream, peer, session, params, login).await
        }
    }
}

/// Pre-auth. On a plaintext port the greeting goes first, then the client's first bytes
/// are looked at: a PROXY header there closes the connection.
async fn converse<S: PreAuth>(
    mut stream: Stream,
    peer: SocketAddr,
    session: S,
    params: &PreauthParams,
    login: &MailLogin<'_>,
) -> Result<Option<Handoff<Opened>>, Error> {
    let mut params = params.clone();
    if let Stream::Plain(tcp) = &mut stream
        && !params.greeted
    {
        let greeting = session.greeting();
        tcp.write_all(greeting.text.as_bytes())
            .await
            .map_err(Error::ClientIo)?;
        params.greeted = true;
        proxy_header::refuse_stray(tcp, params.deadline).await?;
    }
    preauth(stream, peer, session, &params, login).await
}

/// After login: an SMTP client is served by [`crate::submission`], an IMAP or POP3 client
/// is piped to its upstream connection.
async fn logged_in(
    handoff: Handoff<Opened>,
    kind: Kind,
    services: &Services,
    config: &Config,
) -> Result<Ended, Error> {
    // The mailbox the password check found goes on: it is not looked up again.
    let Opened {
        mailbox,
        outbound,
        client,
    } = handoff.upstream;
    let upstream = match outbound {
        Outbound::Wire(upstream) if kind.protocol != Protocol::Smtp => upstream,
        outbound => {
            let config = services.config();
            let served = submission::serve(
                handoff.client,
                handoff.client_residual,
                client,
                &mailbox,
                outbound,
                &services.shared(&config),
                None,
            )
            .await?;
            return Ok(Ended::Submitted(served));
        }
    };
    let (mut client, mut upstream_stream) = (handoff.client, upstream.stream);
    client.limit_tls_buffer(relay::BUFFER_SIZE);
    upstream_stream.limit_tls_buffer(relay::BUFFER_SIZE);
    let relayed = relay::pipe(
        client,
        &handoff.client_residual,
        upstream_stream,
        &upstream.residual,
        kind.protocol.idle_timeout(&config.limits),
        services.registry.removed(&handoff.mailbox),
    )
    .await;
    if relayed.end == relay::End::Revoked {
        tracing::info!("session closed: the mailbox was removed");
    }
    Ok(Ended::Relayed(relayed))
}
