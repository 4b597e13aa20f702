//! `m365-relay state export --to-dir DIR` and `state import --from-dir DIR`: a whole state
//! moved between a state folder and the configured backend, sealed secrets included (see
//! [`crate::state::snapshot`]). Neither writes over a state without `--force`, and neither
//! leaves a target half-written.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};

use crate::config::{Config, StateBackend};
use crate::state::files::REGISTRY_FILE;
use crate::state::postgres::{Database, admin, schema};
use crate::state::seal::StateKey;
use crate::state::snapshot::{Counts, Snapshot, refuse_queued};

/// `state export`: the configured state, written as the state folder `dir`.
pub fn export(config: &Config, dir: &Path, force: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let key = StateKey::load(&config.key_file)?;
    let state = crate::state::open(config)?;
    let folder = matches!(config.state, StateBackend::Files).then_some(config.state_dir.as_path());
    refuse_queued(&state, folder, "the state")?;
    let snapshot = Snapshot::read(&state)?;
    snapshot.write_folder(dir, &key, force)?;
    writeln!(
        out,
        "exported {} to {}",
        describe(snapshot.counts()),
        dir.display()
    )?;
    Ok(())
}

/// `state import`: the state folder `dir`, written into the configured database.
pub fn import(config: &Config, dir: &Path, force: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let StateBackend::Postgres(settings) = &config.state else {
        bail!(
            "`state import` moves a state folder into the database: set [state] backend = \
             \"postgres\" (and its url) first; the files backend's state is a folder to copy"
        );
    };
    if !dir.join(REGISTRY_FILE).is_file() {
        bail!(
            "{} holds no {REGISTRY_FILE}: not a state folder",
            dir.display()
        );
    }
    let key = StateKey::load(&config.key_file)?;
    let source = crate::state::files::with_key(dir, key.clone());
    refuse_queued(&source, Some(dir), &dir.display().to_string())?;
    let snapshot = Snapshot::read(&source).with_context(|| format!("reading {}", dir.display()))?;
    let db = Database::open(settings)?;
    schema::migrate(&db)?;
    admin::import(&db, &key, &snapshot, force)?;
    writeln!(
        out,
        "imported {} from {} into the database {}",
        describe(snapshot.counts()),
        dir.display(),
        db.server()
    )?;
    Ok(())
}

fn describe(c: Counts) -> String {
    format!(
        "{} mailboxes, {} refresh tokens, {} statuses and {} route switches",
        c.mailboxes, c.tokens, c.statuses, c.switches
    )
}
