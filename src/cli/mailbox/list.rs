//! `mailbox list`: the registered mailboxes, one line each or as a JSON array, with what a
//! running relay last recorded of their tokens; never a secret.

use std::collections::BTreeMap;

use serde::Serialize;

use super::console::{Console, unix_now};
use crate::mailbox::{Mailbox, Registration, Registry};
use crate::state::{RefreshTokens, State};

/// What `list` shows of a mailbox: never a secret.
#[derive(Serialize)]
struct Listed<'a> {
    address: &'a str,
    /// `None` for a mailbox that takes its token from another.
    tenant: Option<&'a str>,
    /// `None` for a mailbox that takes its token from another.
    client_id: Option<&'a str>,
    /// `public`, `confidential` or `token-from`.
    client_type: &'static str,
    /// The mailbox whose token this one uses, or `None` when it has its own.
    token_from: Option<&'a str>,
    password_set: bool,
    /// Whether the token owner (the mailbox itself, or the one in `token_from`) has a
    /// refresh token stored.
    token_stored: bool,
    /// App-only (client credentials): no refresh token is ever stored.
    app_only: bool,
    /// How SMTP mail goes out: `xoauth2`, `graph`, `auto`, or `auto:graph` once Exchange
    /// refused SMTP AUTH and the relay switched to Graph.
    smtp_via: String,
    /// `direct` (`250` after Microsoft accepted) or `queue` (`250` once queued).
    delivery: &'static str,
    /// The mailbox's own SMTP upstream (`host:port`), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    smtp_server: Option<&'a str>,
    created: u64,
    /// The token state a running relay last recorded (`ok`, `failing`, `needs-reauth`,
    /// `no-token`), or `unknown` before any refresh.
    state: &'static str,
    /// Unix seconds.
    access_token_expires: Option<u64>,
    last_refresh: Option<u64>,
    last_outcome: Option<String>,
    /// When the client secret or certificate expires (Unix seconds).
    credential_expires: Option<u64>,
}

/// A credential this close to its expiry is warned about.
pub const CREDENTIAL_WARNING: u64 = 30 * 24 * 3600;

/// `mailbox list [--json]`.
pub(super) fn list(state: &State, json: bool, io: &mut Console<'_>) -> anyhow::Result<()> {
    let registry = state.registry().load_and_migrate()?;
    let store = state.tokens();
    // Per token owner, whether it has a token: read (and warned about) once, however many
    // mailboxes use it.
    let mut stored: BTreeMap<String, bool> = BTreeMap::new();
    let mut rows = Vec::with_capacity(registry.len());
    for m in registry.iter() {
        let token_stored = token_stored(&registry, m, store.as_ref(), &mut stored, io)?;
        rows.push(listed(&registry, m, token_stored, state));
    }
    if json {
        writeln!(io.out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    if rows.is_empty() {
        writeln!(io.err, "no mailboxes registered")?;
    }
    for row in &rows {
        print_row(row, io)?;
    }
    Ok(())
}

/// Whether the token owner of `m` has a refresh token stored; `stored` remembers the
/// owners already read. A token that cannot be read is warned about and counts as none.
fn token_stored(
    registry: &Registry,
    m: &Mailbox,
    store: &dyn RefreshTokens,
    stored: &mut BTreeMap<String, bool>,
    io: &mut Console<'_>,
) -> anyhow::Result<bool> {
    let owner = match registry.token_owner(m) {
        Ok(owner) => owner,
        Err(e) => {
            writeln!(io.err, "warning: {e}")?;
            return Ok(false);
        }
    };
    if let Some(&known) = stored.get(&owner.address) {
        return Ok(known);
    }
    let known = match store.load(&owner.address) {
        Ok(token) => token.is_some(),
        Err(e) => {
            writeln!(io.err, "warning: {e}")?;
            false
        }
    };
    stored.insert(owner.address.clone(), known);
    Ok(known)
}

/// What `list` shows of `m`.
fn listed<'a>(
    registry: &Registry,
    m: &'a Mailbox,
    token_stored: bool,
    state: &State,
) -> Listed<'a> {
    let (tenant, client_id, client_type, token_from) = app_columns(m);
    let owner = token_from.unwrap_or(&m.address);
    let app_only = registry
        .token_owner(m)
        .is_ok_and(|o| matches!(o.registration, Registration::App { app_only: true, .. }));
    let status = state.statuses().read(owner);
    let token_state = match &status {
        Some(status) => status.state.as_str(),
        None if token_stored || app_only => "unknown",
        None => "no-token",
    };
    let credential_expires = registry
        .token_owner(m)
        .ok()
        .and_then(|o| o.credential_expires());
    Listed {
        address: &m.address,
        tenant,
        client_id,
        client_type,
        token_from,
        password_set: m.password.is_some(),
        token_stored,
        app_only,
        smtp_via: smtp_via(state, m),
        delivery: m.sending.delivery.name(),
        smtp_server: m.sending.smtp_server.as_deref(),
        created: m.created,
        state: token_state,
        access_token_expires: status.as_ref().and_then(|s| s.access_token_expires),
        last_refresh: status.as_ref().and_then(|s| s.last_refresh),
        last_outcome: status.and_then(|s| s.last_outcome),
        credential_expires,
    }
}

/// Tenant, client id, client type and delegate of `m`: the first two for a mailbox with
/// its own app registration, the last for one that takes its token from another.
type AppColumns<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    &'static str,
    Option<&'a str>,
);

fn app_columns(m: &Mailbox) -> AppColumns<'_> {
    match &m.registration {
        Registration::App {
            tenant,
            client_id,
            credential,
            ..
        } => {
            let kind = if credential.is_confidential() {
                "confidential"
            } else {
                "public"
            };
            (Some(tenant.as_str()), Some(client_id.as_str()), kind, None)
        }
        Registration::TokenFrom { delegate } => (None, None, "token-from", Some(delegate.as_str())),
    }
}

/// How SMTP mail of `m` goes out; `auto:graph` once the relay switched it to Graph.
fn smtp_via(state: &State, m: &Mailbox) -> String {
    match m.sending.smtp_via {
        crate::submission::SmtpVia::Auto if state.switches().switched_at(&m.address).is_some() => {
            "auto:graph".to_owned()
        }
        via => via.to_string(),
    }
}

/// The text line of one mailbox, and a second one when its app has a credential that
/// expires.
fn print_row(r: &Listed<'_>, io: &mut Console<'_>) -> anyhow::Result<()> {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let source = match (r.token_from, r.tenant, r.client_id) {
        (Some(delegate), _, _) => format!("token-from={delegate}"),
        (None, tenant, client_id) => format!(
            "tenant={}  client_id={}  {}",
            tenant.unwrap_or_default(),
            client_id.unwrap_or_default(),
            r.client_type
        ),
    };
    let now = unix_now();
    let access = r
        .access_token_expires
        .map_or("-".into(), |t| format!("expires {}", when(t, now)));
    let last = match (r.last_refresh, &r.last_outcome) {
        (Some(t), Some(outcome)) => format!("{} ({outcome})", when(t, now)),
        _ => "-".into(),
    };
    // Only the queue is named: direct is the default.
    let delivery = match r.delivery {
        "direct" => String::new(),
        other => format!("  delivery={other}"),
    };
    let server = r
        .smtp_server
        .map_or(String::new(), |s| format!("  smtp-server={s}"));
    writeln!(
        io.out,
        "{}  {source}  password={}  token={}  state={}  smtp={}{server}{delivery}  access-token={access}  last-refresh={last}",
        r.address,
        yes_no(r.password_set),
        if r.app_only {
            "app-only"
        } else {
            yes_no(r.token_stored)
        },
        r.state,
        r.smtp_via,
    )?;
    if let Some(t) = r.credential_expires {
        print_credential_expiry(r.address, t, now, io)?;
    }
    Ok(())
}

/// `  the app's credential expires in 3 days`, a warning with the command to renew it
/// within [`CREDENTIAL_WARNING`].
fn print_credential_expiry(
    address: &str,
    t: u64,
    now: u64,
    io: &mut Console<'_>,
) -> anyhow::Result<()> {
    let warn = if t <= now + CREDENTIAL_WARNING {
        "WARNING: "
    } else {
        ""
    };
    let verb = if t >= now { "expires" } else { "expired" };
    let renew = if warn.is_empty() {
        String::new()
    } else {
        format!("; register a new one with `m365-relay mailbox credential {address}`")
    };
    writeln!(
        io.out,
        "  {warn}the app's credential {verb} {}{renew}",
        when(t, now)
    )?;
    Ok(())
}

/// `in 3 days` or `5 h ago`, from `now`.
fn when(t: u64, now: u64) -> String {
    if t >= now {
        format!("in {}", human_span(t - now))
    } else {
        format!("{} ago", human_span(now - t))
    }
}

/// `3 days`, `5 h`, `12 min`.
fn human_span(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        7200..172_800 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86400),
    }
}
