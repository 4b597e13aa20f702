//! Several relay PROCESSES on one PostgreSQL database (`support/fleet.rs`), driven by real
//! clients, in the scenarios of issue 15: refresh-token rotation under contention, a replica
//! killed in the middle of a refresh and of an SMTP transaction, the database restarted in
//! the middle of traffic, and a password changed by the command line on a third process.
//! Each prints its figures (`cargo test --test it fleet:: -- --nocapture`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::fleet::{Fleet, eventually, imap_login_with};

const PASSWORD: &str = "correct horse battery staple";
const MAILBOXES: [&str; 3] = ["alice@contoso.com", "bob@contoso.com", "carol@contoso.com"];
const ALICE: &str = MAILBOXES[0];

/// The fleet's mailboxes registered through the command line, with `expires_in` access tokens.
async fn fleet_with_mailboxes(expires_in: u64) -> Fleet {
    let fleet = Fleet::new().await;
    fleet.world.entra.set_expires_in(expires_in);
    for mailbox in MAILBOXES {
        fleet.add_mailbox(mailbox, PASSWORD);
    }
    fleet
}

/// What the logins of a run came to.
#[derive(Default)]
struct Logins {
    ok: usize,
    /// `replica mailbox: reply` of every login that failed.
    failed: Vec<String>,
}

/// Successful refresh-token redemptions at the fake Entra, per mailbox (from the access tokens
/// it issued), since `before` of them had been issued.
fn refreshes_per_mailbox(fleet: &Fleet, before: usize) -> BTreeMap<String, usize> {
    let entra = &fleet.world.entra;
    let mut counts: BTreeMap<String, usize> =
        MAILBOXES.iter().map(|m| (m.to_string(), 0)).collect();
    for token in entra.issued_access_tokens().into_iter().skip(before) {
        if let Some(info) = entra.access_token_info(&token) {
            *counts.entry(info.upn.to_ascii_lowercase()).or_default() += 1;
        }
    }
    counts
}

/// Refresh-token requests the fake Entra refused (e.g. `invalid_grant` for a reused one).
fn refused_refreshes(fleet: &Fleet) -> Vec<String> {
    fleet
        .world
        .entra
        .requests()
        .into_iter()
        .filter(|r| r.form.get("grant_type").map(String::as_str) == Some("refresh_token"))
        .filter(|r| r.status != 200)
        .map(|r| format!("{} {:?}", r.status, r.form.get("client_id")))
        .collect()
}

/// Every mailbox whose state on a running replica is `needs-reauth` (or `no-token`).
async fn needing_reauth(fleet: &Fleet) -> Vec<String> {
    let mut out = Vec::new();
    for i in fleet.running() {
        let (_, status) = fleet.admin_get(i, "/status").await;
        let status: serde_json::Value = serde_json::from_str(&status).expect("status is JSON");
        for m in status["mailboxes"].as_array().into_iter().flatten() {
            let state = m["state"].as_str().unwrap_or_default();
            if state == "needs-reauth" || state == "no-token" {
                out.push(format!("replica {i} {}: {state}", m["address"]));
            }
        }
    }
    out
}

/// Every mailbox logs in on every running replica.
async fn every_mailbox_everywhere(fleet: &Fleet) {
    for i in fleet.running() {
        for mailbox in MAILBOXES {
            let reply = fleet.imap_login(i, mailbox, PASSWORD).await;
            assert!(
                reply.starts_with("a OK"),
                "replica {i} {mailbox}: {reply}\n{}",
                fleet.logs()
            );
        }
    }
}

/// Rotation under contention: single-use rotating refresh tokens, 4-second access tokens,
/// 2 minutes of logins on 3 replicas for 3 mailboxes. No refresh token is redeemed twice,
/// none is refused, no mailbox needs re-authorisation, and the fleet as a whole refreshes
/// each mailbox about once per refresh period (a token is used for half its life), not
/// once per replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_contention_refreshes_once_per_lifetime_for_the_fleet() {
    const LIFETIME: u64 = 4;
    const RUN: Duration = Duration::from_secs(120);
    const REPLICAS: usize = 3;
    let mut fleet = fleet_with_mailboxes(LIFETIME).await;
    // A redeemed refresh token is refused (invalid_grant) and counted.
    fleet.world.entra.set_single_use_refresh_tokens(true);
    let first = fleet.start_replicas(REPLICAS);
    let replicas: Vec<usize> = (first..first + REPLICAS).collect();
    let before = fleet.world.entra.issued_access_tokens().len();
    let clients = Arc::new(FleetClients::of(&fleet, &replicas));
    let started = Instant::now();
    let logins = clients.traffic(started + RUN).await;
    let took = started.elapsed();

    let per_mailbox = refreshes_per_mailbox(&fleet, before);
    let stale = fleet.world.entra.refresh_token_reuses();
    let refused = refused_refreshes(&fleet);
    let reauth = needing_reauth(&fleet).await;
    // A token serves logins for half its life, so one refresh per LIFETIME/2 for the fleet.
    let period = LIFETIME as f64 / 2.0;
    let expected = took.as_secs_f64() / period;
    eprintln!(
        "rotation: {took:?}, {REPLICAS} replicas, {} mailboxes, {LIFETIME}-s tokens: {} logins ok, \
         {} failed; refreshes per mailbox {per_mailbox:?} (expected about {expected:.0} for the \
         fleet; {:.0} if every replica refreshed alone); reused refresh tokens {stale}; refused \
         refreshes {}; needs-reauth {}",
        MAILBOXES.len(),
        logins.ok,
        logins.failed.len(),
        expected * REPLICAS as f64,
        refused.len(),
        reauth.len(),
    );
    assert!(
        logins.failed.is_empty(),
        "failed logins: {:?}\n{}",
        &logins.failed[..logins.failed.len().min(20)],
        fleet.logs()
    );
    assert_eq!(stale, 0, "a refresh token was redeemed twice");
    assert!(refused.is_empty(), "refused refreshes: {refused:?}");
    assert!(reauth.is_empty(), "{reauth:?}");
    for (mailbox, count) in &per_mailbox {
        let count = *count as f64;
        assert!(
            count <= expected * 1.5 && count >= expected * 0.5,
            "{mailbox}: {count} refreshes in {took:?}, expected about {expected:.0} for the fleet"
        );
    }
    fleet.world.check_fakes();
}

/// A replica killed with SIGKILL while its token request is in flight (the fake Entra holds
/// that mailbox's responses): the survivors serve every mailbox, none needs re-authorisation.
/// The fake Entra keeps its default here (a rotated refresh token still redeems, as Entra's
/// do, and is counted): single-use, the token in a response the killed replica never read
/// would be lost whatever the relay did.
/// Then another replica killed in the middle of an SMTP transaction, after DATA and before the
/// final dot's reply: the client's connection drops, it never hears 250, nothing reached
/// Exchange; sent again through a survivor, the message arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_refresh_or_mid_transaction_loses_nothing() {
    let mut fleet = fleet_with_mailboxes(6).await;
    let (first, taps) = fleet.start_tapped_replicas(3).await;
    every_mailbox_everywhere(&fleet).await;

    // Hold Alice's refreshes, then wait for a replica to be in the middle of one (her token is
    // used for 3 s; a login or the background refresher then refreshes it).
    fleet
        .world
        .entra
        .set_delay_for(ALICE, Duration::from_secs(8));
    let deadline = Instant::now() + Duration::from_secs(30);
    let victim = loop {
        let _ = fleet.imap_login(first, ALICE, PASSWORD).await;
        if let Some(i) = (0..taps.len()).find(|i| taps[*i].in_flight() > 0) {
            // Other mailboxes' requests are answered at once: one still open a second later is
            // Alice's, held.
            tokio::time::sleep(Duration::from_secs(1)).await;
            if taps[i].in_flight() > 0 {
                break first + i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no replica refreshed Alice's token"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let stale_before = fleet.world.entra.stale_refresh_token_uses();
    fleet.kill(victim);
    fleet.world.entra.set_delay_for(ALICE, Duration::ZERO);
    eprintln!("killed replica {victim} in the middle of a refresh of {ALICE}");
    let survivors = fleet.running();
    assert_eq!(survivors.len(), 2);
    let served = eventually(Duration::from_secs(60), || async {
        let mut all = true;
        for &i in &survivors {
            all &= fleet
                .imap_login(i, ALICE, PASSWORD)
                .await
                .starts_with("a OK");
        }
        all
    })
    .await;
    assert!(
        served,
        "the survivors do not serve {ALICE}:\n{}",
        fleet.logs()
    );
    // A survivor redeems Alice's refresh token after the kill, and it still serves her.
    let grants = fleet.world.entra.refresh_grants();
    let slowest = std::sync::Mutex::new(Duration::ZERO);
    let redeemed = eventually(Duration::from_secs(60), || async {
        for &i in &survivors {
            let asked = Instant::now();
            let reply = fleet.imap_login(i, ALICE, PASSWORD).await;
            let took = asked.elapsed();
            let mut slowest = slowest.lock().unwrap();
            *slowest = (*slowest).max(took);
            assert!(
                reply.starts_with("a OK"),
                "replica {i}: {reply}\n{}",
                fleet.logs()
            );
        }
        fleet.world.entra.refresh_grants() > grants
    })
    .await;
    assert!(
        redeemed,
        "no survivor refreshed after the kill:\n{}",
        fleet.logs()
    );
    eprintln!(
        "after the kill, the slowest login of {ALICE} on a survivor took {:?} (it waits for \
         the killed replica's refresh lease to run out)",
        slowest.into_inner().unwrap()
    );
    every_mailbox_everywhere(&fleet).await;
    let reauth = needing_reauth(&fleet).await;
    assert!(reauth.is_empty(), "{reauth:?}");
    let stale = fleet.world.entra.stale_refresh_token_uses() - stale_before;
    eprintln!(
        "after the kill: reused refresh tokens {stale} (1 if the killed replica's redeemed one \
         was never stored and its predecessor was used again), refused refreshes {:?}",
        refused_refreshes(&fleet)
    );

    // The second kill: in the middle of an SMTP transaction.
    let victim = survivors[0];
    let subject = "fleet-kill-mid-data";
    let mut message = crate::harness::sample_message(ALICE, "dave@fabrikam.com");
    message.extend_from_slice(format!("{subject}\r\n").as_bytes());
    let mut smtp = RawSmtp::connect(&fleet, victim).await;
    smtp.login_and_start_data(ALICE, "dave@fabrikam.com").await;
    let half = message.len() / 2;
    smtp.write(&message[..half])
        .await
        .expect("the first half goes out");
    tokio::time::sleep(Duration::from_millis(300)).await;
    fleet.kill(victim);
    let _ = smtp.write(&message[half..]).await;
    let _ = smtp.write(b"\r\n.\r\n").await;
    let reply = smtp.reply().await;
    eprintln!("the client, after the kill mid-DATA, heard: {reply:?}");
    assert!(
        reply.as_ref().is_err() || reply.as_ref().is_ok_and(|r| !r.starts_with("250")),
        "a false 250 after the relay was killed: {reply:?}"
    );
    let arrived = |fleet: &Fleet| {
        fleet
            .world
            .smtp
            .messages()
            .iter()
            .filter(|m| String::from_utf8_lossy(&m.data).contains(subject))
            .count()
    };
    assert_eq!(arrived(&fleet), 0, "a half message reached Exchange");
    // The client sends it again, through the last survivor.
    let survivor = fleet.running()[0];
    let mut smtp = RawSmtp::connect(&fleet, survivor).await;
    smtp.login_and_start_data(ALICE, "dave@fabrikam.com").await;
    smtp.write(&message).await.unwrap();
    smtp.write(b"\r\n.\r\n").await.unwrap();
    let reply = smtp.reply().await.expect("a reply to the final dot");
    assert!(reply.starts_with("250"), "{reply}");
    assert_eq!(arrived(&fleet), 1, "sent again, it arrives once");
    every_mailbox_everywhere(&fleet).await;
    // Exchange saw the killed relay's connection end without TLS close_notify, and nothing
    // else amiss.
    let world = &fleet.world;
    let errors = world.smtp.protocol_errors();
    assert!(
        errors.len() == 1 && errors[0].contains("close_notify"),
        "{errors:?}"
    );
    world.smtp.check_no_panics();
    world.entra.check();
    world.imap.check();
    world.pop3.check();
    world.graph.check();
}

/// The database stopped for several seconds, then started, while clients log in on every
/// replica: logins with valid tokens keep working throughout, the refreshes that fall due
/// while it is down wait and resume, nothing is lost (a replica started afterwards, with
/// nothing cached, serves every mailbox), no token is reused or refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_restarted_in_the_middle_of_traffic_loses_nothing() {
    // 20-s tokens are used for 10 s: the refreshes of the first tokens fall due while the
    // database is down, and the tokens stay valid until it is back.
    let mut fleet = fleet_with_mailboxes(20).await;
    let first = fleet.start_replicas(2);
    let replicas = [first, first + 1];
    every_mailbox_everywhere(&fleet).await;
    let before = fleet.world.entra.issued_access_tokens().len();
    // The clients hold the ports only: the test stops and starts the database meanwhile.
    let clients = Arc::new(FleetClients::of(&fleet, &replicas));
    let started = Instant::now();
    let until = started + Duration::from_secs(26);
    let traffic = tokio::spawn({
        let clients = clients.clone();
        async move { clients.traffic(until).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    tokio::task::block_in_place(|| fleet.pg.stop());
    let stopped_at = started.elapsed();
    tokio::time::sleep(Duration::from_secs(9)).await;
    tokio::task::block_in_place(|| fleet.pg.start_server());
    let restarted_at = started.elapsed();
    let logins = traffic.await.expect("clients");
    let per_mailbox = refreshes_per_mailbox(&fleet, before);
    eprintln!(
        "database stopped at {stopped_at:?}, started at {restarted_at:?}: {} logins ok, {} \
         failed; refreshes per mailbox after the first tokens {per_mailbox:?}",
        logins.ok,
        logins.failed.len()
    );
    assert!(
        logins.failed.is_empty(),
        "{:?}\n{}",
        logins.failed,
        fleet.logs()
    );
    for (mailbox, count) in &per_mailbox {
        assert!(*count >= 1, "{mailbox} was not refreshed after the restart");
    }
    assert_eq!(fleet.world.entra.stale_refresh_token_uses(), 0);
    assert!(
        refused_refreshes(&fleet).is_empty(),
        "{:?}",
        refused_refreshes(&fleet)
    );
    assert!(needing_reauth(&fleet).await.is_empty());
    // Nothing lost: a new replica, nothing cached, serves every mailbox from the database.
    fleet.start_replicas(1);
    every_mailbox_everywhere(&fleet).await;
    assert_eq!(fleet.world.entra.stale_refresh_token_uses(), 0);
    fleet.world.check_fakes();
}

/// A password changed by the command line, a third process on the database, with no reload:
/// every replica takes the new one at its next login and refuses the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_password_changed_by_the_cli_holds_on_every_replica_without_a_reload() {
    const NEW: &str = "a new password, long enough";
    let mut fleet = fleet_with_mailboxes(3599).await;
    fleet.start_replicas(3);
    every_mailbox_everywhere(&fleet).await;

    let changed = Instant::now();
    fleet.cli(
        &["mailbox", "password", ALICE, "--stdin"],
        &format!("{NEW}\n"),
    );
    let mut delays = Vec::new();
    let mut attempts = Vec::new();
    for i in fleet.running() {
        let tries = std::sync::atomic::AtomicUsize::new(0);
        let honoured = eventually(Duration::from_secs(5), || async {
            tries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            fleet.imap_login(i, ALICE, NEW).await.starts_with("a OK")
        })
        .await;
        assert!(
            honoured,
            "replica {i} never took the new password:\n{}",
            fleet.logs()
        );
        delays.push(changed.elapsed());
        attempts.push(tries.into_inner());
    }
    eprintln!("logins until the new password was taken, per replica: {attempts:?}");
    assert!(
        attempts.iter().all(|a| *a == 1),
        "a replica refused the new password at its next login: {attempts:?}"
    );
    eprintln!("the new password was taken by the replicas after {delays:?}");
    for i in fleet.running() {
        let old = fleet.imap_login(i, ALICE, PASSWORD).await;
        assert!(
            old.starts_with("a NO"),
            "replica {i} took the old password: {old}"
        );
        let new = fleet.imap_login(i, ALICE, NEW).await;
        assert!(new.starts_with("a OK"), "replica {i}: {new}");
        for mailbox in &MAILBOXES[1..] {
            let other = fleet.imap_login(i, mailbox, PASSWORD).await;
            assert!(other.starts_with("a OK"), "replica {i} {mailbox}: {other}");
        }
    }
    fleet.world.check_fakes();
}

/// The traffic of [`the_database_restarted_in_the_middle_of_traffic_loses_nothing`], apart
/// from the fleet (which the test stops and starts the database of meanwhile).
struct FleetClients {
    /// Replica index and its IMAPS port.
    ports: Vec<(usize, u16)>,
    pki: Arc<rustls::ClientConfig>,
}

impl FleetClients {
    fn of(fleet: &Fleet, replicas: &[usize]) -> Self {
        Self {
            ports: replicas
                .iter()
                .map(|&i| (i, fleet.port(i, "imaps")))
                .collect(),
            pki: fleet.world.pki.client_config(),
        }
    }

    /// Every mailbox logs in on every replica, in a loop of its own per replica and mailbox
    /// (a login, then a pause of 200 ms), until `until`.
    async fn traffic(self: &Arc<Self>, until: Instant) -> Logins {
        let mut tasks = Vec::new();
        for &(i, port) in &self.ports {
            for mailbox in MAILBOXES {
                let clients = self.clone();
                tasks.push(tokio::spawn(async move {
                    let mut logins = Logins::default();
                    while Instant::now() < until {
                        let reply = clients.login(port, mailbox).await;
                        if reply.starts_with("a OK") {
                            logins.ok += 1;
                        } else {
                            logins
                                .failed
                                .push(format!("replica {i} {mailbox}: {reply}"));
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    logins
                }));
            }
        }
        let mut all = Logins::default();
        for task in tasks {
            let logins = task.await.expect("client task");
            all.ok += logins.ok;
            all.failed.extend(logins.failed);
        }
        all
    }

    async fn login(&self, port: u16, user: &str) -> String {
        imap_login_with(port, self.pki.clone(), user, PASSWORD).await
    }
}

/// An SMTP client over implicit TLS that tolerates the server's death: every step is a
/// `Result`, so that a dropped connection is seen as such.
struct RawSmtp {
    io: BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
}

impl RawSmtp {
    async fn connect(fleet: &Fleet, replica: usize) -> RawSmtp {
        let tls = fleet
            .world
            .tls_connect(fleet.port(replica, "smtps"))
            .await
            .expect("connect to the replica's SMTPS listener");
        let mut smtp = RawSmtp {
            io: BufReader::new(tls),
        };
        let greeting = smtp.reply().await.expect("greeting");
        assert!(greeting.starts_with("220"), "{greeting}");
        smtp
    }

    /// EHLO, AUTH PLAIN, MAIL, RCPT, DATA (354).
    async fn login_and_start_data(&mut self, user: &str, to: &str) {
        let plain =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{PASSWORD}"));
        for (command, code) in [
            ("EHLO app.contoso.com".to_owned(), "250"),
            (format!("AUTH PLAIN {plain}"), "235"),
            (format!("MAIL FROM:<{user}>"), "250"),
            (format!("RCPT TO:<{to}>"), "250"),
            ("DATA".to_owned(), "354"),
        ] {
            self.write(format!("{command}\r\n").as_bytes())
                .await
                .expect("send");
            let reply = self.reply().await.expect("reply");
            assert!(reply.starts_with(code), "{command}: {reply}");
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let stream = self.io.get_mut();
        stream.write_all(bytes).await?;
        stream.flush().await
    }

    /// A whole reply, or the error (or end) the connection ended with.
    async fn reply(&mut self) -> std::io::Result<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(Duration::from_secs(30), self.io.read_line(&mut line))
                .await
                .map_err(|_| std::io::Error::other("no reply within 30 s"))??;
            if read == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let done = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.trim_end().to_owned());
            if done {
                return Ok(lines.join("\n"));
            }
        }
    }
}
