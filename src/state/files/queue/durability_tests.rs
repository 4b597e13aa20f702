//! The queue folder's durability at its edges: created at open, never a message replaced
//! by another of the same id, and a file that cannot be read now (not corrupt) kept.

use std::fs;

use super::*;
use crate::state::queue::MessageKind;

fn key() -> StateKey {
    StateKey::from_bytes(&[7; 32])
}

fn envelope(to: &str) -> Envelope {
    Envelope {
        mailbox: "app@contoso.com".into(),
        sender: "app@contoso.com".into(),
        recipients: vec![to.into()],
        client: None,
        message_id: None,
        kind: MessageKind::Message,
        parameters: Vec::new(),
    }
}

#[test]
fn the_queue_folder_is_created_at_open() {
    let dir = tempfile::tempdir().unwrap();
    FileQueue::open(dir.path(), key(), 1 << 20).unwrap();
    assert!(dir.path().join(QUEUE_DIR).is_dir());
}

#[test]
fn a_message_of_an_existing_id_never_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let q = FileQueue::open(dir.path(), key(), 1 << 20).unwrap();
    let first = q
        .enqueue(&envelope("a@fabrikam.com"), b"first\r\n")
        .unwrap();
    let mut other = first.clone();
    other.envelope = envelope("mallory@evil.example");
    let e = q.restore(&other, b"second\r\n").unwrap_err();
    assert!(
        matches!(&e, QueueError::Storage(StoreError::Io { source, .. })
            if source.kind() == io::ErrorKind::AlreadyExists),
        "{e}"
    );
    assert_eq!(&q.message(&first).unwrap()[..], b"first\r\n");
    assert_eq!(q.entry(&first.id).unwrap(), Some(first.clone()));
    let names: Vec<String> = fs::read_dir(dir.path().join(QUEUE_DIR))
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [format!("{}.msg", first.id)], "no temp file left");
}

#[test]
fn a_message_file_that_cannot_be_read_now_is_left_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let q = FileQueue::open(dir.path(), key(), 1 << 20).unwrap();
    let kept = q.enqueue(&envelope("a@fabrikam.com"), b"kept\r\n").unwrap();
    drop(q);
    // Reading a folder fails with an I/O error (EISDIR), not as corrupt content.
    let odd = QueueId::new();
    let path = dir.path().join(QUEUE_DIR).join(format!("{odd}.msg"));
    fs::create_dir(&path).unwrap();
    let q = FileQueue::open(dir.path(), key(), 1 << 20).unwrap();
    assert!(path.is_dir(), "left where it was, not set aside");
    assert_eq!(scan::set_aside(&q.folder), Vec::<String>::new());
    assert_eq!(q.due(u64::MAX, 10).unwrap(), vec![kept]);
}
