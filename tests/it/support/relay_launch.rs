//! The relay as a child process, as the integration tests (`harness.rs`) and the benchmark
//! (`benches/relay`, which includes this file by path) both run it: the config they give it,
//! and starting `m365-relay serve` and reading the listeners it logs. Standard library only,
//! so that both crates can compile it.

use std::ffi::OsStr;
use std::fmt::Display;
use std::io::{self, BufRead, BufReader, Lines};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};

/// Every listener the relay opens with [`config_toml`]'s config.
pub const ALL_LISTENERS: [&str; 7] = ["smtp", "smtps", "imap", "imaps", "pop3", "pop3s", "admin"];

/// The relay's config in a test folder: its certificate in `certs/relay.{crt,key}`, its state in
/// `state/`, every listener on 127.0.0.1 port 0, the upstream servers given, `ca` trusted
/// upstream, Entra at `authority`; `tail` holds the tables after `[entra]` (ending with
/// `[limits]`, which the tests expect last).
pub fn config_toml(
    smtp: impl Display,
    imap: impl Display,
    pop3: impl Display,
    ca: &Path,
    authority: &str,
    tail: &str,
) -> String {
    format!(
        r#"state_dir = "state"
[tls]
cert = "certs/relay.crt"
key = "certs/relay.key"
[smtp]
listen_starttls = "127.0.0.1:0"
listen_tls = "127.0.0.1:0"
upstream = "{smtp}"
[imap]
listen_starttls = "127.0.0.1:0"
listen_tls = "127.0.0.1:0"
upstream = "{imap}"
[pop3]
listen_starttls = "127.0.0.1:0"
listen_tls = "127.0.0.1:0"
upstream = "{pop3}"
[admin]
listen = "127.0.0.1:0"
[upstream]
ca_file = "{ca}"
[entra]
authority = "{authority}"
{tail}"#,
        ca = ca.display(),
    )
}

/// A started `m365-relay serve`: the process, the listeners it logged, and the rest of its log.
pub struct Launched {
    pub child: Child,
    pub ports: Vec<(String, SocketAddr)>,
    /// Its log after the listener lines; the caller must keep reading it (or the relay blocks).
    pub log: Lines<BufReader<ChildStderr>>,
}

/// Runs `binary --config config serve` with `env` added, standard output discarded, and reads
/// its log until every listener in `listeners` is up. Log lines that speak of an error on the
/// way are printed.
pub fn launch(
    binary: &OsStr,
    config: &Path,
    env: &[(&str, &str)],
    listeners: &[&str],
) -> io::Result<Launched> {
    let mut child = Command::new(binary)
        .envs(env.iter().copied())
        .arg("--config")
        .arg(config)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().ok_or(io::ErrorKind::BrokenPipe)?;
    let mut log = BufReader::new(stderr).lines();
    let mut ports: Vec<(String, SocketAddr)> = Vec::new();
    while listeners.iter().any(|l| !ports.iter().any(|(n, _)| n == l)) {
        let Some(line) = log.next() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("the relay exited before listening"));
        };
        let line = line?;
        if let Some(port) = listening(&line) {
            ports.push(port);
        } else if line.contains("ERROR") || line.contains("error") {
            eprintln!("relay: {line}");
        }
    }
    Ok(Launched { child, ports, log })
}

/// `("imaps", 127.0.0.1:1993)` from a `listening listener="imaps" addr=127.0.0.1:1993` log line.
fn listening(line: &str) -> Option<(String, SocketAddr)> {
    if !line.contains("listening") {
        return None;
    }
    let name = line
        .split("listener=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .trim_matches('"');
    let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
    Some((name.to_owned(), addr.parse().ok()?))
}
