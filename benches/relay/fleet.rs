//! The fleet figures (issue 15): relays sharing one PostgreSQL database (a private real
//! cluster, `tests/it/support/postgres.rs`), beside the files-backed relay of the other
//! figures, on the same fakes.
//!
//! - Login p50 with the PostgreSQL backend vs the files backend, sampled in turns.
//! - A login burst spread over 2 relays with cold caches: all succeed, and the fleet asks
//!   Entra once per mailbox (the relays share one access token per mailbox).
//! - Idle TLS IMAP sessions on each of 2 relays at once.
//!
//! The fleet's fake IMAP server runs in a child process (this binary with
//! `--fake-imap-upstream DIR`): 2 x 5,000 sessions need 20,000 descriptors on each side,
//! more than one unprivileged process may hold.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::client::{self, Dial, Login, Result};
use crate::postgres::PgCluster;
use crate::relay_process::{self, Relay, Upstream};
use crate::{MAILBOXES, Row, Sizes, World, ms, percentile, row};

/// The argument that makes this binary the fleet's fake IMAP server.
const UPSTREAM_ARG: &str = "--fake-imap-upstream";

/// The folder of `--fake-imap-upstream DIR`, when this process is the fleet's fake IMAP
/// server.
pub fn upstream_child_dir() -> Option<PathBuf> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == UPSTREAM_ARG)?;
    args.get(at + 1).map(PathBuf::from)
}

/// Serves the fake IMAP server with `dir/upstream.{crt,key}`, prints its address, and
/// stops when standard input closes (the benchmark ended or died).
pub fn serve_upstream_child(dir: &Path) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let tls =
            m365_relay::tls::server_config(&dir.join("upstream.crt"), &dir.join("upstream.key"))
                .expect("the upstream certificate");
        let imap = crate::fakes::FakeImap::start(tls).await;
        println!("{}", imap.addr);
        std::io::stdout().flush().expect("stdout");
        tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new()))
            .await
            .ok();
    });
}

/// The fleet's fake IMAP server process; stopped on drop.
struct UpstreamChild {
    child: Child,
    addr: std::net::SocketAddr,
}

impl UpstreamChild {
    fn start(world: &World, dir: &Path) -> Result<UpstreamChild> {
        world
            .pki
            .issue(&["127.0.0.1", "localhost"])
            .write_to(dir, "upstream");
        let mut child = Command::new(std::env::current_exe()?)
            .arg(UPSTREAM_ARG)
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let addr = line.trim().parse()?;
        Ok(UpstreamChild { child, addr })
    }
}

impl Drop for UpstreamChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fleet: the cluster, its config folder (the same for every relay: ports 0), the
/// mailboxes registered in its database, and the fake IMAP server it uses.
struct Fleet {
    _cluster: PgCluster,
    _upstream: UpstreamChild,
    dir: tempfile::TempDir,
    users: Vec<(String, String)>,
}

impl Fleet {
    /// A database `name` in `cluster`'s place, with [`MAILBOXES`] mailboxes registered.
    fn new(world: &World, cluster: PgCluster, name: &str) -> Result<Fleet> {
        let url = cluster.create_database(name);
        let dir = tempfile::tempdir()?;
        let upstream = UpstreamChild::start(world, dir.path())?;
        let state = format!("[state]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 16\n");
        let to = Upstream {
            authority: world.entra.authority(),
            imap: upstream.addr,
            smtp: world.smtp.addr,
        };
        relay_process::write_config(dir.path(), &world.pki, &to, &state)?;
        let mut users = Vec::new();
        for i in 0..MAILBOXES {
            let user = format!("fleet{i:02}@contoso.com");
            users.push((user.clone(), relay_process::register(dir.path(), &user)?));
        }
        Ok(Fleet {
            _cluster: cluster,
            _upstream: upstream,
            dir,
            users,
        })
    }

    fn start(&self, n: usize) -> Result<Vec<Relay>> {
        (0..n).map(|_| Relay::start(self.dir.path())).collect()
    }

    fn password(&self, i: usize) -> Login {
        let (user, password) = self.users[i % self.users.len()].clone();
        Login::Password { user, password }
    }
}

/// Every fleet figure.
pub async fn run(world: &World, files_relay: &Relay, sizes: &Sizes) -> Result<Vec<Row>> {
    eprintln!("fleet: a private PostgreSQL cluster, {MAILBOXES} mailboxes registered in it");
    let fleet = Fleet::new(world, PgCluster::start(), "fleet")?;
    let mut rows = Vec::new();
    let relays = fleet.start(2)?;
    rows.extend(burst(world, &fleet, &relays, sizes).await?);
    rows.extend(login_p50(world, files_relay, &fleet, &relays[0], sizes).await?);
    rows.extend(idle(&fleet, &relays, world, sizes).await?);
    Ok(rows)
}

/// Sequential IMAP logins (plain client leg) on `dial`: each one's time.
async fn login_times(n: usize, dial: &Dial, login: &Login) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = std::time::Instant::now();
        let c = client::imap_login(dial, login).await?;
        times.push(t.elapsed());
        drop(c);
    }
    Ok(times)
}

/// Login p50, files vs PostgreSQL, warm caches, in five alternating rounds.
async fn login_p50(
    world: &World,
    files: &Relay,
    fleet: &Fleet,
    pg: &Relay,
    sizes: &Sizes,
) -> Result<Vec<Row>> {
    eprintln!(
        "fleet: login p50, files vs postgres, {} logins each",
        sizes.logins
    );
    let (files_dial, pg_dial) = (files.dial("imap", None), pg.dial("imap", None));
    let (mut on_files, mut on_pg) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let n = sizes.logins.div_ceil(5);
        on_files.extend(login_times(n, &files_dial, &world.password(0)).await?);
        on_pg.extend(login_times(n, &pg_dial, &fleet.password(0)).await?);
    }
    on_files.sort();
    on_pg.sort();
    let (f, p) = (percentile(&on_files, 0.5), percentile(&on_pg, 0.5));
    let ratio = p.as_secs_f64() / f.as_secs_f64();
    Ok(vec![row(
        "IMAP login p50: files (direct col.) vs postgres",
        ms(f),
        ms(p),
        format!("{ratio:.2}x"),
        "<= 1.1x",
        Some(ratio <= 1.1),
    )])
}

/// The burst over both relays, no access token anywhere yet.
async fn burst(world: &World, fleet: &Fleet, relays: &[Relay], sizes: &Sizes) -> Result<Vec<Row>> {
    eprintln!(
        "fleet: login burst, {} clients over {} relays and {MAILBOXES} mailboxes",
        sizes.burst,
        relays.len()
    );
    let dials: Vec<Dial> = relays.iter().map(|r| r.dial("imap", None)).collect();
    let logins = (0..sizes.burst)
        .map(|i| (dials[i % dials.len()].clone(), fleet.password(i)))
        .collect();
    let before = world.entra.requests();
    let outcome = crate::burst_of(logins).await?;
    let requests = world.entra.requests() - before;
    Ok(vec![
        row(
            &format!(
                "fleet burst over 2 relays: {} logins succeeded",
                sizes.burst
            ),
            "-".into(),
            format!("{}/{}", outcome.ok.len(), sizes.burst),
            "-".into(),
            "all",
            Some(outcome.failed == 0),
        ),
        row(
            "fleet burst: token requests, whole fleet",
            "-".into(),
            requests.to_string(),
            "-".into(),
            "= 10",
            Some(requests == MAILBOXES as u64),
        ),
    ])
}

/// Idle TLS sessions on every relay at once: per relay, how many came up and its memory.
async fn idle(fleet: &Fleet, relays: &[Relay], world: &World, sizes: &Sizes) -> Result<Vec<Row>> {
    let per_relay = sizes.fleet_sessions;
    eprintln!(
        "fleet: {per_relay} idle TLS IMAP sessions on each of {} relays",
        relays.len()
    );
    let mut rows = Vec::new();
    let mut held = Vec::new();
    for (i, relay) in relays.iter().enumerate() {
        let (before, _) = relay.memory_kib();
        let dial = relay.dial("imaps", Some(&world.tls));
        let logins = (0..per_relay).map(|j| fleet.password(j)).collect();
        let (sessions, failed) = crate::open_idle(&dial, logins).await?;
        tokio::time::sleep(sizes.settle).await;
        let (after, _) = relay.memory_kib();
        let per = after.saturating_sub(before) as f64 / sessions.len().max(1) as f64;
        rows.push(row(
            &format!("fleet relay {}: idle TLS IMAP sessions up", i + 1),
            "-".into(),
            format!("{}/{per_relay}, {per:.1} KiB/session", sessions.len()),
            "-".into(),
            "all",
            Some(failed == 0),
        ));
        held.push(sessions);
    }
    drop(held);
    Ok(rows)
}
