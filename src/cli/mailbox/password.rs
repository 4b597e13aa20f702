//! `mailbox password`: sets the local password that mail clients use for a mailbox, either
//! generated (and printed once) or read from standard input.

use anyhow::bail;

use super::console::Console;
use super::input::read_password;
use crate::auth::{generate_password, hash_chosen};
use crate::mailbox::{PasswordVerifier, normalize_address};
use crate::state::State;

/// Where a new local password comes from: exactly one of the two.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct PasswordSource {
    /// Generate a random password and print it once.
    #[arg(long)]
    pub(super) generate: bool,
    /// Read the password from one line of standard input.
    #[arg(long)]
    pub(super) stdin: bool,
}

/// `mailbox password ADDRESS`: a new password from `source` for a registered mailbox.
pub(super) fn run(
    address: &str,
    source: &PasswordSource,
    state: &State,
    io: &mut Console<'_>,
) -> anyhow::Result<()> {
    let address = normalize_address(address)?;
    // Checked before the password is asked for; set under the lock (no prompt and no
    // hashing while it is held).
    if state.registry().load_and_migrate()?.get(&address).is_none() {
        bail!("mailbox {address} is not registered");
    }
    if source.generate {
        let (password, verifier) = generate_password()?;
        set_password(state, &address, verifier)?;
        writeln!(io.out, "{}", password.expose())?;
        writeln!(
            io.err,
            "This is the new password of {address}. It will not be shown again."
        )?;
    } else {
        let password = read_password(io.input)?;
        set_password(state, &address, hash_chosen(&password)?)?;
        writeln!(io.out, "password of {address} set")?;
    }
    Ok(())
}

/// Gives the registered mailbox `address` the password `verifier`, under the state lock.
fn set_password(state: &State, address: &str, verifier: PasswordVerifier) -> anyhow::Result<()> {
    let mut registry = state.registry().locked()?;
    registry.set_password(address, Some(verifier))?;
    registry.save()?;
    Ok(())
}
