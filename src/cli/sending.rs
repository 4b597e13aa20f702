//! The sending settings of a mailbox on the command line: `mailbox add --smtp-via ...
//! --allowed-from ... --save-to-sent-items ...`, and `mailbox sending ADDRESS` to show or
//! change them later.

use std::io::Write;

use anyhow::{Context, bail};

use crate::cloud::Cloud;
use crate::mailbox::{Delivery, parse_allowed_sender};
use crate::mailbox::{Registration, Registry, normalize_address};
use crate::state::State;
use crate::submission::pool::own_server;
use crate::submission::{Sending, SmtpVia};

/// How the mailbox's SMTP submissions go out and which senders it may use.
#[derive(clap::Args, Debug, Default)]
pub struct SendingArgs {
    /// How mail submitted over SMTP goes out: auto (default: SMTP AUTH XOAUTH2, switching
    /// to Microsoft Graph for good when Exchange answers 535 5.7.139 "SMTP AUTH disabled"),
    /// xoauth2, or graph (needs the Graph permission Mail.Send).
    #[arg(long, value_enum, value_name = "WAY")]
    pub smtp_via: Option<SmtpVia>,
    /// A sender address (or @domain) this mailbox may use in MAIL FROM and the header
    /// From; repeat it for several. Default: the mailbox itself and the shared mailboxes
    /// that take their token from it.
    #[arg(long = "allowed-from", value_name = "SENDER")]
    pub allowed_from: Vec<String>,
    /// With Microsoft Graph, keep a copy of each message in Sent Items (default: true).
    #[arg(long, value_name = "BOOL")]
    pub save_to_sent_items: Option<bool>,
    /// When a client hears 250: direct (default: after Microsoft accepted the message) or
    /// queue (once the relay stored it durably in its queue, which delivers it, retrying
    /// while Microsoft is away or throttles).
    #[arg(long, value_enum, value_name = "WHEN")]
    pub delivery: Option<Delivery>,
    /// This mailbox's own SMTP upstream, HOST:PORT (STARTTLS, e.g. High Volume Email's
    /// smtp.hve.mx.microsoft:587), or `default` for the relay's smtp.upstream.
    #[arg(long, value_name = "HOST:PORT|default")]
    pub smtp_server: Option<String>,
}

impl SendingArgs {
    /// `base` changed as the flags say; `cloud` is the mailbox's Microsoft cloud.
    pub fn apply(&self, mut base: Sending, cloud: Option<Cloud>) -> anyhow::Result<Sending> {
        if let Some(server) = &self.smtp_server {
            base.smtp_server = own_server(server, cloud)
                .map_err(anyhow::Error::msg)
                .context("--smtp-server")?;
        }
        if let Some(via) = self.smtp_via {
            base.smtp_via = via;
        }
        if !self.allowed_from.is_empty() {
            base.allowed_from = self
                .allowed_from
                .iter()
                .map(|entry| parse_allowed_sender(entry))
                .collect::<Result<_, _>>()
                .map_err(anyhow::Error::msg)
                .context("--allowed-from")?;
        }
        if let Some(save) = self.save_to_sent_items {
            base.save_to_sent_items = save;
        }
        if let Some(delivery) = self.delivery {
            base.delivery = delivery;
        }
        Ok(base)
    }

    fn is_empty(&self) -> bool {
        self.smtp_via.is_none()
            && self.allowed_from.is_empty()
            && self.save_to_sent_items.is_none()
            && self.delivery.is_none()
            && self.smtp_server.is_none()
    }
}

/// `mailbox sending ADDRESS [flags]`.
#[derive(clap::Args, Debug)]
pub struct SendingCommand {
    /// The mailbox address.
    pub address: String,
    #[command(flatten)]
    pub change: SendingArgs,
    /// Go back to the default senders (the mailbox and its shared mailboxes).
    #[arg(long, conflicts_with = "allowed_from")]
    pub default_senders: bool,
}

/// Shows, and with flags changes, a mailbox's sending settings.
pub fn run(command: &SendingCommand, state: &State, out: &mut dyn Write) -> anyhow::Result<()> {
    let address = normalize_address(&command.address)?;
    let registry = if !command.change.is_empty() || command.default_senders {
        // Read, changed and written under the state lock, held until the switch is gone.
        let mut registry = state.registry().locked()?;
        let Some(mailbox) = registry.get(&address) else {
            bail!("mailbox {address} is not registered");
        };
        let cloud = cloud_of(&registry, mailbox);
        let mut sending = command.change.apply(mailbox.sending.clone(), cloud)?;
        if command.default_senders {
            sending.allowed_from.clear();
        }
        registry.set_sending(&address, sending)?;
        registry.save()?;
        if command.change.smtp_via.is_some() {
            // A way chosen again: an earlier automatic switch to Graph no longer holds.
            state.switches().forget(&address)?;
        }
        writeln!(out, "sending settings of {address} changed")?;
        Registry::clone(&registry)
    } else {
        state.registry().load_and_migrate()?
    };
    let Some(mailbox) = registry.get(&address) else {
        bail!("mailbox {address} is not registered");
    };
    describe(&registry, &address, &mailbox.sending, state, out)
}

/// The Microsoft cloud of `mailbox`'s token owner, if it is registered.
fn cloud_of(registry: &Registry, mailbox: &crate::mailbox::Mailbox) -> Option<Cloud> {
    match &registry.token_owner(mailbox).ok()?.registration {
        Registration::App { cloud, .. } => Some(*cloud),
        Registration::TokenFrom { .. } => None,
    }
}

/// The settings in words, as `mailbox sending` and `mailbox add` print them.
pub fn describe(
    registry: &Registry,
    address: &str,
    sending: &Sending,
    state: &State,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let via = match sending.smtp_via {
        SmtpVia::Auto => match state.switches().switched_at(address) {
            Some(_) => "auto (switched to Microsoft Graph: Exchange refused SMTP AUTH)".to_string(),
            None => {
                "auto (SMTP AUTH XOAUTH2; Microsoft Graph if SMTP AUTH is disabled)".to_string()
            }
        },
        via => via.to_string(),
    };
    writeln!(out, "  smtp via: {via}")?;
    let server = match &sending.smtp_server {
        Some(own) => format!("{own} (this mailbox's own)"),
        None => "default (the relay's smtp.upstream)".into(),
    };
    writeln!(out, "  smtp server: {server}")?;
    let senders = if sending.allowed_from.is_empty() {
        let dependents: Vec<String> = registry
            .dependents(address)
            .iter()
            .map(|m| m.address.clone())
            .collect();
        let mut all = vec![address.to_string()];
        all.extend(dependents);
        format!("{} (default)", all.join(", "))
    } else {
        sending.allowed_from.join(", ")
    };
    writeln!(out, "  allowed senders: {senders}")?;
    writeln!(
        out,
        "  save to Sent Items (Graph): {}",
        if sending.save_to_sent_items {
            "yes"
        } else {
            "no"
        }
    )?;
    let delivery = match sending.delivery {
        Delivery::Direct => "direct (250 after Microsoft accepted the message)",
        Delivery::Queue => "queue (250 once stored in the relay's queue, which delivers it)",
    };
    writeln!(out, "  delivery: {delivery}")?;
    Ok(())
}
