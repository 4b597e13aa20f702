//! The async side of a logged-in SMTP session: reads commands through the bounded
//! [`LineReader`], applies the sender rules and the sending limits, and hands each
//! transaction to its way out ([`Way`]): streamed to the upstream SMTP server, or held
//! and sent in one piece (Microsoft Graph). Every read waits at most the idle timeout;
//! every reply the client gets for a message comes from the upstream's verdict.
//!
//! - [`commands`]: the commands of a transaction, and the others.
//! - [`streamed`]: a DATA message streamed upstream (the XOAUTH2 way).
//! - [`held`]: a message held whole, within the budget, and sent at once (Graph).
//! - [`bdat`]: BDAT chunks, both ways.
//! - [`senders`]: the header senders against the sender rules.
//! - [`queued`]: the queue way: a held message stored in the relay's queue.
//! - [`events`]: what each transaction came to, in the delivery log.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore};
use tokio::time::{Instant, timeout};

use super::limits::{Reservation, SendingCounters, SendingLimits};
use super::rules::SenderRules;
use super::upstream::{Broken, Reply, UpstreamSmtp};
use crate::codec::{Line, LineReader};
use crate::error::Error;
use crate::protocol::smtp::reply;
use crate::state::{DeliveryLog, OutboundQueue};
use crate::tls::Stream;

/// Longest command line after login, CRLF included: RFC 5321's 512 plus room for the
/// parameters of extensions (SIZE, BODY, SMTPUTF8, DSN's ORCPT).
pub const MAX_COMMAND_LINE: usize = 2048;
/// The header section the relay holds to read From and Sender before a streamed message
/// goes upstream; a longer one is refused.
pub const MAX_HEADER_SECTION: usize = 256 * 1024;
/// Bytes read from the client at a time inside a DATA stream.
const DATA_CHUNK: usize = 64 * 1024;
/// The held-message budget counts in units of this many bytes.
const HELD_UNIT: usize = 1024;

/// A way out that takes a whole message at once (Microsoft Graph).
pub trait HeldSender: Send + Sync {
    /// Sends `message` (unstuffed, CRLF) to `recipients`; `Err` is the complete SMTP reply.
    fn send<'a>(&'a self, message: &'a [u8], recipients: &'a [String]) -> Sending<'a>;
}

/// A held message on its way: the upstream's reply, `Err` when it was not accepted.
pub type Sending<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

/// How this session's messages go out.
pub enum Way {
    Upstream(UpstreamSmtp),
    Held(Box<dyn HeldSender>),
    /// Held, then stored in the relay's queue, which delivers it later.
    Queue(Queued),
}

/// The queue way out: the relay's queue, and the delivery workers' wake-up.
pub struct Queued {
    pub queue: Arc<dyn OutboundQueue>,
    /// Notified once per message queued.
    pub wake: Arc<Notify>,
}

/// What a session needs besides its client and its way out.
pub struct Context {
    /// Whether the session may start another transaction: its mailbox is still
    /// registered, with the password it logged in with.
    pub standing: Box<dyn Fn() -> bool + Send + Sync>,
    pub host: Arc<str>,
    /// The mailbox the session sends as.
    pub mailbox: String,
    pub rules: SenderRules,
    pub limits: SendingLimits,
    pub counters: SendingCounters,
    /// EHLO keywords after login.
    pub extensions: Vec<String>,
    pub idle_timeout: Duration,
    /// Largest message a held way takes.
    pub max_message: usize,
    /// The bytes all held messages may use together, in [`HELD_UNIT`]s.
    pub held_budget: Arc<Semaphore>,
    /// The client's address, for the delivery log and the queue.
    pub client: Option<String>,
    pub log: DeliveryLog,
}

/// How a session ended.
#[derive(Debug, Default)]
pub struct Served {
    /// Messages the upstream accepted.
    pub accepted: u32,
    pub bytes_from_client: u64,
    /// The replies' bytes.
    pub bytes_to_client: u64,
    pub end: &'static str,
}

/// One open mail transaction.
struct Transaction {
    /// The reverse-path of `MAIL FROM` (empty for `<>`).
    sender: String,
    recipients: Vec<String>,
    /// Its share of the mailbox's sending limits, counted once the message is accepted;
    /// `None` on the queue way (its workers take the share when they send).
    reservation: Option<Reservation>,
    /// The message's Message-ID, once its header section was read.
    message_id: Option<String>,
    /// The message's size, once known.
    size: Option<u64>,
    /// The `MAIL FROM` parameters a queued message passes on (`SMTPUTF8`, `BODY=`).
    parameters: Vec<String>,
}

/// Serves a logged-in client until it quits, goes idle or breaks. `greeting` is sent
/// first (the trusted-network listener); after AUTH the client already has its `235`.
pub async fn serve(
    client: Stream,
    residual: Vec<u8>,
    ctx: Context,
    way: Way,
    greeting: Option<String>,
) -> Result<Served, Error> {
    let mut session = Session {
        client: LineReader::with_residual(client, residual, MAX_COMMAND_LINE),
        ctx,
        way: Some(way),
        tx: None,
        chunked: None,
        lost: false,
        closing: false,
        served: Served::default(),
    };
    if let Some(greeting) = greeting {
        session.send(greeting.as_bytes()).await?;
    }
    session.run().await?;
    if let Some(Way::Upstream(upstream)) = session.way.take() {
        upstream.quit().await;
    }
    Ok(session.served)
}

struct Session {
    client: LineReader<Stream>,
    ctx: Context,
    /// `None` once the upstream connection broke.
    way: Option<Way>,
    tx: Option<Transaction>,
    /// A BDAT message in progress.
    chunked: Option<bdat::Chunked>,
    /// The upstream connection broke: it is gone for good.
    lost: bool,
    /// The session ends after the reply being sent.
    closing: bool,
    served: Served,
}

impl Session {
    async fn run(&mut self) -> Result<(), Error> {
        loop {
            let (wait, holding) = self.command_wait();
            let line = match timeout(wait, self.client.read_line()).await {
                Err(_) => {
                    let (bye, end) = match holding {
                        true => (reply::held_too_long(&self.ctx.host), "held_too_long"),
                        false => (reply::idle_timeout(&self.ctx.host), "idle"),
                    };
                    let _ = self.send(bye.as_bytes()).await;
                    self.served.end = end;
                    return Ok(());
                }
                Ok(Err(e)) => return Err(Error::ClientIo(e)),
                Ok(Ok(None)) => {
                    self.served.end = "client_closed";
                    return Ok(());
                }
                Ok(Ok(Some(Line::TooLong))) => {
                    self.send(reply::LINE_TOO_LONG.as_bytes()).await?;
                    continue;
                }
                Ok(Ok(Some(Line::Complete(line)))) => line,
            };
            self.served.bytes_from_client += line.len() as u64 + 2;
            if !self.on_line(&line).await? {
                return Ok(());
            }
        }
    }

    /// How long the next command may take: the idle timeout, or less while the session
    /// holds a shared upstream connection (`true`) and its hold limit comes sooner.
    fn command_wait(&self) -> (Duration, bool) {
        let idle = self.ctx.idle_timeout;
        let deadline = match &self.way {
            Some(Way::Upstream(upstream)) => upstream.hold_deadline(),
            _ => None,
        };
        match deadline.map(|d| d.saturating_duration_since(Instant::now())) {
            Some(left) if left < idle => (left, true),
            _ => (idle, false),
        }
    }

    async fn read_client(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        match timeout(self.ctx.idle_timeout, self.client.get_mut().read(buf)).await {
            Err(_) => Ok(0),
            Ok(Err(e)) => Err(Error::ClientIo(e)),
            Ok(Ok(n)) => Ok(n),
        }
    }

    /// RSET upstream if a transaction is open (EHLO, HELO and RSET end it).
    /// A held connection goes back even when no transaction is open here any more.
    async fn reset(&mut self) {
        self.chunked = None;
        self.tx = None;
        if let Some(Way::Upstream(upstream)) = &mut self.way
            && let Err(broken) = upstream.rset().await
        {
            let _ = self.broke(broken);
        }
    }

    /// The upstream connection broke: the session ends after this reply.
    fn broke(&mut self, broken: Broken) -> String {
        tracing::warn!(error = %broken, "upstream connection lost");
        self.lose_upstream("upstream_lost");
        reply::UPSTREAM_LOST.into()
    }

    /// The upstream connection is gone for good, and with it the transaction: the session
    /// ends (`end`) after the reply being sent.
    fn lose_upstream(&mut self, end: &'static str) {
        self.way = None;
        self.tx = None;
        self.chunked = None;
        self.lost = true;
        self.served.end = end;
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.served.bytes_to_client += bytes.len() as u64;
        let client = self.client.get_mut();
        client.write_all(bytes).await.map_err(Error::ClientIo)?;
        client.flush().await.map_err(Error::ClientIo)
    }
}

/// A reply the relay makes itself, in the shape of an upstream one.
fn local(text: &str) -> Reply {
    Reply {
        code: text.get(..3).and_then(|c| c.parse().ok()).unwrap_or(250),
        text: text.as_bytes().to_vec(),
    }
}

fn pass_on(reply: Reply) -> String {
    String::from_utf8_lossy(&reply.text).into_owned()
}

fn with_crlf(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len() + 2);
    out.extend_from_slice(line);
    out.extend_from_slice(b"\r\n");
    out
}

mod bdat;
mod commands;
mod events;
mod held;
#[cfg(test)]
mod queue_tests;
mod queued;
mod senders;
mod streamed;
#[cfg(test)]
mod tests;
