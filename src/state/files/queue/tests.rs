//! The files backend's queue: round trips, reopening after a crash, claims, settlements,
//! retries, the size bound, a full disk, nothing in plain text, a second process.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use super::*;
use crate::state::queue::MessageKind;

const LOTS: u64 = 1 << 30;
/// What sealing adds to a body (nonce and tag).
const SEAL: u64 = 40;

fn key() -> StateKey {
    StateKey::from_bytes(&[7; 32])
}

fn queue(dir: &Path, max_bytes: u64) -> FileQueue {
    FileQueue::open(dir, key(), max_bytes).unwrap()
}

fn envelope(mailbox: &str) -> Envelope {
    Envelope {
        mailbox: mailbox.into(),
        sender: "app@contoso.com".into(),
        recipients: vec!["a@fabrikam.com".into(), "b@fabrikam.com".into()],
        client: Some("192.0.2.7".into()),
        message_id: Some("<1@app>".into()),
        kind: MessageKind::Message,
        parameters: Vec::new(),
    }
}

fn body(n: usize) -> Vec<u8> {
    let mut body = b"Subject: hello\r\n\r\n".to_vec();
    body.resize(n, b'x');
    body
}

/// The queue folder's file names, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir.join(QUEUE_DIR))
        .map(|d| {
            d.map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn now_secs() -> u64 {
    now()
}

#[test]
fn an_enqueued_message_comes_back_whole_and_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), LOTS);
    let entry = q
        .enqueue(&envelope("m@contoso.com"), &body(10_000))
        .unwrap();
    assert_eq!(entry.size, 10_000);
    assert_eq!((entry.state, entry.attempts), (EntryState::Queued, 0));
    assert_eq!(*q.message(&entry).unwrap(), body(10_000));
    assert_eq!(q.entries().unwrap(), vec![entry.clone()]);
    assert_eq!(q.entry(&entry.id).unwrap(), Some(entry.clone()));
    assert_eq!(q.due(now_secs(), 10).unwrap(), vec![entry.clone()]);
    let stats = q.stats().unwrap();
    assert_eq!(stats.bytes, 10_000 + SEAL);
    assert_eq!(stats.mailboxes.len(), 1);
    assert_eq!(stats.mailboxes[0].queued, 1);
    assert_eq!(
        stats.mailboxes[0].oldest_received_at,
        Some(entry.received_at)
    );
    assert_eq!(files(dir.path()), [format!("{}.msg", entry.id)]);
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join(QUEUE_DIR)), 0o700);
    assert_eq!(mode(&q.folder.path(&entry.id, MESSAGE)), 0o600);
}

#[test]
fn a_reopened_queue_keeps_its_entries_and_drops_what_a_crash_left() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), LOTS);
    let kept = q.enqueue(&envelope("m@contoso.com"), &body(500)).unwrap();
    let deferred = q.enqueue(&envelope("m@contoso.com"), &body(700)).unwrap();
    assert!(q.claim(&deferred.id, now_secs() + 60).unwrap());
    let later = now_secs() + 600;
    let settlement = Settlement::Deferred {
        next_attempt_at: later,
        reply: "451 4.7.500 Server busy".into(),
    };
    q.settle(&deferred.id, &settlement).unwrap();
    let bytes = q.stats().unwrap().bytes;
    drop(q);

    let qdir = dir.path().join(QUEUE_DIR);
    // A crash while writing a message; the bookkeeping of a message deleted meanwhile; a
    // message file that does not read; a temp file a live writer holds.
    fs::write(
        qdir.join(format!(".{}.msg.tmp.1.2", QueueId::new())),
        b"half",
    )
    .unwrap();
    let orphan = QueueId::new();
    fs::write(qdir.join(format!("{orphan}.json")), b"{}").unwrap();
    let broken = QueueId::new();
    fs::write(
        qdir.join(format!("{broken}.msg")),
        b"{\"version\":1,\ntruncated",
    )
    .unwrap();
    let live = qdir.join(".y.msg.tmp.3.4");
    let writer = fs::File::create(&live).unwrap();
    writer.lock().unwrap();

    let q = queue(dir.path(), LOTS);
    let entries = q.entries().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0], kept);
    assert_eq!(entries[1].attempts, 1);
    assert_eq!(entries[1].next_attempt_at, later);
    assert_eq!(q.stats().unwrap().bytes, bytes);
    assert_eq!(q.due(now_secs(), 10).unwrap(), vec![kept.clone()]);
    let mut expected = vec![
        ".y.msg.tmp.3.4".to_owned(),
        format!("{}.json", deferred.id),
        format!("{}.msg", deferred.id),
        format!("{}.msg", kept.id),
        format!("{broken}.msg.bad"),
    ];
    expected.sort();
    assert_eq!(files(dir.path()), expected);
    assert_eq!(scan::set_aside(&q.folder), [format!("{broken}.msg.bad")]);
    drop(writer);
}

#[test]
fn a_claim_holds_an_entry_until_it_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), LOTS);
    let a = q.enqueue(&envelope("m@contoso.com"), &body(100)).unwrap();
    let b = q.enqueue(&envelope("m@contoso.com"), &body(100)).unwrap();
    let now = now_secs();
    assert!(q.claim(&a.id, now + 300).unwrap());
    assert!(!q.claim(&a.id, now + 300).unwrap(), "claimed twice");
    assert_eq!(q.due(now, 10).unwrap(), vec![b.clone()]);
    assert_eq!(q.due(now + 301, 10).unwrap().len(), 2, "the claim ran out");
    assert_eq!(q.due(now, 0).unwrap(), []);
    // A claim that already ran out is no claim.
    assert!(q.claim(&b.id, now.saturating_sub(1)).unwrap());
    assert!(q.claim(&b.id, now + 300).unwrap());
    q.settle(&b.id, &Settlement::Released).unwrap();
    assert!(q.claim(&b.id, now + 300).unwrap(), "released");
    assert!(
        !q.claim(&QueueId::new(), now + 300).unwrap(),
        "no such entry"
    );
    // A live claim is renewed; one that ran out is not.
    assert!(q.renew(&a.id, now + 900).unwrap());
    assert_eq!(q.due(now + 600, 10).unwrap().len(), 1, "renewed until +900");
    q.settle(&b.id, &Settlement::Released).unwrap();
    assert!(!q.renew(&b.id, now + 900).unwrap(), "not claimed");
}

#[test]
fn settlements_are_kept_and_delivered_ones_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), LOTS);
    let e = q.enqueue(&envelope("m@contoso.com"), &body(100)).unwrap();
    let now = now_secs();
    assert!(q.claim(&e.id, now + 60).unwrap());
    let deferred = Settlement::Deferred {
        next_attempt_at: now + 120,
        reply: "421 4.3.2 try later".into(),
    };
    q.settle(&e.id, &deferred).unwrap();
    assert!(!q.claim(&e.id, now + 60).unwrap(), "not due yet");
    assert_eq!(q.due(now + 120, 10).unwrap()[0].attempts, 1);
    q.settle(&e.id, &Settlement::Warned).unwrap();
    let warned = q.entry(&e.id).unwrap().unwrap();
    assert!(warned.warned);
    assert_eq!(warned.last_reply.as_deref(), Some("421 4.3.2 try later"));
    let failed = Settlement::Failed {
        reply: "550 5.1.1 unknown".into(),
    };
    q.settle(&e.id, &failed).unwrap();
    let reopened = queue(dir.path(), LOTS);
    let entry = reopened.entry(&e.id).unwrap().unwrap();
    assert_eq!((entry.state, entry.attempts), (EntryState::Failed, 2));
    assert!(entry.warned);
    assert_eq!(reopened.due(now + 10_000, 10).unwrap(), []);
    let stats = reopened.stats().unwrap();
    assert_eq!(
        (stats.mailboxes[0].failed, stats.mailboxes[0].queued),
        (1, 0)
    );
    assert_eq!(stats.mailboxes[0].oldest_received_at, None);

    q.settle(&e.id, &Settlement::Delivered).unwrap();
    assert_eq!(files(dir.path()), Vec::<String>::new());
    assert_eq!(q.entry(&e.id).unwrap(), None);
    assert_eq!(q.stats().unwrap(), QueueStats::default());
    assert!(q.message(&e).is_err());
}

#[test]
fn a_failed_message_is_queued_again_by_retry() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), LOTS);
    let failed = q.enqueue(&envelope("m@contoso.com"), &body(100)).unwrap();
    let waiting = q.enqueue(&envelope("n@contoso.com"), &body(100)).unwrap();
    let now = now_secs();
    let reply = "550 5.7.1 refused".to_owned();
    q.settle(&failed.id, &Settlement::Failed { reply }).unwrap();
    let later = Settlement::Deferred {
        next_attempt_at: now + 3600,
        reply: "451".into(),
    };
    q.settle(&waiting.id, &later).unwrap();
    assert_eq!(q.due(now, 10).unwrap(), []);

    assert_eq!(q.retry(Some(&failed.id)).unwrap(), 1);
    let due = q.due(now_secs(), 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        (due[0].id.clone(), due[0].state),
        (failed.id.clone(), EntryState::Queued)
    );
    assert_eq!(due[0].attempts, 1, "attempts are kept");
    assert_eq!(q.retry(Some(&QueueId::new())).unwrap(), 0);
    assert_eq!(q.retry(None).unwrap(), 2);
    assert_eq!(q.due(now_secs(), 10).unwrap().len(), 2);
}

#[test]
fn a_full_queue_refuses_and_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), 2 * (1000 + SEAL) + 10);
    let first = q.enqueue(&envelope("m@contoso.com"), &body(1000)).unwrap();
    q.enqueue(&envelope("m@contoso.com"), &body(1000)).unwrap();
    let before = files(dir.path());
    match q.enqueue(&envelope("m@contoso.com"), &body(1000)) {
        Err(QueueError::Full { bytes, max_bytes }) => {
            assert_eq!(
                (bytes, max_bytes),
                (2 * (1000 + SEAL), 2 * (1000 + SEAL) + 10)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(files(dir.path()), before);
    assert_eq!(q.entries().unwrap().len(), 2);
    assert_eq!(q.stats().unwrap().bytes, 2 * (1000 + SEAL));
    q.settle(&first.id, &Settlement::Delivered).unwrap();
    q.enqueue(&envelope("m@contoso.com"), &body(1000)).unwrap();
}

#[test]
fn no_body_is_kept_in_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue(dir.path(), LOTS);
    let marker = b"PLAINTEXT-MARKER-4711";
    let mut message = body(2000);
    message.extend_from_slice(marker);
    let e = q.enqueue(&envelope("m@contoso.com"), &message).unwrap();
    let deferred = Settlement::Deferred {
        next_attempt_at: 0,
        reply: "451".into(),
    };
    q.settle(&e.id, &deferred).unwrap();
    let mut seen = 0;
    for name in files(dir.path()) {
        let bytes = fs::read(dir.path().join(QUEUE_DIR).join(&name)).unwrap();
        assert!(!bytes.windows(marker.len()).any(|w| w == marker), "{name}");
        seen += 1;
    }
    assert_eq!(seen, 2);
    assert!(q.message(&e).unwrap().ends_with(marker));
    // Sealed for this id: a body copied under another id does not open.
    let other = q.enqueue(&envelope("m@contoso.com"), b"x").unwrap();
    let sealed = fs::read(q.folder.path(&e.id, MESSAGE)).unwrap();
    let at = sealed.iter().position(|b| *b == b'\n').unwrap() + 1;
    let header = format!(
        "{{\"version\":1,\"sealed_size\":{},\"entry\":{}}}\n",
        sealed.len() - at,
        serde_json::to_string(&other).unwrap()
    );
    let mut forged = header.into_bytes();
    forged.extend_from_slice(&sealed[at..]);
    fs::write(q.folder.path(&other.id, MESSAGE), forged).unwrap();
    assert!(q.message(&other).is_err());
}

#[test]
fn parallel_enqueues_are_all_kept() {
    let dir = tempfile::tempdir().unwrap();
    let q = Arc::new(queue(dir.path(), LOTS));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let q = q.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|_| q.enqueue(&envelope("m@contoso.com"), &body(1000)).unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let ids: Vec<QueueId> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .map(|e| e.id)
        .collect();
    assert_eq!(q.stats().unwrap().bytes, 80 * (1000 + SEAL));
    assert_eq!(
        queue(dir.path(), LOTS).stats().unwrap().bytes,
        80 * (1000 + SEAL)
    );
    let listed: Vec<QueueId> = q.entries().unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(listed.len(), 80);
    assert!(ids.iter().all(|id| listed.contains(id)));
}

#[test]
fn another_process_sees_the_queue_and_its_changes_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let relay = queue(dir.path(), LOTS);
    let cli = queue(dir.path(), LOTS);
    let a = relay
        .enqueue(&envelope("m@contoso.com"), &body(100))
        .unwrap();
    let b = relay
        .enqueue(&envelope("m@contoso.com"), &body(100))
        .unwrap();
    let c = relay
        .enqueue(&envelope("m@contoso.com"), &body(100))
        .unwrap();
    assert_eq!(cli.entries().unwrap().len(), 3);
    assert_eq!(cli.entry(&a.id).unwrap(), Some(a.clone()));

    let reply = "550 5.1.1 unknown".to_owned();
    relay.settle(&a.id, &Settlement::Failed { reply }).unwrap();
    assert_eq!(cli.entry(&a.id).unwrap().unwrap().state, EntryState::Failed);
    assert_eq!(cli.retry(Some(&a.id)).unwrap(), 1);
    assert!(cli.remove(&b.id).unwrap());
    assert!(!cli.remove(&b.id).unwrap());
    let due: Vec<QueueId> = relay
        .due(now_secs(), 10)
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(due, [a.id.clone(), c.id.clone()]);
    assert!(!relay.claim(&b.id, now_secs() + 60).unwrap());
    assert_eq!(relay.stats().unwrap().mailboxes[0].queued, 2);

    // Removed while the relay delivers it: it stays removed.
    assert!(relay.claim(&c.id, now_secs() + 60).unwrap());
    assert!(cli.remove(&c.id).unwrap());
    let deferred = Settlement::Deferred {
        next_attempt_at: 0,
        reply: "451".into(),
    };
    relay.settle(&c.id, &deferred).unwrap();
    assert_eq!(relay.entry(&c.id).unwrap(), None);
    assert_eq!(
        files(dir.path()),
        [
            ".changed".to_owned(),
            format!("{}.json", a.id),
            format!("{}.msg", a.id)
        ]
    );
}

/// Where the disk-full test runs when it had to start itself in a namespace of its own.
const TMPFS_ENV: &str = "M365_RELAY_TEST_TMPFS";
const DONE_ENV: &str = "M365_RELAY_TEST_TMPFS_DONE";

#[test]
fn a_full_disk_is_a_storage_error_and_leaves_no_file() {
    if let Ok(dir) = std::env::var(TMPFS_ENV) {
        disk_full_on(Path::new(&dir));
        fs::write(std::env::var(DONE_ENV).unwrap(), b"done").unwrap();
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mount = |dir: &Path| {
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success())
    };
    if mount(dir.path()) {
        let result = std::panic::catch_unwind(|| disk_full_on(dir.path()));
        let unmounted = Command::new("umount").arg(dir.path()).status().unwrap();
        assert!(unmounted.success());
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        return;
    }
    // Not allowed to mount here: in a user and mount namespace of its own, it is.
    let done = tempfile::tempdir().unwrap();
    let done = done.path().join("done");
    let status = Command::new("unshare")
        .args(["-rm", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=256k tmpfs "$1" && exec "$2" --exact "$3" --test-threads=1"#)
        .args(["sh".as_ref(), dir.path().as_os_str()])
        .arg(std::env::current_exe().unwrap())
        .arg("state::files::queue::tests::a_full_disk_is_a_storage_error_and_leaves_no_file")
        .env(TMPFS_ENV, dir.path())
        .env(DONE_ENV, &done)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(done.exists(), "the test did not run in its namespace");
}

/// On a 256 KiB file system at `dir`: a message that does not fit fails with nothing left.
fn disk_full_on(dir: &Path) {
    let q = queue(dir, LOTS);
    let kept = q
        .enqueue(&envelope("m@contoso.com"), &body(10_000))
        .unwrap();
    let filler: PathBuf = dir.join("filler");
    fill(&filler);
    let before = files(dir);
    assert_eq!(before, [format!("{}.msg", kept.id)]);
    match q.enqueue(&envelope("m@contoso.com"), &body(30_000)) {
        Err(QueueError::Storage(e)) => assert!(e.to_string().contains("space"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(files(dir), before, "nothing half-kept");
    assert_eq!(q.stats().unwrap().bytes, 10_000 + SEAL);
    assert_eq!(q.entries().unwrap(), [kept]);
    fs::remove_file(&filler).unwrap();
    q.enqueue(&envelope("m@contoso.com"), &body(30_000))
        .unwrap();
}

/// Fills the file system of `path` but for about 8 KiB, so that a write starts and fails.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = fs::File::create(path).unwrap();
    let chunk = [0u8; 4096];
    while file.write_all(&chunk).is_ok() {}
    let len = file.metadata().unwrap().len();
    file.set_len(len.saturating_sub(8192)).unwrap();
}
