//! The commands of a logged-in session: EHLO, MAIL and RCPT (the sender rules and the
//! sending limits; passed upstream, or answered by the relay on the held way), and the
//! ones outside a transaction. DATA and BDAT are in [`super::streamed`] and
//! [`super::bdat`].

use super::{Session, Transaction, Way, local, pass_on, with_crlf};
use crate::error::Error;
use crate::protocol::smtp::command::Command;
use crate::protocol::smtp::{multiline, reply};

impl Session {
    /// Handles one command; `false` ends the session.
    pub(super) async fn on_line(&mut self, line: &[u8]) -> Result<bool, Error> {
        // After login a command line must be UTF-8 (RFC 6531 at most).
        let command = match std::str::from_utf8(line) {
            Ok(_) => Command::parse(line),
            Err(_) => Command::Syntax(reply::NOT_UTF8),
        };
        let reply: String = match command {
            Command::Ehlo("") | Command::Helo("") => reply::EHLO_SYNTAX.into(),
            Command::Ehlo(_) => {
                self.reset().await;
                self.ehlo_reply()
            }
            Command::Helo(_) => {
                self.reset().await;
                reply::helo(&self.ctx.host)
            }
            Command::Mail { path, params } => self.on_mail(line, path, params).await,
            Command::Rcpt { path, .. } => self.on_rcpt(line, path).await,
            Command::Data => return self.on_data().await,
            Command::Bdat { size, last } => return self.on_bdat(size, last).await,
            Command::BadBdat => {
                // The chunk's end is unknown: nothing after this line can be read as a command.
                self.send(reply::BAD_BDAT.as_bytes()).await?;
                self.served.end = "bad_bdat";
                return Ok(false);
            }
            Command::Rset => {
                self.reset().await;
                reply::OK.into()
            }
            Command::Noop => reply::OK.into(),
            Command::Quit => {
                let bye = reply::closing_channel(&self.ctx.host);
                self.send(bye.as_bytes()).await?;
                self.served.end = "quit";
                return Ok(false);
            }
            Command::Help => reply::HELP_LOGGED_IN.into(),
            Command::Vrfy => reply::VRFY_LOGGED_IN.into(),
            Command::StartTls(_) => reply::STARTTLS_NOT_NOW.into(),
            Command::Auth { .. } => reply::ALREADY_AUTHENTICATED.into(),
            Command::NotImplemented => reply::NOT_IMPLEMENTED.into(),
            Command::Syntax(reply) => reply.into(),
            Command::Unknown => reply::UNRECOGNIZED_LOGGED_IN.into(),
        };
        self.send(reply.as_bytes()).await?;
        Ok(self.way.is_some() && !self.closing)
    }

    fn ehlo_reply(&self) -> String {
        let mut lines = vec![format!("{} Hello", self.ctx.host)];
        lines.extend(self.ctx.extensions.iter().cloned());
        multiline(250, &lines)
    }

    async fn on_mail(&mut self, line: &[u8], path: &str, params: &str) -> String {
        if self.tx.is_some() {
            return reply::SENDER_ALREADY_GIVEN.into();
        }
        if !(self.ctx.standing)() {
            tracing::info!("session closed: the mailbox was removed or its password changed");
            self.closing = true;
            self.served.end = "revoked";
            return reply::revoked(&self.ctx.host);
        }
        if path.is_empty() && matches!(self.way, Some(Way::Queue(_))) {
            tracing::info!("refused: the null sender on the queue way");
            self.log_refusal(path, &[], reply::NULL_SENDER_QUEUED);
            return reply::NULL_SENDER_QUEUED.into();
        }
        if !path.is_empty() && !self.ctx.rules.allows(path) {
            tracing::info!(sender = %crate::logfield::Field(path), "refused: sender not allowed for this mailbox");
            let refusal = self.ctx.rules.refusal("Sender", path);
            self.log_refusal(path, &[], &refusal);
            return refusal;
        }
        let reservation = match self.reserve_message().await {
            Ok(reservation) => reservation,
            Err(refusal) => {
                tracing::info!("refused: sending limit");
                self.log_refusal(path, &[], &refusal);
                return refusal;
            }
        };
        if let Some(size) = declared_size(params)
            && matches!(self.way, Some(Way::Held(_) | Way::Queue(_)))
            && size > self.ctx.max_message
        {
            return reply::message_too_big(self.ctx.max_message);
        }
        let reply = match &mut self.way {
            Some(Way::Upstream(upstream)) => match upstream.mail(&with_crlf(line)).await {
                Ok(reply) => reply,
                Err(broken) => return self.broke(broken),
            },
            Some(Way::Held(_) | Way::Queue(_)) => local(reply::SENDER_OK),
            None => return reply::UPSTREAM_GONE.into(),
        };
        if reply.is_positive() {
            self.tx = Some(Transaction {
                sender: path.to_owned(),
                recipients: Vec::new(),
                reservation,
                message_id: None,
                size: None,
                parameters: passed_on(params),
            });
        }
        pass_on(reply)
    }

    async fn on_rcpt(&mut self, line: &[u8], path: &str) -> String {
        if self.tx.is_none() {
            return reply::NEED_MAIL_BEFORE_RCPT.into();
        }
        if let Err(refusal) = self.reserve_recipient().await {
            self.log_rcpt_refusal(path, &refusal);
            return refusal;
        }
        let reply = match &mut self.way {
            Some(Way::Upstream(upstream)) => match upstream.command(&with_crlf(line)).await {
                Ok(reply) => reply,
                Err(broken) => return self.broke(broken),
            },
            Some(Way::Held(_) | Way::Queue(_)) if !plausible_address(path) => {
                return reply::bad_recipient(path);
            }
            Some(Way::Held(_) | Way::Queue(_)) => local(reply::RECIPIENT_OK),
            None => return reply::UPSTREAM_GONE.into(),
        };
        if let Some(tx) = &mut self.tx {
            if reply.is_positive() {
                tx.recipients.push(path.to_owned());
            } else if let Some(reservation) = &mut tx.reservation {
                reservation.give_back_recipient();
            }
        }
        pass_on(reply)
    }
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

/// The `MAIL FROM` parameters the relay passes on when it sends a queued message itself:
/// `SMTPUTF8` (RFC 6531) and `BODY=7BIT|8BITMIME` (RFC 6152), as the extensions it
/// advertised; the rest (`SIZE`, the relay's own business) is not passed on.
fn passed_on(params: &str) -> Vec<String> {
    params
        .split_ascii_whitespace()
        .filter_map(|p| match p.to_ascii_uppercase().as_str() {
            "SMTPUTF8" => Some("SMTPUTF8".to_owned()),
            "BODY=7BIT" => Some("BODY=7BIT".to_owned()),
            "BODY=8BITMIME" => Some("BODY=8BITMIME".to_owned()),
            _ => None,
        })
        .collect()
}

/// The `SIZE=` parameter of MAIL FROM (RFC 1870), if any.
fn declared_size(params: &str) -> Option<usize> {
    params.split_ascii_whitespace().find_map(|p| {
        let (key, value) = p.split_once('=')?;
        key.eq_ignore_ascii_case("SIZE")
            .then(|| value.parse().ok())?
    })
}
