//! `cargo bench --bench relay [-- --quick]`: the relay side by side with a direct
//! connection to the same fake Microsoft 365 (issue 7).
//!
//! The fakes (Entra's token endpoint, Exchange's IMAP and SMTP servers) and the clients run
//! in this process; the relay is the real release binary (`m365-relay serve`) as a child
//! process, so that its resident memory and CPU time (from `/proc/<pid>`) are its own.
//! Mailboxes are registered with the real `m365-relay mailbox ...` commands. Direct clients
//! log in with XOAUTH2 straight to the fakes (TLS); relayed clients log in with a password
//! to the relay, which logs in upstream with XOAUTH2 over TLS. One table is printed at the
//! end. `--quick` shrinks every figure so that CI finishes in seconds; it asserts only that
//! the run completes.

#![forbid(unsafe_code)]
// A benchmark that cannot run aborts: its setup may unwrap, expect and panic
// (Cargo.toml [lints]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "../tests/it/support/certs.rs"]
mod certs;
#[path = "relay/client.rs"]
mod client;
#[path = "relay/fakes.rs"]
mod fakes;
#[path = "relay/fleet.rs"]
mod fleet;
#[allow(dead_code)]
#[path = "../tests/it/support/pg_machine.rs"]
mod pg_machine;
#[path = "relay/postfix.rs"]
mod postfix;
#[allow(dead_code)]
#[path = "../tests/it/support/postgres.rs"]
mod postgres;
#[path = "relay/queue.rs"]
mod queue;
#[allow(dead_code)]
#[path = "../tests/it/support/relay_launch.rs"]
mod relay_launch;
#[path = "relay/relay_process.rs"]
mod relay_process;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use client::{Dial, Login, Result, SmtpLogin};
use relay_process::Relay;
use tokio_rustls::TlsConnector;

/// Every size the run uses.
struct Sizes {
    logins: usize,
    fetch: u64,
    data: usize,
    burst: usize,
    sessions: usize,
    slow_fetch: u64,
    slow_read: u64,
    settle: Duration,
    /// Each one-stream transfer is repeated this often; the best run counts.
    repeats: u32,
    /// Idle sessions on each relay of the fleet.
    fleet_sessions: usize,
    /// Messages each of the 20 clients gets accepted into the queue (and Postfix's).
    queue_per_client: usize,
    /// Messages queued for the memory figure.
    queued: usize,
    /// 1 MB sessions each way.
    mb_sessions: usize,
}

const FULL: Sizes = Sizes {
    logins: 1000,
    fetch: 100_000_000,
    data: 25_000_000,
    burst: 1000,
    sessions: 10_000,
    slow_fetch: 300_000_000,
    slow_read: 50_000_000,
    settle: Duration::from_secs(2),
    repeats: 3,
    fleet_sessions: 5000,
    queue_per_client: 100,
    queued: 10_000,
    mb_sessions: 20,
};

const QUICK: Sizes = Sizes {
    logins: 50,
    fetch: 5_000_000,
    data: 2_000_000,
    burst: 50,
    sessions: 100,
    slow_fetch: 30_000_000,
    slow_read: 2_000_000,
    settle: Duration::from_millis(300),
    repeats: 1,
    fleet_sessions: 50,
    queue_per_client: 3,
    queued: 100,
    mb_sessions: 2,
};

/// Mailboxes registered, for the burst; the others use the first.
const MAILBOXES: usize = 10;
/// A login (or session setup) that takes longer counts as failed.
const STUCK: Duration = Duration::from_secs(20);
/// Latency of the fake token endpoint (Entra answers in tens of milliseconds).
const ENTRA_LATENCY: Duration = Duration::from_millis(50);

/// One row of the table.
struct Row {
    figure: String,
    direct: String,
    relay: String,
    ratio: String,
    target: String,
    met: String,
}

fn row(
    figure: &str,
    direct: String,
    relay: String,
    ratio: String,
    target: &str,
    met: Option<bool>,
) -> Row {
    Row {
        figure: figure.to_owned(),
        direct,
        relay,
        ratio,
        target: target.to_owned(),
        met: match met {
            Some(true) => "yes".into(),
            Some(false) => "NO".into(),
            None => "-".into(),
        },
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// The world: PKI, fakes, state folder with registered mailboxes, config.
struct World {
    pki: certs::TestPki,
    entra: fakes::FakeEntra,
    imap: fakes::FakeImap,
    smtp: fakes::FakeSmtp,
    tls: TlsConnector,
    dir: tempfile::TempDir,
    users: Vec<(String, String)>,
}

impl World {
    fn direct_imap(&self) -> Dial {
        Dial {
            addr: self.imap.addr,
            tls: Some(self.tls.clone()),
        }
    }

    fn xoauth2(&self) -> Login {
        Login::Xoauth2 {
            user: self.users[0].0.clone(),
            token: "direct-access-token".into(),
        }
    }

    fn password(&self, i: usize) -> Login {
        let (user, password) = self.users[i % self.users.len()].clone();
        Login::Password { user, password }
    }
}

fn main() {
    // The fleet's fake IMAP server in a process of its own (fleet.rs): its descriptors do
    // not count against this one's limit.
    if let Some(dir) = fleet::upstream_child_dir() {
        fleet::serve_upstream_child(&dir);
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes = if quick { &QUICK } else { &FULL };
    // Room for the fleet's sessions: client and fake-server ends of 2 x 5,000 sessions.
    if rlimit::setrlimit(rlimit::Resource::NOFILE, 65_536, 65_536).is_err() {
        let _ = rlimit::increase_nofile_limit(65_536);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let rows = runtime.block_on(run(sizes)).unwrap_or_else(|e| {
        eprintln!("benchmark failed: {e}");
        std::process::exit(1);
    });
    print_table(quick, &rows);
    eprintln!("(benchmark took {:.1} s)", started.elapsed().as_secs_f64());
}

async fn run(sizes: &Sizes) -> Result<Vec<Row>> {
    let pki = certs::TestPki::new();
    let server_tls = pki.server_config(&["127.0.0.1", "localhost"]);
    let tls = TlsConnector::from(pki.client_config());
    let entra = fakes::FakeEntra::start(ENTRA_LATENCY).await;
    let imap = fakes::FakeImap::start(server_tls.clone()).await;
    let smtp = fakes::FakeSmtp::start(server_tls).await;
    let dir = tempfile::tempdir()?;
    let upstream = relay_process::Upstream::of(&entra, &imap, &smtp);
    relay_process::write_config(dir.path(), &pki, &upstream, "")?;
    eprintln!("registering {MAILBOXES} mailboxes with `m365-relay mailbox ...`");
    let mut users = Vec::new();
    for i in 0..MAILBOXES {
        let user = format!("bench{i:02}@contoso.com");
        let password = relay_process::register(dir.path(), &user)?;
        users.push((user, password));
    }
    let world = World {
        pki,
        entra,
        imap,
        smtp,
        tls,
        dir,
        users,
    };
    let mut rows = Vec::new();
    // `BENCH_ONLY=login,throughput` runs only those figures (burst, login, throughput,
    // slow, idle, fleet, queue), e.g. to compare two builds quickly.
    let only = std::env::var("BENCH_ONLY").ok();
    let wanted = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|w| w == name))
    };

    // A fresh relay for the burst: no access token is cached, as after every token has
    // just expired.
    if wanted("burst") {
        let relay = Relay::start(world.dir.path())?;
        rows.extend(burst(&world, &relay, sizes).await?);
    }

    let relay = Relay::start(world.dir.path())?;
    // Warm up: the first login per mailbox checks its password and caches its token.
    for i in 0..MAILBOXES {
        drop(client::imap_login(&relay.dial("imap", None), &world.password(i)).await?);
    }
    if wanted("login") {
        rows.extend(logins(&world, &relay, sizes).await?);
    }
    if wanted("throughput") {
        rows.extend(throughput(&world, &relay, sizes).await?);
    }
    if wanted("slow") {
        rows.extend(slow_reader(&world, &relay, sizes).await?);
    }
    if wanted("idle") {
        rows.extend(idle_sessions(&world, &relay, sizes).await?);
    }
    if wanted("fleet") {
        rows.extend(fleet::run(&world, &relay, sizes).await?);
    }
    if wanted("queue") {
        rows.extend(queue::run(&world, &relay, sizes).await?);
    }
    Ok(rows)
}

/// Login latency with a cached token: sequential logins, p50 and p99.
async fn logins(world: &World, relay: &Relay, sizes: &Sizes) -> Result<Vec<Row>> {
    eprintln!("login latency: {} logins each way", sizes.logins);
    async fn sample(n: usize, dial: &Dial, login: &Login) -> Result<Vec<Duration>> {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let c = client::imap_login(dial, login).await?;
            times.push(t.elapsed());
            drop(c);
        }
        times.sort();
        Ok(times)
    }
    let direct = sample(sizes.logins, &world.direct_imap(), &world.xoauth2()).await?;
    let via_tls = sample(
        sizes.logins,
        &relay.dial("imaps", Some(&world.tls)),
        &world.password(0),
    )
    .await?;
    let via_plain = sample(sizes.logins, &relay.dial("imap", None), &world.password(0)).await?;
    let mut rows = Vec::new();
    for (name, relayed, p, target) in [
        ("IMAP login p50, TLS client leg", &via_tls, 0.5, true),
        ("IMAP login p99, TLS client leg", &via_tls, 0.99, false),
        ("IMAP login p50, plain client leg", &via_plain, 0.5, true),
        ("IMAP login p99, plain client leg", &via_plain, 0.99, false),
    ] {
        let (d, r) = (percentile(&direct, p), percentile(relayed, p));
        let ratio = r.as_secs_f64() / d.as_secs_f64();
        rows.push(row(
            name,
            ms(d),
            ms(r),
            format!("{ratio:.2}x"),
            if target { "<= 1.3x" } else { "-" },
            target.then_some(ratio <= 1.3),
        ));
    }
    Ok(rows)
}

/// CPU seconds (user + system) of this process so far.
fn own_cpu() -> f64 {
    relay_process::cpu_seconds(std::process::id())
}

/// One-stream throughput of IMAP FETCH and SMTP DATA, and CPU per GB.
async fn throughput(world: &World, relay: &Relay, sizes: &Sizes) -> Result<Vec<Row>> {
    eprintln!(
        "throughput: FETCH {} MB, DATA {} MB",
        sizes.fetch / 1_000_000,
        sizes.data / 1_000_000
    );
    world
        .imap
        .state
        .message_size
        .store(sizes.fetch, Ordering::SeqCst);
    let mut rows = Vec::new();

    let repeats = sizes.repeats;
    // IMAP FETCH: time from the command to the tagged OK; the best of `repeats`.
    async fn fetch(dial: &Dial, login: &Login, repeats: u32) -> Result<Duration> {
        let mut best = Duration::MAX;
        for _ in 0..repeats {
            let mut c = client::imap_login(dial, login).await?;
            client::imap_select(&mut c).await?;
            let t = Instant::now();
            client::imap_fetch(&mut c).await?;
            best = best.min(t.elapsed());
        }
        Ok(best)
    }
    async fn send(
        dial: &Dial,
        login: &SmtpLogin,
        from: &str,
        message: &[u8],
        repeats: u32,
    ) -> Result<Duration> {
        let mut best = Duration::MAX;
        for _ in 0..repeats {
            best = best.min(client::smtp_send(dial, login, from, message).await?);
        }
        Ok(best)
    }
    let cpu0 = own_cpu();
    let direct = fetch(&world.direct_imap(), &world.xoauth2(), repeats).await?;
    let direct_cpu_fetch = own_cpu() - cpu0;
    let r0 = relay.cpu();
    let plain = fetch(&relay.dial("imap", None), &world.password(0), repeats).await?;
    let relay_cpu_plain_fetch = relay.cpu() - r0;
    let r0 = relay.cpu();
    let tls = fetch(
        &relay.dial("imaps", Some(&world.tls)),
        &world.password(0),
        repeats,
    )
    .await?;
    let relay_cpu_tls_fetch = relay.cpu() - r0;
    let d = mbps(sizes.fetch, direct);
    for (name, t) in [
        ("IMAP FETCH MB/s, plain client leg", plain),
        ("IMAP FETCH MB/s, TLS client leg", tls),
    ] {
        let r = mbps(sizes.fetch, t);
        let plain_leg = name.contains("plain");
        rows.push(row(
            name,
            format!("{d:.0}"),
            format!("{r:.0}"),
            format!("{:.2}x", r / d),
            if plain_leg { ">= 0.9x" } else { "-" },
            plain_leg.then_some(r / d >= 0.9),
        ));
    }

    // SMTP DATA: time from 354 to the final 250.
    let from = world.users[0].0.clone();
    let message = client::message(&from, sizes.data);
    let direct_login = SmtpLogin::Xoauth2 {
        user: from.clone(),
        token: "direct-access-token".into(),
        tls: world.tls.clone(),
    };
    let direct_dial = Dial {
        addr: world.smtp.addr,
        tls: None,
    };
    let (user, password) = world.users[0].clone();
    let relay_login = SmtpLogin::Password { user, password };
    let cpu0 = own_cpu();
    let direct = send(&direct_dial, &direct_login, &from, &message, repeats).await?;
    let direct_cpu_data = own_cpu() - cpu0;
    let r0 = relay.cpu();
    let plain = send(
        &relay.dial("smtp", None),
        &relay_login,
        &from,
        &message,
        repeats,
    )
    .await?;
    let relay_cpu_plain_data = relay.cpu() - r0;
    let r0 = relay.cpu();
    let tls = send(
        &relay.dial("smtps", Some(&world.tls)),
        &relay_login,
        &from,
        &message,
        repeats,
    )
    .await?;
    let relay_cpu_tls_data = relay.cpu() - r0;
    let delivered = world.smtp.data_bytes.load(Ordering::SeqCst);
    let expected = 3 * u64::from(repeats) * (message.len() as u64 + 3);
    if delivered != expected {
        return Err(format!(
            "the fake SMTP server received {delivered} bytes, expected {expected}"
        )
        .into());
    }
    let d = mbps(message.len() as u64, direct);
    for (name, t) in [
        ("SMTP DATA MB/s, plain client leg", plain),
        ("SMTP DATA MB/s, TLS client leg", tls),
    ] {
        let r = mbps(message.len() as u64, t);
        let plain_leg = name.contains("plain");
        rows.push(row(
            name,
            format!("{d:.0}"),
            format!("{r:.0}"),
            format!("{:.2}x", r / d),
            if plain_leg { ">= 0.9x" } else { "-" },
            plain_leg.then_some(r / d >= 0.9),
        ));
    }

    // CPU per GB: for direct, this process (client and server, both ends of one TLS
    // connection); through the relay, the relay process alone (one or two TLS ends).
    let gb = f64::from(repeats) * (sizes.fetch + message.len() as u64) as f64 / 1e9;
    let direct_cpu = (direct_cpu_fetch + direct_cpu_data) / gb;
    for (name, cpu) in [
        (
            "CPU s/GB, plain client leg",
            relay_cpu_plain_fetch + relay_cpu_plain_data,
        ),
        (
            "CPU s/GB, TLS client leg",
            relay_cpu_tls_fetch + relay_cpu_tls_data,
        ),
    ] {
        let per_gb = cpu / gb;
        rows.push(row(
            name,
            format!("{direct_cpu:.2} s"),
            format!("{per_gb:.2} s"),
            format!("{:.2}x", per_gb / direct_cpu),
            "- (relay vs client+server)",
            None,
        ));
    }
    Ok(rows)
}

/// 1,000 clients at once over 10 mailboxes with no cached access token.
async fn burst(world: &World, relay: &Relay, sizes: &Sizes) -> Result<Vec<Row>> {
    eprintln!(
        "login burst: {} clients over {MAILBOXES} mailboxes",
        sizes.burst
    );
    let before = world.entra.requests();
    let dial = relay.dial("imap", None);
    let logins = (0..sizes.burst)
        .map(|i| (dial.clone(), world.password(i)))
        .collect();
    let outcome = burst_of(logins).await?;
    let (times, failures) = (outcome.ok, outcome.failed);
    let requests = world.entra.requests() - before;
    let p99 = percentile(&times, 0.99);
    Ok(vec![
        row(
            &format!("burst: {} logins succeeded", sizes.burst),
            "-".into(),
            format!("{}/{}", times.len(), sizes.burst),
            "-".into(),
            "all",
            Some(failures == 0),
        ),
        row(
            "burst: login p99 (p50)",
            "-".into(),
            format!("{} ({})", ms(p99), ms(percentile(&times, 0.5))),
            "-".into(),
            "< 1 s",
            Some(p99 < Duration::from_secs(1)),
        ),
        row(
            "burst: token requests",
            "-".into(),
            requests.to_string(),
            "-".into(),
            "= 10",
            Some(requests == MAILBOXES as u64),
        ),
    ])
}

/// What a burst of logins came to: the times of those that succeeded, sorted, and how
/// many failed.
struct Burst {
    ok: Vec<Duration>,
    failed: usize,
}

/// Every login of `logins` at once (each on its own dial); failures are counted, the first
/// one printed.
async fn burst_of(logins: Vec<(Dial, Login)>) -> Result<Burst> {
    let go = Arc::new(tokio::sync::Barrier::new(logins.len()));
    let mut tasks = Vec::new();
    for (dial, login) in logins {
        let go = go.clone();
        tasks.push(tokio::spawn(async move {
            go.wait().await;
            let t = Instant::now();
            let c = tokio::time::timeout(STUCK, client::imap_login(&dial, &login)).await;
            let outcome = match c {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {STUCK:?}")),
            };
            (t.elapsed(), outcome)
        }));
    }
    let mut ok = Vec::new();
    let mut failures = Vec::new();
    for task in tasks {
        let (t, outcome) = task.await?;
        match outcome {
            Ok(()) => ok.push(t),
            Err(e) => failures.push(e),
        }
    }
    ok.sort();
    if let Some(e) = failures.first() {
        eprintln!("  {} logins failed, e.g.: {e}", failures.len());
    }
    Ok(Burst {
        ok,
        failed: failures.len(),
    })
}

/// A client that stops reading in the middle of a large FETCH.
async fn slow_reader(world: &World, relay: &Relay, sizes: &Sizes) -> Result<Vec<Row>> {
    eprintln!(
        "slow reader: stops after {} MB of a {} MB FETCH",
        sizes.slow_read / 1_000_000,
        sizes.slow_fetch / 1_000_000
    );
    let state = &world.imap.state;
    state.message_size.store(sizes.slow_fetch, Ordering::SeqCst);
    let mut c = client::imap_login(&relay.dial("imap", None), &world.password(0)).await?;
    client::imap_select(&mut c).await?;
    tokio::time::sleep(sizes.settle).await;
    relay.reset_peak();
    let (before, _) = relay.memory_kib();
    let sent0 = state.literal_bytes.load(Ordering::SeqCst);
    let size = client::imap_fetch_head(&mut c).await?;
    c.skip(sizes.slow_read).await?;
    // The client stops reading; let the pipes fill.
    tokio::time::sleep(sizes.settle).await;
    let sent1 = state.literal_bytes.load(Ordering::SeqCst) - sent0;
    tokio::time::sleep(sizes.settle).await;
    let sent2 = state.literal_bytes.load(Ordering::SeqCst) - sent0;
    let (_, peak) = relay.memory_kib();
    drop(c);
    let growth = peak.saturating_sub(before);
    let paused = sent1 == sent2 && sent2 < size;
    Ok(vec![
        row(
            "slow reader: relay peak RSS growth",
            "-".into(),
            format!("{growth} KiB"),
            "-".into(),
            "<= 1024 KiB",
            Some(growth <= 1024),
        ),
        row(
            "slow reader: upstream paused",
            "-".into(),
            format!(
                "{} at {:.1} of {} MB",
                if paused { "yes" } else { "no" },
                sent2 as f64 / 1e6,
                size / 1_000_000
            ),
            "-".into(),
            "pauses",
            Some(paused),
        ),
    ])
}

/// Idle authenticated IMAP sessions in IDLE, TLS on both legs: relay RSS per session.
async fn idle_sessions(world: &World, relay: &Relay, sizes: &Sizes) -> Result<Vec<Row>> {
    // Each session holds two descriptors here (client and fake server) and two in the
    // relay (which inherits our limit).
    let limit = relay_process::nofile_limit();
    let n = sizes.sessions.min((limit.saturating_sub(200) / 2) as usize);
    eprintln!("idle sessions: {n} in IDLE, TLS both legs (RLIMIT_NOFILE {limit})");
    tokio::time::sleep(sizes.settle).await;
    let (before, _) = relay.memory_kib();
    let dial = relay.dial("imaps", Some(&world.tls));
    let (sessions, failed) = open_idle(&dial, (0..n).map(|i| world.password(i)).collect()).await?;
    tokio::time::sleep(sizes.settle).await;
    let (after, _) = relay.memory_kib();
    let per = (after.saturating_sub(before)) as f64 / sessions.len().max(1) as f64;
    drop(sessions);
    Ok(vec![row(
        &format!("idle IMAP sessions (TLS both legs): {}/{n} up", n - failed),
        "-".into(),
        format!(
            "{per:.1} KiB/session ({} MiB total)",
            after.saturating_sub(before) / 1024
        ),
        "-".into(),
        "<= 64 KiB",
        Some(per <= 64.0 && failed == 0),
    )])
}

/// Opens one session per login on `dial` (64 at a time), each logged in, INBOX selected
/// and in IDLE: the sessions that came up, and how many failed (the first failure printed).
async fn open_idle(dial: &Dial, logins: Vec<Login>) -> Result<(Vec<client::Conn>, usize)> {
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for login in logins {
        let (dial, gate) = (dial.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let c = tokio::time::timeout(STUCK, async {
                let mut c = client::imap_login(&dial, &login).await?;
                client::imap_select(&mut c).await?;
                client::imap_idle(&mut c).await?;
                Result::Ok(c)
            })
            .await
            .map_err(|_| format!("no answer within {STUCK:?}"))?;
            drop(permit);
            c
        }));
    }
    let mut sessions = Vec::new();
    let mut failed = 0;
    let mut first_error = None;
    for task in tasks {
        match task.await? {
            Ok(c) => sessions.push(c),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("  {failed} sessions failed, e.g.: {e}");
    }
    Ok((sessions, failed))
}

fn print_table(quick: bool, rows: &[Row]) {
    let header = Row {
        figure: "figure".into(),
        direct: "direct".into(),
        relay: "relay".into(),
        ratio: "ratio".into(),
        target: "target".into(),
        met: "met?".into(),
    };
    let all: Vec<&Row> = std::iter::once(&header).chain(rows).collect();
    let width = |f: fn(&Row) -> &str| all.iter().map(|r| f(r).len()).max().unwrap_or(0);
    let w = [
        width(|r| &r.figure),
        width(|r| &r.direct),
        width(|r| &r.relay),
        width(|r| &r.ratio),
        width(|r| &r.target),
        width(|r| &r.met),
    ];
    println!(
        "m365-relay benchmark ({} mode)",
        if quick { "quick" } else { "full" }
    );
    for (i, r) in all.iter().enumerate() {
        println!(
            "| {:<a$} | {:>b$} | {:>c$} | {:>d$} | {:<e$} | {:<f$} |",
            r.figure,
            r.direct,
            r.relay,
            r.ratio,
            r.target,
            r.met,
            a = w[0],
            b = w[1],
            c = w[2],
            d = w[3],
            e = w[4],
            f = w[5]
        );
        if i == 0 {
            let dashes: Vec<String> = w.iter().map(|n| "-".repeat(*n)).collect();
            println!("|-{}-|", dashes.join("-|-"));
        }
    }
}
