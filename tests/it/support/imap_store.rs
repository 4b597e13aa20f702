//! The mail store behind the fake Exchange Online IMAP server: one mailbox per `user=` value,
//! its folders and messages, and the calendar arithmetic that INTERNALDATE and SEARCH need.
//!
//! Message bytes are kept in an `Arc<[u8]>` so a FETCH can write a literal straight from the
//! store without copying the message (or the mailbox).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Folders every mailbox starts with.
pub(super) const DEFAULT_FOLDERS: [&str; 3] = ["INBOX", "Sent Items", "Approvals"];
pub(super) const SEEN: &str = r"\Seen";
pub(super) const DELETED: &str = r"\Deleted";
/// The system flags in their canonical spelling (flags are matched case-insensitively).
const SYSTEM_FLAGS: [&str; 5] = [SEEN, r"\Answered", r"\Flagged", DELETED, r"\Draft"];
/// The store key of messages delivered before any mailbox was made the primary one.
const PENDING: &str = "";

/// One stored message.
#[derive(Clone)]
pub(super) struct Message {
    pub(super) uid: u32,
    pub(super) flags: Vec<String>,
    pub(super) data: Arc<[u8]>,
    /// Seconds since the Unix epoch.
    pub(super) internal_date: i64,
}

pub(super) struct Folder {
    pub(super) name: String,
    pub(super) uid_validity: u32,
    pub(super) uid_next: u32,
    /// In UID order (UIDs only grow).
    pub(super) messages: Vec<Message>,
}

pub(super) struct Mailbox {
    folders: Vec<Folder>,
}

/// Every mailbox, by lower-cased address, plus the primary mailbox that the fake's
/// address-less test helpers (`deliver`, `messages`) use.
#[derive(Default)]
pub(super) struct Mailboxes {
    boxes: HashMap<String, Mailbox>,
    primary: Option<String>,
}

// === impl Message ===

impl Message {
    pub(super) fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
    }

    pub(super) fn add_flag(&mut self, flag: &str) {
        if !self.has_flag(flag) {
            self.flags.push(canonical_flag(flag));
        }
    }

    pub(super) fn remove_flag(&mut self, flag: &str) {
        self.flags.retain(|f| !f.eq_ignore_ascii_case(flag));
    }

    /// Where the header ends: after the empty line, or the whole message if there is none.
    pub(super) fn header_len(&self) -> usize {
        let data = &self.data;
        let crlf = data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4);
        let lf = data.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
        match (crlf, lf) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(data.len()),
        }
    }

    /// The header fields as (name, raw field including folded lines and line ending).
    pub(super) fn fields(&self) -> Vec<(String, &[u8])> {
        let header = &self.data[..self.header_len()];
        let mut fields: Vec<(String, &[u8])> = Vec::new();
        let mut start = 0;
        while start < header.len() {
            let mut end = start;
            // A field runs to the line end, plus following lines that begin with white space.
            loop {
                end += header[end..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(header.len() - end, |p| p + 1);
                if !matches!(header.get(end), Some(b' ' | b'\t')) {
                    break;
                }
            }
            let raw = &header[start..end];
            if let Some(colon) = raw.iter().position(|&b| b == b':') {
                let name = String::from_utf8_lossy(&raw[..colon]).trim().to_string();
                fields.push((name, raw));
            }
            start = end;
        }
        fields
    }

    /// The unfolded value of the first field called `name`.
    pub(super) fn header(&self, name: &str) -> Option<Vec<u8>> {
        let (_, raw) = self
            .fields()
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))?;
        let colon = raw.iter().position(|&b| b == b':')?;
        let value: Vec<u8> = raw[colon + 1..]
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        Some(value.trim_ascii().to_vec())
    }
}

/// `\seen` → `\Seen`; keywords stay as given.
fn canonical_flag(flag: &str) -> String {
    SYSTEM_FLAGS
        .iter()
        .find(|f| f.eq_ignore_ascii_case(flag))
        .map_or_else(|| flag.to_string(), |f| f.to_string())
}

// === impl Folder ===

impl Folder {
    pub(super) fn append(&mut self, data: Arc<[u8]>, flags: &[String], internal_date: i64) -> u32 {
        let uid = self.uid_next;
        self.uid_next += 1;
        let mut message = Message {
            uid,
            flags: Vec::new(),
            data,
            internal_date,
        };
        for flag in flags {
            message.add_flag(flag);
        }
        self.messages.push(message);
        uid
    }

    pub(super) fn get(&self, uid: u32) -> Option<&Message> {
        let at = self.messages.binary_search_by_key(&uid, |m| m.uid).ok()?;
        Some(&self.messages[at])
    }

    pub(super) fn get_mut(&mut self, uid: u32) -> Option<&mut Message> {
        let at = self.messages.binary_search_by_key(&uid, |m| m.uid).ok()?;
        Some(&mut self.messages[at])
    }

    pub(super) fn unseen(&self) -> usize {
        self.messages.iter().filter(|m| !m.has_flag(SEEN)).count()
    }

    /// Removes the messages marked `\Deleted` whose UID `selects` accepts; returns their UIDs.
    pub(super) fn expunge(&mut self, selects: impl Fn(u32) -> bool) -> Vec<u32> {
        let mut gone = Vec::new();
        self.messages.retain(|m| {
            let remove = m.has_flag(DELETED) && selects(m.uid);
            if remove {
                gone.push(m.uid);
            }
            !remove
        });
        gone
    }
}

// === impl Mailbox ===

impl Mailbox {
    fn new() -> Self {
        let mut mailbox = Mailbox {
            folders: Vec::new(),
        };
        for name in DEFAULT_FOLDERS {
            mailbox.create(name);
        }
        mailbox
    }

    pub(super) fn folders(&self) -> &[Folder] {
        &self.folders
    }

    /// Folder names match case-insensitively, as on Exchange.
    pub(super) fn folder(&self, name: &str) -> Option<&Folder> {
        self.folders
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }

    pub(super) fn folder_mut(&mut self, name: &str) -> Option<&mut Folder> {
        self.folders
            .iter_mut()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// Adds an empty folder; false if it exists already.
    pub(super) fn create(&mut self, name: &str) -> bool {
        if self.folder(name).is_some() {
            return false;
        }
        let name = match name.eq_ignore_ascii_case("INBOX") {
            true => "INBOX".to_string(),
            false => name.to_string(),
        };
        self.folders.push(Folder {
            name,
            uid_validity: 14 + self.folders.len() as u32,
            uid_next: 1,
            messages: Vec::new(),
        });
        true
    }

    /// The folder `name`, created if missing (for the test helpers).
    pub(super) fn folder_or_create(&mut self, name: &str) -> &mut Folder {
        self.create(name);
        self.folder_mut(name).expect("folder was just created")
    }
}

// === impl Mailboxes ===

impl Mailboxes {
    /// The store key of a mailbox that logs in; the first one becomes the primary mailbox
    /// unless a test chose one.
    pub(super) fn open(&mut self, user: &str) -> String {
        let key = user.to_ascii_lowercase();
        if self.primary.is_none() {
            self.set_primary(&key);
        }
        self.mailbox_mut(&key);
        key
    }

    /// Makes `user` the primary mailbox; messages delivered before there was one move into it.
    pub(super) fn set_primary(&mut self, user: &str) {
        let key = user.to_ascii_lowercase();
        self.primary = Some(key.clone());
        let Some(pending) = self.boxes.remove(PENDING) else {
            return;
        };
        let target = self.mailbox_mut(&key);
        for folder in pending.folders {
            let into = target.folder_or_create(&folder.name);
            for message in folder.messages {
                into.append(message.data, &message.flags, message.internal_date);
            }
        }
    }

    /// The key the address-less helpers use: the primary mailbox, or a pending store.
    pub(super) fn primary_key(&self) -> String {
        self.primary.clone().unwrap_or_else(|| PENDING.to_string())
    }

    pub(super) fn get(&self, key: &str) -> Option<&Mailbox> {
        self.boxes.get(key)
    }

    /// The mailbox stored under `key` (lower-cased address), created with the default folders.
    pub(super) fn mailbox_mut(&mut self, key: &str) -> &mut Mailbox {
        self.boxes
            .entry(key.to_ascii_lowercase())
            .or_insert_with(Mailbox::new)
    }
}

// === Dates ===

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

pub(super) fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `21-Nov-2026 10:00:00 +0000` (RFC 3501 date-time, always UTC here).
pub(super) fn format_date_time(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{day:02}-{}-{year} {:02}:{:02}:{:02} +0000",
        MONTHS[month as usize - 1],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `d-Mon-yyyy` (SEARCH dates) → midnight UTC of that day.
pub(super) fn parse_date(text: &str) -> Option<i64> {
    let mut parts = text.trim_matches('"').split('-');
    let day: u32 = parts.next()?.trim().parse().ok()?;
    let month = parts.next()?;
    let month = MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? as u32 + 1;
    let year: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=31).contains(&day) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400)
}

/// `dd-Mon-yyyy hh:mm:ss +zzzz` (APPEND date-time) → seconds since the epoch.
pub(super) fn parse_date_time(text: &str) -> Option<i64> {
    let mut parts = text.split_whitespace();
    let date = parse_date(parts.next()?)?;
    let mut clock = parts.next()?.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (clock.next()??, clock.next()??, clock.next()??);
    let zone = parts.next()?;
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let zone: i64 = zone.get(1..)?.parse().ok()?;
    let offset = sign * (zone / 100 * 3600 + zone % 100 * 60);
    Some(date + h * 3600 + m * 60 + s - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
