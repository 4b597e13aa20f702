//! The order of `mailbox test`'s steps and what a failure skips: the token first (nothing
//! runs without it), then IMAP and POP3, then SMTP or, for a mailbox that sends through
//! Microsoft Graph, the Graph steps; with `--send-to`, the test message last.

use std::io::Write;

use tokio::time::Instant;

use super::failure::{Context, Failure, Step};
use super::report::{Report, line};
use super::steps::{Probe, is_app_only};
use crate::error::Error;
use crate::mailbox::{Mailbox, Registry, RegistryError};
use crate::oauth::TokenError;
use crate::secret::AccessToken;
use crate::server::Protocol;
use crate::submission::SmtpVia;
use crate::submission::route::{Route, is_smtp_auth_disabled};

impl Probe<'_> {
    /// Runs the steps in order, printing each as it ends; returns how many failed.
    pub(super) async fn run(
        &self,
        registry: &Registry,
        mailbox: &Mailbox,
        out: &mut dyn Write,
    ) -> anyhow::Result<usize> {
        let address = mailbox.address.as_str();
        let owner = registry.token_owner(mailbox);
        let owner_address = owner.as_ref().map_or(address, |o| o.address.as_str());
        let cx = Context {
            mailbox: address,
            owner: owner_address,
            app_only: owner.as_ref().is_ok_and(|o| is_app_only(o)),
            authority: &self.authority,
        };
        if owner_address == address {
            writeln!(out, "testing {address}")?;
        } else {
            writeln!(out, "testing {address} with the token of {owner_address}")?;
        }
        let mut report = Report { out, cx, failed: 0 };
        let owner = owner.as_deref();
        let Some(token) = self.token_step(owner, &mut report).await? else {
            return Ok(report.failed);
        };
        let started = Instant::now();
        let imap = self.imap(address, &token).await;
        report.step(Step::Imap, started, imap)?;
        let started = Instant::now();
        let pop3 = self.pop3(address, &token).await;
        report.step(Step::Pop3, started, pop3)?;
        self.sending_steps(mailbox, owner.ok(), &token, &mut report)
            .await?;
        if report.failed == 0 {
            writeln!(report.out, "all steps passed")?;
        }
        Ok(report.failed)
    }

    /// The token step; without a token, the other steps are printed as skipped.
    async fn token_step(
        &self,
        owner: Result<&Mailbox, &RegistryError>,
        report: &mut Report<'_, '_>,
    ) -> anyhow::Result<Option<AccessToken>> {
        let started = Instant::now();
        let token = match owner {
            Ok(owner) => self.token(owner).await,
            Err(e) => Err(Failure::Token(TokenError::DelegateMissing(e.to_string()))),
        };
        match token {
            Ok((token, detail)) => {
                report.step(Step::Token, started, Ok(detail))?;
                Ok(Some(token))
            }
            Err(failure) => {
                report.step(Step::Token, started, Err(failure))?;
                for step in [Step::Imap, Step::Pop3, Step::Smtp] {
                    report.skipped(step, "no access token")?;
                }
                if self.send_to.is_some() {
                    report.skipped(Step::Send, "no access token")?;
                }
                Ok(None)
            }
        }
    }

    /// SMTP (and the message), or Graph for a mailbox whose route is Graph.
    async fn sending_steps(
        &self,
        mailbox: &Mailbox,
        graph_owner: Option<&Mailbox>,
        token: &AccessToken,
        report: &mut Report<'_, '_>,
    ) -> anyhow::Result<()> {
        let address = mailbox.address.as_str();
        if self.routes.route(address, mailbox.sending.smtp_via) == Route::Graph
            && let Some(graph_owner) = graph_owner
        {
            return self.graph_steps(graph_owner, mailbox, report).await;
        }
        let server = &self.config.smtp.upstream;
        let started = Instant::now();
        let smtp = match self.login(Protocol::Smtp, server, address, token).await {
            Ok(upstream) => {
                let detail = format!("{server}: logged in as {address} ({})", upstream.ok);
                report.step(Step::Smtp, started, Ok(detail))?;
                upstream
            }
            Err(failure) => {
                return self
                    .smtp_refused(failure, started, mailbox, graph_owner, report)
                    .await;
            }
        };
        match &self.send_to {
            Some(to) => {
                let started = Instant::now();
                let sent = self.send(address, to, smtp).await;
                report.step(Step::Send, started, sent)?;
            }
            None => self.connector.smtp_quit(server, smtp).await,
        }
        Ok(())
    }

    /// A failed SMTP login. SMTP AUTH turned off is no failure for a mailbox with
    /// `smtp_via = auto`: the relay switches it to Graph (as it will at its next SMTP
    /// login), so the Graph steps run instead.
    async fn smtp_refused(
        &self,
        failure: Failure,
        started: Instant,
        mailbox: &Mailbox,
        graph_owner: Option<&Mailbox>,
        report: &mut Report<'_, '_>,
    ) -> anyhow::Result<()> {
        let disabled = matches!(&failure, Failure::Login(Error::UpstreamRejected { reply, .. })
            if is_smtp_auth_disabled(reply));
        if disabled
            && mailbox.sending.smtp_via == SmtpVia::Auto
            && let Some(graph_owner) = graph_owner
        {
            let detail =
                format!("{failure}; with smtp_via = auto the relay sends through Microsoft Graph");
            writeln!(
                report.out,
                "{}",
                line(Step::Smtp, "off", Some(started.elapsed()), &detail)
            )?;
            return self.graph_steps(graph_owner, mailbox, report).await;
        }
        report.step(Step::Smtp, started, Err(failure))?;
        if self.send_to.is_some() {
            report.skipped(Step::Send, "no SMTP login")?;
        }
        Ok(())
    }
}
