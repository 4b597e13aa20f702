//! The state folder's lock: one exclusive OS file lock (`flock`) on
//! `{state_dir}/state.lock`, held across every read–modify–write of a state file, by the
//! CLI and by the relay alike, so that two writers never lose each other's change (two
//! `mailbox password` commands at once, or `mailbox import-token` while the relay rotates
//! the same refresh token).
//!
//! The lock belongs to the open file: it is released when the [`StateLock`] is dropped,
//! and by the kernel when the process ends, however it ends, so a crash never leaves the
//! state locked. The lock file itself holds nothing and is never removed.
//!
//! Waiting is bounded ([`LOCK_WAIT`]): a holder keeps the lock for milliseconds (no
//! prompt, no network, no password hashing happens under it), so a longer wait means a
//! stuck process, which the error names. Within one process, taking the lock twice waits
//! for itself (the lock is per open file): take it once, at the outermost level.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::state::private::{FILE_MODE, ensure_private_dir};

/// File name of the lock inside the state folder.
pub const LOCK_FILE: &str = "state.lock";

/// Longest wait for the lock before giving up with an error.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Pause between two tries while another process holds the lock.
const RETRY_PAUSE: Duration = Duration::from_millis(5);

/// The exclusive lock on a state folder, held until dropped.
#[derive(Debug)]
pub struct StateLock {
    /// The locked file: closing it releases the lock.
    _file: File,
}

impl StateLock {
    /// Takes the lock of `state_dir` (created `0700` if missing), waiting at most
    /// [`LOCK_WAIT`] for another holder.
    pub fn acquire(state_dir: &Path) -> io::Result<StateLock> {
        Self::acquire_within(state_dir, LOCK_WAIT)
    }

    /// [`StateLock::acquire`] with another bound on the wait.
    pub fn acquire_within(state_dir: &Path, wait: Duration) -> io::Result<StateLock> {
        ensure_private_dir(state_dir)?;
        let path = lock_path(state_dir);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .open(&path)?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(StateLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(RETRY_PAUSE);
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{} is still locked after {} s by another m365-relay process; \
                             is one stuck?",
                            path.display(),
                            wait.as_secs()
                        ),
                    ));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
    }
}

/// `{state_dir}/state.lock`.
pub fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join(LOCK_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_second_holder_waits_and_gets_it_when_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = StateLock::acquire(&state).unwrap();
        let mode = std::fs::metadata(lock_path(&state))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let e = StateLock::acquire_within(&state, Duration::from_millis(20)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("state.lock"), "{e}");
        let waiter = {
            let state = state.clone();
            std::thread::spawn(move || StateLock::acquire(&state).map(drop))
        };
        std::thread::sleep(Duration::from_millis(30));
        assert!(!waiter.is_finished(), "it waits while the lock is held");
        drop(first);
        waiter.join().unwrap().unwrap();
    }
}
