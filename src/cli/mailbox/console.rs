//! The process's standard streams, environment and clock as the mailbox commands see them,
//! replaceable in tests.

use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// Environment variable that may hold the client secret for `mailbox add`.
pub const CLIENT_SECRET_ENV: &str = "M365_RELAY_CLIENT_SECRET";

/// The process's standard streams and environment, replaceable in tests.
pub(super) struct Console<'a> {
    pub(super) input: &'a mut dyn BufRead,
    pub(super) out: &'a mut dyn Write,
    pub(super) err: &'a mut dyn Write,
    pub(super) env_secret: Option<OsString>,
}

/// Seconds since the Unix epoch, now.
pub(super) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
