//! `m365-relay queue ...` and `m365-relay log` as an administrator runs them: the real
//! binary over a state folder filled through the library (`state::open`, `State::queue`,
//! `State::delivery_log`), and a running relay's queue on `/metrics` and `/status`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use m365_relay::config::Config;
use m365_relay::state::{
    DeliveryEvent, DeliveryLogStore, Entry, EntryState, Envelope, EventKind, MessageKind,
    OutboundQueue, QueueId, Settlement,
};
use tempfile::TempDir;

use crate::harness::World;

const SCANNER: &str = "scanner@contoso.com";
const ERP: &str = "erp@contoso.com";
/// A line of a message's body: printed by `queue show --body` only.
const MARKER: &str = "MARKER-payroll-figures-7f3a";

/// A config with a state folder in a temp dir, the state created.
struct Admin {
    dir: TempDir,
    config: Config,
}

impl Admin {
    fn new() -> Admin {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!(
            "state_dir = \"{}\"\nkey_file = \"{}\"\n",
            dir.path().join("state").display(),
            dir.path().join("state.key").display()
        );
        std::fs::write(dir.path().join("relay.toml"), toml).unwrap();
        let config = Config::load(Some(&dir.path().join("relay.toml"))).unwrap();
        m365_relay::state::create(&config).unwrap();
        Admin { dir, config }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("relay.toml")
    }

    fn queue(&self) -> Arc<dyn OutboundQueue> {
        let state = m365_relay::state::open(&self.config).unwrap();
        state.queue().expect("the files backend keeps a queue")
    }

    fn log(&self) -> Arc<dyn DeliveryLogStore> {
        let state = m365_relay::state::open(&self.config).unwrap();
        state.delivery_log().expect("the files backend keeps a log")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_m365-relay"));
        command
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .env("M365_RELAY_LOG", "warn")
            .env_remove("M365_RELAY_KEY")
            .env_remove("M365_RELAY_CONFIG");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// The standard output of a command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "m365-relay {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

fn envelope(mailbox: &str, recipients: &[&str]) -> Envelope {
    Envelope {
        mailbox: mailbox.into(),
        sender: mailbox.into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        client: Some("192.0.2.7".into()),
        message_id: Some("<1@scanner.contoso.com>".into()),
        kind: MessageKind::Message,
        parameters: Vec::new(),
    }
}

fn message(subject: &str) -> Vec<u8> {
    format!("From: {SCANNER}\r\nSubject: {subject}\r\n\r\n{MARKER}\r\n").into_bytes()
}

fn unix_now() -> u64 {
    m365_relay::datetime::unix(SystemTime::now())
}

/// Settles `id` as an attempt would (claimed first).
fn settle(queue: &dyn OutboundQueue, id: &QueueId, settlement: Settlement) {
    assert!(queue.claim(id, unix_now() + 600).unwrap(), "claim {id}");
    queue.settle(id, &settlement).unwrap();
}

#[test]
fn queue_list_show_retry_and_remove() {
    let admin = Admin::new();
    let queue = admin.queue();
    let first = queue
        .enqueue(
            &envelope(SCANNER, &["a@fabrikam.com", "b@fabrikam.com"]),
            &message("one"),
        )
        .unwrap();
    let second = queue
        .enqueue(&envelope(ERP, &["c@fabrikam.com"]), &message("two"))
        .unwrap();
    let failed = queue
        .enqueue(
            &envelope(SCANNER, &["nobody@fabrikam.com"]),
            &message("three"),
        )
        .unwrap();
    let reply = "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found";
    settle(
        queue.as_ref(),
        &failed.id,
        Settlement::Failed {
            reply: reply.into(),
        },
    );
    drop(queue);

    let list = admin.ok(&["queue", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 5, "{list}");
    assert!(lines[0].starts_with("ID "), "{list}");
    for (line, entry) in lines[1..4].iter().zip([&first, &second, &failed]) {
        assert!(line.starts_with(entry.id.as_str()), "oldest first: {list}");
    }
    assert!(
        lines[1].contains(SCANNER) && lines[1].contains(" queued "),
        "{list}"
    );
    assert!(
        lines[3].contains(" failed ") && lines[3].contains(reply),
        "{list}"
    );
    assert_eq!(lines[4], "3 message(s): 2 queued, 1 failed");
    assert!(!list.contains(MARKER));

    let json: Vec<Entry> = serde_json::from_str(&admin.ok(&["queue", "list", "--json"])).unwrap();
    let ids: Vec<&QueueId> = json.iter().map(|e| &e.id).collect();
    assert_eq!(ids, [&first.id, &second.id, &failed.id]);
    assert_eq!(json[2].state, EntryState::Failed);
    assert_eq!(
        json[0].envelope.recipients,
        ["a@fabrikam.com", "b@fabrikam.com"]
    );

    let show = admin.ok(&["queue", "show", first.id.as_str()]);
    assert!(show.contains(&format!("id: {}", first.id)), "{show}");
    assert!(
        show.contains("  b@fabrikam.com") && show.contains("attempts: 0"),
        "{show}"
    );
    assert!(!show.contains(MARKER), "no body without --body: {show}");
    let show_json = admin.ok(&["queue", "show", first.id.as_str(), "--json"]);
    assert!(!show_json.contains(MARKER), "{show_json}");
    assert_eq!(
        serde_json::from_str::<Entry>(&show_json).unwrap().id,
        first.id
    );
    let body = admin.ok(&["queue", "show", first.id.as_str(), "--body"]);
    assert!(
        body.contains(MARKER) && body.contains("Subject: one"),
        "{body}"
    );

    let retried = admin.ok(&["queue", "retry", "--all"]);
    assert_eq!(retried, "3 message(s) due now\n");
    let queue = admin.queue();
    let again = queue.entry(&failed.id).unwrap().unwrap();
    assert_eq!(again.state, EntryState::Queued);
    assert!(again.next_attempt_at <= unix_now());

    let removed = admin.ok(&["queue", "remove", second.id.as_str()]);
    assert!(
        removed.starts_with(&format!("removed {} (queued): {ERP}", second.id)),
        "{removed}"
    );
    assert_eq!(queue.entry(&second.id).unwrap(), None);
    assert_eq!(queue.entries().unwrap().len(), 2);

    for args in [
        &["queue", "show", "0123abcd"][..],
        &["queue", "retry", "0123abcd"],
        &["queue", "remove", "0123abcd"],
        &["queue", "remove", second.id.as_str()],
        &["queue", "show", "../etc"],
    ] {
        let out = admin.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
    assert_eq!(
        queue.entries().unwrap().len(),
        2,
        "nothing else was removed"
    );
}

fn event(kind: EventKind, mailbox: &str, ago_ms: u64, queue_id: &str) -> DeliveryEvent {
    let mut e = DeliveryEvent::new(kind, mailbox)
        .to(&["a@fabrikam.com".to_owned()])
        .reply("250 2.0.0 OK");
    e.at_ms -= ago_ms;
    e.time = m365_relay::datetime::rfc3339_ms(e.at_ms);
    e.queue_id = Some(queue_id.into());
    e.sender = Some(mailbox.into());
    e.size = Some(2048);
    e.route = Some("smtp".into());
    e
}

#[test]
fn log_reads_filters_and_prints_json_lines() {
    let admin = Admin::new();
    let events = [
        event(EventKind::Queued, SCANNER, 3 * 3_600_000, "0a01"),
        event(EventKind::Accepted, ERP, 3_600_000, "0a02"),
        event(EventKind::Delivered, SCANNER, 600_000, "0a03"),
    ];
    admin.log().append(&events).unwrap();

    let all = admin.ok(&["log"]);
    assert_eq!(all.lines().count(), 3, "{all}");
    let first = all.lines().next().unwrap();
    assert!(
        first.starts_with(&events[0].time)
            && first.contains(&format!(
                " queued    {SCANNER} 0a01 <{SCANNER}> -> a@fabrikam.com 2.0 KB smtp 250 2.0.0 OK"
            )),
        "{first}"
    );
    let scanner = admin.ok(&["log", "--mailbox", SCANNER]);
    assert_eq!(scanner.lines().count(), 2, "{scanner}");
    assert!(!scanner.contains(ERP), "{scanner}");
    let recent = admin.ok(&["log", "--since", "2h"]);
    assert!(!recent.contains("0a01") && recent.contains("0a02") && recent.contains("0a03"));
    let since = m365_relay::datetime::rfc3339_ms(events[2].at_ms);
    let last = admin.ok(&["log", "--since", &since, "--json"]);
    let parsed: Vec<DeliveryEvent> = last
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed, [events[2].clone()]);
    let json = admin.ok(&["log", "--json", "--mailbox", ERP]);
    assert_eq!(
        serde_json::from_str::<DeliveryEvent>(json.trim()).unwrap(),
        events[1]
    );

    let out = admin.run(&["log", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a time"));
}

/// Kills the child when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn log_follow_prints_what_is_appended_after_it_started() {
    let admin = Admin::new();
    let log = admin.log();
    log.append(&[event(EventKind::Queued, SCANNER, 1_000, "0b01")])
        .unwrap();
    let mut child = admin
        .command(&["log", "--follow", "--mailbox", SCANNER])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _child = Killed(child);
    let (lines, seen) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let next = || {
        seen.recv_timeout(Duration::from_secs(15))
            .expect("a line within 15 s")
    };
    assert!(next().contains(" 0b01 "), "the backlog first");
    log.append(&[
        event(EventKind::Delivered, ERP, 0, "0b02"),
        event(EventKind::Delivered, SCANNER, 0, "0b03"),
    ])
    .unwrap();
    let line = next();
    assert!(
        line.contains(" delivered ") && line.contains(" 0b03 "),
        "{line}"
    );
    // Nothing twice, nothing of the other mailbox, over a few more polls.
    assert!(seen.recv_timeout(Duration::from_millis(2_500)).is_err());
}

/// The value of the sample `name` (with its labels and a space) in `metrics`.
fn gauge(metrics: &str, name: &str) -> u64 {
    let line = metrics
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name} not in {metrics}"));
    line[name.len()..].trim().parse().unwrap()
}

async fn admin_get(world: &World, path: &str) -> String {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}{path}", world.admin_url()))
        .bearer_auth(world.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_shows_its_queue_on_metrics_and_status() {
    let mut world = World::new().await;
    world.add_mailbox(SCANNER, "a local password of the scanner");
    let config = Config::load(Some(&world.config_path)).unwrap();
    let state = m365_relay::state::create(&config).unwrap();
    let queue = state.queue().unwrap();
    let later = unix_now() + 86_400;
    let mut bytes = 0;
    let mut ids = Vec::new();
    for (mailbox, subject) in [(SCANNER, "one"), (SCANNER, "two"), (ERP, "three")] {
        let entry = queue
            .enqueue(&envelope(mailbox, &["a@fabrikam.com"]), &message(subject))
            .unwrap();
        bytes += entry.size;
        // Not due before tomorrow: no worker touches it during the test.
        let deferred = Settlement::Deferred {
            next_attempt_at: later,
            reply: "451 4.7.0 later".into(),
        };
        let settlement = match mailbox {
            ERP => Settlement::Failed {
                reply: "550 5.1.1 unknown".into(),
            },
            _ => deferred,
        };
        settle(queue.as_ref(), &entry.id, settlement);
        ids.push(entry.id);
    }
    drop((queue, state));
    world.start().await;

    let metrics = admin_get(&world, "/metrics").await;
    for sample in [
        format!("m365_relay_queue_messages{{mailbox=\"{SCANNER}\",state=\"queued\"}} 2"),
        format!("m365_relay_queue_messages{{mailbox=\"{SCANNER}\",state=\"failed\"}} 0"),
        format!("m365_relay_queue_messages{{mailbox=\"{ERP}\",state=\"failed\"}} 1"),
        "m365_relay_deliveries_total{outcome=\"delivered\"} 0".to_owned(),
        "m365_relay_delivery_log_dropped_total 0".to_owned(),
    ] {
        assert!(
            metrics.lines().any(|l| l == sample),
            "{sample} not in {metrics}"
        );
    }
    let value = |name: &str| gauge(&metrics, name);
    assert!(value("m365_relay_queue_oldest_age_seconds ") < 120);
    assert!(
        value("m365_relay_queue_bytes ") >= bytes,
        "sealed bytes, at least the messages'"
    );

    let status: serde_json::Value =
        serde_json::from_str(&admin_get(&world, "/status").await).unwrap();
    let q = &status["queue"];
    assert_eq!(
        (q["queued"].as_u64(), q["failed"].as_u64()),
        (Some(2), Some(1)),
        "{status}"
    );
    assert_eq!(q["bytes"].as_u64(), Some(value("m365_relay_queue_bytes ")));
    assert!(
        q["mailboxes"].as_array().map(Vec::len) == Some(2),
        "{status}"
    );
    // The running relay sees what the command removed.
    world.admin(&["queue", "remove", ids[0].as_str()], "");
    let metrics = admin_get(&world, "/metrics").await;
    let sample = format!("m365_relay_queue_messages{{mailbox=\"{SCANNER}\",state=\"queued\"}} 1");
    assert!(
        metrics.lines().any(|l| l == sample),
        "{sample} not in {metrics}"
    );
    // ... and what it retried: due now, delivered by its workers, counted.
    world.admin(&["queue", "retry", ids[1].as_str()], "");
    // The count moves when the attempt ends, the gauge once its outcome is recorded.
    let queued = format!("m365_relay_queue_messages{{mailbox=\"{SCANNER}\",state=\"queued\"}} ");
    let settled = |metrics: &str| {
        let left = metrics.lines().find_map(|l| l.strip_prefix(&queued));
        metrics.contains("m365_relay_deliveries_total{outcome=\"delivered\"} 1")
            && matches!(left, None | Some("0"))
    };
    let mut after = String::new();
    for _ in 0..100 {
        after = admin_get(&world, "/metrics").await;
        if settled(&after) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(settled(&after), "{after}");
    let bytes_left = gauge(&after, "m365_relay_queue_bytes ");
    assert!(
        bytes_left > 0 && bytes_left < value("m365_relay_queue_bytes "),
        "only the failed message is left: {after}"
    );
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let ready = client
        .get(format!("{}/readyz", world.admin_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "a queue never fails /readyz");
    world.stop().await;
}
