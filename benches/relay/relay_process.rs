//! The relay under test: the real release binary as a child process (started as the tests
//! start it, `tests/it/support/relay_launch.rs`), its config, its mailboxes (registered with
//! the real CLI), and its memory and CPU time from `/proc`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use tokio_rustls::TlsConnector;

use crate::client::{Dial, Result};
use crate::fakes::{FakeEntra, FakeImap, FakeSmtp};
use crate::relay_launch::{config_toml, launch};

/// The binary Cargo built for this benchmark (release profile).
const BINARY: &str = env!("CARGO_BIN_EXE_m365-relay");

/// The relay binary to run: `BENCH_RELAY_BIN`, to compare another build (A/B), or
/// [`BINARY`].
fn binary() -> std::ffi::OsString {
    std::env::var_os("BENCH_RELAY_BIN").unwrap_or_else(|| BINARY.into())
}
const TENANT: &str = "contoso.onmicrosoft.com";
const CLIENT_ID: &str = "6731de76-14a6-49ae-97bc-6eba6914391e";
/// The listeners the benchmark uses.
const LISTENERS: [&str; 4] = ["imap", "imaps", "smtp", "smtps"];

/// Where a relay's upstream is: Entra's authority and the IMAP and SMTP servers.
pub struct Upstream {
    pub authority: String,
    pub imap: SocketAddr,
    pub smtp: SocketAddr,
}

impl Upstream {
    /// The in-process fakes.
    pub fn of(entra: &FakeEntra, imap: &FakeImap, smtp: &FakeSmtp) -> Upstream {
        Upstream {
            authority: entra.authority(),
            imap: imap.addr,
            smtp: smtp.addr,
        }
    }
}

/// Writes `dir/relay.toml`, the relay's certificate and the CA it trusts upstream; `state`
/// is an optional `[state]` table (empty: the state folder).
pub fn write_config(
    dir: &Path,
    pki: &crate::certs::TestPki,
    upstream: &Upstream,
    state: &str,
) -> Result<()> {
    let ca = pki.write_ca(dir);
    pki.issue(&["127.0.0.1", "localhost"])
        .write_to(&dir.join("certs"), "relay");
    // The benchmark has no POP3 fake: POP3 points at the IMAP fake, and is not used.
    let tail = format!(
        "{state}[limits]\nmax_connections = 30000\nmax_connections_per_source = 30000\nupstream_timeout_secs = 30\ntoken_timeout_secs = 30\n{BENCH_SENDING}"
    );
    let config = config_toml(
        upstream.smtp,
        upstream.imap,
        upstream.imap,
        &ca,
        &upstream.authority,
        &tail,
    );
    std::fs::write(dir.join("relay.toml"), config)?;
    Ok(())
}

/// The benchmark sends far more than Microsoft's 30 messages a minute per mailbox through
/// the fake Exchange; the queue's relay puts Microsoft's limits back
/// ([`microsoft_sending_limits`]).
pub const BENCH_SENDING: &str =
    "smtp_messages_per_minute = 1000000\nsmtp_recipients_per_day = 1000000000\n";

/// Puts Microsoft's sending limits (the defaults) back into `dir/relay.toml`.
pub fn microsoft_sending_limits(dir: &Path) -> Result<()> {
    let path = dir.join("relay.toml");
    let config = std::fs::read_to_string(&path)?.replace(BENCH_SENDING, "");
    std::fs::write(path, config)?;
    Ok(())
}

/// Runs `m365-relay --config dir/relay.toml args...` with `stdin`; its standard output.
pub fn cli(dir: &Path, args: &[&str], stdin: &str) -> Result<String> {
    let mut child = Command::new(binary())
        .arg("--config")
        .arg(dir.join("relay.toml"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("stdin")?
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!(
            "m365-relay {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Registers `user` with a generated password (checked with a keyed hash, as an app
/// password would be) and a refresh token; returns the password.
pub fn register(dir: &Path, user: &str) -> Result<String> {
    cli(
        dir,
        &[
            "mailbox",
            "add",
            user,
            "--tenant",
            TENANT,
            "--client-id",
            CLIENT_ID,
        ],
        "",
    )?;
    let password = cli(dir, &["mailbox", "password", user, "--generate"], "")?;
    cli(
        dir,
        &["mailbox", "import-token", user],
        "bench-refresh-token\n",
    )?;
    Ok(password.trim().to_owned())
}

/// A running `m365-relay serve`.
pub struct Relay {
    child: Child,
    ports: Vec<(String, SocketAddr)>,
}

impl Relay {
    /// Starts the relay and waits until its listeners are up. Its log is drained (and
    /// dropped) by a thread.
    pub fn start(dir: &Path) -> Result<Relay> {
        let config = dir.join("relay.toml");
        let launched = launch(&binary(), &config, &[], &LISTENERS)?;
        let (child, ports, lines) = (launched.child, launched.ports, launched.log);
        // `BENCH_RELAY_LOG=<file>` keeps the relay's whole log (appended).
        let mut keep = std::env::var_os("BENCH_RELAY_LOG").and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        });
        std::thread::spawn(move || {
            for line in lines.map_while(std::result::Result::ok) {
                if line.contains("ERROR") {
                    eprintln!("relay: {line}");
                }
                if let Some(file) = keep.as_mut() {
                    let _ = writeln!(file, "{line}");
                }
            }
        });
        Ok(Relay { child, ports })
    }

    /// How to reach listener `name`; TLS with `tls`.
    pub fn dial(&self, name: &str, tls: Option<&TlsConnector>) -> Dial {
        let addr = self
            .ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no {name} listener"));
        Dial {
            addr,
            tls: tls.cloned(),
        }
    }

    /// `VmRSS` and `VmHWM` (peak) in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Resets the peak (`VmHWM`) to the current resident memory (Linux >= 4.0).
    pub fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5");
    }

    /// CPU seconds (user + system) the relay used so far.
    pub fn cpu(&self) -> f64 {
        cpu_seconds(self.child.id())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds of process `pid`, from `/proc/<pid>/stat` (clock ticks of
/// 1/100 s, the Linux value of `CLK_TCK`).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum());
    ticks as f64 / 100.0
}

/// The soft `RLIMIT_NOFILE` of this process (which the relay inherits).
pub fn nofile_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(1024)
}
