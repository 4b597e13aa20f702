//! `m365-relay state ...`: the state folder as a whole. For now one command,
//! `state reseal --trust-current-file`, the way out when `mailboxes.json` is refused
//! because its MAC does not verify or it has none (see [`crate::state::files::integrity`]): the administrator has checked the file and vouches for it as it is.

use std::io::Write;

use anyhow::bail;

use crate::config::Config;
use crate::state::files::REGISTRY_FILE;
use crate::state::files::integrity::was_sealed;
use crate::state::seal::StateKey;

#[derive(clap::Subcommand, Debug)]
pub enum StateCommand {
    /// Seal mailboxes.json as it is now, trusting its content: for a registry refused
    /// because it has no valid MAC, after checking it (or restoring it from a backup).
    Reseal {
        /// Required: says that you checked the file and trust everything in it (password
        /// verifiers, delegations, allowed senders), since whoever could write the state
        /// folder could have changed it.
        #[arg(long)]
        trust_current_file: bool,
    },
}

/// Runs a `state` command.
pub fn run(command: &StateCommand, config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    match command {
        StateCommand::Reseal { trust_current_file } => {
            let file = config.state_dir.join(REGISTRY_FILE);
            if !trust_current_file {
                bail!(
                    "`state reseal` trusts {} as it is now, whoever wrote it; check it, then \
                     run `m365-relay state reseal --trust-current-file`",
                    file.display()
                );
            }
            let key = StateKey::load(&config.key_file)?;
            let state = crate::state::files::with_key(&config.state_dir, key.clone());
            let registry = state.registry().reseal()?;
            writeln!(
                out,
                "sealed {} as it was ({} mailboxes); review them with `m365-relay mailbox list`",
                file.display(),
                registry.len()
            )?;
            if was_sealed(&key).is_none() {
                writeln!(
                    out,
                    "note: there is no seal marker next to the key, so a mailboxes.json \
                     without MAC will again need this command"
                )?;
            }
            Ok(())
        }
    }
}
