//! `m365-relay state ...`: the state as a whole.
//!
//! - `state reseal --trust-current-file`: the way out when the registry is refused because
//!   its MAC does not verify or it has none (see [`crate::state::files::integrity`]): the
//!   administrator has checked it and vouches for it as it is;
//! - `state migrate` and `state status`: the database's schema, and what the state holds
//!   ([`super::state_status`]);
//! - `state export` and `state import`: a whole state moved between a state folder and the
//!   database ([`super::state_move`]).

use std::io::Write;
use std::path::PathBuf;

use anyhow::bail;

use crate::config::{Config, StateBackend};
use crate::state::files::REGISTRY_FILE;
use crate::state::files::integrity::was_sealed;
use crate::state::seal::StateKey;

#[derive(clap::Subcommand, Debug)]
pub enum StateCommand {
    /// Seal the registry as it is now, trusting its content: for a registry refused
    /// because it has no valid MAC, after checking it (or restoring it from a backup).
    Reseal {
        /// Required: says that you checked the registry and trust everything in it
        /// (password verifiers, delegations, allowed senders), since whoever could write
        /// the state folder (or the database) could have changed it.
        #[arg(long)]
        trust_current_file: bool,
    },
    /// Apply the database schema's migrations (backend "postgres"), then exit. The relay
    /// also applies them at start.
    Migrate,
    /// Show the backend, the schema version, whether the database is reachable, and how
    /// many mailboxes and refresh tokens the state holds (no secret). Exits 1 when the
    /// state cannot be read.
    Status,
    /// Write the configured state (e.g. the database) into the state folder DIR, sealed with
    /// the same state key: mailboxes, refresh tokens, statuses and route switches.
    Export {
        /// The folder to write; it must not exist or be empty unless --force.
        #[arg(long, value_name = "DIR")]
        to_dir: PathBuf,
        /// Replace what DIR holds.
        #[arg(long)]
        force: bool,
    },
    /// Read the state folder DIR (e.g. a former `state_dir`) into the configured database,
    /// in one transaction, sealed with the same state key.
    Import {
        /// The state folder to read (it holds mailboxes.json).
        #[arg(long, value_name = "DIR")]
        from_dir: PathBuf,
        /// Replace the mailboxes and tokens the database already holds.
        #[arg(long)]
        force: bool,
    },
}

/// Runs a `state` command.
pub fn run(command: &StateCommand, config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        StateCommand::Reseal { trust_current_file } => reseal(*trust_current_file, config, out),
        StateCommand::Migrate => super::state_status::migrate(config, out),
        StateCommand::Status => super::state_status::status(config, out),
        StateCommand::Export { to_dir, force } => {
            super::state_move::export(config, to_dir, *force, out)
        }
        StateCommand::Import { from_dir, force } => {
            super::state_move::import(config, from_dir, *force, out)
        }
    }
}

fn reseal(trust_current_file: bool, config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    let place = match &config.state {
        StateBackend::Files => config.state_dir.join(REGISTRY_FILE).display().to_string(),
        StateBackend::Postgres(db) => format!("the registry in the database {}", db.server),
    };
    if !trust_current_file {
        bail!(
            "`state reseal` trusts {place} as it is now, whoever wrote it; check it, then \
             run `m365-relay state reseal --trust-current-file`"
        );
    }
    let key = StateKey::load(&config.key_file)?;
    let registry = match &config.state {
        StateBackend::Files => {
            let state = crate::state::files::with_key(&config.state_dir, key.clone());
            state.registry().reseal()?
        }
        StateBackend::Postgres(_) => crate::state::open(config)?.registry().reseal()?,
    };
    writeln!(
        out,
        "sealed {place} as it was ({} mailboxes); review them with `m365-relay mailbox list`",
        registry.len()
    )?;
    if matches!(config.state, StateBackend::Files) && was_sealed(&key).is_none() {
        writeln!(
            out,
            "note: there is no seal marker next to the key, so a mailboxes.json \
             without MAC will again need this command"
        )?;
    }
    Ok(())
}
