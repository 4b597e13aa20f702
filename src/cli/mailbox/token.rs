//! `mailbox import-token`: stores a refresh token read from standard input for a mailbox
//! with its own app registration and a user to sign in.

use anyhow::bail;

use super::console::Console;
use super::input::read_token;
use crate::mailbox::{Registration, normalize_address};
use crate::state::State;

/// `mailbox import-token ADDRESS`: refused for a mailbox that borrows its token or has no
/// refresh token at all (app-only).
pub(super) fn import(address: &str, state: &State, io: &mut Console<'_>) -> anyhow::Result<()> {
    let address = normalize_address(address)?;
    let registry = state.registry().load_and_migrate()?;
    let Some(mailbox) = registry.get(&address) else {
        bail!("mailbox {address} is not registered; add it first");
    };
    match &mailbox.registration {
        Registration::TokenFrom { delegate } => {
            bail!("{address} takes its token from {delegate}; import {delegate}'s token instead")
        }
        Registration::App { app_only: true, .. } => bail!(
            "{address} is app-only: it has no refresh token; the relay gets its tokens \
             with the app's client credentials"
        ),
        Registration::App { .. } => {}
    }
    let token = read_token(io.input)?;
    state.tokens().save(&address, &token)?;
    writeln!(io.out, "refresh token of {address} stored")?;
    Ok(())
}
