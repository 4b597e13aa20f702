//! The trusted-network SMTP listener (`[smtp.trusted]`), whose devices send as one
//! configured mailbox without logging in. Its messages always go through the relay's
//! queue, whatever the mailbox's `delivery`: devices cannot retry.

use std::net::SocketAddr;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::kind::Protocol;
use super::login::{MailLogin, queued};
use super::services::Services;
use crate::error::Error;
use crate::mailbox::Mailbox;
use crate::protocol::{proxy_header, smtp};
use crate::submission::driver::Served;
use crate::submission::session as submission;
use crate::tls::Stream;

/// A connection to the trusted-network listener: refused at once unless it comes from a
/// listed network; otherwise logged in as the configured mailbox (no AUTH), greeted, and
/// served like a logged-in client.
pub(super) async fn run(
    mut tcp: TcpStream,
    peer: SocketAddr,
    services: &Services,
) -> Result<Option<Served>, Error> {
    let config = services.config();
    let Some(trusted) = config.trusted.as_ref() else {
        return Ok(None);
    };
    if !trusted.admits(peer.ip()) {
        tracing::warn!(%peer, "refused: not on a trusted network");
        let refusal = smtp::reply::untrusted(&services.host, peer.ip());
        let _ = tcp.write_all(refusal.as_bytes()).await;
        return Err(Error::Untrusted);
    }
    let registry = services.registry.current_registry();
    let Some(mailbox) = registry.get_arc(&trusted.mailbox).cloned() else {
        let reply = smtp::reply::trusted_mailbox_missing(&services.host, &trusted.mailbox);
        let _ = tcp.write_all(reply.as_bytes()).await;
        tracing::error!(mailbox = %trusted.mailbox, "smtp.trusted.mailbox is not a registered mailbox");
        return Ok(None);
    };
    tracing::Span::current().record("mailbox", mailbox.address.as_str());
    let outbound = match outbound(services, peer, &mailbox).await {
        Ok(outbound) => outbound,
        Err(error) => {
            let reply = smtp::reply::closing(&smtp::reply::reply_for(&error).text);
            let _ = tcp.write_all(reply.as_bytes()).await;
            return Err(error);
        }
    };
    // The greeting first, then the client's first bytes: a PROXY header there closes.
    let greeting = smtp::reply::greeting(&services.host);
    tcp.write_all(greeting.as_bytes())
        .await
        .map_err(Error::ClientIo)?;
    let deadline = tokio::time::Instant::now() + config.limits.preauth_timeout();
    proxy_header::refuse_stray(&tcp, deadline).await?;
    // An empty greeting: it went out above; `Some` still marks a session without a password.
    let mut served = submission::serve(
        Stream::Plain(tcp),
        Vec::new(),
        peer.ip(),
        &mailbox,
        outbound,
        &services.shared(&services.config()),
        Some(String::new()),
    )
    .await?;
    served.bytes_to_client += greeting.len() as u64;
    Ok(Some(served))
}

/// Where the devices' messages go: devices cannot retry, so always the relay's queue
/// (whatever the mailbox's `delivery`); directly only for a state without a queue.
async fn outbound(
    services: &Services,
    peer: SocketAddr,
    mailbox: &Mailbox,
) -> Result<submission::Outbound, Error> {
    if let Some(queue) = queued(services) {
        return Ok(queue);
    }
    let login = MailLogin {
        services,
        protocol: Protocol::Smtp,
        peer,
        preconnect: std::sync::Mutex::new(None),
        // No password is checked here: the trusted network is the credential.
        deadline: tokio::time::Instant::now(),
    };
    login.open_outbound(mailbox).await
}
