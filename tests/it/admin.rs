//! The admin endpoint of a running relay: health, readiness, metrics that move when
//! sessions, logins and refreshes happen, and `m365-relay status`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::harness::World;
use crate::support::line_client::LineClient;

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "correct horse battery staple";

async fn get(world: &World, path: &str) -> (u16, String) {
    let url = format!("{}{path}", world.admin_url());
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .bearer_auth(world.admin_token())
        .send()
        .await
        .expect("admin endpoint");
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The value of one sample line of the exposition, e.g. `m365_relay_sessions_total{protocol="imap"}`.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

async fn smtp_login(world: &World, password: &str) -> String {
    let addr = ([127, 0, 0, 1], world.port("smtps")).into();
    let mut c = LineClient::connect_tls(addr, world.pki.client_config(), "127.0.0.1").await;
    c.read_smtp_reply().await;
    c.smtp("EHLO app").await;
    let plain = STANDARD.encode(format!("\0{ALICE}\0{password}"));
    let reply = c.smtp(&format!("AUTH PLAIN {plain}")).await;
    c.smtp("QUIT").await;
    reply
}

// Multi-threaded: the `m365-relay status` child process talks to this process's relay
// while the test thread waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_that_move() {
    let mut world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    world.start().await;

    assert_eq!(get(&world, "/healthz").await, (200, "ok\n".into()));
    let (code, ready) = get(&world, "/readyz").await;
    assert_eq!(code, 200, "{ready}");
    assert!(
        ready.contains("\"ready\":true") && ready.contains("smtps 127.0.0.1:"),
        "{ready}"
    );

    let (_, before) = get(&world, "/metrics").await;
    assert!(smtp_login(&world, ALICE_PW).await.starts_with("235 "));
    assert!(smtp_login(&world, "wrong").await.starts_with("535 "));
    // Sessions are counted when they close, a moment after the client hangs up.
    let mut after = String::new();
    for _ in 0..50 {
        let (code, text) = get(&world, "/metrics").await;
        assert_eq!(code, 200);
        after = text;
        if sample(&after, "m365_relay_sessions_open{protocol=\"smtp\"}") == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(
        moved("m365_relay_sessions_total{protocol=\"smtp\"}"),
        2.0,
        "{after}"
    );
    assert_eq!(
        moved("m365_relay_logins_total{protocol=\"smtp\",outcome=\"ok\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved("m365_relay_logins_total{protocol=\"smtp\",outcome=\"bad_credentials\"}"),
        1.0,
        "{after}"
    );
    assert_eq!(
        moved("m365_relay_upstream_auth_total{protocol=\"smtp\",outcome=\"accepted\"}"),
        1.0,
        "{after}"
    );
    assert!(
        moved("m365_relay_relayed_bytes_total{protocol=\"smtp\",direction=\"to_client\"}") > 0.0,
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "m365_relay_upstream_login_seconds_count{protocol=\"smtp\"}"
        ),
        1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "m365_relay_mailboxes{state=\"ok\"}"),
        1.0,
        "{after}"
    );
    let expiry = sample(
        &after,
        &format!("m365_relay_access_token_expiry_seconds{{mailbox=\"{ALICE}\"}}"),
    );
    assert!((3000.0..=3600.0).contains(&expiry), "{after}");
    // The refresher fetched the first token at start, before the first scrape.
    assert!(
        sample(&after, "m365_relay_token_refreshes_total{outcome=\"ok\"}") >= 1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "m365_relay_sessions_open{protocol=\"smtp\"}"),
        0.0,
        "{after}"
    );

    // `m365-relay status` against the same endpoint.
    let url = format!("http://127.0.0.1:{}", world.port("admin"));
    let table = world.admin(&["status", "--admin", &url], "");
    assert!(
        table.contains(ALICE) && table.contains(" ok ") && table.contains("expires in"),
        "{table}"
    );
    world.admin(&["health", "--admin", &url], "");
    assert!(
        !world
            .cli(&["health", "--admin", "http://127.0.0.1:1"], "")
            .status
            .success()
    );
    let json = world.admin(&["status", "--admin", &url, "--json"], "");
    assert!(
        json.contains("\"mailboxes\"") && json.contains("\"state\":\"ok\""),
        "{json}"
    );
}

#[tokio::test]
async fn readiness_can_require_every_mailbox_to_be_signed_in() {
    let mut world = World::new().await;
    let config = std::fs::read_to_string(&world.config_path).unwrap();
    let config = config.replace("[admin]\n", "[admin]\nready_requires_tokens = true\n");
    std::fs::write(&world.config_path, config).unwrap();
    world.register(ALICE);
    world.start().await;
    // The refresher finds no token for alice.
    let mut last = (0, String::new());
    for _ in 0..50 {
        last = get(&world, "/readyz").await;
        if last.0 == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(last.0, 503, "{}", last.1);
    assert!(
        last.1.contains("alice@contoso.com (no-token)"),
        "{}",
        last.1
    );
}
