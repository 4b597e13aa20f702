//! Atomic, private writes of the relay's state files (mailbox registry, refresh tokens),
//! and of the other private files (admin token, self-signed TLS certificate).
//!
//! [`write_private`] writes a new file next to the target under a unique name, created
//! `0600` from the start (never widened and narrowed later), syncs it, renames it over the
//! target, then syncs the folder so the rename itself is durable. A crash at any point
//! leaves either the old file or the new one, never a mix; at worst a hidden temp file
//! (`.{name}.tmp.*`) is left behind. Nothing reads temp files, and the next successful
//! write of the same file removes those older than [`STALE_TEMP_AGE`] (younger ones may
//! belong to a writer in another process that is still at work).
//!
//! [`create_private`] is the same, but never replaces an existing file (for the key file).
//! [`read_private`] reads a secret file back only if it is still private to its owner.
//!
//! The state folder's exclusive lock (`files::lock::StateLock`) is held across every
//! read–modify–write of a state file.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Mode of a state file: read and write by the owner only.
pub const FILE_MODE: u32 = 0o600;

/// Permission bits that make a secret file readable by someone other than its owner.
pub const GROUP_OTHER_BITS: u32 = 0o077;

/// Mode of a state folder the relay creates: owner only.
pub const DIR_MODE: u32 = 0o700;

/// How many temp names to try before giving up (each attempt is already unique to this
/// process and call; a clash means a stale file with the same name).
const TEMP_ATTEMPTS: u32 = 16;

/// How much of the target's name a temp name repeats (for whoever finds a stale one).
const TEMP_NAME_PREFIX: usize = 100;

/// Age after which a temp file is surely left over from a crash: a write takes
/// milliseconds, even with the syncs on a slow disk.
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(10 * 60);

/// Writes `bytes` to `path` atomically, as a `0600` file, creating the parent folder
/// (`0700`) if missing.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_private_with(path, |file| file.write_all(bytes))
}

/// Like [`write_private`], but fails with [`io::ErrorKind::AlreadyExists`] (and leaves it
/// alone) if `path` exists: the file appears complete or not at all, and of two processes
/// creating it at once exactly one succeeds. (A hard link, not a rename, puts it in place.)
pub fn create_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (dir, name) = split(path)?;
    ensure_private_dir(dir)?;
    let (tmp_path, mut file) = create_temp(dir, &name)?;
    let linked = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            fs::hard_link(&tmp_path, path)
        });
    // Whether or not the link was made, the temp name goes.
    let _ = fs::remove_file(&tmp_path);
    linked?;
    File::open(dir)?.sync_all()?;
    remove_stale_temps(dir, &name);
    Ok(())
}

/// Why a private file could not be read.
#[derive(Debug)]
pub enum PrivateRead {
    Io(io::Error),
    /// Group or others may access it (its permission bits).
    Exposed {
        mode: u32,
    },
    /// Larger than the caller's bound.
    TooLarge,
}

/// The content of a secret file (state key, admin token): refused if group or others may
/// access it, or if it is over `max_len` bytes. Wiped when dropped.
pub fn read_private(path: &Path, max_len: u64) -> Result<zeroize::Zeroizing<Vec<u8>>, PrivateRead> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(PrivateRead::Io)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(PrivateRead::Exposed { mode });
    }
    if meta.len() > max_len {
        return Err(PrivateRead::TooLarge);
    }
    fs::read(path)
        .map(zeroize::Zeroizing::new)
        .map_err(PrivateRead::Io)
}

/// Creates `path` and any missing parents with mode `0700`. An existing folder is left as
/// it is (its mode is the administrator's choice); an existing non-folder is an error.
pub fn ensure_private_dir(path: &Path) -> io::Result<()> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a folder", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(path),
        Err(e) => Err(e),
    }
}

/// [`write_private`] with the content written by `fill`, so tests can fail mid-write.
fn write_private_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let (dir, name) = split(path)?;
    ensure_private_dir(dir)?;

    let (tmp_path, mut file) = create_temp(dir, &name)?;
    let written = fill(&mut file)
        .and_then(|()| file.sync_all())
        .and_then(|()| {
            drop(file);
            fs::rename(&tmp_path, path)
        });
    if let Err(e) = written {
        // Best effort: the target is untouched either way.
        let _ = fs::remove_file(&tmp_path);
        return Err(e);
    }
    File::open(dir)?.sync_all()?;
    remove_stale_temps(dir, &name);
    Ok(())
}

/// The folder of `path` (`.` for a bare name) and its file name.
fn split(path: &Path) -> io::Result<(&Path, String)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((dir, name.to_string_lossy().into_owned()))
}

/// The start of every temp name for the target `name`.
fn temp_prefix(name: &str) -> String {
    let name: String = name.chars().take(TEMP_NAME_PREFIX).collect();
    format!(".{name}.tmp.")
}

/// Best effort: removes the temp files of `name` in `dir` last modified more than
/// [`STALE_TEMP_AGE`] ago (left by a crash; they may hold an old secret).
fn remove_stale_temps(dir: &Path, name: &str) {
    let now = SystemTime::now();
    let prefix = temp_prefix(name);
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|modified| {
                now.duration_since(modified)
                    .is_ok_and(|age| age > STALE_TEMP_AGE)
            });
        if stale && fs::remove_file(entry.path()).is_ok() {
            tracing::info!(file = %entry.path().display(), "removed a temp file left by a crash");
        }
    }
}

/// Creates a fresh `0600` file in `dir` whose name no other writer uses.
fn create_temp(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    // Short enough that the temp name fits NAME_MAX whenever the target's name does.
    let prefix = temp_prefix(name);
    let mut last = None;
    for _ in 0..TEMP_ATTEMPTS {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{prefix}{}.{n}.{nanos}", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temp file name")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp."))
            .collect()
    }

    #[test]
    fn creates_folder_and_file_privately() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a/b/state.json");
        write_private(&path, b"one").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        assert_eq!(mode(&tmp.path().join("a/b")), 0o700);
    }

    #[test]
    fn replaces_and_tightens_an_existing_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state.json");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(mode(&path), 0o600);
        assert!(leftovers(tmp.path()).is_empty());
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temp() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state.json");
        write_private(&path, b"good").unwrap();
        let e = write_private_with(&path, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "disk full");
        assert_eq!(fs::read(&path).unwrap(), b"good");
        assert!(leftovers(tmp.path()).is_empty());
    }

    #[test]
    fn a_failed_rename_leaves_no_temp() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("occupied");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"x").unwrap();
        assert!(write_private(&path, b"new").is_err());
        assert!(path.is_dir());
        assert!(leftovers(tmp.path()).is_empty());
    }

    /// A temp file as a crash between writing it and the rename leaves it.
    fn crash_leftover(dir: &Path, name: &str, bytes: &[u8], age: Duration) -> PathBuf {
        let (tmp, mut file) = create_temp(dir, name).unwrap();
        file.write_all(bytes).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
        tmp
    }

    #[test]
    fn a_crash_before_the_rename_leaves_the_old_file_and_the_next_write_cleans_up() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("state.json");
        write_private(&path, b"old").unwrap();
        let stale = crash_leftover(tmp.path(), "state.json", b"new", STALE_TEMP_AGE * 2);
        let other = crash_leftover(tmp.path(), "other.json", b"x", STALE_TEMP_AGE * 2);
        assert_eq!(
            fs::read(&path).unwrap(),
            b"old",
            "the crash changed nothing"
        );
        // A temp file that is still young may be another process's write in progress.
        let young = crash_leftover(tmp.path(), "state.json", b"newer", Duration::ZERO);

        write_private(&path, b"next").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"next");
        assert!(!stale.exists(), "the stale temp file is gone");
        assert!(young.exists(), "a young one is left alone");
        assert!(
            other.exists(),
            "another file's temp file is not ours to clean"
        );
    }

    #[test]
    fn create_private_never_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("keys/state.key");
        create_private(&path, b"first").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&tmp.path().join("keys")), 0o700);
        let e = create_private(&path, b"second").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert!(leftovers(&tmp.path().join("keys")).is_empty());
    }

    #[test]
    fn a_file_in_the_way_of_the_folder_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("state"), b"").unwrap();
        assert!(ensure_private_dir(&tmp.path().join("state")).is_err());
        assert!(write_private(&tmp.path().join("state/x.json"), b"").is_err());
    }
}
