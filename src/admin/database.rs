//! The state database as the endpoint shows it (`postgres` backend only): reachable or
//! not, since when and why. An unreachable database makes the relay *degraded*, not
//! unready: it keeps serving logins from what it holds (registry, valid access tokens),
//! and every replica would fail its probe at once if `/readyz` failed on it.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::datetime::unix;
use crate::metrics::{DatabaseLabel, Metrics};
use crate::state::DatabaseHealth;

/// What `/readyz` says to anyone while the database is unreachable (no host, no cause).
pub const DEGRADED_REASON: &str =
    "the state database is unreachable; serving from what this relay holds";

/// The database in `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseView {
    /// `host:port/database` (never the URL).
    pub server: String,
    pub reachable: bool,
    /// Unix seconds: since when it is unreachable.
    pub unreachable_since: Option<u64>,
    /// Why the last call could not reach it (no secret).
    pub error: Option<String>,
}

impl DatabaseView {
    pub fn of(health: &DatabaseHealth) -> Self {
        Self {
            server: health.server.clone(),
            reachable: health.unreachable.is_none(),
            unreachable_since: health.unreachable.as_ref().map(|(since, _)| unix(*since)),
            error: health.unreachable.as_ref().map(|(_, why)| why.clone()),
        }
    }

    /// Seconds it has been unreachable (0 while reachable).
    pub fn unreachable_secs(&self, now: SystemTime) -> u64 {
        self.unreachable_since
            .map_or(0, |since| unix(now).saturating_sub(since))
    }
}

/// Sets the database gauges: reachable (1/0) and seconds unreachable.
pub fn export(view: &DatabaseView, metrics: &Metrics) {
    let label = DatabaseLabel {
        database: view.server.clone(),
    };
    metrics
        .state_database_reachable
        .get_or_create(&label)
        .set(i64::from(view.reachable));
    let secs = view.unreachable_secs(SystemTime::now());
    metrics
        .state_database_unreachable
        .get_or_create(&label)
        .set(i64::try_from(secs).unwrap_or(i64::MAX));
}

/// The `/readyz` fields for the database: `degraded` for anyone, with a reason that names
/// nothing; the server, since when and why for an operator.
pub fn readiness(view: Option<&DatabaseView>, operator: bool) -> serde_json::Value {
    let degraded = view.is_some_and(|v| !v.reachable);
    let mut body = serde_json::json!({ "degraded": degraded });
    if degraded {
        body["degraded_reason"] = DEGRADED_REASON.into();
    }
    if let (Some(view), true) = (view, operator) {
        body["database"] = serde_json::json!(view);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn health(unreachable: Option<(SystemTime, &str)>) -> DatabaseHealth {
        DatabaseHealth {
            server: "db.internal:5432/relay".into(),
            unreachable: unreachable.map(|(at, why)| (at, why.to_owned())),
        }
    }

    #[test]
    fn a_reachable_database_is_not_degraded() {
        let view = DatabaseView::of(&health(None));
        assert!(view.reachable);
        assert_eq!(view.unreachable_secs(SystemTime::now()), 0);
        let anyone = readiness(Some(&view), false);
        assert_eq!(anyone, serde_json::json!({ "degraded": false }));
        let operator = readiness(Some(&view), true);
        assert_eq!(operator["database"]["server"], "db.internal:5432/relay");
        assert_eq!(operator["database"]["reachable"], true);
        // The files backend has no database and is never degraded.
        assert_eq!(
            readiness(None, true),
            serde_json::json!({ "degraded": false })
        );
    }

    #[test]
    fn an_unreachable_database_degrades_and_only_an_operator_sees_where_and_why() {
        let since = SystemTime::now() - Duration::from_secs(42);
        let view = DatabaseView::of(&health(Some((since, "connection refused"))));
        assert!(!view.reachable);
        assert!((42..=43).contains(&view.unreachable_secs(SystemTime::now())));
        let anyone = readiness(Some(&view), false);
        assert_eq!(anyone["degraded"], true);
        assert_eq!(anyone["degraded_reason"], DEGRADED_REASON);
        let text = anyone.to_string();
        assert!(
            !text.contains("db.internal") && !text.contains("refused"),
            "{text}"
        );
        let operator = readiness(Some(&view), true);
        assert_eq!(operator["database"]["error"], "connection refused");
        assert_eq!(operator["database"]["unreachable_since"], unix(since));
    }

    #[test]
    fn the_gauges_say_reachable_and_for_how_long_not() {
        let m = Metrics::new();
        let since = SystemTime::now() - Duration::from_secs(7);
        let down = DatabaseView::of(&health(Some((since, "gone"))));
        export(&down, &m);
        let text = m.render();
        let label = "{database=\"db.internal:5432/relay\"}";
        assert!(
            text.contains(&format!("m365_relay_state_database_reachable{label} 0")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "m365_relay_state_database_unreachable_seconds{label} 7"
            )) || text.contains(&format!(
                "m365_relay_state_database_unreachable_seconds{label} 8"
            )),
            "{text}"
        );
        export(&DatabaseView::of(&health(None)), &m);
        let text = m.render();
        assert!(
            text.contains(&format!("m365_relay_state_database_reachable{label} 1")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "m365_relay_state_database_unreachable_seconds{label} 0"
            )),
            "{text}"
        );
    }
}
