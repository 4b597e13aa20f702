//! Degraded mode, as an operator and an orchestrator see it: a relay process on the
//! `postgres` backend whose database goes away stays ready (every replica would otherwise be
//! taken out of service at once) but says `degraded` in `/readyz` (the reason for anyone; the
//! server, since when and why only with the admin token), `/status` and the
//! `m365_relay_state_database_reachable` gauge; logins with the access token it holds keep
//! working; when the database is back, all of it says so again within a probe period.

use std::time::Duration;

use crate::support::fleet::{Fleet, eventually};

const ALICE: &str = "alice@contoso.com";
const PASSWORD: &str = "correct horse battery staple";

/// A probe every 5 s, a database call bounded by 2 s: well within this.
const NOTICE: Duration = Duration::from_secs(20);

fn reachable_series(fleet: &Fleet) -> String {
    format!(
        "m365_relay_state_database_reachable{{database=\"{}\"}}",
        fleet.database_server()
    )
}

/// `/readyz` without a token, as a probe asks: status and JSON.
async fn probe_readyz(fleet: &Fleet, i: usize) -> (u16, serde_json::Value) {
    let url = format!("http://127.0.0.1:{}/readyz", fleet.port(i, "admin"));
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .expect("readyz");
    let code = response.status().as_u16();
    (code, response.json().await.expect("readyz is JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_database_degrades_the_relay_without_taking_it_out_of_service() {
    let mut fleet = Fleet::new().await;
    fleet.add_mailbox(ALICE, PASSWORD);
    let relay = fleet.start_replicas(1);
    let series = reachable_series(&fleet);

    // Healthy: ready, not degraded, reachable 1; a first login fetches the access token.
    let (code, ready) = probe_readyz(&fleet, relay).await;
    assert_eq!((code, &ready["degraded"]), (200, &false.into()), "{ready}");
    assert!(
        fleet
            .imap_login(relay, ALICE, PASSWORD)
            .await
            .starts_with("a OK")
    );
    assert!(
        eventually(NOTICE, || async {
            fleet.metric(relay, &series).await == Some(1.0)
        })
        .await,
        "reachable gauge not 1: {}",
        fleet.admin_get(relay, "/metrics").await.1
    );

    tokio::task::block_in_place(|| fleet.pg.stop());
    let degraded = eventually(NOTICE, || async {
        probe_readyz(&fleet, relay).await.1["degraded"] == true
    })
    .await;
    assert!(degraded, "/readyz never said degraded:\n{}", fleet.logs());
    let (code, ready) = probe_readyz(&fleet, relay).await;
    assert_eq!(code, 200, "a degraded relay stays in service: {ready}");
    assert_eq!(ready["ready"], true, "{ready}");
    let anyone = ready.to_string();
    assert!(
        ready["degraded_reason"]
            .as_str()
            .is_some_and(|r| r.contains("database is unreachable")),
        "{anyone}"
    );
    assert!(
        !anyone.contains(&fleet.pg.port().to_string()) && !anyone.contains(fleet.pg.password()),
        "a probe learns nothing of the database: {anyone}"
    );
    // The operator sees where, since when and why; never the URL's password.
    let (_, operator) = fleet.admin_get(relay, "/readyz").await;
    assert!(operator.contains(&fleet.database_server()), "{operator}");
    assert!(!operator.contains(fleet.pg.password()), "{operator}");
    let (_, status) = fleet.admin_get(relay, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["database"]["reachable"], false, "{status}");
    assert!(status["database"]["unreachable_since"].is_u64(), "{status}");
    assert_eq!(fleet.metric(relay, &series).await, Some(0.0));
    let seconds = format!(
        "m365_relay_state_database_unreachable_seconds{{database=\"{}\"}}",
        fleet.database_server()
    );
    assert!(fleet.metric(relay, &seconds).await.is_some());

    // Degraded, it serves from what it holds: the registry and the valid access token.
    let login = fleet.imap_login(relay, ALICE, PASSWORD).await;
    assert!(login.starts_with("a OK"), "degraded login: {login}");
    let wrong = fleet.imap_login(relay, ALICE, "not the password").await;
    assert!(wrong.starts_with("a NO"), "{wrong}");
    let log = fleet.replica(relay).log_text();
    assert_eq!(
        log.matches("the state database is unreachable").count(),
        1,
        "the change is logged once:\n{log}"
    );

    tokio::task::block_in_place(|| fleet.pg.start_server());
    let back = eventually(NOTICE, || async {
        fleet.metric(relay, &series).await == Some(1.0)
    })
    .await;
    assert!(back, "the gauge never went back to 1:\n{}", fleet.logs());
    let (code, ready) = probe_readyz(&fleet, relay).await;
    assert_eq!((code, &ready["degraded"]), (200, &false.into()), "{ready}");
    assert!(ready.get("degraded_reason").is_none(), "{ready}");
    assert_eq!(fleet.metric(relay, &seconds).await, Some(0.0));
    let log = fleet.replica(relay).log_text();
    assert!(
        log.contains("the state database is reachable again"),
        "{log}"
    );
    assert!(
        !log.contains(fleet.pg.password()),
        "the log never holds the URL's password"
    );
    fleet.world.check_fakes();
}
