//! DATA on the XOAUTH2 way: the header section is held and its senders checked, then the
//! message is streamed upstream as it comes; a bare CR or LF stops it from ever being
//! completed there. The held way's DATA is in [`super::held`].

use super::{DATA_CHUNK, MAX_HEADER_SECTION, Session, Way, pass_on};
use crate::error::Error;
use crate::protocol::smtp::reply;
use crate::submission::data::{DataEnd, header_end};
use crate::submission::upstream::UpstreamSmtp;

impl Session {
    /// DATA: `false` ends the session (the upstream broke, or the client left).
    pub(super) async fn on_data(&mut self) -> Result<bool, Error> {
        if self.chunked.is_some() {
            // RFC 3030 §2: DATA may not follow BDAT in one transaction.
            return self.reply_and_go_on(reply::BDAT_IN_PROGRESS).await;
        }
        match &self.tx {
            None => {
                return self.reply_and_go_on(reply::NEED_MAIL).await;
            }
            Some(tx) if tx.recipients.is_empty() => {
                return self.reply_and_go_on(reply::NO_VALID_RECIPIENTS).await;
            }
            Some(_) => {}
        }
        self.send(reply::START_MAIL_INPUT.as_bytes()).await?;
        let before = self.served.bytes_from_client;
        let outcome = match self.way.take() {
            Some(Way::Upstream(upstream)) => self.stream_message(upstream).await?,
            Some(way) => {
                let reply = self.hold_and_send(&way).await?;
                self.way = Some(way);
                reply
            }
            None => return Ok(false),
        };
        let tx = self.tx.take();
        let Some((reply, accepted)) = outcome else {
            self.served.end = "client_closed";
            return Ok(false);
        };
        // What the client sent for it, as sent (dot-stuffed), without the end marker.
        let received = (self.served.bytes_from_client - before).saturating_sub(3);
        self.finish(tx, &reply, accepted, received);
        self.send(reply.as_bytes()).await?;
        Ok(self.way.is_some())
    }

    pub(super) async fn reply_and_go_on(&mut self, reply: &str) -> Result<bool, Error> {
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
            true => Err(reply::BARE_LINE_END.to_owned()),
            false => self.check_header(&head, ended),
        };
        match self.open_data(&mut upstream, verdict).await {
            Opened::Go => {}
            Opened::Broken(reply) => return self.refused(&mut end, ended, reply).await,
            Opened::Refused(refusal) => {
                let Some(outcome) = self.refused(&mut end, ended, refusal).await? else {
                    return Ok(None);
                };
                match upstream.rset().await {
                    Err(broken) => drop(self.broke(broken)),
                    Ok(_) => self.way = Some(Way::Upstream(upstream)),
                }
                return Ok(Some(outcome));
            }
        }
        if let Err(broken) = upstream.write(&head).await {
            let reply = self.broke(broken);
            return self.refused(&mut end, ended, reply).await;
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
        match upstream.final_verdict().await {
            Ok(reply) => {
                let accepted = reply.code == 250;
                tracing::info!(reply = %reply.first_line(), "message submitted upstream");
                self.way = Some(Way::Upstream(upstream));
                Ok(Some((pass_on(reply), accepted)))
            }
            Err(broken) => Ok(Some((self.broke(broken), false))),
        }
    }

    /// Starts the message upstream if its start passed the checks (`verdict`).
    async fn open_data(
        &mut self,
        upstream: &mut UpstreamSmtp,
        verdict: Result<(), String>,
    ) -> Opened {
        if let Err(refusal) = verdict {
            return Opened::Refused(refusal);
        }
        match upstream.command(b"DATA\r\n").await {
            Ok(reply) if reply.code == 354 => Opened::Go,
            Ok(reply) => Opened::Refused(pass_on(reply)),
            Err(broken) => Opened::Broken(self.broke(broken)),
        }
    }

    /// A message refused before any of it went upstream: the rest of the DATA stream is
    /// read and dropped, then `reply` answers it. `None`: the client left.
    async fn refused(
        &mut self,
        end: &mut DataEnd,
        ended: bool,
        reply: String,
    ) -> Result<Option<(String, bool)>, Error> {
        if !ended && !self.discard_rest(end).await? {
            return Ok(None);
        }
        Ok(Some((reply, false)))
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
    pub(super) fn abandon(&mut self) -> String {
        tracing::info!("refused: bare CR or LF in the message; upstream connection dropped");
        self.lose_upstream("bare_line_end");
        reply::BARE_LINE_END.to_owned()
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
}

/// How starting a message upstream went.
enum Opened {
    /// The upstream waits for the message (`354`).
    Go,
    /// Refused, by the checks or by the upstream; the transaction goes on.
    Refused(String),
    /// The upstream connection broke: the reply that ends the session.
    Broken(String),
}

/// How the rest of a streamed DATA message went.
enum Pumped {
    Complete,
    ClientLeft,
    /// A bare CR or LF: nothing from that chunk on went upstream.
    BareLineEnd,
}
