//! `m365-relay status`: asks a running relay's admin endpoint for its listeners, open
//! sessions and mailboxes, and prints them as a table (or the JSON itself); `reload` and
//! `health` call the same endpoint. `status` and `reload` send the bearer token, found as
//! the relay finds it (`M365_RELAY_ADMIN_TOKEN`, else `admin.token_file`); `health` asks
//! `/healthz`, which needs none.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::admin::Status;
use crate::admin::gate::CSRF_HEADER;
use crate::admin::token::{AdminToken, TOKEN_ENV};
use crate::config::Config;

/// One request to the admin endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Health,
    Status,
    Reload,
}

/// `m365-relay status`.
pub fn run(config: &Config, admin: Option<&str>, json: bool) -> anyhow::Result<()> {
    let text = call(config, admin, Call::Status)?;
    if json {
        println!("{text}");
        return Ok(());
    }
    let status: Status =
        serde_json::from_str(&text).context("the admin endpoint answered something unexpected")?;
    print!("{}", table(&status, SystemTime::now()));
    Ok(())
}

/// `m365-relay health`: quiet on success.
pub fn health(config: &Config, admin: Option<&str>) -> anyhow::Result<()> {
    call(config, admin, Call::Health).map(drop)
}

/// `m365-relay reload`.
pub fn reload(config: &Config, admin: Option<&str>) -> anyhow::Result<()> {
    let text = call(config, admin, Call::Reload)?;
    print!("{text}");
    Ok(())
}

/// Calls the admin endpoint; a non-2xx answer is an error carrying the answer's text.
fn call(config: &Config, admin: Option<&str>, what: Call) -> anyhow::Result<String> {
    let token = match what {
        Call::Health => None,
        Call::Status | Call::Reload => Some(AdminToken::load(&config.admin.token_file).with_context(
            || format!(
                "the admin endpoint needs its token: run as the relay's user, or set {TOKEN_ENV}"
            ),
        )?),
    };
    let path = match what {
        Call::Health => "/healthz",
        Call::Status => "/status",
        Call::Reload => "/reload",
    };
    let base = match admin {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => match config.admin.listen {
            Some(addr) if addr.ip().is_unspecified() => format!("http://127.0.0.1:{}", addr.port()),
            Some(addr) => format!("http://{addr}"),
            None => bail!(
                "the admin endpoint is off in {} (admin.listen)",
                config.describe_source()
            ),
        },
    };
    let url = format!("{base}{path}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .no_proxy()
            .build()?;
        let mut request = match what {
            // The header shows the request comes from no web page (the endpoint's CSRF rule).
            Call::Reload => client.post(&url).header(CSRF_HEADER, "1"),
            Call::Health | Call::Status => client.get(&url),
        };
        if let Some(token) = &token {
            request = request.bearer_auth(token.expose());
        }
        let response = request.send().await?;
        let ok = response.status().is_success();
        anyhow::Ok((ok, response.text().await?))
    });
    let (ok, text) = answer.with_context(|| {
        format!("cannot reach the relay's admin endpoint at {url}; is it running?")
    })?;
    if !ok {
        bail!("{}", text.trim());
    }
    Ok(text)
}

fn table(status: &Status, now: SystemTime) -> String {
    let mut out = format!(
        "m365-relay {}, up {}\n",
        status.version,
        human(Duration::from_secs(status.uptime_secs))
    );
    out.push_str("listeners:");
    for l in &status.listeners {
        out.push_str(&format!(" {} {}", l.name, l.addr));
    }
    out.push_str("\nsessions open:");
    for (protocol, open) in &status.sessions_open {
        out.push_str(&format!(" {protocol} {open}"));
    }
    if let Some(db) = &status.database {
        out.push_str(&format!("\nstate database: {}", db.server));
        match &db.error {
            None => out.push_str(" reachable"),
            Some(why) => out.push_str(&format!(
                " UNREACHABLE for {} ({why}): degraded, serving from what the relay holds",
                human(Duration::from_secs(db.unreachable_secs(now)))
            )),
        }
    }
    if let Some(q) = &status.queue {
        let oldest = q.oldest_age_secs.map_or("-".into(), super::queue::age);
        let size = super::queue::size(q.bytes);
        let (queued, failed) = (q.queued, q.failed);
        out.push_str(&format!(
            "\nqueue: {queued} queued, {failed} failed, {size}, oldest {oldest}"
        ));
    }
    out.push_str(&format!(
        "\n\n{:<36} {:<13} {:<22} {}\n",
        "MAILBOX", "STATE", "ACCESS TOKEN", "LAST REFRESH"
    ));
    for m in &status.mailboxes {
        let state = match &m.token_from {
            Some(d) => format!("{} (via {d})", m.state.as_str()),
            None => m.state.as_str().to_owned(),
        };
        let expires = m
            .access_token_expires
            .map_or("-".into(), |t| relative(t, now));
        let last = match (&m.last_refresh, &m.last_outcome) {
            (Some(t), Some(o)) => format!(
                "{} ago: {o}",
                human(now.duration_since(at(*t)).unwrap_or_default())
            ),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "{:<36} {:<13} {:<22} {}\n",
            m.address, state, expires, last
        ));
    }
    out
}

fn at(unix: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix)
}

/// `in 42 min` or `expired 3 min ago`.
fn relative(unix: u64, now: SystemTime) -> String {
    match at(unix).duration_since(now) {
        Ok(left) => format!("expires in {}", human(left)),
        Err(e) => format!("expired {} ago", human(e.duration())),
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{ListenerView, MailboxView};
    use crate::oauth::health::State;

    #[test]
    fn the_table_shows_states_and_expiries() {
        let now = at(1_000_000);
        let status = Status {
            version: "0.1.0".into(),
            uptime_secs: 3700,
            listeners: vec![ListenerView {
                name: "imaps".into(),
                addr: "127.0.0.1:1993".parse().unwrap(),
            }],
            sessions_open: vec![("imap".into(), 2)],
            mailboxes: vec![
                MailboxView {
                    address: "alice@contoso.com".into(),
                    token_from: None,
                    state: State::Ok,
                    access_token_expires: Some(1_000_000 + 2520),
                    last_refresh: Some(1_000_000 - 120),
                    last_outcome: Some("ok".into()),
                    error: None,
                },
                MailboxView {
                    address: "help@contoso.com".into(),
                    token_from: Some("alice@contoso.com".into()),
                    state: State::NeedsReauth,
                    access_token_expires: None,
                    last_refresh: None,
                    last_outcome: None,
                    error: Some("invalid_grant".into()),
                },
            ],
            database: None,
            queue: None,
        };
        let t = table(&status, now);
        assert!(t.starts_with("m365-relay 0.1.0, up 1 h 1 min\nlisteners: imaps 127.0.0.1:1993\nsessions open: imap 2\n"), "{t}");
        assert!(
            t.contains("alice@contoso.com")
                && t.contains("expires in 42 min")
                && t.contains("2 min ago: ok"),
            "{t}"
        );
        assert!(t.contains("needs-reauth (via alice@contoso.com)"), "{t}");
        assert!(
            !t.contains("state database"),
            "the files backend has none: {t}"
        );
    }

    #[test]
    fn the_table_says_when_the_state_database_is_unreachable() {
        let now = at(1_000_000);
        let mut status = Status {
            version: "0.1.0".into(),
            uptime_secs: 60,
            listeners: Vec::new(),
            sessions_open: Vec::new(),
            mailboxes: Vec::new(),
            database: Some(crate::admin::DatabaseView {
                server: "db.internal:5432/relay".into(),
                reachable: true,
                unreachable_since: None,
                error: None,
            }),
            queue: Some(crate::admin::QueueView {
                queued: 3,
                failed: 1,
                bytes: 12_595,
                oldest_age_secs: Some(3 * 3600 + 5 * 60),
                mailboxes: Vec::new(),
                read_at: 1_000_000,
            }),
        };
        let t = table(&status, now);
        assert!(
            t.contains("\nqueue: 3 queued, 1 failed, 12.3 KB, oldest 3h05m\n"),
            "{t}"
        );
        assert!(
            t.contains("state database: db.internal:5432/relay reachable\n"),
            "{t}"
        );
        status.database = Some(crate::admin::DatabaseView {
            server: "db.internal:5432/relay".into(),
            reachable: false,
            unreachable_since: Some(1_000_000 - 90),
            error: Some("connection refused".into()),
        });
        let t = table(&status, now);
        assert!(
            t.contains("state database: db.internal:5432/relay UNREACHABLE for 1 min (connection refused): degraded"),
            "{t}"
        );
    }
}
