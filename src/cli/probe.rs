//! `m365-relay mailbox test ADDRESS [--send-to ADDR]`: the relay's "test email
//! configuration". It does what a client login would, one step at a time, and says which
//! step failed and why:
//!
//! 1. `token`: an access token for the mailbox (for a `--token-from` mailbox, its
//!    delegate's), from a [`TokenCache`] built as the relay builds it, so the rotated refresh
//!    token is stored and the mailbox's status file written, as after any refresh;
//! 2. `imap`: XOAUTH2 login to the configured IMAP upstream, then `SELECT INBOX`;
//! 3. `pop3`: XOAUTH2 login to the configured POP3 upstream, then `STAT`;
//! 4. `smtp`: XOAUTH2 login to the configured SMTP upstream;
//! 5. `send` (with `--send-to`): a short test message from the mailbox over that SMTP session.
//!
//! Each step prints one line: its name, `ok` or `FAILED` (or `skipped`), the time it took,
//! and what the server said, with a one-line hint under a known failure ([`hint`] is the
//! whole table). Nothing printed ever holds a token. The command fails unless every step
//! passed.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use tokio::time::Instant;

use crate::config::{Config, ServerAddress};
use crate::error::Error;
use crate::mailbox::{Mailbox, Registration, Registry, normalize_address};
use crate::oauth::cache::TokenCache;
use crate::oauth::endpoint::TokenEndpoint;
use crate::oauth::{IdpError, TokenError, flows};
use crate::secret::AccessToken;
use crate::server::Protocol;
use crate::state::State;
use crate::submission::SmtpVia;
use crate::submission::route::{Route, is_smtp_auth_disabled};
use crate::upstream::smtp::Submission;
use crate::upstream::{CommandError, Connector, Upstream};

/// The subject of the message that `--send-to` sends.
pub const TEST_SUBJECT: &str = "m365-relay test message";

/// What `mailbox test` is asked to do.
#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// The mailbox address.
    pub address: String,
    /// After the SMTP login, send a short test message from the mailbox to this address.
    #[arg(long, value_name = "ADDR")]
    pub send_to: Option<String>,
}

/// One step of the test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Token,
    Imap,
    Pop3,
    Smtp,
    /// A Graph token for sending (mailboxes that send through Microsoft Graph).
    Graph,
    Send,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Token => "token",
            Step::Imap => "imap",
            Step::Pop3 => "pop3",
            Step::Smtp => "smtp",
            Step::Graph => "graph",
            Step::Send => "send",
        }
    }
}

/// Why a step failed: what its line prints, and what [`hint`] looks at.
#[derive(Debug)]
pub enum Failure {
    /// No access token: none stored, the delegate is unusable, or Entra said no.
    Token(TokenError),
    /// Connecting, TLS, or the XOAUTH2 login upstream.
    Login(Error),
    /// A command after the login (SELECT, STAT, the message).
    Command(CommandError),
    /// Microsoft Graph refused or failed.
    Graph(crate::graph::GraphError),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Token(e) => write!(f, "{e}"),
            Failure::Login(e) => write!(f, "{e}"),
            Failure::Command(e) => write!(f, "{e}"),
            Failure::Graph(e) => write!(f, "Microsoft Graph: {e}"),
        }
    }
}

/// Who and where the test is about: the hints name them.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The mailbox tested (`user=` of the XOAUTH2 logins).
    pub mailbox: &'a str,
    /// The mailbox whose token it uses: itself, or its `--token-from` delegate.
    pub owner: &'a str,
    /// Whether the owner is app-only (client-credentials grant, no user sign-in).
    pub app_only: bool,
    /// The Entra login host.
    pub authority: &'a str,
}

/// Runs `mailbox test` and prints its report to `out`. Fails unless every step passed.
pub fn run(
    args: TestArgs,
    config: &Config,
    state: &State,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let address = normalize_address(&args.address)?;
    let send_to = match args.send_to.as_deref() {
        Some(to) => Some(normalize_address(to).context("--send-to")?),
        None => None,
    };
    let registry = state.registry().load_and_migrate()?;
    let Some(mailbox) = registry.get(&address) else {
        bail!("mailbox {address} is not registered");
    };
    // Built as `server::Services::new` builds them, so that a refresh here is one like the
    // relay's: the rotated refresh token is stored and the status file written.
    let tls = crate::tls::client_config(config.upstream.ca_file.as_deref())
        .context("upstream.ca_file")?;
    let endpoint = TokenEndpoint::new(
        &config.entra.authority,
        tls.clone(),
        config.limits.token_timeout(),
    )
    .context("entra.authority")?;
    // Where the token endpoint is, for the hints: the owner's cloud's login host, unless
    // the configuration names another.
    let cloud = match registry.token_owner(mailbox).as_deref() {
        Ok(Mailbox {
            registration: Registration::App { cloud, .. },
            ..
        }) => *cloud,
        _ => Default::default(),
    };
    let authority = endpoint
        .authority(cloud)
        .as_str()
        .trim_end_matches('/')
        .to_owned();
    let probe = Probe {
        config,
        authority,
        tokens: TokenCache::new(endpoint, state.tokens(), Some(state.statuses())),
        routes: crate::submission::route::Routes::new(state.switches()),
        connector: Connector::new(
            tls,
            config.limits.upstream_timeout(),
            crate::tls::host_name().into(),
        ),
        send_to,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let failed = runtime.block_on(probe.run(&registry, mailbox, out))?;
    if failed > 0 {
        let steps = if failed == 1 { "step" } else { "steps" };
        bail!("{failed} {steps} of the test of {address} failed");
    }
    Ok(())
}

/// What the steps share.
struct Probe<'a> {
    config: &'a Config,
    /// The login host the token comes from.
    authority: String,
    tokens: TokenCache,
    /// The `auto` switches to Graph, as the relay keeps them.
    routes: crate::submission::route::Routes,
    connector: Connector,
    send_to: Option<String>,
}

/// A step's outcome: what to print after `ok`, or why it failed.
type Outcome = Result<String, Failure>;

impl Probe<'_> {
    /// Runs the steps in order, printing each as it ends; returns how many failed.
    async fn run(
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

        let started = Instant::now();
        let token = match &owner {
            Ok(owner) => self.token(owner).await,
            Err(e) => Err(Failure::Token(TokenError::DelegateMissing(e.to_string()))),
        };
        let token = match token {
            Ok((token, detail)) => {
                report.step(Step::Token, started, Ok(detail))?;
                token
            }
            Err(failure) => {
                report.step(Step::Token, started, Err(failure))?;
                for step in [Step::Imap, Step::Pop3, Step::Smtp] {
                    report.skipped(step, "no access token")?;
                }
                if self.send_to.is_some() {
                    report.skipped(Step::Send, "no access token")?;
                }
                return Ok(report.failed);
            }
        };

        let started = Instant::now();
        let imap = self.imap(address, &token).await;
        report.step(Step::Imap, started, imap)?;
        let started = Instant::now();
        let pop3 = self.pop3(address, &token).await;
        report.step(Step::Pop3, started, pop3)?;

        let graph_owner = owner.as_ref().ok().map(|o| o.as_ref());
        if self.routes.route(address, mailbox.sending.smtp_via) == Route::Graph
            && let Some(graph_owner) = graph_owner
        {
            self.graph_steps(graph_owner, mailbox, &mut report).await?;
            if report.failed == 0 {
                writeln!(report.out, "all steps passed")?;
            }
            return Ok(report.failed);
        }
        let server = &self.config.smtp.upstream;
        let started = Instant::now();
        let smtp = match self.login(Protocol::Smtp, server, address, &token).await {
            Ok(upstream) => {
                let detail = format!("{server}: logged in as {address} ({})", upstream.ok);
                report.step(Step::Smtp, started, Ok(detail))?;
                upstream
            }
            Err(failure) => {
                let disabled = matches!(&failure, Failure::Login(Error::UpstreamRejected { reply, .. })
                    if is_smtp_auth_disabled(reply));
                if disabled
                    && mailbox.sending.smtp_via == SmtpVia::Auto
                    && let Some(graph_owner) = graph_owner
                {
                    // Not a failure: the relay switches this mailbox to Graph (as it will
                    // at its next SMTP login).
                    let detail = format!(
                        "{failure}; with smtp_via = auto the relay sends through Microsoft Graph"
                    );
                    writeln!(
                        report.out,
                        "{}",
                        line(Step::Smtp, "off", Some(started.elapsed()), &detail)
                    )?;
                    self.graph_steps(graph_owner, mailbox, &mut report).await?;
                    if report.failed == 0 {
                        writeln!(report.out, "all steps passed")?;
                    }
                    return Ok(report.failed);
                }
                report.step(Step::Smtp, started, Err(failure))?;
                if self.send_to.is_some() {
                    report.skipped(Step::Send, "no SMTP login")?;
                }
                return Ok(report.failed);
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
        if report.failed == 0 {
            writeln!(report.out, "all steps passed")?;
        }
        Ok(report.failed)
    }

    /// A fresh access token for `owner`, and what its line says about it.
    async fn token(&self, owner: &Mailbox) -> Result<(AccessToken, String), Failure> {
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

    async fn imap(&self, address: &str, token: &AccessToken) -> Outcome {
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

    async fn pop3(&self, address: &str, token: &AccessToken) -> Outcome {
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

    async fn login(
        &self,
        protocol: Protocol,
        server: &ServerAddress,
        address: &str,
        token: &AccessToken,
    ) -> Result<Upstream, Failure> {
        let login = match protocol {
            Protocol::Imap => self.connector.imap(server, address, token).await,
            Protocol::Pop3 => self.connector.pop3(server, address, token).await,
            Protocol::Smtp => self.connector.smtp(server, address, token).await,
        };
        login.map_err(Failure::Login)
    }

    async fn send(&self, from: &str, to: &str, upstream: Upstream) -> Outcome {
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

mod graph;

fn is_app_only(mailbox: &Mailbox) -> bool {
    matches!(
        mailbox.registration,
        Registration::App { app_only: true, .. }
    )
}

/// Prints the step lines and counts the failures.
struct Report<'a, 'o> {
    out: &'o mut dyn Write,
    cx: Context<'a>,
    failed: usize,
}

impl Report<'_, '_> {
    fn step(&mut self, step: Step, started: Instant, outcome: Outcome) -> std::io::Result<()> {
        let took = started.elapsed();
        match outcome {
            Ok(detail) => writeln!(self.out, "{}", line(step, "ok", Some(took), &detail)),
            Err(failure) => {
                self.failed += 1;
                let detail = failure.to_string();
                writeln!(self.out, "{}", line(step, "FAILED", Some(took), &detail))?;
                match hint(step, &failure, &self.cx) {
                    Some(hint) => writeln!(self.out, "{:22}hint: {}", "", printable(&hint)),
                    None => Ok(()),
                }
            }
        }
    }

    fn skipped(&mut self, step: Step, why: &str) -> std::io::Result<()> {
        writeln!(self.out, "{}", line(step, "skipped", None, why))
    }
}

/// `imap  ok        0.05s  detail`: the columns line up; server text is made printable.
fn line(step: Step, outcome: &str, took: Option<Duration>, detail: &str) -> String {
    let took = took.map_or(String::new(), |t| format!("{:.2}s", t.as_secs_f64()));
    format!(
        "{:<6}{:<8}{:>6}  {}",
        step.name(),
        outcome,
        took,
        printable(detail)
    )
}

/// `text` on one line, without control characters (a server's reply is not trusted to be
/// harmless on a terminal).
fn printable(text: &str) -> String {
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `1 message`, `3 messages`.
fn count_words(n: u64, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    }
}

// === the hint table ===

/// The one-line hint for a known failure of `step`, or `None`. This is the whole table:
/// Entra's AADSTS codes (PROTOCOL.md A3), Exchange Online's refusals of a login or a
/// message (A3, A5, A10), and network and TLS trouble.
pub fn hint(step: Step, failure: &Failure, cx: &Context<'_>) -> Option<String> {
    match failure {
        Failure::Token(e) => token_hint(e, cx),
        Failure::Login(e) | Failure::Command(CommandError::Failed(e)) => match e {
            Error::UpstreamUnreachable { server, .. } | Error::UpstreamTimeout { server, .. } => {
                Some(format!(
                    "the relay cannot reach {server}: allow outgoing connections to it in the \
                     firewall, or check the proxy in between (the relay needs a direct TCP \
                     connection) and the configured upstream"
                ))
            }
            Error::UpstreamTls { server, .. } => Some(format!(
                "TLS to {server} failed: if a proxy or firewall inspects TLS, put its CA \
                 certificate (PEM) in `upstream.ca_file`; check that the configured upstream \
                 host name is the server's"
            )),
            Error::UpstreamRejected { reply, .. } => reply_hint(step, reply, cx),
            Error::UpstreamProtocol { detail, .. } => reply_hint(step, detail, cx),
            _ => None,
        },
        Failure::Command(CommandError::Refused { reply, .. }) => reply_hint(step, reply, cx),
        Failure::Graph(e) => graph_hint(e, cx),
    }
}

/// Hints for Microsoft Graph's refusals of a message.
fn graph_hint(error: &crate::graph::GraphError, cx: &Context<'_>) -> Option<String> {
    match (error.status, error.code.as_str()) {
        (Some(403), "ErrorSendAsDenied") => Some(format!(
            "{} may not send as {}: give it Full Access and SendAs on the mailbox in Exchange, \
             and the app the Graph permission Mail.Send.Shared",
            cx.owner, cx.mailbox
        )),
        (Some(403), _) => Some(
            "the token lacks the Graph permission Mail.Send (delegated, or application for \
             app-only) or its admin consent; for app-only, an application access policy may \
             exclude the mailbox"
                .into(),
        ),
        (Some(401), _) => {
            Some("Graph refused the token: check the app registration's Graph permissions".into())
        }
        _ => None,
    }
}

/// Hints for failures of the token step. The app's credentials and consent concern every
/// mailbox; a user's sign-in only the delegated ones.
fn token_hint(error: &TokenError, cx: &Context<'_>) -> Option<String> {
    let owner = cx.owner;
    let authorize = format!("`m365-relay mailbox authorize {owner}`");
    let (error, codes) = match error {
        TokenError::Idp(IdpError::Rejected { error, codes, .. }) => (error.as_str(), codes),
        TokenError::Idp(IdpError::Unavailable { .. }) => {
            return Some(format!(
                "the relay cannot reach Entra at {}: allow outgoing HTTPS to it in the firewall \
                 or proxy; if a proxy inspects TLS, put its CA certificate in \
                 `upstream.ca_file`",
                cx.authority
            ));
        }
        TokenError::NotAuthorized => {
            return Some(format!(
                "no refresh token is stored for {owner}: sign it in with {authorize} (or store \
                 one with `m365-relay mailbox import-token {owner}`)"
            ));
        }
        TokenError::DelegateMissing(_) => {
            return Some(format!(
                "{} takes its token from a mailbox that is not registered with its own app \
                 registration: register that mailbox with `m365-relay mailbox add` and sign it \
                 in",
                cx.mailbox
            ));
        }
        TokenError::Idp(IdpError::Malformed(_))
        | TokenError::UnknownMailbox
        | TokenError::Store(_) => return None,
    };
    let code = |c: u64| codes.contains(&c);
    let permissions = if cx.app_only {
        "the application permissions IMAP.AccessAsApp, POP.AccessAsApp and SMTP.SendAsApp of \
         Office 365 Exchange Online"
    } else {
        "the delegated permissions IMAP.AccessAsUser.All, POP.AccessAsUser.All and SMTP.Send"
    };
    // The app's credentials and consent.
    let app = if code(7_000_222) {
        Some(format!(
            "the app's client secret expired: create a new one (Entra admin center > App \
             registrations > the app > Certificates & secrets) and register it for {owner}"
        ))
    } else if code(7_000_215) {
        Some(format!(
            "the client secret registered for {owner} is wrong: register the secret's Value \
             (not its Secret ID)"
        ))
    } else if code(7_000_218) {
        Some(format!(
            "the app registration is a confidential client but no client secret is registered \
             for {owner}: register one, or turn on \"Allow public client flows\" for the app"
        ))
    } else if code(700_025) {
        Some(format!(
            "the app registration is a public client, which must not send a client secret: \
             register {owner} without one, or turn off \"Allow public client flows\""
        ))
    } else if code(700_027) {
        Some(format!(
            "Entra does not accept the certificate registered for {owner}: upload it to the \
             app registration (Certificates & secrets) and check that it has not expired"
        ))
    } else if code(65_001) || error == "consent_required" {
        let then = if cx.app_only {
            String::new()
        } else {
            format!(", then {authorize}")
        };
        Some(format!(
            "{permissions} have not been consented to: grant admin consent (Entra admin center \
             > App registrations > the app > API permissions > Grant admin consent){then}"
        ))
    } else if error == "invalid_scope" {
        Some(format!(
            "Entra refused the scopes: the app needs {permissions} (https://outlook.office.com/ \
             or https://outlook.office365.com/), not Graph-prefixed ones"
        ))
    } else if error == "invalid_client" || error == "unauthorized_client" {
        Some(format!(
            "Entra refused the app: check the tenant, the client id and the secret or \
             certificate registered for {owner}"
        ))
    } else {
        None
    };
    if app.is_some() || cx.app_only {
        return app;
    }
    // The user's sign-in.
    if code(700_082) {
        Some(format!(
            "the refresh token expired after 90 days without use: sign in again with \
             {authorize} (a running relay refreshes daily, which keeps it alive)"
        ))
    } else if code(50_076) || code(50_079) {
        Some(format!(
            "the tenant requires multi-factor authentication: sign in interactively with \
             {authorize} and complete MFA"
        ))
    } else if code(70_043) || error == "interaction_required" {
        Some(format!(
            "a Conditional Access sign-in frequency policy ended the session: sign in again \
             with {authorize} (the policy decides how often this recurs)"
        ))
    } else if error == "invalid_grant" {
        Some(format!(
            "Entra no longer accepts the refresh token (revoked sessions, a password reset, or \
             it expired): sign in again with {authorize}"
        ))
    } else {
        None
    }
}

/// Hints keyed on what Exchange Online answered: a login refusal (SMTP `535`, IMAP `NO`,
/// POP3 `-ERR`) or the refusal of a command after it.
fn reply_hint(step: Step, reply: &str, cx: &Context<'_>) -> Option<String> {
    let (mailbox, owner) = (cx.mailbox, cx.owner);
    // Who needs rights on the mailbox: the delegate's user, or the app's service principal.
    let grantee = if cx.app_only {
        "<the service principal's object ID>"
    } else {
        owner
    };
    let full_access = format!(
        "`Add-MailboxPermission -Identity {mailbox} -User {grantee} -AccessRights FullAccess`"
    );
    let code = |c: &str| reply.split_ascii_whitespace().any(|w| w == c);
    let says = |text: &str| {
        reply
            .to_ascii_lowercase()
            .contains(&text.to_ascii_lowercase())
    };
    if code("5.7.139") {
        return Some(format!(
            "SMTP AUTH is disabled for the tenant or the mailbox: in Exchange Online \
             PowerShell, `Set-CASMailbox -Identity {mailbox} -SmtpClientAuthenticationDisabled \
             $false`, or tenant-wide `Set-TransportConfig -SmtpClientAuthenticationDisabled \
             $false`"
        ));
    }
    if says("User is authenticated but not connected") {
        let who = if cx.app_only {
            "the app's service principal".to_owned()
        } else {
            owner.to_owned()
        };
        return Some(format!(
            "the login worked but the mailbox cannot be opened: {who} needs Full Access: \
             {full_access}"
        ));
    }
    if code("5.2.252") || says("SendAsDenied") || code("5.7.60") {
        return Some(format!(
            "{} may not send as {mailbox}: grant Send As with `Add-RecipientPermission \
             -Identity {mailbox} -Trustee {grantee} -AccessRights SendAs`",
            if cx.app_only { "the app" } else { owner }
        ));
    }
    if says("Request is throttled") {
        return Some(
            "Exchange Online is throttling this mailbox: wait the suggested back-off time and \
             try again"
                .to_owned(),
        );
    }
    let refused_login = match step {
        Step::Smtp => code("5.7.3") || reply.starts_with("535"),
        Step::Imap => says("AUTHENTICATE failed"),
        Step::Pop3 => says("Authentication failure"),
        Step::Token | Step::Graph | Step::Send => false,
    };
    if !refused_login {
        return None;
    }
    let switch = match step {
        Step::Imap => format!("`Set-CASMailbox -Identity {mailbox} -ImapEnabled $true`"),
        Step::Pop3 => format!("`Set-CASMailbox -Identity {mailbox} -PopEnabled $true`"),
        _ => {
            format!("`Set-CASMailbox -Identity {mailbox} -SmtpClientAuthenticationDisabled $false`")
        }
    };
    let disabled = format!("the protocol is disabled for the mailbox ({switch})");
    if cx.app_only {
        return Some(format!(
            "Microsoft refused the app-only token for {mailbox}. Causes: the app's service \
             principal is not registered in Exchange Online (`New-ServicePrincipal -AppId <app \
             id> -ObjectId <object ID of the Enterprise Application, not of the App \
             registration>`) or has no Full Access ({full_access}); {disabled}; or the app \
             lacks the application permission for it, with admin consent"
        ));
    }
    let shared = if mailbox == owner {
        String::new()
    } else {
        format!("; {owner} has no Full Access to the shared mailbox ({full_access})")
    };
    Some(format!(
        "Microsoft refused the token for {mailbox}. Causes: the token is for the wrong audience \
         (the app's permissions must be https://outlook.office.com/..., not Graph-prefixed \
         scopes); {disabled}{shared}; or, for app-only access, the service principal is not \
         registered in Exchange Online (`New-ServicePrincipal` with the Enterprise \
         Application's object ID, then `Add-MailboxPermission ... -AccessRights FullAccess`)"
    ))
}

// === the test message ===

/// The message `--send-to` sends: From the mailbox, a Subject, a Date and a Message-ID,
/// and a short plain-text body. CRLF line ends.
fn test_message(from: &str, to: &str, now: SystemTime) -> Vec<u8> {
    let domain = from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    let mut random = [0u8; 8];
    // Unpredictability is not needed here, only uniqueness; the clock covers a failure.
    let _ = aws_lc_rs::rand::fill(&mut random);
    let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let date = rfc5322_date(now);
    format!(
        "From: <{from}>\r\n\
         To: <{to}>\r\n\
         Subject: {TEST_SUBJECT}\r\n\
         Date: {date}\r\n\
         Message-ID: <m365-relay-test.{}.{random}@{domain}>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         Content-Transfer-Encoding: 7bit\r\n\
         \r\n\
         This is a test message sent by `m365-relay mailbox test` as {from}\r\n\
         at {date}, to check that the relay can send mail for it.\r\n\
         No reply is needed.\r\n",
        since_epoch.as_secs()
    )
    .into_bytes()
}

/// `Sat, 21 Nov 2026 10:00:00 +0000` (RFC 5322 §3.3), in UTC.
fn rfc5322_date(time: SystemTime) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) / 86_400;
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[(days % 7) as usize];
    // `YYYY-MM-DD hh:mm:ss UTC`, from the one calendar conversion in the crate.
    let utc = flows::utc(time);
    let mut parts = utc.split([' ', '-']);
    let (year, month, day, clock) = (
        parts.next().unwrap_or("1970"),
        parts
            .next()
            .and_then(|m| m.parse::<usize>().ok())
            .unwrap_or(1),
        parts.next().unwrap_or("01"),
        parts.next().unwrap_or("00:00:00"),
    );
    let month = MONTHS[month.clamp(1, 12) - 1];
    format!("{weekday}, {day} {month} {year} {clock} +0000")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "alice@contoso.com";
    const HELP: &str = "helpdesk@contoso.com";

    fn cx(mailbox: &'static str) -> Context<'static> {
        Context {
            mailbox,
            owner: ALICE,
            app_only: false,
            authority: "https://login.microsoftonline.com",
        }
    }

    fn rejected(error: &str, code: u64) -> Failure {
        Failure::Token(TokenError::Idp(IdpError::Rejected {
            status: 400,
            error: error.to_owned(),
            description: format!("AADSTS{code}: refused"),
            codes: vec![code],
        }))
    }

    fn login_refused(reply: &str) -> Failure {
        Failure::Login(Error::UpstreamRejected {
            server: "outlook.office365.com:993".into(),
            mailbox: ALICE.into(),
            reply: reply.into(),
        })
    }

    fn hint_of(step: Step, failure: &Failure) -> String {
        hint(step, failure, &cx(ALICE)).unwrap_or_else(|| panic!("no hint for {failure}"))
    }

    #[test]
    fn aadsts_codes_have_hints() {
        for (error, code, expected) in [
            ("invalid_grant", 700_082, "90 days without use"),
            (
                "invalid_grant",
                700_082,
                "mailbox authorize alice@contoso.com",
            ),
            ("interaction_required", 70_043, "sign-in frequency"),
            ("interaction_required", 0, "sign-in frequency"),
            ("invalid_client", 7_000_222, "client secret expired"),
            ("invalid_client", 7_000_215, "secret's Value"),
            ("invalid_client", 7_000_218, "confidential client"),
            ("invalid_client", 700_025, "public client"),
            ("invalid_grant", 65_001, "admin consent"),
            ("consent_required", 0, "admin consent"),
            ("interaction_required", 50_076, "multi-factor"),
            ("interaction_required", 50_079, "multi-factor"),
            ("invalid_scope", 70_011, "not Graph-prefixed"),
            ("invalid_grant", 70_000, "revoked sessions"),
            ("unauthorized_client", 700_016, "client id"),
        ] {
            let hint = hint_of(Step::Token, &rejected(error, code));
            assert!(hint.contains(expected), "{error} {code}: {hint}");
        }
        assert_eq!(
            hint(Step::Token, &rejected("server_error", 1), &cx(ALICE)),
            None
        );
        let unreachable = Failure::Token(TokenError::Idp(IdpError::Unavailable {
            reason: "connection refused".into(),
            retry_after: None,
        }));
        let h = hint_of(Step::Token, &unreachable);
        assert!(h.contains("https://login.microsoftonline.com") && h.contains("upstream.ca_file"));
        let h = hint_of(Step::Token, &Failure::Token(TokenError::NotAuthorized));
        assert!(
            h.contains("`m365-relay mailbox authorize alice@contoso.com`"),
            "{h}"
        );
    }

    #[test]
    fn exchange_refusals_have_hints() {
        let disabled = "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is \
                        disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more \
                        information.";
        let h = hint_of(Step::Smtp, &login_refused(disabled));
        assert!(
            h.contains("Set-CASMailbox -Identity alice@contoso.com -SmtpClientAuthenticationDisabled $false")
                && h.contains("Set-TransportConfig -SmtpClientAuthenticationDisabled $false"),
            "{h}"
        );

        for (step, reply, switch) in [
            (
                Step::Smtp,
                "535 5.7.3 Authentication unsuccessful [X.prod.outlook.com]",
                "-SmtpClientAuthenticationDisabled $false",
            ),
            (
                Step::Imap,
                "R1 NO AUTHENTICATE failed.",
                "-ImapEnabled $true",
            ),
            (
                Step::Pop3,
                "-ERR Authentication failure: unknown user name or bad password.",
                "-PopEnabled $true",
            ),
        ] {
            let h = hint_of(step, &login_refused(reply));
            for part in [
                switch,
                "wrong audience",
                "New-ServicePrincipal",
                "Enterprise Application",
            ] {
                assert!(h.contains(part), "{reply}: {part}: {h}");
            }
            assert!(!h.contains("shared mailbox"), "{h}");
            let shared = hint(step, &login_refused(reply), &cx(HELP)).unwrap();
            assert!(
                shared.contains(
                    "Add-MailboxPermission -Identity helpdesk@contoso.com -User alice@contoso.com -AccessRights FullAccess"
                ),
                "{shared}"
            );
        }
        // 5.7.30 is not 5.7.3.
        let basic = "550 5.7.30 Basic authentication is not supported for Client Submission.";
        assert_eq!(hint(Step::Send, &login_refused(basic), &cx(ALICE)), None);

        let not_connected = Failure::Command(CommandError::Refused {
            server: "outlook.office365.com:993".into(),
            command: "SELECT INBOX",
            reply: "R3 NO User is authenticated but not connected.".into(),
        });
        assert!(hint_of(Step::Imap, &not_connected).contains("FullAccess"));

        let send_as = Failure::Command(CommandError::Refused {
            server: "smtp.office365.com:587".into(),
            command: "the message",
            reply: "554 5.2.252 SendAsDenied; alice@contoso.com not allowed to send as \
                    helpdesk@contoso.com"
                .into(),
        });
        let h = hint(Step::Send, &send_as, &cx(HELP)).unwrap();
        assert!(
            h.contains("Add-RecipientPermission -Identity helpdesk@contoso.com -Trustee alice@contoso.com -AccessRights SendAs"),
            "{h}"
        );
        assert_eq!(
            hint(Step::Imap, &login_refused("R1 BAD what"), &cx(ALICE)),
            None
        );
    }

    #[test]
    fn app_only_mailboxes_get_app_only_hints() {
        let app_only = Context {
            app_only: true,
            ..cx(ALICE)
        };
        let h = hint(
            Step::Imap,
            &login_refused("R1 NO AUTHENTICATE failed."),
            &app_only,
        )
        .unwrap();
        for part in [
            "New-ServicePrincipal",
            "not of the App registration",
            "-User <the service principal's object ID> -AccessRights FullAccess",
            "-ImapEnabled $true",
        ] {
            assert!(h.contains(part), "{part}: {h}");
        }
        assert!(!h.contains("wrong audience"), "{h}");
        // No user signs in: the sign-in hints do not apply, the app's do.
        for (error, code) in [("invalid_grant", 700_082), ("interaction_required", 50_076)] {
            assert_eq!(hint(Step::Token, &rejected(error, code), &app_only), None);
        }
        let h = hint(Step::Token, &rejected("invalid_client", 700_027), &app_only).unwrap();
        assert!(h.contains("certificate"), "{h}");
        let h = hint(Step::Token, &rejected("invalid_grant", 65_001), &app_only).unwrap();
        assert!(
            h.contains("IMAP.AccessAsApp") && !h.contains("authorize"),
            "{h}"
        );
    }

    #[test]
    fn network_and_tls_have_hints() {
        let unreachable = Failure::Login(Error::UpstreamUnreachable {
            server: "smtp.office365.com:587".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        });
        let h = hint_of(Step::Smtp, &unreachable);
        assert!(
            h.contains("firewall") && h.contains("smtp.office365.com:587"),
            "{h}"
        );
        let timeout = Failure::Command(CommandError::Failed(Error::UpstreamTimeout {
            server: "outlook.office365.com:995".into(),
            during: "asking STAT",
        }));
        assert!(hint_of(Step::Pop3, &timeout).contains("proxy"));
        let tls = Failure::Login(Error::UpstreamTls {
            server: "outlook.office365.com:993".into(),
            detail: "invalid peer certificate: UnknownIssuer".into(),
        });
        assert!(hint_of(Step::Imap, &tls).contains("`upstream.ca_file`"));
    }

    #[test]
    fn lines_line_up_and_hold_no_control_characters() {
        let ok = line(
            Step::Imap,
            "ok",
            Some(Duration::from_millis(52)),
            "a\r\n\x1b[31mb",
        );
        assert_eq!(ok, "imap  ok       0.05s  a [31mb");
        let failed = line(Step::Token, "FAILED", Some(Duration::from_secs(12)), "x");
        assert_eq!(failed, "token FAILED  12.00s  x");
        let skipped = line(Step::Send, "skipped", None, "no SMTP login");
        assert_eq!(skipped, "send  skipped         no SMTP login");
        assert_eq!(count_words(1, "message"), "1 message");
        assert_eq!(count_words(0, "byte"), "0 bytes");
    }

    #[test]
    fn the_test_message() {
        let at = UNIX_EPOCH + Duration::from_secs(1_795_255_200); // 2026-11-21 10:00:00 UTC
        assert_eq!(rfc5322_date(at), "Sat, 21 Nov 2026 10:00:00 +0000");
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        let message = String::from_utf8(test_message(HELP, "bob@fabrikam.com", at)).unwrap();
        let (head, body) = message.split_once("\r\n\r\n").unwrap();
        let headers: Vec<&str> = head.split("\r\n").collect();
        assert_eq!(headers[0], "From: <helpdesk@contoso.com>");
        assert_eq!(headers[1], "To: <bob@fabrikam.com>");
        assert_eq!(headers[2], "Subject: m365-relay test message");
        assert_eq!(headers[3], "Date: Sat, 21 Nov 2026 10:00:00 +0000");
        assert!(
            headers[4].starts_with("Message-ID: <m365-relay-test.1795255200.")
                && headers[4].ends_with("@contoso.com>"),
            "{}",
            headers[4]
        );
        assert!(body.ends_with("\r\n") && !body.replace("\r\n", "").contains('\n'));
        assert!(message.is_ascii());
        assert_ne!(
            test_message(HELP, "bob@fabrikam.com", at),
            test_message(HELP, "bob@fabrikam.com", at),
            "each message has its own Message-ID"
        );
    }
}
