//! Graph route switches as files: `{state_dir}/graph-switch/{address}.json`, holding when
//! Exchange refused SMTP AUTH for the mailbox and its reply. Deleting the file (or `mailbox
//! sending ADDRESS --smtp-via auto`) makes the relay try SMTP AUTH again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::private;
use crate::state::traits::RouteSwitches;

/// One switch file.
#[derive(Serialize, Deserialize)]
struct Switch {
    switched_at: u64,
    reply: String,
}

/// The switch files under a state folder.
#[derive(Debug, Clone)]
pub struct SwitchFiles {
    state_dir: PathBuf,
}

impl SwitchFiles {
    /// The switch files of `state_dir`; nothing is touched until one is written.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            state_dir: state_dir.to_owned(),
        }
    }

    fn path(&self, address: &str) -> PathBuf {
        self.state_dir
            .join("graph-switch")
            .join(format!("{address}.json"))
    }
}

impl RouteSwitches for SwitchFiles {
    fn switch(&self, address: &str) -> Option<(u64, String)> {
        let bytes = std::fs::read(self.path(address)).ok()?;
        serde_json::from_slice::<Switch>(&bytes)
            .ok()
            .map(|s| (s.switched_at, s.reply))
    }

    fn switch_to_graph(&self, address: &str, at: u64, reply: &str) -> std::io::Result<()> {
        let switch = Switch {
            switched_at: at,
            reply: reply.to_owned(),
        };
        let path = self.path(address);
        let bytes = serde_json::to_vec_pretty(&switch).map_err(std::io::Error::other)?;
        if let Some(dir) = path.parent() {
            private::ensure_private_dir(dir)?;
        }
        private::write_private(&path, &bytes)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    fn forget(&self, address: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(address)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
