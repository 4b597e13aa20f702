//! Crash safety: the real binary is killed with SIGKILL, again and again, at random
//! moments while refresh tokens rotate about every second (short-lived tokens, several
//! mailboxes, clients logging in all the while). After every kill the state folder must be
//! one the next start serves every mailbox from: each token file decrypts to a refresh
//! token Entra still accepts, at most one rotation more behind than before the kill, no
//! file is half written, and the temp files a kill can leave do not pile up.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use m365_relay::config::Config;
use m365_relay::oauth::health::State;
use m365_relay::state::StateKey;
use m365_relay::state::files::{read_status, with_key};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt};

use crate::harness::{RelayProcess, World};

const MAILBOXES: [(&str, &str); 4] = [
    ("alice@contoso.com", "alice pw"),
    ("bob@contoso.com", "bob pw"),
    ("carol@contoso.com", "carol pw"),
    ("dave@contoso.com", "dave pw"),
];

const KILLS: usize = 20;

/// A small xorshift generator for the kill delays; the seed is printed, and
/// `CRASH_SEED=<seed>` replays its delays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One SMTP AUTH over implicit TLS; the reply, or `None` if the relay went away at any
/// point (it is killed at random moments).
async fn smtp_login(port: u16, world: &World, user: &str, password: &str) -> Option<String> {
    let tls = world.tls_connect(port).await.ok()?;
    let mut io = tokio::io::BufReader::new(tls);
    let mut line = String::new();
    read_line(&mut io, &mut line).await?;
    let plain = STANDARD.encode(format!("\0{user}\0{password}"));
    let commands = format!("EHLO crash-test\r\nAUTH PLAIN {plain}\r\n");
    io.get_mut().write_all(commands.as_bytes()).await.ok()?;
    loop {
        read_line(&mut io, &mut line).await?;
        if !line.starts_with("250") {
            return Some(line.trim_end().to_owned());
        }
    }
}

/// The next line into `line`; `None` at the end of the connection or after 10 s.
async fn read_line<R: AsyncBufRead + Unpin>(io: &mut R, line: &mut String) -> Option<()> {
    line.clear();
    match tokio::time::timeout(Duration::from_secs(10), io.read_line(line)).await {
        Ok(Ok(n)) if n > 0 => Some(()),
        _ => None,
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read state folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn is_temp(path: &Path) -> bool {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    name.starts_with('.') && name.contains(".tmp.")
}

/// What the state folder holds after a kill.
struct Inspection {
    /// How many rotations each mailbox's stored refresh token is behind Entra's newest.
    lags: Vec<u64>,
    temp_files: usize,
}

/// Checks the state folder as the next start will find it.
fn inspect(world: &World, config: &Config, key: &StateKey) -> Inspection {
    let state = &config.state_dir;
    let mut temp_files = 0;
    for file in files_under(state) {
        if is_temp(&file) {
            temp_files += 1;
            continue;
        }
        if file == m365_relay::state::files::lock::lock_path(state) {
            // The state lock holds nothing.
            continue;
        }
        let bytes = std::fs::read(&file).expect("read state file");
        let json: Result<serde_json::Value, _> = serde_json::from_slice(&bytes);
        assert!(json.is_ok(), "{} is not whole JSON", file.display());
    }
    let files = with_key(state, key.clone());
    let registry = files.registry().load().expect("the registry loads");
    let store = files.tokens();
    let mut lags = Vec::new();
    for (address, _) in MAILBOXES {
        assert!(registry.get(address).is_some(), "{address} registered");
        let token = store
            .load(address)
            .unwrap_or_else(|e| panic!("{address}: {e}"))
            .unwrap_or_else(|| panic!("{address}: no token"));
        let lag = world
            .entra
            .refresh_token_lag(token.expose())
            .unwrap_or_else(|| {
                panic!("{address}: the stored refresh token is not one Entra knows")
            });
        lags.push(lag);
        if let Some(status) = read_status(state, address) {
            assert_ne!(status.state, State::NeedsReauth, "{address}: {status:?}");
        }
    }
    Inspection { lags, temp_files }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_relay_during_rotations_never_loses_a_mailbox() {
    let started = Instant::now();
    let world = World::new().await;
    // 2-second tokens: each mailbox's refresh token rotates about every second (the
    // refresher's, or a login's refresh). Entra rotates as soon as a request arrives and
    // answers 150 ms later, so that a kill often lands between a rotation and the relay's
    // write of the new token.
    world.entra.set_expires_in(2);
    world.entra.set_delay(Duration::from_millis(150));
    for (address, password) in MAILBOXES {
        world.add_mailbox(address, password);
    }
    let config = Config::load(Some(&world.config_path)).expect("config");
    let key = StateKey::load(&config.key_file).expect("state key");
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let world = Arc::new(world);

    let mut lags = vec![0; MAILBOXES.len()];
    let (mut lagged, mut most_lag, mut most_temp_files) = (0, 0, 0);
    let logins = Arc::new(AtomicUsize::new(0));
    for kill in 1..=KILLS {
        let mut relay = RelayProcess::start(&world);
        let port = relay.port("smtps");
        // Every mailbox logs in from the state the last kill left.
        let replies = futures::future::join_all(
            MAILBOXES.map(|(address, password)| smtp_login(port, &world, address, password)),
        )
        .await;
        for ((address, _), reply) in MAILBOXES.iter().zip(replies) {
            assert!(
                reply.as_deref().is_some_and(|r| r.starts_with("235 ")),
                "after kill {}: {address}: {reply:?}",
                kill - 1
            );
        }
        // Clients keep logging in while the refresher rotates, until the kill.
        let clients: Vec<_> = MAILBOXES
            .iter()
            .map(|&(address, password)| {
                let (world, logins) = (world.clone(), logins.clone());
                tokio::spawn(async move {
                    loop {
                        if smtp_login(port, &world, address, password).await.is_some() {
                            logins.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200 + rng.below(800))).await;
        relay.child.kill().expect("SIGKILL");
        relay.child.wait().expect("reap");
        for client in clients {
            client.abort();
        }

        let seen = inspect(&world, &config, &key);
        for (i, lag) in seen.lags.iter().enumerate() {
            // A kill between Entra's rotation and the write costs one rotation; the next
            // start redeems the stored token and catches up.
            assert!(
                *lag <= lags[i] + 1,
                "kill {kill}: {} fell {lag} rotations behind (was {})",
                MAILBOXES[i].0,
                lags[i]
            );
            lagged += usize::from(*lag > 0);
            most_lag = most_lag.max(*lag);
        }
        lags = seen.lags;
        most_temp_files = most_temp_files.max(seen.temp_files);
        assert!(
            seen.temp_files <= kill,
            "kill {kill}: {} temp files",
            seen.temp_files
        );
    }
    // The last kill's state serves too.
    let relay = RelayProcess::start(&world);
    for (address, password) in MAILBOXES {
        let reply = smtp_login(relay.port("smtps"), &world, address, password).await;
        assert!(
            reply.as_deref().is_some_and(|r| r.starts_with("235 ")),
            "{reply:?}"
        );
    }
    drop(relay);
    let refreshes = world.entra.token_requests();
    eprintln!(
        "crash test: {KILLS} kills in {:?}, {refreshes} token requests, {} client logins, \
         {} stale refresh-token uses; after a kill, a mailbox's stored token was behind \
         Entra's newest {lagged} times (by at most {most_lag} rotations), and at most \
         {most_temp_files} temp files were left",
        started.elapsed(),
        logins.load(Ordering::Relaxed),
        world.entra.stale_refresh_token_uses(),
    );
    assert!(refreshes >= 2 * KILLS, "rotations happened: {refreshes}");
    world.entra.check();
}
