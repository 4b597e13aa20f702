//! The PostgreSQL backend's outbound queue and delivery log against a real server
//! (`support/postgres.rs`): bodies sealed (no plain text in a dump), a message claimed by
//! exactly one relay of several, a claim that ran out taken over and the late relay's
//! outcome ignored, `queue.max_bytes` kept by relays enqueueing together with nothing kept
//! of a refused message, the delivery log bounded and filtered, and bounded errors while
//! the database is down.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use m365_relay::config::{DeliveryLogConfig, QueueConfig};
use m365_relay::state::postgres::{PgDeliveryLog, PgQueue};
use m365_relay::state::{
    DeliveryEvent, DeliveryLogStore, EntryState, Envelope, EventKind, LogQuery, MessageKind,
    OutboundQueue, QueueError, QueueId, Settlement, State, StateKey,
};

use crate::support::postgres::PgCluster;

const BODY_MARKER: &str = "Quarterly-figures-that-must-never-be-stored-plain";

fn key() -> StateKey {
    StateKey::from_bytes(&[9; 32])
}

/// A relay's state on `database`, its queue holding at most `max_bytes` sealed.
fn relay(pg: &PgCluster, database: &str, max_bytes: u64) -> State {
    let queue = QueueConfig {
        max_bytes,
        ..QueueConfig::default()
    };
    m365_relay::state::postgres::open_bounded(
        &pg.database_config(database, None),
        key(),
        &queue,
        &DeliveryLogConfig::default(),
    )
    .unwrap_or_else(|e| panic!("open the PostgreSQL state: {e}"))
}

/// The queue of `state`'s database as the relay named `holder` claims it.
fn queue_of(state: &State, holder: &str, max_bytes: u64) -> PgQueue {
    let db = state.database().expect("a database").clone();
    PgQueue::new(db, key(), holder.to_owned(), max_bytes)
}

fn envelope(mailbox: &str) -> Envelope {
    Envelope {
        mailbox: mailbox.to_owned(),
        sender: "scanner@contoso.com".to_owned(),
        recipients: vec![
            "bob@fabrikam.com".to_owned(),
            "carol@fabrikam.com".to_owned(),
        ],
        client: Some("192.0.2.7".to_owned()),
        message_id: Some("<scan-1@contoso.com>".to_owned()),
        kind: MessageKind::Message,
        parameters: Vec::new(),
    }
}

fn message(n: usize) -> Vec<u8> {
    format!("Subject: scan {n}\r\n\r\n{BODY_MARKER} {n}\r\n").into_bytes()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_queued_message_round_trips_sealed_and_settles() {
    let pg = PgCluster::start();
    pg.create_database("queue");
    let state = relay(&pg, "queue", 1 << 30);
    let queue = state.queue().expect("the postgres backend keeps a queue");
    let body = message(1);
    let entry = queue
        .enqueue(&envelope("Alice@Contoso.com"), &body)
        .unwrap();
    assert_eq!(entry.size, body.len() as u64);
    assert_eq!((entry.state, entry.attempts), (EntryState::Queued, 0));
    assert_eq!(queue.entries().unwrap(), vec![entry.clone()]);
    assert_eq!(queue.entry(&entry.id).unwrap(), Some(entry.clone()));
    assert_eq!(&queue.message(&entry).unwrap()[..], &body[..]);
    assert_eq!(queue.due(now(), 10).unwrap(), vec![entry.clone()]);

    // Claimed once; a deferral counts the attempt and waits.
    assert!(queue.claim(&entry.id, now() + 60).unwrap());
    assert!(!queue.claim(&entry.id, now() + 60).unwrap(), "held");
    assert!(queue.due(now(), 10).unwrap().is_empty(), "claimed");
    let later = now() + 600;
    let deferred = Settlement::Deferred {
        next_attempt_at: later,
        reply: "451 4.7.500 Server busy".into(),
    };
    queue.settle(&entry.id, &deferred).unwrap();
    let kept = queue.entry(&entry.id).unwrap().unwrap();
    assert_eq!((kept.attempts, kept.next_attempt_at), (1, later));
    assert_eq!(kept.last_reply.as_deref(), Some("451 4.7.500 Server busy"));
    assert!(queue.due(now(), 10).unwrap().is_empty(), "not due yet");
    assert!(!queue.claim(&entry.id, now() + 60).unwrap(), "not due");

    // Retried, warned, failed, retried again, delivered.
    assert_eq!(queue.retry(Some(&entry.id)).unwrap(), 1);
    assert!(queue.claim(&entry.id, now() + 60).unwrap());
    queue.settle(&entry.id, &Settlement::Warned).unwrap();
    let failed = Settlement::Failed {
        reply: "550 5.1.10 RESOLVER.ADR.RecipientNotFound".into(),
    };
    queue.settle(&entry.id, &failed).unwrap();
    let kept = queue.entry(&entry.id).unwrap().unwrap();
    assert_eq!(
        (kept.state, kept.attempts, kept.warned),
        (EntryState::Failed, 2, true)
    );
    assert!(queue.due(now() + 10_000, 10).unwrap().is_empty(), "failed");
    let stats = queue.stats().unwrap();
    assert_eq!(stats.mailboxes.len(), 1);
    let depth = &stats.mailboxes[0];
    assert_eq!(depth.mailbox, "alice@contoso.com");
    assert_eq!(
        (depth.queued, depth.failed, depth.oldest_received_at),
        (0, 1, None)
    );
    // A sealed body: 24 bytes of nonce and 16 of tag around it.
    assert_eq!(stats.bytes, body.len() as u64 + 40);

    assert_eq!(queue.retry(None).unwrap(), 1);
    assert_eq!(queue.stats().unwrap().mailboxes[0].queued, 1);
    assert!(queue.claim(&entry.id, now() + 60).unwrap());
    queue.settle(&entry.id, &Settlement::Delivered).unwrap();
    assert!(queue.entry(&entry.id).unwrap().is_none());
    assert!(queue.message(&entry).is_err());
    assert_eq!(queue.stats().unwrap().bytes, 0);

    let other = queue
        .enqueue(&envelope("alice@contoso.com"), &body)
        .unwrap();
    assert!(queue.remove(&other.id).unwrap());
    assert!(!queue.remove(&other.id).unwrap());
    assert!(queue.entries().unwrap().is_empty());
}

#[test]
fn the_database_holds_no_body_in_plain_text_and_a_moved_body_does_not_open() {
    let pg = PgCluster::start();
    pg.create_database("sealed");
    let state = relay(&pg, "sealed", 1 << 30);
    let queue = state.queue().unwrap();
    let entry = queue
        .enqueue(&envelope("alice@contoso.com"), &message(1))
        .unwrap();

    let dump = pg.pg_dump("sealed");
    assert!(
        dump.contains("scanner@contoso.com"),
        "the dump has the envelope"
    );
    assert!(!dump.contains(BODY_MARKER), "a queued body in plain text");

    // Sealed for its own id: a body copied under another id does not open.
    let forged = QueueId::new();
    pg.psql(
        "sealed",
        &format!(
            "INSERT INTO outbound_queue (id, mailbox, envelope, body, size, sealed_size, state, \
             received_at, next_attempt_at) SELECT '{forged}', mailbox, envelope, body, size, \
             sealed_size, state, received_at, next_attempt_at FROM outbound_queue WHERE id = '{}'",
            entry.id
        ),
    );
    let err = queue
        .message(&queue.entry(&forged).unwrap().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot be opened"), "{err}");
    assert!(!err.contains(BODY_MARKER), "{err}");

    // Sealed for its envelope: recipients changed in the row no longer open the body.
    pg.psql(
        "sealed",
        &format!(
            "UPDATE outbound_queue SET envelope = jsonb_set(envelope, '{{recipients}}', \
             '[\"mallory@evil.example\"]') WHERE id = '{}'",
            entry.id
        ),
    );
    let changed = queue.entry(&entry.id).unwrap().unwrap();
    assert_eq!(changed.envelope.recipients, ["mallory@evil.example"]);
    let err = queue.message(&changed).unwrap_err().to_string();
    assert!(
        err.contains(&format!("{} cannot be opened", entry.id)),
        "{err}"
    );
}

#[test]
fn of_relays_claiming_together_each_message_goes_to_exactly_one() {
    let pg = PgCluster::start();
    pg.create_database("race");
    let (a, b) = (relay(&pg, "race", 1 << 30), relay(&pg, "race", 1 << 30));
    let queues = [
        queue_of(&a, "relay-a", 1 << 30),
        queue_of(&b, "relay-b", 1 << 30),
    ];
    for n in 0..50 {
        queues[n % 2]
            .enqueue(&envelope("alice@contoso.com"), &message(n))
            .unwrap();
    }
    let claimed: Vec<Vec<QueueId>> = std::thread::scope(|s| {
        let workers: Vec<_> = queues
            .iter()
            .map(|queue| {
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for entry in queue.due(now(), 100).unwrap() {
                        if queue.claim(&entry.id, now() + 300).unwrap() {
                            mine.push(entry.id);
                        }
                    }
                    mine
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let all: Vec<&QueueId> = claimed.iter().flatten().collect();
    let distinct: HashSet<&QueueId> = all.iter().copied().collect();
    assert_eq!(
        all.len(),
        50,
        "claims: a {} b {}",
        claimed[0].len(),
        claimed[1].len()
    );
    assert_eq!(distinct.len(), 50);
    let holders = pg.psql(
        "race",
        "SELECT claimed_by, count(*) FROM outbound_queue GROUP BY 1 ORDER BY 1",
    );
    // Every claim is recorded for the relay that got it.
    let expected: Vec<String> = [("relay-a", &claimed[0]), ("relay-b", &claimed[1])]
        .iter()
        .filter(|(_, ids)| !ids.is_empty())
        .map(|(holder, ids)| format!("{holder}|{}", ids.len()))
        .collect();
    assert_eq!(holders.trim(), expected.join("\n"));
    assert!(queues[0].due(now(), 100).unwrap().is_empty());
}

#[test]
fn a_claim_that_ran_out_is_taken_over_and_the_late_relay_writes_nothing() {
    let pg = PgCluster::start();
    pg.create_database("takeover");
    let (a, b) = (
        relay(&pg, "takeover", 1 << 30),
        relay(&pg, "takeover", 1 << 30),
    );
    let (qa, qb) = (
        queue_of(&a, "relay-a", 1 << 30),
        queue_of(&b, "relay-b", 1 << 30),
    );
    let entry = qa
        .enqueue(&envelope("alice@contoso.com"), &message(1))
        .unwrap();

    assert!(qa.claim(&entry.id, now() + 1).unwrap());
    assert!(!qb.claim(&entry.id, now() + 60).unwrap(), "a holds it");
    assert!(
        !qb.renew(&entry.id, now() + 60).unwrap(),
        "b cannot renew a's claim"
    );
    assert!(qa.renew(&entry.id, now() + 1).unwrap(), "a renews its own");
    // a stalls past its claim (the database's clock ends it).
    std::thread::sleep(Duration::from_millis(2200));
    assert!(
        !qa.renew(&entry.id, now() + 60).unwrap(),
        "a's claim ran out"
    );
    assert_eq!(qb.due(now(), 10).unwrap().len(), 1, "due again");
    assert!(qb.claim(&entry.id, now() + 60).unwrap(), "b takes it over");

    // a's late outcomes change nothing.
    qa.settle(&entry.id, &Settlement::Delivered).unwrap();
    let late = Settlement::Failed {
        reply: "550 5.7.1 late".into(),
    };
    qa.settle(&entry.id, &late).unwrap();
    qa.settle(&entry.id, &Settlement::Released).unwrap();
    let kept = qb.entry(&entry.id).unwrap().expect("still queued");
    assert_eq!((kept.state, kept.attempts), (EntryState::Queued, 0));
    let holder = pg.psql("takeover", "SELECT claimed_by FROM outbound_queue");
    assert_eq!(holder.trim(), "relay-b");

    qb.settle(&entry.id, &Settlement::Delivered).unwrap();
    assert!(qb.entries().unwrap().is_empty());
}

#[test]
fn a_message_past_max_bytes_is_refused_and_nothing_of_it_is_kept() {
    let pg = PgCluster::start();
    pg.create_database("queue_full");
    let sealed = 1000 + 40;
    let state = relay(&pg, "queue_full", 2 * sealed);
    let queue = state.queue().unwrap();
    let body = vec![b'x'; 1000];
    queue
        .enqueue(&envelope("alice@contoso.com"), &body)
        .unwrap();
    queue
        .enqueue(&envelope("alice@contoso.com"), &body)
        .unwrap();
    match queue.enqueue(&envelope("alice@contoso.com"), &body) {
        Err(QueueError::Full { bytes, max_bytes }) => {
            assert_eq!((bytes, max_bytes), (2 * sealed, 2 * sealed));
        }
        other => panic!("not Full: {other:?}"),
    }
    assert_eq!(queue.entries().unwrap().len(), 2);
    let rows = pg.psql(
        "queue_full",
        "SELECT count(*), sum(sealed_size) FROM outbound_queue",
    );
    assert_eq!(rows.trim(), format!("2|{}", 2 * sealed));
}

#[test]
fn relays_enqueueing_together_never_pass_max_bytes() {
    let pg = PgCluster::start();
    pg.create_database("bound");
    let max_bytes = 10 * (1000 + 40);
    let states = [
        relay(&pg, "bound", max_bytes),
        relay(&pg, "bound", max_bytes),
    ];
    let accepted: usize = std::thread::scope(|s| {
        let workers: Vec<_> = states
            .iter()
            .map(|state| {
                let queue = state.queue().unwrap();
                s.spawn(move || {
                    (0..10)
                        .filter(|_| {
                            match queue.enqueue(&envelope("a@contoso.com"), &[b'y'; 1000]) {
                                Ok(_) => true,
                                Err(QueueError::Full { .. }) => false,
                                Err(e) => panic!("{e}"),
                            }
                        })
                        .count()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert_eq!(accepted, 10);
    assert_eq!(states[0].queue().unwrap().stats().unwrap().bytes, max_bytes);
}

fn event(kind: EventKind, mailbox: &str, at_ms: u64, n: usize) -> DeliveryEvent {
    let mut event = DeliveryEvent::new(kind, mailbox)
        .to(&["bob@fabrikam.com".to_owned()])
        .reply(&format!(
            "250 2.6.0 <m{n}@contoso.com> Queued mail for delivery"
        ));
    event.at_ms = at_ms;
    event.time = m365_relay::datetime::rfc3339_ms(at_ms);
    event.queue_id = Some(format!("{n:024x}"));
    event
}

#[test]
fn the_delivery_log_is_bounded_and_read_by_mailbox_time_and_count() {
    let pg = PgCluster::start();
    pg.create_database("log");
    let state = relay(&pg, "log", 1 << 30);
    let db = state.database().unwrap().clone();
    let max_bytes = 64 * 1024;
    let log: Arc<dyn DeliveryLogStore> = Arc::new(PgDeliveryLog::new(db, max_bytes));

    let base = 1_800_000_000_000;
    for batch in 0..40 {
        let events: Vec<_> = (0..25)
            .map(|i| {
                let n = batch * 25 + i;
                let mailbox = if n % 2 == 0 {
                    "alice@contoso.com"
                } else {
                    "Bob@Contoso.com"
                };
                event(EventKind::Delivered, mailbox, base + n as u64, n)
            })
            .collect();
        log.append(&events).unwrap();
        let sums = pg.psql(
            "log",
            "SELECT (SELECT sum(bytes) FROM delivery_log), (SELECT bytes FROM delivery_log_usage)",
        );
        let (sum, usage) = sums.trim().split_once('|').unwrap();
        let sum: u64 = sum.parse().unwrap();
        assert!(sum <= max_bytes, "batch {batch}: {sum} bytes");
        assert_eq!(usage.parse::<u64>().unwrap(), sum, "batch {batch}");
    }
    let kept = log.read(&LogQuery::default()).unwrap();
    assert!(kept.len() > 100 && kept.len() < 1000, "{}", kept.len());
    assert_eq!(kept.last().unwrap().queue_id, Some(format!("{:024x}", 999)));
    assert!(
        kept.windows(2).all(|w| w[0].at_ms < w[1].at_ms),
        "oldest first"
    );
    let oldest = kept[0].at_ms;

    let bob = log
        .read(&LogQuery {
            mailbox: Some("bob@contoso.com".into()),
            ..LogQuery::default()
        })
        .unwrap();
    assert!(!bob.is_empty() && bob.iter().all(|e| e.mailbox == "Bob@Contoso.com"));
    let since = log
        .read(&LogQuery {
            since_ms: Some(base + 990),
            ..LogQuery::default()
        })
        .unwrap();
    assert_eq!(since.len(), 10);
    let latest = log
        .read(&LogQuery {
            mailbox: Some("alice@contoso.com".into()),
            since_ms: Some(oldest),
            limit: 2,
        })
        .unwrap();
    let at: Vec<u64> = latest.iter().map(|e| e.at_ms - base).collect();
    assert_eq!(at, vec![996, 998]);
    assert_eq!(
        latest[1],
        event(EventKind::Delivered, "alice@contoso.com", base + 998, 998)
    );
}

#[test]
fn a_stopped_database_gives_storage_errors_within_the_timeout() {
    let mut pg = PgCluster::start();
    pg.create_database("down");
    let state = relay(&pg, "down", 1 << 30);
    let queue = state.queue().unwrap();
    let log = state.delivery_log().unwrap();
    let kept = queue
        .enqueue(&envelope("alice@contoso.com"), &message(1))
        .unwrap();
    pg.kill();

    // The config's timeout is 5 s; every call answers within it and a little.
    let bound = Duration::from_secs(7);
    let started = Instant::now();
    let err = queue
        .enqueue(&envelope("alice@contoso.com"), &message(2))
        .unwrap_err();
    assert!(matches!(err, QueueError::Storage(_)), "{err}");
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
    let calls: [(&str, Failing); 4] = [
        ("due", Box::new(|| queue.due(now(), 10).is_err())),
        (
            "claim",
            Box::new(|| queue.claim(&kept.id, now() + 60).is_err()),
        ),
        ("stats", Box::new(|| queue.stats().is_err())),
        (
            "append",
            Box::new(|| {
                log.append(&[event(EventKind::Queued, "a@b.c", 1, 1)])
                    .is_err()
            }),
        ),
    ];
    for (what, fails) in calls {
        let started = Instant::now();
        assert!(fails(), "{what} did not fail");
        assert!(started.elapsed() < bound, "{what}: {:?}", started.elapsed());
    }

    pg.start_server();
    assert_eq!(queue.entries().unwrap(), vec![kept]);
}

/// A call that should fail.
type Failing<'a> = Box<dyn Fn() -> bool + 'a>;

/// `m365-relay --config postgres.toml args...` against `url`.
fn cli(config: &std::path::Path, url: &str, args: &[&str]) -> std::process::Output {
    assert_cmd::Command::cargo_bin("m365-relay")
        .unwrap()
        .arg("--config")
        .arg(config)
        .args(args)
        .env("M365_RELAY_DATABASE_URL", url)
        .env("M365_RELAY_LOG", "warn")
        .env_remove("M365_RELAY_KEY")
        .output()
        .unwrap()
}

/// A `state export` or `import` that succeeded and moved two queued messages.
fn moved_two(out: std::process::Output) {
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(text.contains("and 2 queued messages"), "{text}");
}

#[test]
fn status_counts_the_queue_and_export_and_import_carry_it_sealed() {
    let pg = PgCluster::start();
    let url = pg.create_database("moving");
    let target_url = pg.create_database("moved");
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("state.key");
    let config = dir.path().join("postgres.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\nkey_file = \"{}\"\n[state]\nbackend = \"postgres\"\n",
            dir.path().join("state").display(),
            key_file.display()
        ),
    )
    .unwrap();
    let key = StateKey::load_with(None, &key_file).unwrap();
    let open = |database: &str| {
        m365_relay::state::postgres::open(&pg.database_config(database, None), key.clone()).unwrap()
    };
    let queue = open("moving").queue().unwrap();
    let failing = queue
        .enqueue(&envelope("alice@contoso.com"), &message(1))
        .unwrap();
    let waiting = queue
        .enqueue(&envelope("alice@contoso.com"), &message(2))
        .unwrap();
    assert!(queue.claim(&failing.id, now() + 60).unwrap());
    let failed = Settlement::Failed {
        reply: "550 5.1.10 not found".into(),
    };
    queue.settle(&failing.id, &failed).unwrap();
    let failing = queue.entry(&failing.id).unwrap().unwrap();

    let status = cli(&config, &url, &["state", "status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{text}");
    assert!(
        text.contains("queued messages: 1") && text.contains("failed messages: 1"),
        "{text}"
    );

    // Exported into a state folder, in the files backend's layout, sealed.
    let exported = dir.path().join("exported");
    let to_dir = ["state", "export", "--to-dir", exported.to_str().unwrap()];
    moved_two(cli(&config, &url, &to_dir));
    let folder = exported.join("queue");
    let files = m365_relay::state::files::FileQueue::open(&exported, key.clone(), 1 << 30).unwrap();
    assert_eq!(
        files.entries().unwrap(),
        vec![failing.clone(), waiting.clone()]
    );
    for (entry, n) in [(&failing, 1), (&waiting, 2)] {
        assert_eq!(&files.message(entry).unwrap()[..], &message(n)[..]);
        let stored = std::fs::read(folder.join(format!("{}.msg", entry.id))).unwrap();
        assert!(
            !String::from_utf8_lossy(&stored).contains(BODY_MARKER),
            "plain body"
        );
    }
    drop(files);

    // A body that does not open stops the import before anything is written.
    let msg = folder.join(format!("{}.msg", waiting.id));
    let good = std::fs::read(&msg).unwrap();
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 1;
    std::fs::write(&msg, &bad).unwrap();
    let from_dir = ["state", "import", "--from-dir", exported.to_str().unwrap()];
    let refused = cli(&config, &target_url, &from_dir);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("cannot open"), "{stderr}");
    let moved = open("moved");
    assert!(moved.queue().unwrap().entries().unwrap().is_empty());

    // Imported into another database: the same entries, the bodies open.
    std::fs::write(&msg, &good).unwrap();
    moved_two(cli(&config, &target_url, &from_dir));
    let target = moved.queue().unwrap();
    assert_eq!(
        target.entries().unwrap(),
        vec![failing.clone(), waiting.clone()]
    );
    assert_eq!(&target.message(&waiting).unwrap()[..], &message(2)[..]);
    assert_eq!(&target.message(&failing).unwrap()[..], &message(1)[..]);
    assert!(target.claim(&waiting.id, now() + 60).unwrap());
}
