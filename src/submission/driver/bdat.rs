//! BDAT (RFC 3030 CHUNKING): a message in chunks of announced size, each read in full
//! whatever the reply (the server cannot skip a chunk's octets otherwise).
//!
//! Held way: the chunks are collected within the same limits as a DATA message, the last
//! one sends it. XOAUTH2 way: the first chunks are held until the header section is
//! complete (at most [`MAX_HEADER_SECTION`]), its senders are checked, and from then on the
//! chunks go upstream as they come, each answered with the upstream's reply. A refused
//! message answers every further chunk the same way until the transaction ends.

use tokio::io::AsyncReadExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::timeout;

use super::{DATA_CHUNK, MAX_HEADER_SECTION, Session, Way};
use crate::error::Error;
use crate::protocol::smtp::reply;
use crate::submission::data::{LineEnds, header_end};
use crate::submission::upstream::{Broken, Reply, UpstreamSmtp};

/// The BDAT message in progress.
#[derive(Default)]
pub(super) struct Chunked {
    /// Held way: the message so far. XOAUTH2 way: the start not yet sent upstream.
    held: Vec<u8>,
    permit: Option<OwnedSemaphorePermit>,
    /// XOAUTH2 way: the header section was checked, chunks now go upstream.
    streaming: bool,
    /// The reply for every further chunk of a refused message.
    failed: Option<String>,
    /// Bare CR or LF in the chunks so far.
    ends: LineEnds,
    /// The chunks' announced sizes so far.
    received: u64,
}

impl Chunked {
    /// Reads `bytes`, the next of the message; whether a bare line end was seen so far
    /// (at the message's very end, a final CR counts too).
    fn tainted_by(&mut self, bytes: &[u8], at_end: bool) -> bool {
        self.ends.scan(bytes);
        if at_end {
            self.ends.finish()
        } else {
            self.ends.seen()
        }
    }
}

/// Where a chunk left the held start of a message on the XOAUTH2 way.
enum Start {
    /// The header section is complete and its senders passed: the message goes upstream.
    Checked,
    /// More of the header section is to come: the chunk is held.
    Incomplete,
    /// The message was refused, or the client left (`None`).
    Done(Option<(String, bool)>),
}

impl Session {
    /// `BDAT size [LAST]`; `false` ends the session.
    pub(super) async fn on_bdat(&mut self, size: u64, last: bool) -> Result<bool, Error> {
        let refusal = match &self.tx {
            None => Some(reply::NEED_MAIL.to_owned()),
            Some(tx) if tx.recipients.is_empty() => Some(reply::NO_VALID_RECIPIENTS.to_owned()),
            Some(_) => self.chunked.as_ref().and_then(|c| c.failed.clone()),
        };
        if let Some(refusal) = refusal {
            if !self.skip(size).await? {
                return Ok(false);
            }
            if last {
                let (tx, received) = (self.tx.take(), self.chunked.as_ref().map(|c| c.received));
                self.finish(tx, &refusal, false, received.unwrap_or_default() + size);
                self.end_transaction();
            }
            self.send(refusal.as_bytes()).await?;
            return Ok(true);
        }
        let mut chunked = self.chunked.take().unwrap_or_default();
        chunked.received += size;
        let outcome = match self.way.take() {
            Some(Way::Upstream(mut upstream)) => {
                let outcome = self
                    .bdat_upstream(&mut chunked, &mut upstream, size, last)
                    .await;
                upstream.progress();
                if !self.lost && !matches!(outcome, Ok(None)) {
                    self.way = Some(Way::Upstream(upstream));
                }
                outcome?
            }
            Some(way) => {
                let outcome = self.bdat_held(&mut chunked, &way, size, last).await;
                self.way = Some(way);
                outcome?
            }
            None => return Ok(false),
        };
        let Some((reply, accepted)) = outcome else {
            self.served.end = "client_closed";
            return Ok(false);
        };
        let positive = reply.starts_with('2');
        if !positive && chunked.failed.is_none() {
            chunked.failed = Some(reply.clone());
        }
        if last {
            let tx = self.tx.take();
            self.finish(tx, &reply, accepted, chunked.received);
            self.end_transaction();
        } else {
            self.chunked = Some(chunked);
        }
        self.send(reply.as_bytes()).await?;
        Ok(self.way.is_some())
    }

    /// The transaction is over: a connection still held for it goes back.
    fn end_transaction(&mut self) {
        self.tx = None;
        self.chunked = None;
        if let Some(Way::Upstream(upstream)) = &mut self.way {
            upstream.release();
        }
    }

    /// A held way: collects the chunk; the last one sends or queues the message.
    async fn bdat_held(
        &mut self,
        chunked: &mut Chunked,
        way: &Way,
        size: u64,
        last: bool,
    ) -> Result<Option<(String, bool)>, Error> {
        let mut left = size;
        let mut buf = vec![0; DATA_CHUNK];
        let mut refusal = None;
        while left > 0 {
            let n = self.read_piece(&mut left, &mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            if chunked.tainted_by(&buf[..n], last && left == 0) {
                refusal = Some(reply::BARE_LINE_END.to_owned());
            }
            if refusal.is_none() {
                chunked.held.extend_from_slice(&buf[..n]);
                if let Err(r) = self.hold(&mut chunked.permit, chunked.held.len()) {
                    refusal = Some(r);
                    chunked.held = Vec::new();
                    chunked.permit = None;
                }
            }
        }
        if let Some(refusal) = refusal {
            return Ok(Some((refusal, false)));
        }
        if !last {
            return Ok(Some((reply::octets_received(size), false)));
        }
        let message = std::mem::take(&mut chunked.held);
        if let Err(refusal) = self.check_start(&message, false) {
            return Ok(Some((refusal, false)));
        }
        let result = self.hand_over(way, message).await;
        chunked.permit = None;
        Ok(Some(result))
    }

    /// The XOAUTH2 way: holds the start until its header section is checked, then passes
    /// chunks upstream. `None` when the client left (or the upstream broke mid-chunk).
    async fn bdat_upstream(
        &mut self,
        chunked: &mut Chunked,
        upstream: &mut UpstreamSmtp,
        size: u64,
        last: bool,
    ) -> Result<Option<(String, bool)>, Error> {
        let mut left = size;
        let mut buf = vec![0; DATA_CHUNK];
        if !chunked.streaming {
            match self
                .bdat_start(chunked, upstream, (&mut left, &mut buf), last)
                .await?
            {
                Start::Checked => chunked.streaming = true,
                Start::Incomplete => return Ok(Some((reply::octets_received(size), false))),
                Start::Done(outcome) => return Ok(outcome),
            }
        }
        let held = std::mem::take(&mut chunked.held);
        let total = held.len() as u64 + left;
        let command = format!("BDAT {total}{}\r\n", if last { " LAST" } else { "" });
        let mut sent = upstream.write(command.as_bytes()).await;
        if sent.is_ok() {
            sent = upstream.write(&held).await;
        }
        let mut tainted = chunked.ends.seen();
        while left > 0 {
            let n = self.read_piece(&mut left, &mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            tainted |= chunked.tainted_by(&buf[..n], last && left == 0);
            if sent.is_ok() && !tainted {
                sent = upstream.write(&buf[..n]).await;
            }
        }
        if tainted {
            // Part of the chunk went upstream already: only dropping the connection keeps
            // the upstream from ever completing the message.
            return Ok(Some((self.abandon(), false)));
        }
        let reply = match sent {
            Ok(()) if last => upstream.final_verdict().await,
            Ok(()) => upstream.verdict(self.ctx.idle_timeout).await,
            Err(broken) => Err(broken),
        };
        Ok(Some(self.chunk_reply(reply, last)))
    }

    /// The upstream's reply to a chunk, for the client; the last one's says whether the
    /// message was accepted.
    fn chunk_reply(&mut self, reply: Result<Reply, Broken>, last: bool) -> (String, bool) {
        match reply {
            Ok(reply) => {
                let accepted = last && reply.code == 250;
                if last {
                    tracing::info!(reply = %reply.first_line(), "message submitted upstream");
                }
                (super::pass_on(reply), accepted)
            }
            Err(broken) => (self.broke(broken), false),
        }
    }

    /// Holds the chunk's octets until the header section is complete (or the message
    /// ends, or [`MAX_HEADER_SECTION`] is held), then checks its senders.
    async fn bdat_start(
        &mut self,
        chunked: &mut Chunked,
        upstream: &mut UpstreamSmtp,
        (left, buf): (&mut u64, &mut [u8]),
        last: bool,
    ) -> Result<Start, Error> {
        while *left > 0
            && header_end(&chunked.held).is_none()
            && chunked.held.len() < MAX_HEADER_SECTION
        {
            let want = (MAX_HEADER_SECTION - chunked.held.len()).min(buf.len());
            let n = self.read_piece(left, &mut buf[..want]).await?;
            if n == 0 {
                return Ok(Start::Done(None));
            }
            chunked.held.extend_from_slice(&buf[..n]);
            chunked.ends.scan(&buf[..n]);
        }
        if chunked.tainted_by(&[], last && *left == 0) {
            let refusal = reply::BARE_LINE_END.to_owned();
            let outcome = self.refuse_chunked_start(upstream, *left, refusal).await?;
            return Ok(Start::Done(outcome));
        }
        let complete =
            header_end(&chunked.held).is_some() || chunked.held.len() >= MAX_HEADER_SECTION;
        if !complete && !last {
            return Ok(Start::Incomplete);
        }
        let truncated =
            header_end(&chunked.held).is_none() && chunked.held.len() >= MAX_HEADER_SECTION;
        if let Err(refusal) = self.check_start(&chunked.held, truncated) {
            let outcome = self.refuse_chunked_start(upstream, *left, refusal).await?;
            return Ok(Start::Done(outcome));
        }
        Ok(Start::Checked)
    }

    /// Refuses a BDAT message whose start was held (nothing of it went upstream): reads the
    /// rest of the chunk and resets the upstream transaction.
    async fn refuse_chunked_start(
        &mut self,
        upstream: &mut UpstreamSmtp,
        left: u64,
        refusal: String,
    ) -> Result<Option<(String, bool)>, Error> {
        if !self.skip(left).await? {
            return Ok(None);
        }
        if let Err(broken) = upstream.rset().await {
            return Ok(Some((self.broke(broken), false)));
        }
        Ok(Some((refusal, false)))
    }

    /// Reads up to `buf.len()` of the `left` octets of a chunk: buffered input first.
    /// `0` when the client left or went idle.
    async fn read_piece(&mut self, left: &mut u64, buf: &mut [u8]) -> Result<usize, Error> {
        let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
        let buffered = self.client.take_buffered();
        let n = if buffered.is_empty() {
            let stream = self.client.get_mut();
            match timeout(self.ctx.idle_timeout, stream.read(&mut buf[..want])).await {
                Err(_) => 0,
                Ok(Err(e)) => return Err(Error::ClientIo(e)),
                Ok(Ok(n)) => n,
            }
        } else {
            let n = want.min(buffered.len());
            buf[..n].copy_from_slice(&buffered[..n]);
            self.client.unread(&buffered[n..]);
            n
        };
        *left -= n as u64;
        self.served.bytes_from_client += n as u64;
        Ok(n)
    }

    /// Reads and drops `left` octets. `false`: the client left.
    async fn skip(&mut self, mut left: u64) -> Result<bool, Error> {
        let mut buf = vec![0; DATA_CHUNK];
        while left > 0 {
            if self.read_piece(&mut left, &mut buf).await? == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
