//! `m365-relay state export --to-dir DIR` and `state import --from-dir DIR`: a whole state
//! moved between a state folder and the configured backend, sealed secrets included (see
//! [`crate::state::snapshot`]). Neither writes over a state without `--force`, and neither
//! leaves a target half-written.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};

use crate::config::{Config, StateBackend};
use crate::state::files::FileQueue;
use crate::state::files::REGISTRY_FILE;
use crate::state::postgres::{Database, PgQueue, admin, schema};
use crate::state::queue_transfer::{export_queue, folder_queue, import_queue};
use crate::state::seal::StateKey;
use crate::state::snapshot::{Counts, Snapshot};

/// `state export`: the configured state, written as the state folder `dir`.
pub fn export(config: &Config, dir: &Path, force: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let key = StateKey::load(&config.key_file)?;
    let state = crate::state::open(config)?;
    let Some(queue) = state.queue() else {
        bail!("this state keeps no outbound queue; nothing was exported");
    };
    let snapshot = Snapshot::read(&state)?;
    let messages = std::cell::Cell::new(0);
    snapshot.write_folder_with(dir, &key, force, &|staging| {
        messages.set(export_queue(queue.as_ref(), &key, staging)?);
        Ok(())
    })?;
    writeln!(
        out,
        "exported {} and {} queued messages to {}",
        describe(snapshot.counts()),
        messages.get(),
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
    let folder = FileQueue::open(dir, key.clone(), u64::MAX)?;
    let queued = folder_queue(&folder)?;
    let snapshot = Snapshot::read(&source).with_context(|| format!("reading {}", dir.display()))?;
    let db = Database::open(settings)?;
    schema::migrate(&db)?;
    admin::import(&db, &key, &snapshot, force)?;
    let queue = PgQueue::for_this_relay(db.clone(), key.clone(), u64::MAX);
    let added = import_queue(&folder, &queue, &key, &queued).context(
        "the state was imported, but not all of its queue: run the import again with --force",
    )?;
    writeln!(
        out,
        "imported {} and {added} queued messages from {} into the database {}",
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
