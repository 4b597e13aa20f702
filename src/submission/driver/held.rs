//! The held ways out (Microsoft Graph, and the relay's queue): the whole message is read
//! within the size limit and the budget all held messages share, its senders are checked,
//! and it is sent at once, or queued ([`super::queued`]).

use tokio::sync::OwnedSemaphorePermit;

use super::{DATA_CHUNK, HELD_UNIT, Session, Way};
use crate::error::Error;
use crate::protocol::smtp::reply;
use crate::submission::data::{DataEnd, unstuff_in_place};

impl Session {
    /// A held way: reads the whole message within the size limit and the held-bytes
    /// budget, checks its senders, and sends or queues it. `None` when the client left.
    pub(super) async fn hold_and_send(
        &mut self,
        way: &Way,
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
            refusal = Some(reply::BARE_LINE_END.to_owned());
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
        let result = self.hand_over(way, message).await;
        drop(permit);
        Ok(Some(result))
    }

    /// Grows the held message's share of the budget to `len` bytes, within the limits.
    pub(super) fn hold(
        &self,
        permit: &mut Option<OwnedSemaphorePermit>,
        len: usize,
    ) -> Result<(), String> {
        if len > self.ctx.max_message {
            return Err(reply::message_too_big(self.ctx.max_message));
        }
        let units = len.div_ceil(HELD_UNIT) as u32;
        let have = permit.as_ref().map_or(0, |p| p.num_permits() as u32);
        if units <= have {
            return Ok(());
        }
        match self
            .ctx
            .held_budget
            .clone()
            .try_acquire_many_owned(units - have)
        {
            Ok(more) => {
                match permit {
                    Some(p) => p.merge(more),
                    None => *permit = Some(more),
                }
                Ok(())
            }
            Err(_) => Err(reply::HELD_BUDGET_FULL.into()),
        }
    }
}
