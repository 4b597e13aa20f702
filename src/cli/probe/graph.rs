//! `mailbox test` for a mailbox that sends through Microsoft Graph: a Graph token
//! (`Mail.Send`, or `Mail.Send.Shared` for a shared mailbox, or app-only `.default`), and
//! with `--send-to` a test message sent through Graph, as the relay would send it.

use tokio::time::Instant;

use super::failure::{Failure, Step};
use super::message::test_message;
use super::report::Report;
use super::steps::Probe;
use crate::graph::{Graph, Outgoing};
use crate::mailbox::{Mailbox, Registration};
use crate::oauth::cache::{Resource, SMTP_MIN_VALIDITY};
use crate::secret::AccessToken;

impl Probe<'_> {
    /// The Graph token step and, with `--send-to`, a message through Graph.
    pub(super) async fn graph_steps(
        &self,
        owner: &Mailbox,
        mailbox: &Mailbox,
        report: &mut Report<'_, '_>,
    ) -> anyhow::Result<()> {
        let cloud = match &owner.registration {
            Registration::App { cloud, .. } => *cloud,
            Registration::TokenFrom { .. } => Default::default(),
        };
        let endpoint = self.config.graph.endpoint_for(cloud);
        let Some(token) = self.graph_token(owner, mailbox, endpoint, report).await? else {
            return Ok(());
        };
        let Some(to) = &self.send_to else {
            return Ok(());
        };
        let started = Instant::now();
        let tls = crate::tls::client_config(self.config.upstream.ca_file.as_deref())?;
        let graph = Graph::with_tls(endpoint, tls, self.config.limits.upstream_timeout())
            .map_err(anyhow::Error::msg)?;
        let message = test_message(&mailbox.address, to, std::time::SystemTime::now());
        let recipients = [to.clone()];
        let outgoing = Outgoing {
            mime: &message,
            recipients: &recipients,
            save_to_sent_items: mailbox.sending.save_to_sent_items,
        };
        let sent = graph
            .send(&token, &mailbox.address, &outgoing)
            .await
            .map(|()| {
                format!(
                    "through Microsoft Graph: from {} to {to}: accepted (202)",
                    mailbox.address
                )
            })
            .map_err(Failure::Graph);
        report.step(Step::Send, started, sent)?;
        Ok(())
    }

    /// The `graph` step: a token to send as `mailbox` through Graph at `endpoint`, or
    /// `None` after printing why not (and skipping the message).
    async fn graph_token(
        &self,
        owner: &Mailbox,
        mailbox: &Mailbox,
        endpoint: &str,
        report: &mut Report<'_, '_>,
    ) -> anyhow::Result<Option<AccessToken>> {
        let resource = Resource::Graph {
            shared: owner.address != mailbox.address,
        };
        let started = Instant::now();
        match self
            .tokens
            .token_for(owner, resource, SMTP_MIN_VALIDITY)
            .await
        {
            Ok(token) => {
                let detail = format!(
                    "{endpoint}: a token to send as {} (Mail.Send) for {}",
                    mailbox.address, owner.address
                );
                report.step(Step::Graph, started, Ok(detail))?;
                Ok(Some(token))
            }
            Err(e) => {
                report.step(Step::Graph, started, Err(Failure::Token(e)))?;
                writeln!(
                    report.out,
                    "                      hint: the app registration needs the Microsoft Graph permission Mail.Send (Mail.Send.Shared for shared mailboxes; application Mail.Send for app-only) with consent"
                )?;
                if self.send_to.is_some() {
                    report.skipped(Step::Send, "no Graph token")?;
                }
                Ok(None)
            }
        }
    }
}
