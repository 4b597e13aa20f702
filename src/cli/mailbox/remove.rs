//! `mailbox remove`: removes a mailbox and its stored refresh token, refused while other
//! mailboxes take their token from it.

use std::path::Path;

use anyhow::bail;

use super::console::Console;
use crate::mailbox::{Registration, Registry, normalize_address};
use crate::oauth::seal::StateKey;
use crate::oauth::store::TokenStore;

/// `mailbox remove`: refused while other mailboxes take their token from this one.
pub(super) fn remove(
    state_dir: &Path,
    key: &StateKey,
    address: &str,
    io: &mut Console<'_>,
) -> anyhow::Result<()> {
    let address = normalize_address(address)?;
    let mut registry = Registry::locked(state_dir, key)?;
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
    TokenStore::new(state_dir, key.clone()).remove(&address)?;
    match &removed.registration {
        Registration::App { .. } => writeln!(io.out, "removed {address} and its refresh token")?,
        Registration::TokenFrom { delegate } => writeln!(
            io.out,
            "removed {address} (the token of {delegate} is kept)"
        )?,
    }
    Ok(())
}
