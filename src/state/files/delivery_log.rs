//! The delivery log in the state folder (`files` backend): `{state_dir}/delivery-log/`,
//! `0700`, files `0600`. `current.jsonl` takes one JSON line per event ([`DeliveryEvent`]
//! as serde writes it); once it would pass a quarter of `[log] max_bytes` it is renamed
//! `delivery-{n}.jsonl` (`n` counting up) and a new one begun, and the oldest renamed
//! files are deleted so that all of them together stay within `max_bytes`.
//!
//! Appends are buffered writes flushed at the end of each batch, without `fsync`: the log
//! is a record for the admin, not the queue's bookkeeping, and a crash of the machine (not
//! of the relay) may lose its last seconds. Only the relay appends; several threads of it
//! take turns. [`FileDeliveryLog::read`] streams the files oldest first, line by line (a
//! line that does not parse, or over 64 KiB, is skipped), so its memory is what it returns.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::state::delivery_log::{DeliveryEvent, DeliveryLogStore, LogQuery};
use crate::state::error::StoreError;
use crate::state::private::{FILE_MODE, ensure_private_dir};

/// Folder of the delivery log inside the state folder.
pub const LOG_DIR: &str = "delivery-log";

/// The file events are appended to.
const CURRENT: &str = "current.jsonl";

/// Longest line read back (an event with many recipients).
const MAX_LINE: usize = 64 * 1024;

/// The delivery log of one state folder.
#[derive(Debug)]
pub struct FileDeliveryLog {
    dir: PathBuf,
    max_bytes: u64,
    /// Appends take turns.
    writing: Mutex<()>,
}

/// A renamed log file.
struct Rotated {
    n: u64,
    path: PathBuf,
    len: u64,
}

fn io_error(file: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        file: file.to_owned(),
        source,
    }
}

impl FileDeliveryLog {
    /// The log of `state_dir`, at most `max_bytes` together; nothing is touched until the
    /// first append.
    pub fn new(state_dir: &Path, max_bytes: u64) -> Self {
        Self {
            dir: state_dir.join(LOG_DIR),
            max_bytes,
            writing: Mutex::new(()),
        }
    }

    /// The size `current.jsonl` is kept within.
    fn file_bound(&self) -> u64 {
        (self.max_bytes / 4).max(1)
    }

    fn current(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    /// `current.jsonl` opened for appending, and its size.
    fn open_current(&self) -> io::Result<(BufWriter<File>, u64)> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(FILE_MODE)
            .open(self.current())?;
        let len = file.metadata()?.len();
        Ok((BufWriter::with_capacity(64 * 1024, file), len))
    }

    /// The renamed files, oldest first.
    fn rotated(&self) -> io::Result<Vec<Rotated>> {
        let mut rotated = Vec::new();
        for file in fs::read_dir(&self.dir)? {
            let file = file?;
            let name = file.file_name();
            let n = name
                .to_str()
                .and_then(|name| name.strip_prefix("delivery-"))
                .and_then(|rest| rest.strip_suffix(".jsonl"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(n) = n {
                let len = file.metadata()?.len();
                rotated.push(Rotated {
                    n,
                    path: file.path(),
                    len,
                });
            }
        }
        rotated.sort_by_key(|r| r.n);
        Ok(rotated)
    }

    /// Renames `current.jsonl` to the next `delivery-{n}.jsonl`, then deletes the oldest
    /// renamed files until they leave room for a full `current.jsonl` within `max_bytes`.
    fn rotate(&self) -> io::Result<()> {
        let mut rotated = self.rotated()?;
        let n = rotated.last().map_or(1, |r| r.n + 1);
        let path = self.dir.join(format!("delivery-{n}.jsonl"));
        fs::rename(self.current(), &path)?;
        let len = fs::metadata(&path)?.len();
        rotated.push(Rotated { n, path, len });
        let mut total: u64 = rotated.iter().map(|r| r.len).sum();
        for oldest in rotated {
            if total + self.file_bound() <= self.max_bytes {
                break;
            }
            fs::remove_file(&oldest.path)?;
            total -= oldest.len;
        }
        Ok(())
    }

    /// Appends `events`, rotating as they fill `current.jsonl`.
    fn write(&self, events: &[DeliveryEvent]) -> io::Result<()> {
        ensure_private_dir(&self.dir)?;
        let (mut current, mut size) = self.open_current()?;
        for event in events {
            let mut line = serde_json::to_vec(event).map_err(io::Error::other)?;
            line.push(b'\n');
            let len = line.len() as u64;
            if len > self.file_bound() {
                tracing::warn!(
                    bytes = len,
                    "a delivery log event is too large for [log] max_bytes; not kept"
                );
                continue;
            }
            if size > 0 && size + len > self.file_bound() {
                current.flush()?;
                drop(current);
                self.rotate()?;
                (current, size) = self.open_current()?;
            }
            current.write_all(&line)?;
            size += len;
        }
        current.flush()
    }

    /// The log's files, opened, oldest first: `current.jsonl` is opened first, so that a
    /// rotation meanwhile shows its file twice (skipped by inode), never not at all.
    fn open_files(&self) -> io::Result<Vec<File>> {
        let current = match File::open(self.current()) {
            Ok(file) => Some(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let current_ino = match &current {
            Some(file) => Some(file.metadata()?.ino()),
            None => None,
        };
        let rotated = match self.rotated() {
            Ok(rotated) => rotated,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut files = Vec::with_capacity(rotated.len() + 1);
        for r in rotated {
            match File::open(&r.path) {
                Ok(file) if Some(file.metadata()?.ino()) == current_ino => {}
                Ok(file) => files.push(file),
                // Deleted by a rotation since the listing: older than what is kept.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        files.extend(current);
        Ok(files)
    }
}

impl DeliveryLogStore for FileDeliveryLog {
    fn append(&self, events: &[DeliveryEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let _turn = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        self.write(events).map_err(io_error(&self.current()))
    }

    fn read(&self, query: &LogQuery) -> Result<Vec<DeliveryEvent>, StoreError> {
        let files = self.open_files().map_err(io_error(&self.dir))?;
        let mut found = VecDeque::new();
        let mut line = Vec::new();
        for file in files {
            let mut reader = BufReader::new(file);
            while next_line(&mut reader, &mut line).map_err(io_error(&self.dir))? {
                let Ok(event) = serde_json::from_slice::<DeliveryEvent>(&line) else {
                    continue;
                };
                if selected(&event, query) {
                    found.push_back(event);
                    if query.limit > 0 && found.len() > query.limit {
                        found.pop_front();
                    }
                }
            }
        }
        Ok(found.into())
    }
}

/// Whether `query` selects `event`.
fn selected(event: &DeliveryEvent, query: &LogQuery) -> bool {
    query
        .mailbox
        .as_ref()
        .is_none_or(|m| event.mailbox.eq_ignore_ascii_case(m))
        && query.since_ms.is_none_or(|since| event.at_ms >= since)
}

/// The next line of `reader` into `line` (its end included); `false` at the end. A line
/// over [`MAX_LINE`] comes back empty, the rest of it skipped.
fn next_line(reader: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<bool> {
    line.clear();
    let read = reader
        .by_ref()
        .take(MAX_LINE as u64)
        .read_until(b'\n', line)?;
    if read == 0 {
        return Ok(false);
    }
    if read == MAX_LINE && line.last() != Some(&b'\n') {
        line.clear();
        loop {
            let buffer = reader.fill_buf()?;
            if buffer.is_empty() {
                break;
            }
            match memchr::memchr(b'\n', buffer) {
                Some(at) => {
                    reader.consume(at + 1);
                    break;
                }
                None => {
                    let all = buffer.len();
                    reader.consume(all);
                }
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::state::delivery_log::EventKind;

    const MIN_BYTES: u64 = 65536;

    fn event(mailbox: &str, at_ms: u64) -> DeliveryEvent {
        let mut event = DeliveryEvent::new(EventKind::Delivered, mailbox)
            .to(&["a@fabrikam.com".to_owned()])
            .reply("250 2.0.0 OK <queued>");
        event.at_ms = at_ms;
        event
    }

    fn all() -> LogQuery {
        LogQuery::default()
    }

    /// The log folder's files and their total size.
    fn sizes(dir: &Path) -> (usize, u64) {
        let files: Vec<u64> = fs::read_dir(dir.join(LOG_DIR))
            .unwrap()
            .map(|f| f.unwrap().metadata().unwrap().len())
            .collect();
        (files.len(), files.iter().sum())
    }

    #[test]
    fn rotation_keeps_the_log_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileDeliveryLog::new(dir.path(), MIN_BYTES);
        assert_eq!(log.read(&all()).unwrap(), []);
        let mut at = 0;
        for _ in 0..60 {
            let batch: Vec<DeliveryEvent> = (0..50)
                .map(|_| {
                    at += 1;
                    event("m@contoso.com", at)
                })
                .collect();
            log.append(&batch).unwrap();
            let (files, total) = sizes(dir.path());
            assert!(total <= MIN_BYTES, "{total} bytes in {files} files");
            assert!(files <= 4, "{files} files");
        }
        let kept = log.read(&all()).unwrap();
        assert_eq!(kept.last().unwrap().at_ms, 3000, "the latest is kept");
        assert!(kept[0].at_ms > 1, "the oldest went");
        assert!(kept.len() > 200, "{} kept", kept.len());
        assert!(
            kept.windows(2).all(|w| w[1].at_ms == w[0].at_ms + 1),
            "in order, none lost"
        );
        let rotated = log.rotated().unwrap();
        assert!(
            rotated.len() >= 2 && rotated[0].n > 1,
            "the oldest renamed files went"
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join(LOG_DIR)), 0o700);
        assert_eq!(mode(&log.current()), 0o600);
    }

    #[test]
    fn read_selects_by_mailbox_time_and_count_and_skips_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileDeliveryLog::new(dir.path(), 1 << 20);
        let first = event("a@contoso.com", 1);
        log.append(&[first.clone(), event("b@contoso.com", 2)])
            .unwrap();
        // A torn or edited line, and one too long to read, between good ones.
        let mut junk = b"{\"time\":\n".to_vec();
        junk.extend(vec![b'x'; MAX_LINE + 10]);
        junk.push(b'\n');
        let mut file = OpenOptions::new().append(true).open(log.current()).unwrap();
        file.write_all(&junk).unwrap();
        let events: Vec<DeliveryEvent> = (3..=10).map(|at| event("a@contoso.com", at)).collect();
        log.append(&events).unwrap();

        let at = |events: Vec<DeliveryEvent>| events.iter().map(|e| e.at_ms).collect::<Vec<_>>();
        assert_eq!(at(log.read(&all()).unwrap()), (1..=10).collect::<Vec<_>>());
        let b = LogQuery {
            mailbox: Some("B@contoso.com".into()),
            ..all()
        };
        assert_eq!(at(log.read(&b).unwrap()), [2]);
        let since = LogQuery {
            since_ms: Some(8),
            ..all()
        };
        assert_eq!(at(log.read(&since).unwrap()), [8, 9, 10]);
        let latest = LogQuery {
            mailbox: Some("a@contoso.com".into()),
            since_ms: Some(2),
            limit: 3,
        };
        assert_eq!(at(log.read(&latest).unwrap()), [8, 9, 10]);
        let text = fs::read_to_string(log.current()).unwrap();
        let line = text.lines().next().unwrap();
        assert_eq!(serde_json::from_str::<DeliveryEvent>(line).unwrap(), first);
    }

    #[test]
    fn an_event_larger_than_a_log_file_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileDeliveryLog::new(dir.path(), MIN_BYTES);
        let recipients: Vec<String> = (0..2000).map(|n| format!("r{n}@fabrikam.com")).collect();
        let huge = event("a@contoso.com", 1).to(&recipients);
        log.append(&[huge, event("a@contoso.com", 2)]).unwrap();
        let kept = log.read(&all()).unwrap();
        assert_eq!(kept.iter().map(|e| e.at_ms).collect::<Vec<_>>(), [2]);
    }
}
