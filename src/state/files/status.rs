//! Mailbox token statuses as files: `{state_dir}/status/{address}.json`, one small JSON
//! file per mailbox, written atomically and `0600` like all state.

use std::path::{Path, PathBuf};

use crate::state::private;
use crate::state::status::MailboxStatus;
use crate::state::traits::MailboxStatuses;

/// The status files under a state folder.
#[derive(Debug, Clone)]
pub struct StatusFiles {
    state_dir: PathBuf,
}

impl StatusFiles {
    /// The status files of `state_dir`; nothing is touched until one is written.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
        }
    }
}

impl MailboxStatuses for StatusFiles {
    fn write(&self, address: &str, status: &MailboxStatus) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
        private::write_private(&status_path(&self.state_dir, address), &json)
    }

    fn read(&self, address: &str) -> Option<MailboxStatus> {
        read_status(&self.state_dir, address)
    }
}

/// `{state_dir}/status/{address}.json`.
pub fn status_path(state_dir: &Path, address: &str) -> PathBuf {
    state_dir.join("status").join(format!("{address}.json"))
}

/// A mailbox's last written status in `state_dir`, if the relay wrote one.
pub fn read_status(state_dir: &Path, address: &str) -> Option<MailboxStatus> {
    let bytes = std::fs::read(status_path(state_dir, address)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn status_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let files = StatusFiles::new(dir.path());
        let mut s = MailboxStatus::default();
        s.refreshed(UNIX_EPOCH + Duration::from_secs(99), UNIX_EPOCH);
        files.write("a@x.com", &s).unwrap();
        assert_eq!(files.read("a@x.com"), Some(s));
        assert_eq!(files.read("b@x.com"), None);
    }
}
