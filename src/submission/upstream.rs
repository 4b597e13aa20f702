//! The XOAUTH2 way out: the mailbox's upstream SMTP connections, shared through the
//! [`SmtpPool`]. A session holds one only for a transaction: `MAIL FROM` checks one out,
//! the final reply to the message (or `RSET`, or the session's end) gives it back. The
//! relay sends each checked command upstream and passes the reply back as it came, so the
//! client sees Exchange's own verdicts (a `250` only when Exchange accepted).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use super::pool::connection::DATA_END_TIMEOUT;
use super::pool::send::Left;
use super::pool::slot::Lease;
pub use super::pool::{Broken, Reply};
use super::pool::{SmtpConnection, SmtpPool};
use crate::mailbox::Mailbox;
use crate::protocol::smtp::reply;

/// A session's way to the upstream SMTP server: a pooled connection while a transaction
/// is open.
pub struct UpstreamSmtp {
    pool: Arc<SmtpPool>,
    mailbox: Arc<Mailbox>,
    lease: Option<Lease>,
    /// Since when the connection is held without the transaction moving on: its checkout,
    /// or the last BDAT chunk.
    held_since: Option<Instant>,
}

impl UpstreamSmtp {
    pub fn new(pool: Arc<SmtpPool>, mailbox: Arc<Mailbox>) -> Self {
        Self {
            pool,
            mailbox,
            lease: None,
            held_since: None,
        }
    }

    /// `MAIL FROM` (`line`, with its CRLF) on a connection checked out for the
    /// transaction; a kept connection that breaks at once is replaced by another. When
    /// none is free in time, or none could log in, the relay's own temporary reply.
    pub async fn mail(&mut self, line: &[u8]) -> Result<Reply, Broken> {
        self.give_back(Left::Open);
        loop {
            let mut lease = match self.pool.checkout(&self.mailbox).await {
                Ok(lease) => lease,
                Err(unavailable) => {
                    tracing::warn!(
                        ?unavailable,
                        "no upstream SMTP connection for the transaction"
                    );
                    return Ok(Reply::local(unavailable.reply()));
                }
            };
            match lease.conn.conn.command(line).await {
                Ok(reply) if reply.is_positive() => {
                    self.lease = Some(lease);
                    self.held_since = Some(Instant::now());
                    return Ok(reply);
                }
                Ok(reply) => {
                    lease.check_in(Left::Clean);
                    return Ok(reply);
                }
                // A kept connection the server closed meanwhile: another one.
                Err(broken) if lease.connected_in.is_none() => {
                    tracing::debug!(error = %broken, "kept upstream SMTP connection broke; taking another");
                }
                Err(broken) => return Err(broken),
            }
        }
    }

    fn conn(&mut self) -> Result<&mut SmtpConnection, Broken> {
        match &mut self.lease {
            Some(lease) => Ok(&mut lease.conn.conn),
            None => Err(Broken("no transaction open upstream".into())),
        }
    }

    /// Gives the transaction's connection back to the pool, as the transaction `left` it.
    fn give_back(&mut self, left: Left) {
        self.held_since = None;
        if let Some(lease) = self.lease.take() {
            lease.check_in(left);
        }
    }

    /// The connection broke: closed, never reused.
    fn drop_broken(&mut self) {
        self.held_since = None;
        self.lease = None;
    }

    /// When the session must have moved its transaction on (DATA, or the next BDAT chunk)
    /// or lose it: `None` while no connection is held.
    pub fn hold_deadline(&self) -> Option<Instant> {
        self.held_since.map(|since| since + self.pool.hold_limit())
    }

    /// The transaction moved on (a BDAT chunk went upstream): the hold limit starts anew.
    pub fn progress(&mut self) {
        if self.held_since.is_some() {
            self.held_since = Some(Instant::now());
        }
    }

    /// The transaction ended without its final reply from upstream (a refused message's
    /// last chunk): the connection goes back after an `RSET`.
    pub fn release(&mut self) {
        self.give_back(Left::Open);
    }

    /// Sends one command line (with its CRLF) and reads the reply.
    pub async fn command(&mut self, line: &[u8]) -> Result<Reply, Broken> {
        self.conn()?.command(line).await
    }

    /// Writes bytes of the DATA stream as they are (still dot-stuffed).
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), Broken> {
        self.conn()?.write(bytes).await
    }

    /// Flushes what was written and waits up to `wait` for the upstream's reply.
    pub async fn verdict(&mut self, wait: Duration) -> Result<Reply, Broken> {
        self.conn()?.verdict(wait).await
    }

    /// The upstream's reply to the end of a message; the transaction is over either way,
    /// and its connection goes back to the pool (or is closed, if it broke).
    pub async fn final_verdict(&mut self) -> Result<Reply, Broken> {
        let verdict = self.verdict(DATA_END_TIMEOUT).await;
        match verdict {
            Ok(_) => self.give_back(Left::Clean),
            Err(_) => self.drop_broken(),
        }
        verdict
    }

    /// `RSET` upstream if a transaction is open there, and its connection back to the
    /// pool.
    pub async fn rset(&mut self) -> Result<Reply, Broken> {
        if self.lease.is_none() {
            return Ok(Reply::local(reply::OK));
        }
        let reset = self.command(b"RSET\r\n").await;
        match &reset {
            Ok(reply) if reply.code == 250 => self.give_back(Left::Clean),
            Ok(_) => self.give_back(Left::Open),
            Err(_) => self.drop_broken(),
        }
        reset
    }

    /// The session is over: a connection still in a transaction goes back after `RSET`.
    pub async fn quit(mut self) {
        self.give_back(Left::Open);
    }
}
