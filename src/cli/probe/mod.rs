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
//!
//! The steps ([`steps`], [`graph`]) are kept apart from the hints ([`hints`]), which only
//! read a step's [`Failure`]; [`sequence`] runs the steps in order, [`report`] prints them.

mod failure;
mod graph;
mod hints;
mod message;
mod report;
mod sequence;
mod steps;

use std::io::Write;

use anyhow::{Context as _, bail};

pub use failure::{Context, Failure, Step};
pub use hints::hint;
pub use message::TEST_SUBJECT;
use steps::Probe;

use crate::config::Config;
use crate::mailbox::{Mailbox, Registration, Registry, normalize_address};
use crate::oauth::cache::TokenCache;
use crate::oauth::endpoint::TokenEndpoint;
use crate::state::State;
use crate::upstream::Connector;

/// What `mailbox test` is asked to do.
#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// The mailbox address.
    pub address: String,
    /// After the SMTP login, send a short test message from the mailbox to this address.
    #[arg(long, value_name = "ADDR")]
    pub send_to: Option<String>,
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
    let authority = authority(&registry, mailbox, &endpoint);
    let probe = Probe {
        config,
        authority,
        tokens: TokenCache::new(endpoint, state.tokens(), Some(state.statuses()))
            .with_leases(state.leases(), config.limits.token_timeout()),
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

/// Where the token endpoint is, for the hints: the login host of the cloud of the mailbox
/// whose token is used, unless the configuration names another.
fn authority(registry: &Registry, mailbox: &Mailbox, endpoint: &TokenEndpoint) -> String {
    let cloud = match registry.token_owner(mailbox).as_deref() {
        Ok(Mailbox {
            registration: Registration::App { cloud, .. },
            ..
        }) => *cloud,
        _ => Default::default(),
    };
    endpoint
        .authority(cloud)
        .as_str()
        .trim_end_matches('/')
        .to_owned()
}
