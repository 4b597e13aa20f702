//! Moving a whole state from one backend to another (`m365-relay state export` and
//! `state import`): a [`Snapshot`] is everything a state holds for its mailboxes, read
//! through the state traits, secrets opened in memory only; it is written sealed again with
//! the same state key, into a state folder (built aside, then renamed into place) or into
//! the database (`postgres::admin::import`, one transaction). Either target is written whole
//! or not at all, and one that already holds mailboxes or tokens is replaced only when asked.
//!
//! What is moved: the registry, each registered mailbox's refresh token, token status and
//! Graph route switch; the outbound queue, by `state::queue_transfer`. Not moved: tokens of addresses that are not registered, and what
//! the relay rebuilds on its own (access tokens, the refresh coordination).

use std::io;
use std::path::{Path, PathBuf};

use crate::mailbox::Registry;
use crate::secret::RefreshToken;
use crate::state::error::{RegistryStoreError, StoreError};
use crate::state::files;
use crate::state::handle::State;
use crate::state::postgres::database::DatabaseError;
use crate::state::private;
use crate::state::seal::StateKey;
use crate::state::status::MailboxStatus;

/// Everything a state holds for its mailboxes (secrets in memory, never written plain).
#[derive(Debug, Default)]
pub struct Snapshot {
    pub registry: Registry,
    /// The refresh token of each registered mailbox that has one.
    pub tokens: Vec<(String, RefreshToken)>,
    pub statuses: Vec<(String, MailboxStatus)>,
    /// When each switched mailbox was switched to Graph, and Exchange's reply then.
    pub switches: Vec<(String, u64, String)>,
}

/// Why a state could not be read or written whole. Names places and addresses, never a
/// secret.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Registry(#[from] RegistryStoreError),
    #[error(transparent)]
    Token(#[from] StoreError),
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The target holds a state, and `--force` was not given.
    #[error("{target} already holds {what}; nothing was written (add --force to replace it)")]
    NotEmpty { target: String, what: String },
}

/// How much a snapshot holds, for the administrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub mailboxes: usize,
    pub tokens: usize,
    pub statuses: usize,
    pub switches: usize,
}

impl Snapshot {
    /// Reads everything `state` holds for its registered mailboxes.
    pub fn read(state: &State) -> Result<Snapshot, TransferError> {
        let registry = state.registry().load_and_migrate()?;
        let (tokens, statuses, switches) = (state.tokens(), state.statuses(), state.switches());
        let mut snapshot = Snapshot::default();
        for mailbox in registry.iter() {
            let address = &mailbox.address;
            if let Some(token) = tokens.load(address)? {
                snapshot.tokens.push((address.clone(), token));
            }
            if let Some(status) = statuses.read(address) {
                snapshot.statuses.push((address.clone(), status));
            }
            if let Some((at, reply)) = switches.switch(address) {
                snapshot.switches.push((address.clone(), at, reply));
            }
        }
        snapshot.registry = registry;
        Ok(snapshot)
    }

    /// How much it holds.
    pub fn counts(&self) -> Counts {
        Counts {
            mailboxes: self.registry.len(),
            tokens: self.tokens.len(),
            statuses: self.statuses.len(),
            switches: self.switches.len(),
        }
    }

    /// Writes it as a state folder `dir`, sealed with `key`: built in a folder beside it,
    /// then renamed into place, so `dir` holds the old state or the new one, whole. A `dir`
    /// that exists and is not empty is replaced only with `force`.
    pub fn write_folder(
        &self,
        dir: &Path,
        key: &StateKey,
        force: bool,
    ) -> Result<(), TransferError> {
        self.write_folder_with(dir, key, force, &|_| Ok(()))
    }

    /// [`Snapshot::write_folder`], `also` writing more into the folder being built (the
    /// queue: `state::queue_transfer`) before it is renamed into place.
    pub fn write_folder_with(
        &self,
        dir: &Path,
        key: &StateKey,
        force: bool,
        also: &dyn Fn(&Path) -> Result<(), TransferError>,
    ) -> Result<(), TransferError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| TransferError::Io { path, source }
        };
        let occupied = match std::fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_some(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(io(dir)(e)),
        };
        if occupied && !force {
            return Err(TransferError::NotEmpty {
                target: dir.display().to_string(),
                what: "files".into(),
            });
        }
        let staging = beside(dir, "export").map_err(io(dir))?;
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
        }
        private::ensure_private_dir(&staging).map_err(io(&staging))?;
        let written = self
            .write_into(&files::with_key(&staging, key.clone()), &staging)
            .and_then(|()| also(&staging));
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        if occupied || dir.exists() {
            let replaced = beside(dir, "replaced").map_err(io(dir))?;
            std::fs::rename(dir, &replaced).map_err(io(dir))?;
            std::fs::rename(&staging, dir).map_err(io(dir))?;
            std::fs::remove_dir_all(&replaced).map_err(io(&replaced))?;
        } else {
            std::fs::rename(&staging, dir).map_err(io(dir))?;
        }
        Ok(())
    }

    /// Writes everything into `state` (a new, empty state folder at `place`).
    fn write_into(&self, state: &State, place: &Path) -> Result<(), TransferError> {
        let io = |source| TransferError::Io {
            path: place.to_owned(),
            source,
        };
        state.registry().save(&self.registry)?;
        for (address, token) in &self.tokens {
            state.tokens().save(address, token)?;
        }
        for (address, status) in &self.statuses {
            state.statuses().write(address, status).map_err(io)?;
        }
        for (address, at, reply) in &self.switches {
            state
                .switches()
                .switch_to_graph(address, *at, reply)
                .map_err(io)?;
        }
        Ok(())
    }
}

/// `.{name}.{what}-{pid}` in the folder of `dir`: on the same file system, so a rename.
fn beside(dir: &Path, what: &str) -> io::Result<PathBuf> {
    let name = dir.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "names no folder (ends in `..`?)",
        )
    })?;
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = parent.unwrap_or(Path::new("."));
    let mut hidden = std::ffi::OsString::from(".");
    hidden.push(name);
    hidden.push(format!(".{what}-{}", std::process::id()));
    Ok(parent.join(hidden))
}
