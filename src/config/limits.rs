//! `[limits]`: the resource bounds (connections, lines, commands, bytes, timeouts, login
//! failures, messages), their defaults, and the checks that refuse limits no client could
//! live with.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use super::sending;

/// Resource bounds. Each one keeps a broken or hostile peer from holding the relay; the
/// pre-auth ones are deliberately small, because before login nobody is trusted (Redis's
/// CVE-2021-32675 was a server that gave unauthenticated clients its authenticated limits).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open client connections over all listeners.
    pub max_connections: usize,
    /// Open client connections from one source address (an IPv6 client's /64 counts as
    /// one address), unless it is in `local_networks`.
    pub max_connections_per_source: usize,
    /// Open client connections from one address in `local_networks`: the applications
    /// the relay is there for, which may open hundreds of sessions at once. Never less
    /// than `max_connections_per_source`.
    pub max_connections_per_local_source: usize,
    /// The networks whose addresses get `max_connections_per_local_source` (CIDR or
    /// single addresses); loopback by default. `[]` gives loopback the ordinary limit
    /// (behind a port forwarder that makes every client look like 127.0.0.1).
    #[serde(deserialize_with = "networks")]
    pub local_networks: Vec<ipnet::IpNet>,
    /// An IMAP or POP3 client gets its upstream connection opened while it logs in (it
    /// saves the login a connection to Microsoft) only if its address logged in
    /// successfully within this time; 0 turns that off.
    pub preconnect_after_login_secs: u64,
    /// Such speculative upstream connections at once, over all clients.
    pub max_speculative_connections: usize,
    /// Time a client has from connecting to logging in.
    pub preauth_timeout_secs: u64,
    /// Longest SMTP command line before login, CRLF included: RFC 5321 §4.5.3.1.4 says 512.
    /// AUTH lines may always be 12288 octets (RFC 4954 §4).
    pub max_line_smtp: usize,
    /// Longest IMAP line before login, CRLF included.
    pub max_line_imap: usize,
    /// Longest POP3 line before login, CRLF included (RFC 2449 allows commands 255
    /// octets, but SASL responses are longer).
    pub max_line_pop3: usize,
    /// Largest IMAP literal before login: a user name or a password needs no more.
    pub max_literal_imap: usize,
    /// Commands a client may send before it has logged in.
    pub preauth_max_commands: u32,
    /// Bytes a client may send before it has logged in, over-long lines included.
    pub preauth_max_bytes: usize,
    /// Failed logins from one source (or for one mailbox, see the `abuse` module) before
    /// each further login waits: 1 s, then doubling up to `login_delay_max_secs`.
    pub login_failures_before_delay: u32,
    /// The longest such wait.
    pub login_delay_max_secs: u64,
    /// Failed logins from one source within `login_failure_window_secs` after which the
    /// source is refused for `login_block_secs`.
    pub login_failures_before_block: u32,
    /// How long failed logins are remembered.
    pub login_failure_window_secs: u64,
    /// How long a source that failed too often is refused.
    pub login_block_secs: u64,
    /// A logged-in SMTP session with no traffic in either direction for this long is
    /// closed (RFC 5321 §4.5.3.2.7 asks servers to wait at least 5 minutes).
    pub idle_timeout_smtp_secs: u64,
    /// The same for IMAP: longer than IDLE's 29 minutes (RFC 2177: clients re-issue IDLE
    /// at least that often).
    pub idle_timeout_imap_secs: u64,
    /// The same for POP3 (RFC 1939 §3: at least 10 minutes).
    pub idle_timeout_pop3_secs: u64,
    /// Connecting to and logging in to the upstream server.
    pub upstream_timeout_secs: u64,
    /// One request to the token endpoint.
    pub token_timeout_secs: u64,
    /// On SIGTERM/SIGINT, how long open sessions may go on before they are closed.
    pub shutdown_grace_secs: u64,
    /// Messages one mailbox may submit in a minute (Microsoft: 30 through SMTP).
    pub smtp_messages_per_minute: u32,
    /// Recipients of one message (Microsoft: 500 by default, 1 to 1,000).
    pub smtp_recipients_per_message: u32,
    /// Recipients of one mailbox in any 24 hours (Microsoft: 10,000).
    pub smtp_recipients_per_day: u32,
    /// Largest message the relay holds to send it through Microsoft Graph (or receives
    /// with BDAT): Exchange Online's default send limit is 35 MB.
    pub max_message_bytes: usize,
    /// All messages held at once, over all sessions; beyond it a message is refused with
    /// a temporary error.
    pub max_held_message_bytes: usize,
    /// Logged-in upstream SMTP connections the relay keeps per mailbox and shares between
    /// client sessions and queue deliveries (Exchange Online: 3; a 4th gets `432 4.3.2`).
    pub smtp_connections_per_mailbox: u32,
    /// An unused shared upstream SMTP connection is closed after this long.
    pub smtp_connection_idle_secs: u64,
    /// A shared upstream SMTP connection older than this is not reused (closed with
    /// `QUIT`), so that a mailbox logs in again, and Microsoft checks its token and
    /// delegation again, at least this often.
    pub smtp_connection_max_age_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1000,
            max_connections_per_source: 20,
            max_connections_per_local_source: 500,
            local_networks: vec![sending::loopback_v4().trunc(), sending::loopback_v6()],
            preconnect_after_login_secs: 24 * 3600,
            max_speculative_connections: 64,
            preauth_timeout_secs: 60,
            max_line_smtp: 512,
            max_line_imap: 8192,
            max_line_pop3: 8192,
            max_literal_imap: 4096,
            preauth_max_commands: 100,
            preauth_max_bytes: 64 * 1024,
            login_failures_before_delay: 3,
            login_delay_max_secs: 16,
            login_failures_before_block: 10,
            login_failure_window_secs: 600,
            login_block_secs: 900,
            idle_timeout_smtp_secs: 300,
            idle_timeout_imap_secs: 1800,
            idle_timeout_pop3_secs: 600,
            upstream_timeout_secs: 30,
            token_timeout_secs: 30,
            shutdown_grace_secs: 30,
            smtp_messages_per_minute: 30,
            smtp_recipients_per_message: 500,
            smtp_recipients_per_day: 10_000,
            max_message_bytes: 35 * 1024 * 1024,
            max_held_message_bytes: 256 * 1024 * 1024,
            smtp_connections_per_mailbox: 3,
            smtp_connection_idle_secs: 60,
            smtp_connection_max_age_secs: 3600,
        }
    }
}

/// The shortest line limit a client can live with (RFC 5321 §4.5.3.1.4's 512 octets).
pub const MIN_LINE: usize = 512;
/// The longest line limit the config accepts; no login needs more.
pub const MAX_LINE: usize = 64 * 1024;
/// The longest SMTP AUTH line (RFC 4954 §4), which `preauth_max_bytes` must hold.
pub const SMTP_AUTH_LINE: usize = 12288;

/// `local_networks` as written: each a network or an address.
fn networks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    let written = Vec::<String>::deserialize(d)?;
    written
        .iter()
        .map(|text| sending::parse_network(text).map_err(serde::de::Error::custom))
        .collect()
}

/// For each `NAME => NAME_secs` pair, `Limits::NAME()`: that field as a [`Duration`].
macro_rules! durations {
    ($($name:ident => $secs:ident),* $(,)?) => {
        impl Limits {
            $(
                #[doc = concat!("`", stringify!($secs), "` as a duration.")]
                pub fn $name(&self) -> Duration {
                    Duration::from_secs(self.$secs)
                }
            )*
        }
    };
}

durations! {
    preconnect_after_login => preconnect_after_login_secs,
    preauth_timeout => preauth_timeout_secs,
    idle_timeout_smtp => idle_timeout_smtp_secs,
    idle_timeout_imap => idle_timeout_imap_secs,
    idle_timeout_pop3 => idle_timeout_pop3_secs,
    upstream_timeout => upstream_timeout_secs,
    token_timeout => token_timeout_secs,
    shutdown_grace => shutdown_grace_secs,
}

impl Limits {
    /// The connection limit of one source address.
    pub fn max_connections_from(&self, source: IpAddr) -> usize {
        let source = match source {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(source, IpAddr::V4),
            v4 => v4,
        };
        if self.local_networks.iter().any(|net| net.contains(&source)) {
            // Never stricter than a remote address: raising the general limit raises it here.
            self.max_connections_per_local_source
                .max(self.max_connections_per_source)
        } else {
            self.max_connections_per_source
        }
    }

    /// Refuses zeros and limits no client could live with; names the key.
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        self.validate_positive()?;
        self.validate_lines()?;
        self.validate_relations()
    }

    /// Refuses a zero where it would stop the relay from serving anyone.
    fn validate_positive(&self) -> Result<(), (&'static str, String)> {
        for (key, value) in [
            ("limits.max_connections", self.max_connections as u64),
            (
                "limits.max_connections_per_source",
                self.max_connections_per_source as u64,
            ),
            (
                "limits.max_connections_per_local_source",
                self.max_connections_per_local_source as u64,
            ),
            ("limits.preauth_timeout_secs", self.preauth_timeout_secs),
            ("limits.max_literal_imap", self.max_literal_imap as u64),
            (
                "limits.preauth_max_commands",
                u64::from(self.preauth_max_commands),
            ),
            ("limits.login_delay_max_secs", self.login_delay_max_secs),
            (
                "limits.login_failures_before_block",
                u64::from(self.login_failures_before_block),
            ),
            (
                "limits.login_failure_window_secs",
                self.login_failure_window_secs,
            ),
            ("limits.login_block_secs", self.login_block_secs),
            ("limits.idle_timeout_smtp_secs", self.idle_timeout_smtp_secs),
            ("limits.idle_timeout_imap_secs", self.idle_timeout_imap_secs),
            ("limits.idle_timeout_pop3_secs", self.idle_timeout_pop3_secs),
            ("limits.upstream_timeout_secs", self.upstream_timeout_secs),
            ("limits.token_timeout_secs", self.token_timeout_secs),
            ("limits.shutdown_grace_secs", self.shutdown_grace_secs),
            (
                "limits.smtp_messages_per_minute",
                u64::from(self.smtp_messages_per_minute),
            ),
            (
                "limits.smtp_recipients_per_message",
                u64::from(self.smtp_recipients_per_message),
            ),
            (
                "limits.smtp_recipients_per_day",
                u64::from(self.smtp_recipients_per_day),
            ),
            ("limits.max_message_bytes", self.max_message_bytes as u64),
            (
                "limits.smtp_connection_max_age_secs",
                self.smtp_connection_max_age_secs,
            ),
        ] {
            if value == 0 {
                return Err((key, "must be greater than 0".into()));
            }
        }
        Ok(())
    }

    /// Refuses line limits no client could live with, or that a login could not fill.
    fn validate_lines(&self) -> Result<(), (&'static str, String)> {
        for (key, value) in [
            ("limits.max_line_smtp", self.max_line_smtp),
            ("limits.max_line_imap", self.max_line_imap),
            ("limits.max_line_pop3", self.max_line_pop3),
        ] {
            if !(MIN_LINE..=MAX_LINE).contains(&value) {
                return Err((key, format!("must be from {MIN_LINE} to {MAX_LINE}")));
            }
        }
        if self.max_literal_imap > MAX_LINE {
            return Err((
                "limits.max_literal_imap",
                format!("must be at most {MAX_LINE}"),
            ));
        }
        let longest = [
            SMTP_AUTH_LINE,
            self.max_line_smtp,
            self.max_line_imap,
            self.max_line_pop3,
        ]
        .into_iter()
        .max()
        .unwrap_or(SMTP_AUTH_LINE);
        if self.preauth_max_bytes < longest {
            return Err((
                "limits.preauth_max_bytes",
                format!("must hold the longest line a login may need ({longest} octets)"),
            ));
        }
        Ok(())
    }

    /// Refuses limits that contradict each other.
    fn validate_relations(&self) -> Result<(), (&'static str, String)> {
        if self.max_held_message_bytes < self.max_message_bytes {
            return Err((
                "limits.max_held_message_bytes",
                "must hold at least one message of `limits.max_message_bytes`".into(),
            ));
        }
        if self.login_failures_before_delay >= self.login_failures_before_block {
            return Err((
                "limits.login_failures_before_delay",
                "must be less than `limits.login_failures_before_block`".into(),
            ));
        }
        Ok(())
    }
}
