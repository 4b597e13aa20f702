//! The queue folder's files (see [`super`] for the layout): durable writes (a temp file
//! held under an OS lock while it is written, synced, renamed, then the folder synced),
//! and the reads of a message file's header, of an entry's bookkeeping and of a sealed
//! body.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::dirsync::DirSync;
use crate::state::error::StoreError;
use crate::state::files::records::json_why;
use crate::state::private::{FILE_MODE, ensure_private_dir};
use crate::state::queue::{Entry, QueueId};

/// The message file's format version.
const FORMAT_VERSION: u32 = 1;

/// Longest header line or bookkeeping file read (an envelope with many recipients).
const MAX_HEADER: u64 = 1024 * 1024;

/// Extension of a message file (header line and sealed body).
pub(super) const MESSAGE: &str = "msg";
/// Extension of an entry's bookkeeping, once it changed after acceptance.
pub(super) const BOOKKEEPING: &str = "json";
/// Suffix of a file set aside because it could not be read.
pub(super) const BAD: &str = "bad";
/// The file whose content changes with every `queue retry`/`remove` (another process's
/// change: the relay reloads its index when it sees a new one).
const STAMP: &str = ".changed";

/// A message file's first line.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    version: u32,
    /// Length of the sealed body that follows the line.
    sealed_size: u64,
    /// The entry as accepted.
    entry: Entry,
}

/// An entry as stored, with its sealed body's size.
#[derive(Debug, Clone)]
pub(super) struct Stored {
    pub(super) entry: Entry,
    pub(super) sealed_size: u64,
}

/// Why a file gave nothing usable.
#[derive(Debug)]
pub(super) enum Unreadable {
    Io(io::Error),
    Corrupt(String),
}

impl Unreadable {
    pub(super) fn store_error(self, file: &Path) -> StoreError {
        let source = match self {
            Unreadable::Io(e) => e,
            Unreadable::Corrupt(why) => io::Error::other(format!("unreadable queue file: {why}")),
        };
        StoreError::Io {
            file: file.to_owned(),
            source,
        }
    }
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::Io(e) => e.fmt(f),
            Unreadable::Corrupt(why) => f.write_str(why),
        }
    }
}

impl From<io::Error> for Unreadable {
    fn from(e: io::Error) -> Self {
        Unreadable::Io(e)
    }
}

/// The queue folder.
#[derive(Debug)]
pub(super) struct Folder {
    pub(super) dir: PathBuf,
    syncs: DirSync,
}

impl Folder {
    pub(super) fn new(dir: PathBuf) -> Self {
        Self {
            syncs: DirSync::new(&dir),
            dir,
        }
    }

    pub(super) fn path(&self, id: &QueueId, extension: &str) -> PathBuf {
        self.dir.join(format!("{id}.{extension}"))
    }

    /// Stores the message file of `entry` durably; on an error nothing of it is left.
    pub(super) fn write_message(&self, entry: &Entry, sealed: &[u8]) -> io::Result<()> {
        let header = Header {
            version: FORMAT_VERSION,
            sealed_size: sealed.len() as u64,
            entry: entry.clone(),
        };
        let mut line = serde_json::to_vec(&header).map_err(io::Error::other)?;
        line.push(b'\n');
        let path = self.path(&entry.id, MESSAGE);
        // Published as a new name: an existing message of that id stays (`AlreadyExists`).
        self.publish(&path, &[&line, sealed], false)?;
        if let Err(e) = self.sync() {
            // Published but not synced: not acknowledged, so not kept; the removal is
            // synced too (best effort: the folder just failed to sync), so that a
            // message the client was refused does not come back after a crash.
            let _ = fs::remove_file(&path);
            let _ = self.sync();
            return Err(e);
        }
        Ok(())
    }

    /// Rewrites the bookkeeping of `entry` durably.
    pub(super) fn write_bookkeeping(&self, entry: &Entry) -> io::Result<()> {
        let json = serde_json::to_vec(entry).map_err(io::Error::other)?;
        self.write_durably(&self.path(&entry.id, BOOKKEEPING), &[&json])
    }

    /// Deletes the message file of `id`, then its bookkeeping (a crash between leaves a
    /// bookkeeping file alone, which the next start removes); whether the message was
    /// there. The folder is not synced: see [`Folder::sync`].
    pub(super) fn delete(&self, id: &QueueId) -> io::Result<bool> {
        let existed = match fs::remove_file(self.path(id, MESSAGE)) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        match fs::remove_file(self.path(id, BOOKKEEPING)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(existed),
        }
    }

    /// Makes the renames and deletions made so far durable (shared with concurrent callers).
    pub(super) fn sync(&self) -> io::Result<()> {
        self.syncs.sync()
    }

    /// Creates the folder if missing, and then syncs the state folder that holds it, so
    /// that the new folder (and what is later written into it) survives a crash.
    pub(super) fn create(&self) -> io::Result<()> {
        if self.dir.is_dir() {
            return Ok(());
        }
        ensure_private_dir(&self.dir)?;
        match self.dir.parent() {
            Some(parent) => File::open(parent).and_then(|dir| dir.sync_all()),
            None => Ok(()),
        }
    }

    /// The current change stamp (`None` before the first change).
    pub(super) fn stamp(&self) -> Option<Vec<u8>> {
        let file = File::open(self.dir.join(STAMP)).ok()?;
        let mut stamp = Vec::new();
        file.take(256).read_to_end(&mut stamp).ok()?;
        Some(stamp)
    }

    /// Tells the other processes of this folder that entries changed.
    pub(super) fn touch_stamp(&self) -> io::Result<()> {
        let stamp = QueueId::new();
        self.write_durably(&self.dir.join(STAMP), &[stamp.as_str().as_bytes()])
    }

    /// `parts` as the file `path`, replacing it: a locked temp file, synced, renamed, the
    /// folder synced.
    fn write_durably(&self, path: &Path, parts: &[&[u8]]) -> io::Result<()> {
        self.publish(path, parts, true)?;
        self.sync()
    }

    /// `parts` as the file `path` (the folder not synced yet): a locked temp file, synced,
    /// then renamed over `path` (`replace`) or linked as `path`, which fails with
    /// `AlreadyExists` rather than replace a file there. On an error nothing of it is left.
    fn publish(&self, path: &Path, parts: &[&[u8]], replace: bool) -> io::Result<()> {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let (tmp, file) = self.create_temp(&name)?;
        let written = parts
            .iter()
            .try_for_each(|part| (&file).write_all(part))
            .and_then(|()| file.sync_data())
            .and_then(|()| match replace {
                true => fs::rename(&tmp, path),
                false => fs::hard_link(&tmp, path),
            });
        if written.is_err() || !replace {
            // A linked temp name goes (its data stays under `path`); a leftover is a dead
            // temp file the next start removes.
            let _ = fs::remove_file(&tmp);
        }
        // The lock is held until the temp name is gone.
        drop(file);
        written
    }

    /// A fresh `0600` temp file for `name`, locked (`flock`) while it is written, so that
    /// the cleaning at open ([`is_temp`]) never takes a live writer's file, whichever
    /// process (the relay, a CLI command) cleans.
    fn create_temp(&self, name: &str) -> io::Result<(PathBuf, File)> {
        ensure_private_dir(&self.dir)?;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut last = None;
        for _ in 0..16 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let tmp = self
                .dir
                .join(format!(".{name}.tmp.{}.{n}", std::process::id()));
            let file = match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&tmp)
            {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            match file.try_lock() {
                // A file system without `flock`: written unlocked.
                Ok(()) | Err(fs::TryLockError::Error(_)) => return Ok((tmp, file)),
                // A cleaner took it between the creation and the lock: it deletes it.
                Err(fs::TryLockError::WouldBlock) => {}
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free temp file name")))
    }

    /// The entry of `id` as it stands (its bookkeeping, else its message file's header),
    /// `None` when the message is gone.
    pub(super) fn read_entry(&self, id: &QueueId) -> Result<Option<Stored>, StoreError> {
        let file = self.path(id, MESSAGE);
        let Some(mut stored) = self.read_header(id).map_err(|e| e.store_error(&file))? else {
            return Ok(None);
        };
        let file = self.path(id, BOOKKEEPING);
        if let Some(entry) = self
            .read_bookkeeping(id)
            .map_err(|e| e.store_error(&file))?
        {
            stored.entry = entry;
        }
        Ok(Some(stored))
    }

    /// The entry in the message file of `id` as accepted, `None` when there is no file.
    pub(super) fn read_header(&self, id: &QueueId) -> Result<Option<Stored>, Unreadable> {
        let file = match File::open(self.path(id, MESSAGE)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let len = file.metadata()?.len();
        let mut line = Vec::new();
        BufReader::with_capacity(4096, file.take(MAX_HEADER)).read_until(b'\n', &mut line)?;
        let header = parse_header(id, &line)?;
        if line.len() as u64 + header.sealed_size != len {
            return Err(Unreadable::Corrupt(format!(
                "{len} bytes where the header says {}",
                line.len() as u64 + header.sealed_size
            )));
        }
        Ok(Some(Stored {
            entry: header.entry,
            sealed_size: header.sealed_size,
        }))
    }

    /// The bookkeeping of `id`, `None` when it was not rewritten since its acceptance.
    pub(super) fn read_bookkeeping(&self, id: &QueueId) -> Result<Option<Entry>, Unreadable> {
        let file = match File::open(self.path(id, BOOKKEEPING)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let mut json = Vec::new();
        file.take(MAX_HEADER).read_to_end(&mut json)?;
        let entry: Entry =
            serde_json::from_slice(&json).map_err(|e| Unreadable::Corrupt(json_why(&e)))?;
        if entry.id != *id {
            return Err(Unreadable::Corrupt(format!("it names {}", entry.id)));
        }
        Ok(Some(entry))
    }

    /// The sealed body of `id`, `None` when the message is gone.
    pub(super) fn read_sealed(&self, id: &QueueId) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(id, MESSAGE);
        let mut bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Unreadable::Io(e).store_error(&path)),
        };
        let end = bytes
            .iter()
            .take(MAX_HEADER as usize)
            .position(|b| *b == b'\n')
            .map(|at| at + 1)
            .ok_or_else(|| Unreadable::Corrupt("no header line".into()).store_error(&path))?;
        let header = parse_header(id, &bytes[..end]).map_err(|e| e.store_error(&path))?;
        let sealed = bytes.split_off(end);
        if sealed.len() as u64 != header.sealed_size {
            let why = format!(
                "a sealed body of {} bytes, not {}",
                sealed.len(),
                header.sealed_size
            );
            return Err(Unreadable::Corrupt(why).store_error(&path));
        }
        Ok(Some(sealed))
    }

    /// Renames `path` to `{path}.bad`, so that it is kept for the admin but not read again.
    pub(super) fn set_aside(&self, path: &Path, why: &str) {
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".{BAD}"));
        match fs::rename(path, &aside) {
            Ok(()) => tracing::error!(
                file = %path.display(),
                kept_as = %Path::new(&aside).display(),
                why,
                "a queue file cannot be read; it is set aside, not delivered"
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(
                file = %path.display(),
                why,
                error = %e,
                "a queue file cannot be read, nor set aside"
            ),
        }
    }
}

/// A message file's header line (with its line end) for `id`, checked.
fn parse_header(id: &QueueId, line: &[u8]) -> Result<Header, Unreadable> {
    let json = line
        .strip_suffix(b"\n")
        .ok_or_else(|| Unreadable::Corrupt("no complete header line".into()))?;
    let header: Header =
        serde_json::from_slice(json).map_err(|e| Unreadable::Corrupt(json_why(&e)))?;
    if header.version != FORMAT_VERSION {
        return Err(Unreadable::Corrupt(format!(
            "format version {} (this build reads {FORMAT_VERSION})",
            header.version
        )));
    }
    if header.entry.id != *id {
        return Err(Unreadable::Corrupt(format!("it names {}", header.entry.id)));
    }
    Ok(header)
}

/// Whether a file name is a temp file of [`Folder::write_durably`].
pub(super) fn is_temp(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp.")
}

/// Deletes the temp file `path` unless a writer still holds it; whether it went.
pub(super) fn remove_dead_temp(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    if file.try_lock().is_err() {
        return false;
    }
    fs::remove_file(path).is_ok()
}
