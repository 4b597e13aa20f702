//! The header senders of a message (its From and Sender) against the mailbox's sender
//! rules, before anything of it goes out; a header section that cannot be read for
//! certain is refused (fail closed).

use super::{MAX_HEADER_SECTION, Session};
use crate::protocol::smtp::reply;
use crate::submission::data::{header_end, header_senders, unstuff_into, unstuffed_message};
use crate::submission::header::header_message_id;

impl Session {
    /// The header senders of the start of a DATA stream (dot-stuffed; `ended`: the whole
    /// stream, end marker included) against the sender rules.
    pub(super) fn check_header(&mut self, head: &[u8], ended: bool) -> Result<(), String> {
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
    /// [`MAX_HEADER_SECTION`] without the header section ending. The transaction keeps its
    /// Message-ID for the delivery log.
    pub(super) fn check_start(&mut self, start: &[u8], truncated: bool) -> Result<(), String> {
        if let Some(tx) = &mut self.tx {
            tx.message_id = header_message_id(start);
        }
        if truncated {
            return Err(reply::header_too_long(MAX_HEADER_SECTION));
        }
        // `header_senders` reads only the header section of what it is given.
        self.check_senders(start)
    }

    /// Every From and Sender of `header` against the sender rules; a header section that
    /// cannot be read for certain is refused too (fail closed).
    fn check_senders(&self, header: &[u8]) -> Result<(), String> {
        let senders = header_senders(header).map_err(|fault| {
            tracing::info!(%fault, "refused: header senders cannot be read for certain");
            reply::header_unreadable(fault)
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
}
