//! SMTP after login, as the server runs it: the submission state every session shares
//! ([`Submissions`]), the way out of a mailbox (its XOAUTH2 connection, or Microsoft
//! Graph: [`Outbound`]), the per-mailbox context of [`crate::submission::driver`], and the
//! trusted-network listener, whose devices send as one mailbox without logging in.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::Services;
use crate::error::Error;
use crate::mailbox::Mailbox;
use crate::protocol::smtp;
use crate::submission::driver::{self, Context, Served, Way};
use crate::submission::limits::{SendingCounters, SendingLimits};
use crate::submission::route::Routes;
use crate::submission::rules::SenderRules;
use crate::submission::upstream::UpstreamSmtp;
use crate::tls::Stream;
use crate::upstream::Upstream;

/// What all SMTP sessions share: the `auto` switches, the sending windows, and the
/// budget of held messages.
pub struct Submissions {
    pub routes: Routes,
    pub counters: SendingCounters,
    held_budget: Arc<Semaphore>,
    pub(super) graphs: super::graph_sender::GraphClients,
}

impl Submissions {
    pub fn new(
        config: &crate::config::Config,
        switches: std::sync::Arc<dyn crate::state::RouteSwitches>,
    ) -> Self {
        let units = config.limits.max_held_message_bytes / 1024;
        Self {
            routes: Routes::new(switches),
            counters: SendingCounters::default(),
            held_budget: Arc::new(Semaphore::new(units.min(Semaphore::MAX_PERMITS))),
            graphs: Default::default(),
        }
    }
}

/// Where a logged-in SMTP session's messages go.
pub enum Outbound {
    /// The mailbox's logged-in XOAUTH2 connection to Exchange Online.
    Wire(Upstream),
    /// Microsoft Graph, with the token owner's Graph token.
    Graph(super::graph_sender::GraphSender),
}

/// Runs a logged-in SMTP session of `mailbox` until it ends.
pub(super) async fn serve(
    client: Stream,
    residual: Vec<u8>,
    mailbox: &Mailbox,
    outbound: Outbound,
    services: &Services,
    greeting: Option<String>,
) -> Result<Served, Error> {
    let config = services.config();
    let limits = &config.limits;
    let registry = services.registry.registry();
    let dependents: Vec<String> = registry
        .dependents(&mailbox.address)
        .iter()
        .map(|m| m.address.clone())
        .collect();
    let (way, extensions) = match outbound {
        Outbound::Wire(upstream) => {
            let extensions = smtp::passthrough(&upstream.capabilities);
            let timeout = limits.upstream_timeout();
            (
                Way::Upstream(UpstreamSmtp::new(upstream, timeout)),
                extensions,
            )
        }
        Outbound::Graph(sender) => (
            Way::Held(Box::new(sender)),
            held_extensions(limits.max_message_bytes),
        ),
    };
    let standing = {
        let live = services.registry.clone();
        let address = mailbox.address.clone();
        // A trusted-network device logged in with no password: only removal ends it.
        let verifier = greeting
            .is_none()
            .then(|| mailbox.password.clone())
            .flatten();
        Box::new(move || live.still_standing(&address, verifier.as_ref()))
    };
    let ctx = Context {
        standing,
        host: services.host.clone(),
        mailbox: mailbox.address.clone(),
        rules: SenderRules::new(&mailbox.address, &mailbox.sending.allowed_from, &dependents),
        limits: SendingLimits::from_config(limits),
        counters: services.submissions.counters.clone(),
        extensions,
        idle_timeout: limits.idle_timeout_smtp(),
        max_message: limits.max_message_bytes,
        held_budget: services.submissions.held_budget.clone(),
    };
    driver::serve(client, residual, ctx, way, greeting).await
}

/// The EHLO keywords of a session whose messages the relay holds and sends itself.
fn held_extensions(max_message: usize) -> Vec<String> {
    [
        format!("SIZE {max_message}"),
        "PIPELINING".into(),
        "ENHANCEDSTATUSCODES".into(),
        "8BITMIME".into(),
        "CHUNKING".into(),
        "SMTPUTF8".into(),
    ]
    .into()
}

/// A connection to the trusted-network listener: refused at once unless it comes from a
/// listed network; otherwise logged in as the configured mailbox (no AUTH), greeted, and
/// served like a logged-in client.
pub(super) async fn run_trusted(
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
        let refusal = format!(
            "554 5.7.1 {} does not accept mail from {} without login\r\n",
            services.host,
            peer.ip()
        );
        let _ = tcp.write_all(refusal.as_bytes()).await;
        return Err(Error::Untrusted);
    }
    let registry = services.registry.current_registry();
    let Some(mailbox) = registry.get_arc(&trusted.mailbox).cloned() else {
        let reply = format!(
            "421 4.3.0 {} is not configured: mailbox {} is not registered\r\n",
            services.host, trusted.mailbox
        );
        let _ = tcp.write_all(reply.as_bytes()).await;
        tracing::error!(mailbox = %trusted.mailbox, "smtp.trusted.mailbox is not a registered mailbox");
        return Ok(None);
    };
    tracing::Span::current().record("mailbox", mailbox.address.as_str());
    let login = super::session::MailLogin {
        services,
        protocol: super::Protocol::Smtp,
        peer,
        preconnect: std::sync::Mutex::new(None),
        // No password is checked here: the trusted network is the credential.
        deadline: tokio::time::Instant::now(),
    };
    let outbound = match login.open_outbound(&mailbox).await {
        Ok(outbound) => outbound,
        Err(error) => {
            let reply = closing(&smtp::reply::reply_for(&error).text);
            let _ = tcp.write_all(reply.as_bytes()).await;
            return Err(error);
        }
    };
    let greeting = format!("220 {} ESMTP m365-relay ready\r\n", services.host);
    let served = serve(
        Stream::Plain(tcp),
        Vec::new(),
        &mailbox,
        outbound,
        services,
        Some(greeting),
    )
    .await?;
    Ok(Some(served))
}

/// A reply turned into the `421` that may greet a client (RFC 5321 §3.1): the same text,
/// as a closing temporary failure.
fn closing(reply: &str) -> String {
    let text = reply.get(4..).unwrap_or("").trim_end();
    let text = text.split("\r\n").next().unwrap_or("");
    let text = text
        .strip_prefix(|c: char| c.is_ascii_digit())
        .map_or(text, |_| text.split_once(' ').map_or(text, |(_, t)| t));
    format!("421 4.4.0 {text}\r\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn greeting_refusals_are_421() {
        assert_eq!(
            super::closing("454 4.7.0 Mailbox a@b.c needs the relay admin\r\n"),
            "421 4.4.0 Mailbox a@b.c needs the relay admin\r\n"
        );
    }
}
