//! `m365-relay log [--mailbox M] [--since T] [--follow] [--json]`: the delivery log, read
//! through the state (`State::delivery_log`): one readable line per event, or the JSON
//! lines as stored. `--follow` asks the store again every second and prints what is new,
//! each event once, until interrupted.

mod since;

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::time::Duration;

use anyhow::Context;

use crate::cli::queue::{clean, recipients, sender, size};
use crate::config::Config;
use crate::state::delivery_log::{DeliveryEvent, DeliveryLogStore, LogQuery};

/// How often `--follow` asks the store.
const POLL: Duration = Duration::from_secs(1);
/// Events `--follow` shows first when no `--since` is given (as `tail -f`).
const FOLLOW_BACKLOG: usize = 10;
/// How far back `--follow` looks again: an event written a little after a later one (two
/// sessions logging at once, or another relay of the fleet) still shows.
const FOLLOW_OVERLAP_MS: u64 = 5_000;

#[derive(clap::Args, Debug)]
pub struct LogArgs {
    /// Only this mailbox's events.
    #[arg(long, value_name = "ADDRESS")]
    pub mailbox: Option<String>,
    /// Only events at or after T: RFC 3339 (2026-12-07T10:00:00Z) or a time back from now
    /// (90s, 10m, 2h, 1d).
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Keep printing new events as they are written, until Ctrl-C (without --since, the
    /// last 10 events first).
    #[arg(long)]
    pub follow: bool,
    /// Print the events as the JSON lines they are stored as.
    #[arg(long)]
    pub json: bool,
}

/// Prints the configured state's delivery log as `args` says.
pub fn run(args: &LogArgs, config: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    let since_ms = match &args.since {
        Some(t) => Some(since::parse(t, crate::datetime::now_ms()).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let state = crate::state::open(config)?;
    let store = state
        .delivery_log()
        .context("this state backend keeps no delivery log")?;
    let query = LogQuery {
        mailbox: args.mailbox.as_deref().map(str::to_ascii_lowercase),
        since_ms,
        limit: 0,
    };
    let printed = match args.follow {
        false => print_all(store.as_ref(), &query, args.json, out),
        true => follow(store.as_ref(), query, args.json, out),
    };
    match printed {
        // `m365-relay log | head`: the reader has seen enough.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

fn print_all(
    store: &dyn DeliveryLogStore,
    query: &LogQuery,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    for event in store.read(query)? {
        print(&event, json, out)?;
    }
    out.flush()?;
    Ok(())
}

/// The backlog, then every second what is new, until the process is interrupted.
fn follow(
    store: &dyn DeliveryLogStore,
    mut query: LogQuery,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut shown = Shown::default();
    if query.since_ms.is_none() {
        query.limit = FOLLOW_BACKLOG;
    }
    loop {
        for event in shown.new_events(store.read(&query)?) {
            print(&event, json, out)?;
        }
        out.flush()?;
        std::thread::sleep(POLL);
        query.limit = 0;
        if shown.newest_ms > 0 {
            let window = shown.newest_ms.saturating_sub(FOLLOW_OVERLAP_MS);
            query.since_ms = Some(query.since_ms.map_or(window, |s| s.max(window)));
        }
    }
}

/// The events `--follow` printed in its look-back window, to print each event once: by the
/// whole event (two equal events within one millisecond are counted, not merged).
#[derive(Debug, Default)]
struct Shown {
    newest_ms: u64,
    /// Each printed event (as its JSON line) and how often it was printed.
    counts: HashMap<String, usize>,
    /// The printed events in order, to forget those out of the window.
    order: VecDeque<(u64, String)>,
}

impl Shown {
    /// The events of a read that were not printed yet, in order.
    fn new_events(&mut self, read: Vec<DeliveryEvent>) -> Vec<DeliveryEvent> {
        let mut in_read: HashMap<String, usize> = HashMap::new();
        let mut fresh = Vec::new();
        for event in read {
            let Ok(key) = serde_json::to_string(&event) else {
                continue;
            };
            let nth = in_read.entry(key.clone()).or_default();
            *nth += 1;
            let printed = self.counts.get(&key).copied().unwrap_or(0);
            if *nth > printed {
                *self.counts.entry(key.clone()).or_default() += 1;
                self.order.push_back((event.at_ms, key));
                self.newest_ms = self.newest_ms.max(event.at_ms);
                fresh.push(event);
            }
        }
        self.forget_old();
        fresh
    }

    /// Forgets events before the window: a later read starts within it.
    fn forget_old(&mut self) {
        let start = self.newest_ms.saturating_sub(FOLLOW_OVERLAP_MS);
        while let Some((at_ms, _)) = self.order.front() {
            if *at_ms >= start {
                break;
            }
            if let Some((_, key)) = self.order.pop_front()
                && let Some(count) = self.counts.get_mut(&key)
            {
                *count -= 1;
                if *count == 0 {
                    self.counts.remove(&key);
                }
            }
        }
    }
}

fn print(event: &DeliveryEvent, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    match json {
        true => writeln!(out, "{}", serde_json::to_string(event)?)?,
        false => writeln!(out, "{}", line(event))?,
    }
    Ok(())
}

/// `time event mailbox queue-id <sender> -> recipients size route reply`, `-` for what
/// the event does not know.
fn line(e: &DeliveryEvent) -> String {
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let envelope = match &e.sender {
        Some(s) => format!(
            "{} -> {}",
            sender(s),
            recipients(&e.recipients, e.recipient_count)
        ),
        None => format!("-> {}", recipients(&e.recipients, e.recipient_count)),
    };
    let mut reply = or_dash(e.reply.as_deref().map(clean));
    if let Some(id) = &e.request_id {
        reply.push_str(&format!(" (request-id {})", clean(id)));
    }
    format!(
        "{} {:<9} {} {} {} {} {} {}",
        clean(&e.time),
        e.event.name(),
        clean(&e.mailbox),
        or_dash(e.queue_id.as_deref().map(clean)),
        envelope,
        or_dash(e.size.map(size)),
        or_dash(e.route.as_deref().map(clean)),
        reply
    )
}

#[cfg(test)]
mod tests;
