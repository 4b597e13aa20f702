//! `m365-relay state migrate` and `state status`: the database's schema, and what the
//! state holds. Nothing secret is shown: the database as `host:port/database`, counts.

use std::io::Write;

use anyhow::bail;

use crate::config::{Config, StateBackend};
use crate::state::files::FileQueue;
use crate::state::files::{REGISTRY_FILE, TOKENS_DIR};
use crate::state::postgres::{Database, admin, schema};
use crate::state::queue::{MailboxDepth, OutboundQueue};
use crate::state::seal::StateKey;

/// `state migrate`: applies the schema's migrations the database lacks.
pub fn migrate(config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    let StateBackend::Postgres(settings) = &config.state else {
        writeln!(
            out,
            "backend: files ({}); nothing to migrate: the state folder's formats are \
             converted when read",
            config.state_dir.display()
        )?;
        return Ok(());
    };
    let db = Database::open(settings)?;
    let migrated = schema::migrate(&db)?;
    if migrated.before == migrated.after {
        writeln!(
            out,
            "database {}: schema version {}, up to date",
            db.server(),
            migrated.after
        )?;
    } else {
        writeln!(
            out,
            "database {}: schema migrated from version {} to {}",
            db.server(),
            migrated.before,
            migrated.after
        )?;
    }
    Ok(())
}

/// `state status`: the backend and what it holds; an error (exit 1) when it cannot be read.
pub fn status(config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    match &config.state {
        StateBackend::Files => files_status(config, out),
        StateBackend::Postgres(settings) => {
            writeln!(out, "backend: postgres")?;
            writeln!(out, "database: {}", settings.server)?;
            let db = Database::open(settings)?;
            let version = match schema::version(&db) {
                Ok(version) => version,
                Err(e) => {
                    writeln!(out, "reachable: no")?;
                    bail!("{e}");
                }
            };
            writeln!(out, "reachable: yes")?;
            writeln!(
                out,
                "schema: version {version} (this relay's: {})",
                schema::LATEST
            )?;
            if version == 0 {
                writeln!(
                    out,
                    "mailboxes: 0 (no schema yet: `m365-relay state migrate`)"
                )?;
                return Ok(());
            }
            let holdings = admin::holdings(&db)?;
            writeln!(out, "mailboxes: {}", holdings.mailboxes)?;
            writeln!(out, "refresh tokens: {}", holdings.tokens)?;
            if version < 3 {
                writeln!(out, "queue: none yet (`m365-relay state migrate`)")?;
            } else {
                let (queued, failed) = crate::state::postgres::queue::depth(&db)?;
                writeln!(out, "queued messages: {queued}")?;
                writeln!(out, "failed messages: {failed}")?;
            }
            Ok(())
        }
    }
}

/// The state folder's registry (read, never migrated) and token files.
fn files_status(config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(out, "backend: files")?;
    writeln!(out, "state_dir: {}", config.state_dir.display())?;
    let key = StateKey::load(&config.key_file)?;
    let registry = crate::state::files::with_key(&config.state_dir, key.clone()).registry();
    let mailboxes = registry.load()?.len();
    let tokens = match std::fs::read_dir(config.state_dir.join(TOKENS_DIR)) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .count(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => bail!("{}: {e}", config.state_dir.join(TOKENS_DIR).display()),
    };
    writeln!(out, "mailboxes: {mailboxes} ({REGISTRY_FILE})")?;
    writeln!(out, "refresh tokens: {tokens}")?;
    let queue = FileQueue::open(&config.state_dir, key.clone(), config.queue.max_bytes)?;
    let stats = queue.stats()?;
    let count = |of: fn(&MailboxDepth) -> u64| stats.mailboxes.iter().map(of).sum::<u64>();
    writeln!(out, "queued messages: {}", count(|m| m.queued))?;
    writeln!(out, "failed messages: {}", count(|m| m.failed))?;
    Ok(())
}
