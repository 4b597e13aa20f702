//! `mailbox remove`: removes a mailbox and its stored refresh token, refused while other
//! mailboxes take their token from it.

use anyhow::bail;

use super::console::Console;
use crate::mailbox::{Registration, normalize_address};
use crate::state::State;

/// `mailbox remove`: refused while other mailboxes take their token from this one.
pub(super) fn remove(state: &State, address: &str, io: &mut Console<'_>) -> anyhow::Result<()> {
    let address = normalize_address(address)?;
    let mut registry = state.registry().locked()?;
    if registry.get(&address).is_none() {
        bail!("mailbox {address} is not registered");
    }
    let dependents: Vec<&str> = registry
        .dependents(&address)
        .into_iter()
        .map(|m| m.address.as_str())
        .collect();
    if !dependents.is_empty() {
        bail!(
            "{address} lends its token to {}; remove them first (or remove them and add them \
             again with another --token-from)",
            dependents.join(", ")
        );
    }
    let Some(removed) = registry.remove(&address) else {
        bail!("mailbox {address} is not registered");
    };
    registry.save()?;
    // The token store takes the lock itself.
    drop(registry);
    // A mailbox with --token-from has no token file; removing is harmless and thorough.
    state.tokens().remove(&address)?;
    match &removed.registration {
        Registration::App { .. } => writeln!(io.out, "removed {address} and its refresh token")?,
        Registration::TokenFrom { delegate } => writeln!(
            io.out,
            "removed {address} (the token of {delegate} is kept)"
        )?,
    }
    Ok(())
}
