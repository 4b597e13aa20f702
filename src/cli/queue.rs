//! `m365-relay queue list | show | retry | remove`: the outbound queue as an administrator
//! sees it, through the state (`state::open`, `State::queue`), so the same commands serve
//! the state folder and the database. A running relay sees what `retry` and `remove` did
//! at its next look at the queue. A message's content is printed only by `show --body`.

mod text;

pub(crate) use text::{age, clean, columns, recipients, sender, size};

use std::io::Write;

use anyhow::{Context, bail};
use base64::Engine;

use crate::config::Config;
use crate::datetime::{unix, utc};
use crate::state::queue::{Entry, EntryState, MessageKind, OutboundQueue, QueueId};

#[derive(clap::Subcommand, Debug)]
pub enum QueueCommand {
    /// List the queued and failed messages, oldest first: envelope, size, age, attempts,
    /// next attempt and last reply (never their content).
    List {
        /// A JSON array of the entries.
        #[arg(long)]
        json: bool,
    },
    /// Show one message: envelope, size, attempts, last reply, times. Its content only
    /// with --body.
    Show {
        /// The queue id (from `queue list`, the client's `250 ... queued as ID`, the log).
        id: String,
        /// The entry as JSON (with --body, its content in `body` or `body_base64`).
        #[arg(long)]
        json: bool,
        /// Also print the message itself (headers and body): mail content, handle with care.
        #[arg(long)]
        body: bool,
    },
    /// Make a message due now (a failed one is queued again), or every message with --all.
    Retry {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every queued and failed message.
        #[arg(long)]
        all: bool,
    },
    /// Delete a message and its content from the queue (without asking); prints what was
    /// removed. Its sender is not told.
    Remove { id: String },
}

/// Runs `command` on the queue of the configured state.
pub fn run(command: &QueueCommand, config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    let state = crate::state::open(config)?;
    let queue = state
        .queue()
        .context("this state backend keeps no outbound queue")?;
    let now = unix(std::time::SystemTime::now());
    execute(command, queue.as_ref(), now, out)
}

/// Runs `command` on `queue` at `now` (Unix seconds).
pub fn execute(
    command: &QueueCommand,
    queue: &dyn OutboundQueue,
    now: u64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match command {
        QueueCommand::List { json: true } => {
            let entries = queue.entries()?;
            writeln!(out, "{}", serde_json::to_string_pretty(&entries)?)?;
        }
        QueueCommand::List { json: false } => list(&queue.entries()?, now, out)?,
        QueueCommand::Show { id, json, body } => {
            let id = parse(id)?;
            let entry = find(queue, &id)?;
            let content = match body {
                true => Some(queue.message(&entry)?),
                false => None,
            };
            match json {
                true => show_json(&entry, content.as_ref().map(|c| c.as_slice()), out)?,
                false => show(&entry, content.as_ref().map(|c| c.as_slice()), now, out)?,
            }
        }
        QueueCommand::Retry { id: None, .. } => {
            let count = queue.retry(None)?;
            writeln!(out, "{count} message(s) due now")?;
        }
        QueueCommand::Retry { id: Some(id), .. } => {
            let id = parse(id)?;
            let entry = find(queue, &id)?;
            if queue.retry(Some(&id))? == 0 {
                bail!("no message {id} in the queue");
            }
            let again = match entry.state {
                EntryState::Failed => " (failed before, queued again)",
                EntryState::Queued => "",
            };
            writeln!(out, "{id} is due now{again}")?;
        }
        QueueCommand::Remove { id } => {
            let id = parse(id)?;
            let entry = find(queue, &id)?;
            if !queue.remove(&id)? {
                bail!("no message {id} in the queue");
            }
            writeln!(out, "removed {}", summary(&entry))?;
        }
    }
    Ok(())
}

fn parse(id: &str) -> anyhow::Result<QueueId> {
    QueueId::parse(id).with_context(|| format!("not a queue id: {}", clean(id)))
}

fn find(queue: &dyn OutboundQueue, id: &QueueId) -> anyhow::Result<Entry> {
    queue
        .entry(id)?
        .with_context(|| format!("no message {id} in the queue"))
}

fn state_name(entry: &Entry) -> &'static str {
    match entry.state {
        EntryState::Queued => "queued",
        EntryState::Failed => "failed",
    }
}

/// `ID (queued): mailbox, <sender> -> 2 recipients, 12.3 KB`.
fn summary(entry: &Entry) -> String {
    let e = &entry.envelope;
    format!(
        "{} ({}): {}, {} -> {}, {}",
        entry.id,
        state_name(entry),
        clean(&e.mailbox),
        sender(&e.sender),
        recipients(&[], e.recipients.len()),
        size(entry.size)
    )
}

/// When the entry is tried next, from `now`.
fn next_attempt(entry: &Entry, now: u64) -> String {
    match entry.state {
        EntryState::Failed => "never (failed)".to_owned(),
        EntryState::Queued if entry.next_attempt_at <= now => "now".to_owned(),
        EntryState::Queued => format!("in {}", age(entry.next_attempt_at - now)),
    }
}

fn list(entries: &[Entry], now: u64, out: &mut dyn Write) -> anyhow::Result<()> {
    if entries.is_empty() {
        writeln!(out, "the queue is empty")?;
        return Ok(());
    }
    let mut rows = vec![
        [
            "ID",
            "STATE",
            "MAILBOX",
            "SENDER",
            "RCPTS",
            "SIZE",
            "AGE",
            "ATTEMPTS",
            "NEXT",
            "LAST REPLY",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for entry in entries {
        let e = &entry.envelope;
        rows.push(vec![
            entry.id.to_string(),
            state_name(entry).to_owned(),
            clean(&e.mailbox),
            sender(&e.sender),
            e.recipients.len().to_string(),
            size(entry.size),
            age(now.saturating_sub(entry.received_at)),
            entry.attempts.to_string(),
            next_attempt(entry, now),
            entry.last_reply.as_deref().map_or(String::new(), clean),
        ]);
    }
    for line in columns(&rows) {
        writeln!(out, "{line}")?;
    }
    let failed = entries
        .iter()
        .filter(|e| e.state == EntryState::Failed)
        .count();
    writeln!(
        out,
        "{} message(s): {} queued, {failed} failed",
        entries.len(),
        entries.len() - failed
    )?;
    Ok(())
}

fn show(
    entry: &Entry,
    content: Option<&[u8]>,
    now: u64,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let e = &entry.envelope;
    let at = |secs: u64| utc(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
    let kind = match e.kind {
        MessageKind::Message => "message",
        MessageKind::Notice => "delivery status notification (written by the relay)",
    };
    writeln!(out, "id: {}", entry.id)?;
    writeln!(out, "state: {}", state_name(entry))?;
    writeln!(out, "kind: {kind}")?;
    writeln!(out, "mailbox: {}", clean(&e.mailbox))?;
    writeln!(out, "sender: {}", sender(&e.sender))?;
    writeln!(out, "recipients ({}):", e.recipients.len())?;
    for r in &e.recipients {
        writeln!(out, "  {}", clean(r))?;
    }
    if let Some(client) = &e.client {
        writeln!(out, "client: {}", clean(client))?;
    }
    if let Some(message_id) = &e.message_id {
        writeln!(out, "message-id: {}", clean(message_id))?;
    }
    writeln!(out, "size: {} ({} bytes)", size(entry.size), entry.size)?;
    let received = now.saturating_sub(entry.received_at);
    writeln!(
        out,
        "received: {} ({} ago)",
        at(entry.received_at),
        age(received)
    )?;
    writeln!(out, "attempts: {}", entry.attempts)?;
    match entry.state {
        EntryState::Queued => writeln!(
            out,
            "next attempt: {} ({})",
            at(entry.next_attempt_at),
            next_attempt(entry, now)
        )?,
        EntryState::Failed => writeln!(out, "next attempt: never (failed; `queue retry`)")?,
    }
    let reply = entry.last_reply.as_deref().map_or("none yet".into(), clean);
    writeln!(out, "last reply: {reply}")?;
    let warned = if entry.warned { "yes" } else { "no" };
    writeln!(out, "delay notice sent: {warned}")?;
    if let Some(content) = content {
        writeln!(out, "--- message ({} bytes) ---", content.len())?;
        out.write_all(content)?;
        if !content.ends_with(b"\n") {
            writeln!(out)?;
        }
    }
    Ok(())
}

fn show_json(entry: &Entry, content: Option<&[u8]>, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut value = serde_json::to_value(entry)?;
    if let (Some(content), Some(fields)) = (content, value.as_object_mut()) {
        match std::str::from_utf8(content) {
            Ok(text) => fields.insert("body".into(), text.into()),
            Err(_) => fields.insert(
                "body_base64".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(content)
                    .into(),
            ),
        };
    }
    writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    Ok(())
}

#[cfg(test)]
mod tests;
