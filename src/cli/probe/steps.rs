//! The steps of `mailbox test`, each on its own: an access token as the relay gets it, and
//! the XOAUTH2 login (connect, TLS, authenticate) to the IMAP, POP3 and SMTP upstreams with
//! a command after it, and the test message. Their order is in `sequence.rs`; the Graph
//! steps are in `graph.rs`, the hints for their failures in `hints.rs`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::failure::{Failure, Outcome};
use super::message::test_message;
use super::report::count_words;
use crate::config::{Config, ServerAddress};
use crate::mailbox::{Mailbox, Registration};
use crate::oauth::cache::TokenCache;
use crate::oauth::flows;
use crate::secret::AccessToken;
use crate::server::Protocol;
use crate::upstream::smtp::Submission;
use crate::upstream::{Connector, Imap, Pop3, Upstream};

/// What the steps share.
pub(super) struct Probe<'a> {
    pub(super) config: &'a Config,
    /// The login host the token comes from.
    pub(super) authority: String,
    pub(super) tokens: TokenCache,
    /// The `auto` switches to Graph, as the relay keeps them.
    pub(super) routes: crate::submission::route::Routes,
    pub(super) connector: Connector,
    pub(super) send_to: Option<String>,
}

impl Probe<'_> {
    /// A fresh access token for `owner`, and what its line says about it.
    pub(super) async fn token(&self, owner: &Mailbox) -> Result<(AccessToken, String), Failure> {
        // At least what an IMAP session gets, the most any protocol asks for.
        let validity = Protocol::Imap.min_token_validity();
        let token = self
            .tokens
            .access_token(owner, validity)
            .await
            .map_err(Failure::Token)?;
        let expiry = self
            .tokens
            .status(&owner.address)
            .access_token_expires
            .map(|unix| UNIX_EPOCH + Duration::from_secs(unix));
        let how = if is_app_only(owner) {
            "app-only (client credentials)"
        } else {
            "refreshed"
        };
        let detail = match expiry {
            Some(at) => format!(
                "{how} for {}; the access token expires at {} (in {})",
                owner.address,
                flows::utc(at),
                flows::duration_words(at.duration_since(SystemTime::now()).unwrap_or_default())
            ),
            None => format!("{how} for {}", owner.address),
        };
        Ok((token, detail))
    }

    /// The `imap` step: an XOAUTH2 login, then `SELECT INBOX`.
    pub(super) async fn imap(&self, address: &str, token: &AccessToken) -> Outcome {
        let server = &self.config.imap.upstream;
        let upstream = self.login(Protocol::Imap, server, address, token).await?;
        let count = self
            .connector
            .imap_inbox_count(server, upstream)
            .await
            .map_err(Failure::Command)?;
        Ok(format!(
            "{server}: logged in as {address}; INBOX has {}",
            count_words(u64::from(count), "message")
        ))
    }

    /// The `pop3` step: an XOAUTH2 login, then `STAT`.
    pub(super) async fn pop3(&self, address: &str, token: &AccessToken) -> Outcome {
        let server = &self.config.pop3.upstream;
        let upstream = self.login(Protocol::Pop3, server, address, token).await?;
        let maildrop = self
            .connector
            .pop3_stat(server, upstream)
            .await
            .map_err(Failure::Command)?;
        Ok(format!(
            "{server}: logged in as {address}; {}, {}",
            count_words(u64::from(maildrop.messages), "message"),
            count_words(maildrop.octets, "byte")
        ))
    }

    /// Connects to `server`, starts TLS and logs in with XOAUTH2 as `address`.
    pub(super) async fn login(
        &self,
        protocol: Protocol,
        server: &ServerAddress,
        address: &str,
        token: &AccessToken,
    ) -> Result<Upstream, Failure> {
        let login = match protocol {
            Protocol::Imap => self.connector.login::<Imap>(server, address, token).await,
            Protocol::Pop3 => self.connector.login::<Pop3>(server, address, token).await,
            Protocol::Smtp => self.connector.smtp(server, address, token).await,
        };
        login.map_err(Failure::Login)
    }

    /// The `send` step: the test message over the logged-in SMTP session.
    pub(super) async fn send(&self, from: &str, to: &str, upstream: Upstream) -> Outcome {
        let server = &self.config.smtp.upstream;
        let message = test_message(from, to, SystemTime::now());
        let submission = Submission {
            from,
            to,
            message: &message,
        };
        let reply = self
            .connector
            .smtp_send(server, upstream, submission)
            .await
            .map_err(Failure::Command)?;
        Ok(format!("{server}: from {from} to {to}: {reply}"))
    }
}

/// Whether the mailbox's tokens come from its app's client credentials, with no user.
pub(super) fn is_app_only(mailbox: &Mailbox) -> bool {
    matches!(
        mailbox.registration,
        Registration::App { app_only: true, .. }
    )
}
