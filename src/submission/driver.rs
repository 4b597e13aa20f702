//! The async side of a logged-in SMTP session: reads commands through the bounded
//! [`LineReader`], applies the sender rules and the sending limits, and hands each
//! transaction to its way out ([`Way`]): streamed to the upstream SMTP server, or held
//! and sent in one piece (Microsoft Graph). Every read waits at most the idle timeout;
//! every reply the client gets for a message comes from the upstream's verdict.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;

use super::command::Command;
use super::data::{
    DataEnd, header_end, header_senders, unstuff_in_place, unstuff_into, unstuffed_message,
};
use super::limits::{Reservation, SendingCounters, SendingLimits};
use super::rules::SenderRules;
use super::upstream::{Broken, DATA_END_TIMEOUT, Reply, UpstreamSmtp};
use crate::codec::{Line, LineReader};
use crate::error::Error;
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
/// A message with a CR or LF that is not part of a CRLF: what Postfix answers since the
/// SMTP smuggling reports (CVE-2023-51764), and nothing of it is sent.
const BARE_LINE_END: &str = "550 5.5.2 Error: bare <CR> or <LF> received; message not sent\r\n";

/// A way out that takes a whole message at once (Microsoft Graph).
pub trait HeldSender: Send + Sync {
    /// Sends `message` (unstuffed, CRLF) to `recipients`; `Err` is the complete SMTP reply.
    fn send<'a>(
        &'a self,
        message: &'a [u8],
        recipients: &'a [String],
    ) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;
}

/// How this session's messages go out.
pub enum Way {
    Upstream(UpstreamSmtp),
    Held(Box<dyn HeldSender>),
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
    recipients: Vec<String>,
    /// Its share of the mailbox's sending limits, counted once the message is accepted.
    reservation: Reservation,
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
            let line = match timeout(self.ctx.idle_timeout, self.client.read_line()).await {
                Err(_) => {
                    let bye = format!("421 4.4.2 {} Idle timeout, closing\r\n", self.ctx.host);
                    let _ = self.send(bye.as_bytes()).await;
                    self.served.end = "idle";
                    return Ok(());
                }
                Ok(Err(e)) => return Err(Error::ClientIo(e)),
                Ok(Ok(None)) => {
                    self.served.end = "client_closed";
                    return Ok(());
                }
                Ok(Ok(Some(Line::TooLong))) => {
                    self.send(b"500 5.5.2 Line too long\r\n").await?;
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

    /// Handles one command; `false` ends the session.
    async fn on_line(&mut self, line: &[u8]) -> Result<bool, Error> {
        let reply: String = match Command::parse(line) {
            Command::Ehlo("") | Command::Helo("") => "501 5.5.4 Syntax: EHLO hostname\r\n".into(),
            Command::Ehlo(_) => {
                self.reset().await;
                self.ehlo_reply()
            }
            Command::Helo(_) => {
                self.reset().await;
                format!("250 {}\r\n", self.ctx.host)
            }
            Command::Mail { path, params } => self.on_mail(line, path, params).await,
            Command::Rcpt { path, .. } => self.on_rcpt(line, path).await,
            Command::Data => return self.on_data().await,
            Command::Bdat { size, last } => return self.on_bdat(size, last).await,
            Command::BadBdat => {
                // The chunk's end is unknown: nothing after this line can be read as a command.
                self.send(b"421 4.5.4 Syntax: BDAT size [LAST]; closing connection\r\n")
                    .await?;
                self.served.end = "bad_bdat";
                return Ok(false);
            }
            Command::Rset => {
                self.reset().await;
                "250 2.0.0 OK\r\n".into()
            }
            Command::Noop => "250 2.0.0 OK\r\n".into(),
            Command::Quit => {
                let bye = format!(
                    "221 2.0.0 {} Service closing transmission channel\r\n",
                    self.ctx.host
                );
                self.send(bye.as_bytes()).await?;
                self.served.end = "quit";
                return Ok(false);
            }
            Command::Help => "214 2.0.0 See RFC 5321\r\n".into(),
            Command::Vrfy => "252 2.5.0 Cannot VRFY user; try RCPT\r\n".into(),
            Command::StartTls => "503 5.5.1 STARTTLS is not possible now\r\n".into(),
            Command::Auth => "503 5.5.1 Already authenticated\r\n".into(),
            Command::NotImplemented => "502 5.5.1 Command not implemented\r\n".into(),
            Command::Syntax(reply) => reply.into(),
            Command::Unknown => "500 5.5.1 Command unrecognized\r\n".into(),
        };
        self.send(reply.as_bytes()).await?;
        Ok(self.way.is_some() && !self.closing)
    }

    fn ehlo_reply(&self) -> String {
        let mut lines = vec![format!("{} Hello", self.ctx.host)];
        lines.extend(self.ctx.extensions.iter().cloned());
        crate::protocol::smtp::multiline(250, &lines)
    }

    async fn on_mail(&mut self, line: &[u8], path: &str, params: &str) -> String {
        if self.tx.is_some() {
            return "503 5.5.1 Sender already specified\r\n".into();
        }
        if !(self.ctx.standing)() {
            tracing::info!("session closed: the mailbox was removed or its password changed");
            self.closing = true;
            self.served.end = "revoked";
            return format!(
                "421 4.7.0 {} Mailbox removed or its password changed; log in again\r\n",
                self.ctx.host
            );
        }
        if !path.is_empty() && !self.ctx.rules.allows(path) {
            tracing::info!(sender = %crate::logfield::Field(path), "refused: sender not allowed for this mailbox");
            return self.ctx.rules.refusal("Sender", path);
        }
        let reservation = match self
            .ctx
            .counters
            .reserve_message(&self.ctx.mailbox, &self.ctx.limits)
        {
            Ok(reservation) => reservation,
            Err(refusal) => {
                tracing::info!("refused: sending limit");
                return refusal;
            }
        };
        if let Some(size) = declared_size(params)
            && matches!(self.way, Some(Way::Held(_)))
            && size > self.ctx.max_message
        {
            return format!(
                "552 5.3.4 Message size exceeds the limit of {} bytes\r\n",
                self.ctx.max_message
            );
        }
        let reply = match &mut self.way {
            Some(Way::Upstream(upstream)) => match upstream.command(&with_crlf(line)).await {
                Ok(reply) => reply,
                Err(broken) => return self.broke(broken),
            },
            Some(Way::Held(_)) => local("250 2.1.0 Sender OK\r\n"),
            None => return "421 4.4.2 Upstream connection lost\r\n".into(),
        };
        if reply.is_positive() {
            self.tx = Some(Transaction {
                recipients: Vec::new(),
                reservation,
            });
        }
        pass_on(reply)
    }

    async fn on_rcpt(&mut self, line: &[u8], path: &str) -> String {
        let Some(tx) = &mut self.tx else {
            return "503 5.5.1 Need MAIL before RCPT\r\n".into();
        };
        if let Err(refusal) = tx
            .reservation
            .add_recipient(&self.ctx.mailbox, &self.ctx.limits)
        {
            return refusal;
        }
        let reply = match &mut self.way {
            Some(Way::Upstream(upstream)) => match upstream.command(&with_crlf(line)).await {
                Ok(reply) => reply,
                Err(broken) => return self.broke(broken),
            },
            Some(Way::Held(_)) if !plausible_address(path) => {
                return format!("501 5.1.3 Bad recipient address syntax: <{path}>\r\n");
            }
            Some(Way::Held(_)) => local("250 2.1.5 Recipient OK\r\n"),
            None => return "421 4.4.2 Upstream connection lost\r\n".into(),
        };
        if let Some(tx) = &mut self.tx {
            if reply.is_positive() {
                tx.recipients.push(path.to_owned());
            } else {
                tx.reservation.give_back_recipient();
            }
        }
        pass_on(reply)
    }

    /// DATA: `false` ends the session (the upstream broke, or the client left).
    async fn on_data(&mut self) -> Result<bool, Error> {
        if self.chunked.is_some() {
            // RFC 3030 §2: DATA may not follow BDAT in one transaction.
            return self
                .reply_and_go_on("503 5.5.1 BDAT in progress; DATA is not allowed\r\n")
                .await;
        }
        let recipients = match &self.tx {
            None => {
                return self
                    .reply_and_go_on("503 5.5.1 Need MAIL command\r\n")
                    .await;
            }
            Some(tx) if tx.recipients.is_empty() => {
                return self
                    .reply_and_go_on("554 5.5.1 No valid recipients\r\n")
                    .await;
            }
            Some(tx) => tx.recipients.clone(),
        };
        self.send(b"354 Start mail input; end with <CRLF>.<CRLF>\r\n")
            .await?;
        let outcome = match self.way.take() {
            Some(Way::Upstream(upstream)) => self.stream_message(upstream).await?,
            Some(Way::Held(sender)) => {
                let reply = self.hold_and_send(sender.as_ref(), &recipients).await?;
                self.way = Some(Way::Held(sender));
                reply
            }
            None => return Ok(false),
        };
        let tx = self.tx.take();
        let Some((reply, accepted)) = outcome else {
            self.served.end = "client_closed";
            return Ok(false);
        };
        if accepted && let Some(tx) = tx {
            self.served.accepted += 1;
            tx.reservation.commit();
        }
        self.send(reply.as_bytes()).await?;
        Ok(self.way.is_some())
    }

    async fn reply_and_go_on(&mut self, reply: &str) -> Result<bool, Error> {
        self.send(reply.as_bytes()).await?;
        Ok(true)
    }

    /// The XOAUTH2 way: reads the header section, checks its senders, then streams the
    /// message upstream as it comes. `None` when the client left mid-message (nothing was
    /// completed upstream).
    async fn stream_message(
        &mut self,
        mut upstream: UpstreamSmtp,
    ) -> Result<Option<(String, bool)>, Error> {
        let mut end = DataEnd::default();
        let Some((head, ended)) = self.read_head(&mut end).await? else {
            return Ok(None);
        };
        let verdict = match end.bare_line_end() {
            true => Err(BARE_LINE_END.to_owned()),
            false => self.check_header(&head, ended),
        };
        let refusal = match verdict {
            Err(refusal) => Some(refusal),
            Ok(()) => match upstream.command(b"DATA\r\n").await {
                Ok(reply) if reply.code == 354 => None,
                Ok(reply) => Some(pass_on(reply)),
                Err(broken) => {
                    let reply = self.broke(broken);
                    if !ended && !self.discard_rest(&mut end).await? {
                        return Ok(None);
                    }
                    return Ok(Some((reply, false)));
                }
            },
        };
        if let Some(refusal) = refusal {
            if !ended && !self.discard_rest(&mut end).await? {
                return Ok(None);
            }
            if let Err(broken) = upstream.command(b"RSET\r\n").await {
                let _ = self.broke(broken);
                return Ok(Some((refusal, false)));
            }
            self.way = Some(Way::Upstream(upstream));
            return Ok(Some((refusal, false)));
        }
        let sent = async {
            upstream.write(&head).await?;
            Ok::<(), Broken>(())
        }
        .await;
        if let Err(broken) = sent {
            let reply = self.broke(broken);
            if !ended && !self.discard_rest(&mut end).await? {
                return Ok(None);
            }
            return Ok(Some((reply, false)));
        }
        if !ended {
            match self.pump(&mut end, &mut upstream).await? {
                Pumped::Complete => {}
                // The client left mid-message: the upstream never saw an end, so it has
                // nothing to deliver; drop the connection.
                Pumped::ClientLeft => return Ok(None),
                Pumped::BareLineEnd => {
                    drop(upstream);
                    return Ok(Some((self.abandon(), false)));
                }
            }
        }
        let verdict = match upstream.flush().await {
            Ok(()) => upstream.reply(DATA_END_TIMEOUT).await,
            Err(broken) => Err(broken),
        };
        match verdict {
            Ok(reply) => {
                let accepted = reply.code == 250;
                tracing::info!(reply = %reply.first_line(), "message submitted upstream");
                self.way = Some(Way::Upstream(upstream));
                Ok(Some((pass_on(reply), accepted)))
            }
            Err(broken) => Ok(Some((self.broke(broken), false))),
        }
    }

    /// Reads the start of a DATA stream up to the end of its header section (or of the
    /// message, or [`MAX_HEADER_SECTION`]). `None` when the client left.
    async fn read_head(&mut self, end: &mut DataEnd) -> Result<Option<(Vec<u8>, bool)>, Error> {
        let mut head = self.client.take_buffered();
        let mut scanned = 0;
        loop {
            if let Some(n) = end.scan(&head[scanned..]) {
                let rest = head.split_off(scanned + n);
                self.client.unread(&rest);
                self.served.bytes_from_client += head.len() as u64;
                return Ok(Some((head, true)));
            }
            scanned = head.len();
            if header_end(&head).is_some() || head.len() >= MAX_HEADER_SECTION {
                self.served.bytes_from_client += head.len() as u64;
                return Ok(Some((head, false)));
            }
            let mut chunk = vec![0; DATA_CHUNK.min(MAX_HEADER_SECTION + 1 - head.len())];
            let n = self.read_client(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            head.extend_from_slice(&chunk[..n]);
        }
    }

    /// The header senders of the start of a DATA stream (dot-stuffed; `ended`: the whole
    /// stream, end marker included) against the sender rules.
    fn check_header(&self, head: &[u8], ended: bool) -> Result<(), String> {
        let truncated = header_end(head).is_none() && head.len() >= MAX_HEADER_SECTION;
        let start = if ended {
            unstuffed_message(head)
        } else {
            let mut start = Vec::with_capacity(head.len());
            unstuff_into(&mut start, head, &mut true);
            start
        };
        self.check_start(&start, truncated)
    }

    /// The header senders of a message's start (not dot-stuffed): its header section, or
    /// all there is when the message ended inside it. `truncated`: the start filled
    /// [`MAX_HEADER_SECTION`] without the header section ending.
    fn check_start(&self, start: &[u8], truncated: bool) -> Result<(), String> {
        if truncated {
            return Err(format!(
                "552 5.3.4 Header section longer than {MAX_HEADER_SECTION} bytes\r\n"
            ));
        }
        // `header_senders` reads only the header section of what it is given.
        self.check_senders(start)
    }

    /// Every From and Sender of `header` against the sender rules; a header section that
    /// cannot be read for certain is refused too (fail closed).
    fn check_senders(&self, header: &[u8]) -> Result<(), String> {
        let senders = header_senders(header).map_err(|fault| {
            tracing::info!(%fault, "refused: header senders cannot be read for certain");
            format!("550 5.7.1 Message refused: {fault}; nothing was sent\r\n")
        })?;
        match senders
            .into_iter()
            .find(|sender| !self.ctx.rules.allows(sender))
        {
            Some(sender) => {
                tracing::info!(sender = %crate::logfield::Field(&sender), "refused: header sender not allowed for this mailbox");
                Err(self.ctx.rules.refusal("Header sender", &sender))
            }
            None => Ok(()),
        }
    }

    /// Copies the rest of a DATA stream upstream. A chunk with a bare line end is not
    /// sent, nor anything after it: the upstream never sees the end of that message.
    async fn pump(
        &mut self,
        end: &mut DataEnd,
        upstream: &mut UpstreamSmtp,
    ) -> Result<Pumped, Error> {
        let mut chunk = vec![0; DATA_CHUNK];
        let mut upstream_ok = true;
        loop {
            let n = self.read_client(&mut chunk).await?;
            if n == 0 {
                return Ok(Pumped::ClientLeft);
            }
            let (part, done) = match end.scan(&chunk[..n]) {
                Some(at) => {
                    self.client.unread(&chunk[at..n]);
                    (&chunk[..at], true)
                }
                None => (&chunk[..n], false),
            };
            self.served.bytes_from_client += part.len() as u64;
            let tainted = end.bare_line_end();
            if upstream_ok
                && !tainted
                && let Err(broken) = upstream.write(part).await
            {
                tracing::warn!(error = %broken, "upstream broke during DATA");
                upstream_ok = false;
            }
            if done {
                return Ok(if tainted {
                    Pumped::BareLineEnd
                } else {
                    Pumped::Complete
                });
            }
        }
    }

    /// A message with a bare line end, part of which went upstream: the caller drops the
    /// upstream connection in the middle of it, so that it is never completed there, and
    /// the session ends after the refusal.
    fn abandon(&mut self) -> String {
        tracing::info!("refused: bare CR or LF in the message; upstream connection dropped");
        self.way = None;
        self.tx = None;
        self.chunked = None;
        self.lost = true;
        self.served.end = "bare_line_end";
        BARE_LINE_END.to_owned()
    }

    /// Reads and drops the rest of a DATA stream. `false`: the client left.
    async fn discard_rest(&mut self, end: &mut DataEnd) -> Result<bool, Error> {
        let mut chunk = vec![0; DATA_CHUNK];
        loop {
            let n = self.read_client(&mut chunk).await?;
            if n == 0 {
                return Ok(false);
            }
            self.served.bytes_from_client += n as u64;
            if let Some(at) = end.scan(&chunk[..n]) {
                self.client.unread(&chunk[at..n]);
                return Ok(true);
            }
        }
    }

    /// The held way: reads the whole message within the size limit and the held-bytes
    /// budget, checks its senders, and sends it. `None` when the client left.
    async fn hold_and_send(
        &mut self,
        sender: &dyn HeldSender,
        recipients: &[String],
    ) -> Result<Option<(String, bool)>, Error> {
        let mut end = DataEnd::default();
        let mut raw = self.client.take_buffered();
        let mut scanned = 0;
        let mut permit: Option<OwnedSemaphorePermit> = None;
        let mut refusal: Option<String> = None;
        let mut chunk = vec![0; DATA_CHUNK];
        loop {
            if let Some(n) = end.scan(&raw[scanned..]) {
                let rest = raw.split_off(scanned + n);
                self.client.unread(&rest);
                self.served.bytes_from_client += n as u64;
                break;
            }
            self.served.bytes_from_client += (raw.len() - scanned) as u64;
            if refusal.is_none()
                && let Err(r) = self.hold(&mut permit, raw.len())
            {
                refusal = Some(r);
                permit = None;
            }
            if refusal.is_some() {
                // Over a limit: read on to the end of the message, keeping nothing.
                raw.clear();
            }
            scanned = raw.len();
            let n = self.read_client(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            raw.extend_from_slice(&chunk[..n]);
        }
        if end.bare_line_end() {
            refusal = Some(BARE_LINE_END.to_owned());
        }
        if refusal.is_none() {
            // The read that held the end is within the limits too (its end marker aside).
            let len = raw.len().saturating_sub(b".\r\n".len());
            refusal = self.hold(&mut permit, len).err();
        }
        if let Some(refusal) = refusal {
            return Ok(Some((refusal, false)));
        }
        let mut message = raw;
        unstuff_in_place(&mut message);
        if let Err(refusal) = self.check_start(&message, false) {
            return Ok(Some((refusal, false)));
        }
        let result = sender.send(&message, recipients).await;
        drop(permit);
        Ok(Some(match result {
            Ok(reply) => (reply, true),
            Err(reply) => (reply, false),
        }))
    }

    /// Grows the held message's share of the budget to `len` bytes, within the limits.
    fn hold(&self, permit: &mut Option<OwnedSemaphorePermit>, len: usize) -> Result<(), String> {
        if len > self.ctx.max_message {
            return Err(format!(
                "552 5.3.4 Message size exceeds the limit of {} bytes\r\n",
                self.ctx.max_message
            ));
        }
        let units = len.div_ceil(HELD_UNIT) as u32;
        let have = permit.as_ref().map_or(0, |p| p.num_permits() as u32);
        if units <= have {
            return Ok(());
        }
        match self.ctx.held_budget.clone().try_acquire_many_owned(units - have) {
            Ok(more) => {
                match permit {
                    Some(p) => p.merge(more),
                    None => *permit = Some(more),
                }
                Ok(())
            }
            Err(_) => Err("452 4.3.1 Insufficient system storage: too many messages in flight; try again later\r\n".into()),
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
    async fn reset(&mut self) {
        self.chunked = None;
        if self.tx.take().is_none() {
            return;
        }
        if let Some(Way::Upstream(upstream)) = &mut self.way
            && let Err(broken) = upstream.command(b"RSET\r\n").await
        {
            let _ = self.broke(broken);
        }
    }

    /// The upstream connection broke: the session ends after this reply.
    fn broke(&mut self, broken: Broken) -> String {
        tracing::warn!(error = %broken, "upstream connection lost");
        self.way = None;
        self.tx = None;
        self.chunked = None;
        self.lost = true;
        self.served.end = "upstream_lost";
        "421 4.4.2 Connection to the upstream server lost; message not sent, try again\r\n".into()
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.served.bytes_to_client += bytes.len() as u64;
        let client = self.client.get_mut();
        client.write_all(bytes).await.map_err(Error::ClientIo)?;
        client.flush().await.map_err(Error::ClientIo)
    }
}

/// How the rest of a streamed DATA message went.
enum Pumped {
    Complete,
    ClientLeft,
    /// A bare CR or LF: nothing from that chunk on went upstream.
    BareLineEnd,
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

/// `local@domain.tld`, loosely: what the relay itself accepts as a recipient when no mail
/// server checks it first (Graph refuses a bad one only with the whole message).
fn plausible_address(path: &str) -> bool {
    match path.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains("..")
        }
        None => false,
    }
}

/// The `SIZE=` parameter of MAIL FROM (RFC 1870), if any.
fn declared_size(params: &str) -> Option<usize> {
    params.split_ascii_whitespace().find_map(|p| {
        let (key, value) = p.split_once('=')?;
        key.eq_ignore_ascii_case("SIZE")
            .then(|| value.parse().ok())?
    })
}

mod bdat;
#[cfg(test)]
mod tests;
