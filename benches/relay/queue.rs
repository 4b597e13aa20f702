//! Issue 16's figures:
//! - messages a second accepted durably (fsync) into the queue from 20 concurrent clients,
//!   10 KB each, side by side with Postfix accepting into its own queue on this machine;
//! - a 1 MB message sent through the relay, the whole session (login included) from the
//!   second session on, side by side with the same session straight to the fake Exchange;
//! - the relay's memory with 10,000 messages queued (the queue is not held in memory).
//!
//! The queue's relay is a process of its own on a state folder of its own, with one mailbox
//! whose delivery is `queue` (`m365-relay mailbox sending ADDRESS --delivery queue`): its
//! workers send at Exchange's 30 messages a minute, so what was accepted stays queued.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{self, Conn, Dial, Result, SmtpLogin};
use crate::relay_process::{self, Relay};
use crate::{Row, Sizes, World, ms, row};

/// Concurrent clients of the acceptance figure.
const CLIENTS: usize = 20;
/// Size of each message of the acceptance figure.
const MESSAGE: usize = 10 * 1024;

/// The round trip of the 1 MB figure's second run: Exchange Online is milliseconds away
/// from any client (tens of them over the internet), not microseconds as on loopback.
const EXCHANGE_RTT: Duration = Duration::from_millis(2);

pub async fn run(world: &World, relay: &Relay, sizes: &Sizes) -> Result<Vec<Row>> {
    let mut rows = one_megabyte(world, relay, sizes, Duration::ZERO).await?;
    let delay = &crate::fakes::SMTP_REPLY_DELAY_US;
    delay.store(
        EXCHANGE_RTT.as_micros() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let with_rtt = one_megabyte(world, relay, sizes, EXCHANGE_RTT).await;
    delay.store(0, std::sync::atomic::Ordering::Relaxed);
    rows.extend(with_rtt?);
    rows.extend(acceptance(world, sizes).await?);
    Ok(rows)
}

/// A relay on a fresh state folder with one mailbox that queues; its password.
fn queue_relay(world: &World) -> Result<(tempfile::TempDir, Relay, String, String)> {
    let dir = tempfile::tempdir()?;
    let upstream = relay_process::Upstream {
        authority: world.entra.authority(),
        imap: world.imap.addr,
        smtp: world.smtp.addr,
    };
    relay_process::write_config(dir.path(), &world.pki, &upstream, "")?;
    // Exchange's 30 a minute: the workers send slowly, what was accepted stays queued.
    relay_process::microsoft_sending_limits(dir.path())?;
    let user = "queued@contoso.com".to_owned();
    let password = relay_process::register(dir.path(), &user)?;
    relay_process::cli(
        dir.path(),
        &["mailbox", "sending", &user, "--delivery", "queue"],
        "",
    )?;
    let relay = Relay::start(dir.path())?;
    Ok((dir, relay, user, password))
}

/// `count` messages on one connection: EHLO, AUTH PLAIN when `login` says so, then
/// MAIL/RCPT/DATA each, waiting for every `250`.
async fn send_many(
    dial: Dial,
    login: Option<(String, String)>,
    from: String,
    message: Arc<Vec<u8>>,
    count: usize,
) -> Result<()> {
    let mut c = Conn::dial(&dial).await?;
    c.reply(b"220").await?;
    c.send(b"EHLO bench\r\n").await?;
    c.reply(b"250").await?;
    if let Some((user, password)) = login {
        let plain = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("\0{user}\0{password}"),
        );
        c.send(format!("AUTH PLAIN {plain}\r\n").as_bytes()).await?;
        c.reply(b"235").await?;
    }
    let mut data = message.to_vec();
    data.extend_from_slice(b".\r\n");
    for _ in 0..count {
        c.send(format!("MAIL FROM:<{from}>\r\n").as_bytes()).await?;
        c.reply(b"250").await?;
        c.send(b"RCPT TO:<bench-sink@fabrikam.com>\r\n").await?;
        c.reply(b"250").await?;
        c.send(b"DATA\r\n").await?;
        c.reply(b"354").await?;
        c.send(&data).await?;
        c.reply(b"250").await?;
    }
    let _ = c.send(b"QUIT\r\n").await;
    Ok(())
}

/// Messages a second `CLIENTS` clients get accepted, `per_client` each.
async fn rate(
    dial: &Dial,
    login: Option<(String, String)>,
    from: &str,
    per_client: usize,
) -> Result<f64> {
    let message = client::message(from, MESSAGE);
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (dial, login, from) = (dial.clone(), login.clone(), from.to_owned());
            tokio::spawn(send_many(dial, login, from, message.clone(), per_client))
        })
        .collect();
    for client in clients {
        client.await??;
    }
    let took = started.elapsed();
    Ok((CLIENTS * per_client) as f64 / took.as_secs_f64())
}

/// Acceptance into the queue vs Postfix, then the relay's memory with many queued.
async fn acceptance(world: &World, sizes: &Sizes) -> Result<Vec<Row>> {
    let (_dir, relay, user, password) = queue_relay(world)?;
    let per_client = sizes.queue_per_client;
    eprintln!("queue: {CLIENTS} clients x {per_client} messages of 10 KB, relay and Postfix");
    if !crate::postfix::installed() {
        return Err(
            "Postfix is not installed (`apt-get install postfix`; .ci/run installs it)".into(),
        );
    }
    let pf_dir = tempfile::tempdir()?;
    let postfix = crate::postfix::Postfix::start(pf_dir.path())?;
    let postfix_dial = Dial {
        addr: postfix.addr,
        tls: None,
    };
    // Alternating, twice each; the better run of each counts.
    let login = Some((user.clone(), password.clone()));
    let relay_dial = relay.dial("smtp", None);
    let (mut pf_best, mut relay_best) = (0f64, 0f64);
    for _ in 0..2 {
        pf_best = pf_best.max(rate(&postfix_dial, None, &user, per_client).await?);
        relay_best = relay_best.max(rate(&relay_dial, login.clone(), &user, per_client).await?);
    }
    let version = postfix.version.clone();
    drop(postfix);
    let ratio = relay_best / pf_best;
    let mut rows = vec![row(
        &format!(
            "queue: 10 KB messages/s accepted, {CLIENTS} clients (Postfix {version} vs relay)"
        ),
        format!("{pf_best:.0}"),
        format!("{relay_best:.0}"),
        format!("{ratio:.2}x"),
        ">= 1.0x",
        Some(ratio >= 1.0),
    )];
    rows.push(memory(&relay, &user, &password, sizes).await?);
    Ok(rows)
}

/// Resident memory before and after `sizes.queued` more messages are queued.
async fn memory(relay: &Relay, user: &str, password: &str, sizes: &Sizes) -> Result<Row> {
    let target = sizes.queued;
    let per_client = target.div_ceil(CLIENTS);
    eprintln!(
        "queue: memory with {} more messages queued",
        CLIENTS * per_client
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (before, _) = relay.memory_kib();
    let login = Some((user.to_owned(), password.to_owned()));
    rate(&relay.dial("smtp", None), login, user, per_client).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, peak) = relay.memory_kib();
    let grew = after.saturating_sub(before);
    // 10,000 bodies of 10 KB held would be ~100 MB; the index of entries is what grows.
    let bound_kib = (target as u64 * 2).max(32 * 1024);
    Ok(row(
        &format!(
            "queue: RSS with {} queued, growth (peak)",
            CLIENTS * per_client
        ),
        "-".into(),
        format!(
            "{} MiB -> {} MiB, +{} KiB ({} MiB)",
            before / 1024,
            after / 1024,
            grew,
            peak / 1024
        ),
        "-".into(),
        "growth <= 2 KiB a message",
        Some(grew <= bound_kib),
    ))
}

/// The whole session of a 1 MB message, from the second session on: direct (STARTTLS,
/// XOAUTH2, DATA) vs the relay (password, DATA over a shared upstream connection).
async fn one_megabyte(
    world: &World,
    relay: &Relay,
    sizes: &Sizes,
    rtt: Duration,
) -> Result<Vec<Row>> {
    let n = sizes.mb_sessions;
    eprintln!(
        "1 MB send: {n} sessions each way, alternating, after one each to warm up; Exchange {rtt:?} away"
    );
    let from = world.users[0].0.clone();
    let message = client::message(&from, 1_000_000);
    let direct = SmtpLogin::Xoauth2 {
        user: from.clone(),
        token: "direct-access-token".into(),
        tls: world.tls.clone(),
    };
    let direct_dial = Dial {
        addr: world.smtp.addr,
        tls: None,
    };
    let (user, password) = world.users[0].clone();
    let relayed = SmtpLogin::Password { user, password };
    let plain = relay.dial("smtp", None);
    let tls = relay.dial("smtps", Some(&world.tls));
    let session = |dial: Dial, login: SmtpLogin| {
        let (from, message) = (from.clone(), message.clone());
        async move {
            let t = Instant::now();
            client::smtp_send(&dial, &login, &from, &message).await?;
            Result::Ok(t.elapsed())
        }
    };
    let mut times: [Vec<Duration>; 3] = Default::default();
    for i in 0..=n {
        let d = session(direct_dial.clone(), direct.clone()).await?;
        let p = session(plain.clone(), relayed.clone()).await?;
        let t = session(tls.clone(), relayed.clone()).await?;
        if i > 0 {
            for (k, v) in [d, p, t].into_iter().enumerate() {
                times[k].push(v);
            }
        }
    }
    for t in &mut times {
        t.sort();
    }
    let median = |t: &Vec<Duration>| crate::percentile(t, 0.5);
    let d = median(&times[0]);
    let mut rows = Vec::new();
    let away = match rtt.is_zero() {
        true => "Exchange on loopback".to_owned(),
        false => format!("Exchange {} ms away", rtt.as_millis()),
    };
    for (leg, k, target) in [("plain", 1, true), ("TLS", 2, false)] {
        let name = format!("1 MB send, whole session p50, {leg} client leg, {away}");
        let r = median(&times[k]);
        let ratio = r.as_secs_f64() / d.as_secs_f64();
        rows.push(row(
            &name,
            ms(d),
            ms(r),
            format!("{ratio:.2}x"),
            if target { "<= 1.0x" } else { "-" },
            target.then_some(ratio <= 1.0),
        ));
    }
    Ok(rows)
}
