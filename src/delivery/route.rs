//! A queued message's way out: its mailbox's route, as a session of that mailbox would
//! take it (`smtp_via`, and an `auto` mailbox's switch to Graph): SMTP AUTH over the
//! relay's shared upstream connections ([`crate::submission::pool`]), or Microsoft Graph with the token owner's token.
//! The dispatcher sees it as a [`Courier`]; [`RelayCourier`] is the relay's, over what
//! the running relay offers ([`Relay`], implemented by the server).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::policy::Attempt;
use crate::auth::LiveRegistry;
use crate::config::Config;
use crate::mailbox::Mailbox;
use crate::oauth::cache::TokenCache;
use crate::protocol::smtp::reply::reply_for;
use crate::state::Envelope;
use crate::submission::graph_sender::{GraphOutcome, MAILBOX_CONCURRENCY};
use crate::submission::pool::SmtpSend;
use crate::submission::route::Route;
use crate::submission::session::Submissions;

/// A future the courier returns.
pub type Sending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An attempt, and the route it took (`smtp`, `graph`; none when it went nowhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handed {
    pub attempt: Attempt,
    pub route: Option<&'static str>,
}

impl Handed {
    /// The queue could not give the message's body: tried again later.
    pub fn unread() -> Self {
        Self {
            attempt: Attempt::from_reply(
                "451 4.3.0 The relay cannot read the queued message now\r\n".to_owned(),
            ),
            route: None,
        }
    }
}

/// Hands queued messages to Microsoft.
pub trait Courier: Send + Sync {
    /// How many messages of `mailbox` may be on their way at once by its route now.
    fn capacity(&self, mailbox: &str) -> usize;
    /// One attempt to hand `message` (unstuffed, CRLF) over for `envelope`.
    fn send<'a>(&'a self, envelope: &'a Envelope, message: &'a [u8]) -> Sending<'a, Handed>;
}

/// What the queue's workers take from the running relay.
pub trait Relay: Send + Sync + 'static {
    /// The configuration in force.
    fn config(&self) -> Arc<Config>;
    fn registry(&self) -> &LiveRegistry;
    fn tokens(&self) -> &Arc<TokenCache>;
    fn submissions(&self) -> &Submissions;
}

/// The reply for the messages of a mailbox that was removed from the registry.
pub fn mailbox_gone(mailbox: &str) -> String {
    format!(
        "550 5.1.0 The relay no longer serves {mailbox}: the mailbox was removed from its \
         registry, so its queued messages cannot be sent\r\n"
    )
}

/// The relay's courier.
pub struct RelayCourier<R> {
    relay: Arc<R>,
}

impl<R: Relay> RelayCourier<R> {
    pub fn new(relay: Arc<R>) -> Self {
        Self { relay }
    }

    fn route_of(&self, mailbox: &Mailbox) -> Route {
        let routes = &self.relay.submissions().routes;
        routes.route(&mailbox.address, mailbox.sending.smtp_via)
    }

    async fn by_graph(&self, mailbox: &Mailbox, envelope: &Envelope, message: &[u8]) -> Attempt {
        let relay = &self.relay;
        let owner = match relay.registry().registry().token_owner(mailbox) {
            Ok(owner) => owner,
            Err(e) => {
                return Attempt::from_reply(format!(
                    "454 4.7.0 No token for {}: {e}\r\n",
                    mailbox.address
                ));
            }
        };
        let config = relay.config();
        let opened = relay
            .submissions()
            .open_graph(relay.tokens(), &config, owner, mailbox)
            .await;
        match opened {
            Ok(sender) => graph_attempt(sender.deliver(message, &envelope.recipients).await),
            Err(e) => Attempt::from_reply(reply_for(&e).text.into_owned()),
        }
    }
}

impl<R: Relay> Courier for RelayCourier<R> {
    fn capacity(&self, mailbox: &str) -> usize {
        match self.relay.registry().get(mailbox) {
            None => 1,
            Some(m) => match self.route_of(&m) {
                Route::Graph => MAILBOX_CONCURRENCY,
                Route::Xoauth2 => self.relay.config().limits.smtp_connections_per_mailbox as usize,
            },
        }
    }

    fn send<'a>(&'a self, envelope: &'a Envelope, message: &'a [u8]) -> Sending<'a, Handed> {
        Box::pin(async move {
            let Some(mailbox) = self.relay.registry().get(&envelope.mailbox) else {
                let reply = mailbox_gone(&envelope.mailbox);
                return Handed {
                    attempt: Attempt::Permanent { reply },
                    route: None,
                };
            };
            match self.route_of(&mailbox) {
                Route::Graph => Handed {
                    attempt: self.by_graph(&mailbox, envelope, message).await,
                    route: Some("graph"),
                },
                Route::Xoauth2 => {
                    let (sender, recipients) = (&envelope.sender, &envelope.recipients);
                    let pool = &self.relay.submissions().pool;
                    let sent = pool
                        .send_message(&mailbox, sender, &envelope.parameters, recipients, message)
                        .await;
                    Handed {
                        attempt: smtp_attempt(sent),
                        route: Some("smtp"),
                    }
                }
            }
        })
    }
}

/// What the shared SMTP connections' answer means for the queue.
pub fn smtp_attempt(sent: SmtpSend) -> Attempt {
    match sent {
        SmtpSend::Accepted { reply, refused } => Attempt::Accepted {
            reply,
            refused,
            request_id: None,
        },
        SmtpSend::Permanent { reply } => Attempt::Permanent { reply },
        SmtpSend::Temporary { reply } => Attempt::Temporary {
            reply,
            retry_after: None,
            maybe_sent: false,
        },
    }
}

/// What Graph's answer means for the queue. A `504` is ambiguous: Graph may have sent
/// the message before its gateway gave up (PROTOCOL.md A12), so it is tried again (at
/// least once) and the reply says it may arrive twice.
pub fn graph_attempt(outcome: GraphOutcome) -> Attempt {
    if outcome.accepted {
        return Attempt::Accepted {
            reply: outcome.reply,
            refused: Vec::new(),
            request_id: outcome.request_id,
        };
    }
    if outcome.status == Some(504) {
        let request = outcome.request_id.as_deref().unwrap_or("none");
        return Attempt::Temporary {
            reply: format!(
                "451 4.4.0 Microsoft Graph timed out (504, request-id {request}): the message \
                 may have been sent; it is tried again, so it may arrive twice\r\n{}",
                outcome.reply
            ),
            retry_after: outcome.retry_after,
            maybe_sent: true,
        };
    }
    match Attempt::from_reply(outcome.reply) {
        Attempt::Temporary { reply, .. } => Attempt::Temporary {
            reply,
            retry_after: outcome.retry_after,
            maybe_sent: false,
        },
        permanent => permanent,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn failed(status: u16, reply: &str, retry_after: Option<u64>) -> GraphOutcome {
        GraphOutcome {
            accepted: false,
            reply: reply.to_owned(),
            status: Some(status),
            retry_after: retry_after.map(Duration::from_secs),
            request_id: Some("req-1".to_owned()),
        }
    }

    #[test]
    fn graph_answers_become_attempts_and_a_504_may_have_been_sent() {
        let ambiguous = graph_attempt(failed(
            504,
            "451 4.4.0 Microsoft Graph is throttling or unavailable (HTTP504)\r\n",
            None,
        ));
        let Attempt::Temporary {
            reply, maybe_sent, ..
        } = ambiguous
        else {
            panic!("{ambiguous:?}")
        };
        assert!(maybe_sent);
        assert!(
            reply.starts_with("451 4.4.0 ")
                && reply.contains("may have been sent")
                && reply.contains("req-1"),
            "{reply}"
        );
        let throttled = graph_attempt(failed(
            429,
            "451 4.7.0 Microsoft Graph is throttling\r\n",
            Some(30),
        ));
        assert!(
            matches!(throttled, Attempt::Temporary { retry_after: Some(d), maybe_sent: false, .. } if d == Duration::from_secs(30))
        );
        let refused = graph_attempt(failed(
            403,
            "550 5.7.1 Microsoft Graph refused to send as this mailbox\r\n",
            None,
        ));
        assert!(matches!(refused, Attempt::Permanent { .. }));
        let mut ok = failed(202, "250 2.0.0 OK\r\n", None);
        ok.accepted = true;
        assert!(
            matches!(graph_attempt(ok), Attempt::Accepted { request_id: Some(id), .. } if id == "req-1")
        );
    }

    #[test]
    fn smtp_answers_become_attempts() {
        let refused = vec![("b@x.com".to_owned(), "550 5.1.1 unknown".to_owned())];
        let accepted = smtp_attempt(SmtpSend::Accepted {
            reply: "250 OK".into(),
            refused: refused.clone(),
        });
        assert!(matches!(accepted, Attempt::Accepted { refused: r, .. } if r == refused));
        assert!(matches!(
            smtp_attempt(SmtpSend::Permanent {
                reply: "554 5.2.0 x".into()
            }),
            Attempt::Permanent { .. }
        ));
        assert!(matches!(
            smtp_attempt(SmtpSend::Temporary {
                reply: "451 4.4.5 busy".into()
            }),
            Attempt::Temporary {
                maybe_sent: false,
                ..
            }
        ));
        assert!(mailbox_gone("a@x.com").starts_with("550 5.1.0 "));
    }
}
