//! The Microsoft Graph way out of an SMTP session, for mailboxes whose SMTP AUTH is off:
//! each held message goes to [`crate::graph::Graph::send`] as the mailbox, with the token
//! owner's Graph token (`Mail.Send`, `Mail.Send.Shared` for a shared mailbox). A token Graph
//! refuses is refreshed once; a throttled mailbox (`Retry-After`) gets `451 4.7.0` at its
//! next `MAIL FROM` until the wait is over, without asking Graph.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Semaphore;

use super::driver::{HeldSender, Sending};
use super::limits::SendingCounters;
use crate::config::Config;
use crate::error::Error;
use crate::graph::{Graph, GraphError, Outgoing};
use crate::mailbox::Mailbox;
use crate::oauth::cache::{Resource, SMTP_MIN_VALIDITY, TokenCache};
use crate::protocol::smtp::reply::{self, reply_for};

/// Graph's `MailboxConcurrency` limit: requests of one app for one mailbox at once
/// (PROTOCOL.md A11). More wait for a turn, at most the upstream timeout.
pub const MAILBOX_CONCURRENCY: usize = 4;

/// One Graph client per endpoint (a relay serves one cloud, so usually one), and the
/// turns of each mailbox.
#[derive(Default)]
pub struct GraphClients {
    clients: DashMap<String, Graph>,
    turns: DashMap<String, Arc<Semaphore>>,
}

impl GraphClients {
    fn turns(&self, mailbox: &str) -> Arc<Semaphore> {
        self.turns
            .entry(mailbox.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(MAILBOX_CONCURRENCY)))
            .clone()
    }

    fn get(&self, endpoint: &str, config: &Config) -> Result<Graph, String> {
        if let Some(graph) = self.clients.get(endpoint) {
            return Ok(graph.clone());
        }
        let tls = crate::tls::client_config(config.upstream.ca_file.as_deref())
            .map_err(|e| e.to_string())?;
        let graph = Graph::with_tls(endpoint, tls, config.limits.upstream_timeout())?;
        self.clients.insert(endpoint.to_owned(), graph.clone());
        Ok(graph)
    }
}

/// Sends a session's messages through Graph as one mailbox.
pub struct GraphSender {
    graph: Graph,
    tokens: Arc<TokenCache>,
    owner: Arc<Mailbox>,
    mailbox: String,
    resource: Resource,
    save_to_sent_items: bool,
    counters: SendingCounters,
    /// The mailbox's turns at Graph ([`MAILBOX_CONCURRENCY`]).
    turns: Arc<Semaphore>,
    /// How long a message waits for a turn.
    wait: Duration,
}

/// Opens the Graph way for `mailbox`: its token owner's Graph token is fetched now, so
/// that a missing permission or consent fails the login with the admin's hint rather than
/// the first message. `owner` is the mailbox whose token serves `mailbox`.
pub async fn open(
    graphs: &GraphClients,
    counters: &SendingCounters,
    tokens: &Arc<TokenCache>,
    config: &Config,
    owner: Arc<Mailbox>,
    mailbox: &Mailbox,
) -> Result<GraphSender, Error> {
    let token_error = |source| Error::Token {
        mailbox: mailbox.address.clone(),
        source,
    };
    let resource = Resource::Graph {
        shared: owner.address != mailbox.address,
    };
    tokens
        .token_for(&owner, resource, SMTP_MIN_VALIDITY)
        .await
        .map_err(token_error)?;
    let cloud = match &owner.registration {
        crate::mailbox::Registration::App { cloud, .. } => *cloud,
        crate::mailbox::Registration::TokenFrom { .. } => Default::default(),
    };
    let endpoint = config.graph.endpoint_for(cloud);
    let graph = graphs
        .get(endpoint, config)
        .map_err(|why| Error::UpstreamProtocol {
            server: endpoint.to_owned(),
            detail: why,
        })?;
    Ok(GraphSender {
        graph,
        tokens: tokens.clone(),
        owner,
        mailbox: mailbox.address.clone(),
        resource,
        save_to_sent_items: mailbox.sending.save_to_sent_items,
        counters: counters.clone(),
        turns: graphs.turns(&mailbox.address),
        wait: config.limits.upstream_timeout(),
    })
}

/// What Graph made of one message, for the queue's workers: the SMTP reply a session
/// would hear, with what Graph said beyond it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphOutcome {
    /// Whether Graph accepted the message (`202`).
    pub accepted: bool,
    /// The complete SMTP reply ([`reply::GRAPH_ACCEPTED`], or the failure's).
    pub reply: String,
    /// Graph's HTTP status of a failure, when it answered.
    pub status: Option<u16>,
    /// Graph's `Retry-After`.
    pub retry_after: Option<Duration>,
    /// Graph's `request-id`.
    pub request_id: Option<String>,
}

impl GraphSender {
    /// Sends `message` to `recipients` (a turn at Graph, one token refresh when Graph
    /// refuses the token) and says what came of it.
    pub async fn deliver(&self, message: &[u8], recipients: &[String]) -> GraphOutcome {
        let mut outcome = GraphOutcome {
            accepted: false,
            reply: String::new(),
            status: None,
            retry_after: None,
            request_id: None,
        };
        let Ok(Ok(_turn)) = tokio::time::timeout(self.wait, self.turns.acquire()).await else {
            outcome.reply = reply::graph_busy(&self.mailbox);
            return outcome;
        };
        let mut result = self.send_once(message, recipients).await;
        if matches!(result, Err(Failure::TokenRefused(_))) {
            result = self.send_once(message, recipients).await;
        }
        match result {
            Ok(request_id) => {
                tracing::info!(mailbox = %self.mailbox, recipients = recipients.len(), bytes = message.len(), "message accepted by Microsoft Graph");
                outcome.accepted = true;
                outcome.reply = reply::GRAPH_ACCEPTED.to_owned();
                outcome.request_id = request_id;
            }
            Err(Failure::TokenRefused(e) | Failure::Graph(e)) => {
                (outcome.status, outcome.retry_after) = (e.status, e.retry_after);
                outcome.request_id = e.request_id.clone();
                outcome.reply = self.reply(Failure::Graph(e));
            }
            Err(failure) => outcome.reply = self.reply(failure),
        }
        outcome
    }

    async fn send_once(
        &self,
        message: &[u8],
        recipients: &[String],
    ) -> Result<Option<String>, Failure> {
        let token = self
            .tokens
            .token_for(&self.owner, self.resource, SMTP_MIN_VALIDITY)
            .await
            .map_err(|source| {
                Failure::Token(Error::Token {
                    mailbox: self.mailbox.clone(),
                    source,
                })
            })?;
        let outgoing = Outgoing {
            mime: message,
            recipients,
            save_to_sent_items: self.save_to_sent_items,
        };
        match self
            .graph
            .send_traced(&token, &self.mailbox, &outgoing)
            .await
        {
            Ok(request_id) => Ok(request_id),
            Err(e) if e.status == Some(401) => {
                self.tokens
                    .invalidate_for(&self.owner.address, self.resource, &token);
                Err(Failure::TokenRefused(e))
            }
            Err(e) => Err(Failure::Graph(e)),
        }
    }

    fn reply(&self, failure: Failure) -> String {
        match failure {
            Failure::Token(error) => {
                tracing::warn!(error = %error, "no Graph token; message not sent");
                reply_for(&error).text.into_owned()
            }
            Failure::TokenRefused(e) | Failure::Graph(e) => {
                tracing::warn!(mailbox = %self.mailbox, error = %e, "Microsoft Graph did not accept the message");
                if let Some(wait) = e.retry_after {
                    self.counters.throttle(&self.mailbox, wait);
                }
                e.smtp_reply()
            }
        }
    }
}

/// Why a message did not go out.
enum Failure {
    Token(Error),
    /// Graph refused the token (401): refreshed for the next try.
    TokenRefused(GraphError),
    Graph(GraphError),
}

impl HeldSender for GraphSender {
    fn send<'a>(&'a self, message: &'a [u8], recipients: &'a [String]) -> Sending<'a> {
        Box::pin(async move {
            let outcome = self.deliver(message, recipients).await;
            match outcome.accepted {
                true => Ok(outcome.reply),
                false => Err(outcome.reply),
            }
        })
    }
}
