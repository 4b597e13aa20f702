use std::sync::Mutex;

use zeroize::Zeroizing;

use super::*;
use crate::state::StoreError;
use crate::state::queue::{Entry, Envelope, QueueError, QueueStats, Settlement};

const NOW: u64 = 1_800_000_000;
const BODY: &str = "Subject: payroll\r\n\r\nthe secret figures\r\n";

/// The queue as a list in memory: what the commands see through the trait.
#[derive(Debug, Default)]
struct Listed(Mutex<Vec<(Entry, Vec<u8>)>>);

impl Listed {
    fn with(entries: Vec<Entry>) -> Self {
        Self(Mutex::new(
            entries.into_iter().map(|e| (e, BODY.into())).collect(),
        ))
    }
    fn get(&self, id: &QueueId) -> Option<Entry> {
        let all = self.0.lock().unwrap();
        all.iter()
            .find(|(e, _)| &e.id == id)
            .map(|(e, _)| e.clone())
    }
}

impl OutboundQueue for Listed {
    fn enqueue(&self, _: &Envelope, _: &[u8]) -> Result<Entry, QueueError> {
        panic!("the commands never deliver")
    }
    fn due(&self, _: u64, _: usize) -> Result<Vec<Entry>, StoreError> {
        panic!("the commands never deliver")
    }
    fn claim(&self, _: &QueueId, _: u64) -> Result<bool, StoreError> {
        panic!("the commands never deliver")
    }
    fn message(&self, entry: &Entry) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let all = self.0.lock().unwrap();
        let (_, body) = all.iter().find(|(e, _)| e.id == entry.id).unwrap();
        Ok(Zeroizing::new(body.clone()))
    }
    fn settle(&self, _: &QueueId, _: &Settlement) -> Result<(), StoreError> {
        panic!("the commands never deliver")
    }
    fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        let all = self.0.lock().unwrap();
        Ok(all.iter().map(|(e, _)| e.clone()).collect())
    }
    fn entry(&self, id: &QueueId) -> Result<Option<Entry>, StoreError> {
        Ok(self.get(id))
    }
    fn retry(&self, id: Option<&QueueId>) -> Result<usize, StoreError> {
        let mut all = self.0.lock().unwrap();
        let mut count = 0;
        for (e, _) in all
            .iter_mut()
            .filter(|(e, _)| id.is_none_or(|i| &e.id == i))
        {
            e.state = EntryState::Queued;
            e.next_attempt_at = NOW;
            count += 1;
        }
        Ok(count)
    }
    fn remove(&self, id: &QueueId) -> Result<bool, StoreError> {
        let mut all = self.0.lock().unwrap();
        let before = all.len();
        all.retain(|(e, _)| &e.id != id);
        Ok(all.len() < before)
    }
    fn stats(&self) -> Result<QueueStats, StoreError> {
        panic!("the commands never deliver")
    }
}

fn entry(id: &str, state: EntryState, attempts: u32, reply: Option<&str>) -> Entry {
    Entry {
        id: QueueId::parse(id).unwrap(),
        envelope: Envelope {
            mailbox: "scanner@contoso.com".into(),
            sender: "scanner@contoso.com".into(),
            recipients: vec!["a@fabrikam.com".into(), "b@fabrikam.com".into()],
            client: Some("192.0.2.7".into()),
            message_id: Some("<1@scanner>".into()),
            kind: MessageKind::Message,
            parameters: Vec::new(),
        },
        size: 12_595,
        state,
        received_at: NOW - 3 * 3600 - 5 * 60,
        attempts,
        next_attempt_at: NOW + 240,
        last_reply: reply.map(str::to_owned),
        warned: false,
    }
}

fn two() -> Listed {
    Listed::with(vec![
        entry(
            "0a01",
            EntryState::Queued,
            2,
            Some("451 4.7.0 later\x1b[2J"),
        ),
        entry("0a02", EntryState::Failed, 1, Some("550 5.1.1 unknown")),
    ])
}

fn run(queue: &Listed, command: QueueCommand) -> anyhow::Result<String> {
    let mut out = Vec::new();
    execute(&command, queue, NOW, &mut out)?;
    Ok(String::from_utf8(out).unwrap())
}

fn show(id: &str, json: bool, body: bool) -> QueueCommand {
    QueueCommand::Show {
        id: id.into(),
        json,
        body,
    }
}

#[test]
fn list_prints_one_line_per_entry_with_its_numbers() {
    let text = run(&two(), QueueCommand::List { json: false }).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("ID    STATE"), "{text}");
    for cell in [
        "0a01",
        "queued",
        "scanner@contoso.com",
        "<scanner@contoso.com>",
        "12.3 KB",
        "3h05m",
        "in 4m",
        "451 4.7.0 later\\u{1b}[2J",
    ] {
        assert!(lines[1].contains(cell), "{cell} not in {}", lines[1]);
    }
    assert!(lines[2].contains("failed") && lines[2].contains("never (failed)"));
    assert_eq!(lines[3], "2 message(s): 1 queued, 1 failed");
    assert!(!text.contains("secret figures"));
    let empty = run(&Listed::default(), QueueCommand::List { json: false }).unwrap();
    assert_eq!(empty, "the queue is empty\n");
}

#[test]
fn list_json_is_the_entries() {
    let text = run(&two(), QueueCommand::List { json: true }).unwrap();
    let parsed: Vec<Entry> = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed, two().entries().unwrap());
}

#[test]
fn show_prints_the_content_only_when_asked() {
    let queue = two();
    let plain = run(&queue, show("0a01", false, false)).unwrap();
    for line in [
        "id: 0a01",
        "state: queued",
        "sender: <scanner@contoso.com>",
        "recipients (2):",
        "  b@fabrikam.com",
        "size: 12.3 KB (12595 bytes)",
        "attempts: 2",
        "message-id: <1@scanner>",
    ] {
        assert!(plain.lines().any(|l| l == line), "{line} not in {plain}");
    }
    assert!(!plain.contains("secret figures"), "{plain}");
    let json = run(&queue, show("0a01", true, false)).unwrap();
    assert!(!json.contains("secret figures"), "{json}");
    assert_eq!(
        serde_json::from_str::<Entry>(&json).unwrap(),
        queue.get(&QueueId::parse("0a01").unwrap()).unwrap()
    );
    let with_body = run(&queue, show("0a01", false, true)).unwrap();
    assert!(with_body.ends_with(BODY), "{with_body}");
    let json: serde_json::Value =
        serde_json::from_str(&run(&queue, show("0a01", true, true)).unwrap()).unwrap();
    assert_eq!(json["body"], BODY);
}

#[test]
fn retry_and_remove_change_the_queue_and_say_so() {
    let queue = two();
    let failed = QueueId::parse("0a02").unwrap();
    let said = run(
        &queue,
        QueueCommand::Retry {
            id: Some("0a02".into()),
            all: false,
        },
    )
    .unwrap();
    assert_eq!(said, "0a02 is due now (failed before, queued again)\n");
    assert_eq!(queue.get(&failed).unwrap().state, EntryState::Queued);
    let all = run(
        &queue,
        QueueCommand::Retry {
            id: None,
            all: true,
        },
    )
    .unwrap();
    assert_eq!(all, "2 message(s) due now\n");
    let removed = run(&queue, QueueCommand::Remove { id: "0a02".into() }).unwrap();
    assert_eq!(
        removed,
        "removed 0a02 (queued): scanner@contoso.com, <scanner@contoso.com> -> 2 recipients, 12.3 KB\n"
    );
    assert_eq!(queue.get(&failed), None);
}

#[test]
fn unknown_or_malformed_ids_are_errors() {
    let queue = two();
    for command in [
        show("0bad", false, false),
        QueueCommand::Retry {
            id: Some("0bad".into()),
            all: false,
        },
        QueueCommand::Remove { id: "0bad".into() },
    ] {
        let error = run(&queue, command).unwrap_err().to_string();
        assert_eq!(error, "no message 0bad in the queue");
    }
    let error = run(&queue, show("../x\n", false, false))
        .unwrap_err()
        .to_string();
    assert_eq!(error, "not a queue id: ../x\\n");
    assert_eq!(queue.entries().unwrap().len(), 2);
}
