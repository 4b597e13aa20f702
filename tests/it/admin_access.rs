//! Who may call the admin endpoint (issue 12, item 3), driven with curl and raw sockets as an
//! attacker would: cross-site POSTs, DNS-rebinding `Host` names, calls without the bearer
//! token, a slowloris client and a connection flood. And what the operator's tools do:
//! the token is created `0600` next to the state key, rotates by rewriting it, and
//! `m365-relay status` / `reload` send it without being told.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{World, curl};

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "correct horse battery staple";

/// What curl got: the status code (0 when no HTTP answer came) and the answer's header
/// section and body.
struct Answer {
    code: u16,
    text: String,
}

/// `curl -i` against the admin endpoint's `path`, with `args` before the URL.
async fn call(world: &World, path: &str, args: &[&str]) -> Answer {
    let url = format!("{}{path}", world.admin_url());
    let mut all = vec!["--include", "--write-out", "\n%{http_code}"];
    all.extend_from_slice(args);
    all.push(&url);
    let out = curl(world, &all).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (text, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Answer {
        code: code.trim().parse().unwrap_or(0),
        text: text.to_owned(),
    }
}

/// `POST /reload` with `headers` and a small body.
async fn reload(world: &World, headers: &[&str]) -> Answer {
    let mut args = vec!["-X", "POST", "--data", "x"];
    for header in headers {
        args.extend(["-H", header]);
    }
    call(world, "/reload", &args).await
}

fn bearer(world: &World) -> String {
    format!("Authorization: Bearer {}", world.admin_token())
}

async fn started() -> World {
    World::started_with(ALICE, ALICE_PW).await
}

#[tokio::test]
async fn a_cross_site_reload_is_refused() {
    let world = started().await;
    // What a page on evil.example can make a browser send: a simple text/plain POST.
    let text = ["Content-Type: text/plain"];
    let forged = ["Host: evil.example", "Origin: http://evil.example", text[0]];
    let answer = reload(&world, &forged).await;
    assert!(matches!(answer.code, 403 | 421), "{}", answer.text);
    // Even with a good Host, a text/plain POST with no token gets nowhere...
    assert_eq!(reload(&world, &text).await.code, 401);
    // ...nor with the token but a content type a form could send.
    let token = bearer(&world);
    let answer = reload(&world, &[&token, text[0]]).await;
    assert_eq!(answer.code, 403, "{}", answer.text);
    // The token and a header no cross-site page can send: reloaded.
    let answer = reload(&world, &[&token, "X-M365-Relay: 1"]).await;
    assert_eq!(answer.code, 200, "{}", answer.text);
    assert!(answer.text.contains("re-read"), "{}", answer.text);
    let answer = reload(&world, &[&token, "Content-Type: application/json"]).await;
    assert_eq!(answer.code, 200, "{}", answer.text);
}

#[tokio::test]
async fn status_and_metrics_need_the_token() {
    let world = started().await;
    for path in ["/status", "/metrics", "/nonexistent"] {
        let answer = call(&world, path, &[]).await;
        assert_eq!(answer.code, 401, "{path}: {}", answer.text);
        assert!(
            answer.text.contains("www-authenticate: Bearer"),
            "{path}: {}",
            answer.text
        );
        assert!(!answer.text.contains(ALICE), "{}", answer.text);
        let wrong = "Authorization: Bearer 0123456789abcdef0123456789abcdef0123456789a";
        let answer = call(&world, path, &["-H", wrong]).await;
        assert_eq!(answer.code, 401, "{path}: {}", answer.text);
    }
    let token = bearer(&world);
    let answer = call(&world, "/status", &["-H", &token]).await;
    assert_eq!(answer.code, 200, "{}", answer.text);
    assert!(answer.text.contains(ALICE), "{}", answer.text);
    let answer = call(&world, "/metrics", &["-H", &token]).await;
    assert_eq!(answer.code, 200, "{}", answer.text);
    assert!(
        answer.text.contains("m365_relay_sessions_open"),
        "{}",
        answer.text
    );
    // The probes answer without the token, but name no mailbox.
    assert_eq!(call(&world, "/healthz", &[]).await.code, 200);
    let answer = call(&world, "/readyz", &[]).await;
    assert_eq!(answer.code, 200, "{}", answer.text);
    assert!(
        !answer.text.contains("mailboxes_needing_admin\""),
        "{}",
        answer.text
    );
}

#[tokio::test]
async fn a_rebinding_host_is_refused() {
    let world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    let config = std::fs::read_to_string(&world.config_path).unwrap();
    let config = config.replace(
        "[admin]\n",
        "[admin]\nallowed_hosts = [\"relay.internal\"]\n",
    );
    std::fs::write(&world.config_path, config).unwrap();
    let mut world = world;
    world.start().await;
    let token = bearer(&world);
    let port = world.port("admin");
    // A DNS-rebinding page's requests carry its own name, with or without port.
    for host in [
        "attacker.example".to_owned(),
        format!("attacker.example:{port}"),
        format!("127.0.0.1.attacker.example:{port}"),
    ] {
        for path in ["/status", "/metrics", "/healthz"] {
            let host = format!("Host: {host}");
            let answer = call(&world, path, &["-H", &host, "-H", &token]).await;
            assert_eq!(answer.code, 421, "{host} {path}: {}", answer.text);
            assert!(!answer.text.contains(ALICE), "{}", answer.text);
        }
    }
    // No Host at all (HTTP/1.0 lets curl leave it out).
    let answer = call(&world, "/status", &["-0", "-H", "Host:", "-H", &token]).await;
    assert_eq!(answer.code, 421, "{}", answer.text);
    // Loopback names and the configured name pass.
    for host in [
        format!("localhost:{port}"),
        "127.0.0.1".to_owned(),
        format!("[::1]:{port}"),
        "relay.internal:9587".to_owned(),
        "RELAY.INTERNAL".to_owned(),
    ] {
        let host = format!("Host: {host}");
        let answer = call(&world, "/status", &["-H", &host, "-H", &token]).await;
        assert_eq!(answer.code, 200, "{host}: {}", answer.text);
    }
}

#[tokio::test]
async fn the_token_is_private_next_to_the_state_key_and_rotates() {
    let world = started().await;
    let file = world.dir.path().join("certs/admin.token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(world.dir.path().join("certs/state.key").is_file());
    let old = bearer(&world);
    assert_eq!(call(&world, "/status", &["-H", &old]).await.code, 200);
    // Rotation: a new token in the file works at once; the old one no longer does.
    let new = "rotated-0123456789abcdef0123456789abcdef";
    std::fs::write(&file, format!("{new}\n")).unwrap();
    assert_eq!(call(&world, "/status", &["-H", &old]).await.code, 401);
    let header = format!("Authorization: Bearer {new}");
    assert_eq!(call(&world, "/status", &["-H", &header]).await.code, 200);
    // A token file others may read locks everyone out (fail closed).
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(call(&world, "/status", &["-H", &header]).await.code, 401);
    // The CLI refuses it too, with the fix.
    let out = world.cli(&["status"], "");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(!stderr.contains(new), "{stderr}");
}

// Multi-threaded: the `m365-relay` child process talks to this process's relay while the
// test thread waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_reload_find_the_token_themselves() {
    let world = started().await;
    let url = world.admin_url();
    let table = world.admin(&["status", "--admin", &url], "");
    assert!(table.contains(ALICE), "{table}");
    let summary = world.admin(&["reload", "--admin", &url], "");
    assert!(summary.contains("re-read"), "{summary}");
    world.admin(&["health", "--admin", &url], "");
    // M365_RELAY_ADMIN_TOKEN wins over the file, as in the relay.
    let with_env = |token: &str| {
        assert_cmd::Command::cargo_bin("m365-relay")
            .unwrap()
            .env("M365_RELAY_ADMIN_TOKEN", token)
            .arg("--config")
            .arg(&world.config_path)
            .args(["status", "--admin", &url])
            .output()
            .unwrap()
    };
    let wrong = with_env("0123456789abcdef0123456789abcdef0123456789a");
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("bearer token"), "{stderr}");
    assert!(with_env(&world.admin_token()).status.success());
}

/// Sends a request's header section one field every 300 ms, for `for_how_long`; returns how
/// long the relay let it go on before closing (or `None` if it never did).
async fn dribble(world: &World, for_how_long: Duration) -> Option<Duration> {
    let mut tcp = TcpStream::connect(("127.0.0.1", world.port("admin")))
        .await
        .unwrap();
    let start = Instant::now();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    while start.elapsed() < for_how_long {
        if tcp.write_all(b"X-Slow: 1\r\n").await.is_err() {
            return Some(start.elapsed());
        }
        let read = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await;
        // End of stream or a reset: the relay closed it. (A 408 before closing is read and
        // the next read sees the end.)
        if let Ok(Ok(0) | Err(_)) = read {
            return Some(start.elapsed());
        }
    }
    None
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off() {
    // The default header-read timeout: 10 s.
    let world = started().await;
    let cut = dribble(&world, Duration::from_secs(20)).await;
    let cut = cut.expect("the relay never closed a connection that dribbles its headers");
    assert!(cut >= Duration::from_secs(9), "{cut:?}");
    assert_eq!(call(&world, "/healthz", &[]).await.code, 200);
}

#[tokio::test]
async fn admin_connections_are_capped() {
    // The default cap: 16.
    let world = started().await;
    let port = world.port("admin");
    let mut idle = Vec::new();
    for _ in 0..16 {
        idle.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    // The 17th gets 503 at once instead of waiting.
    let answer = call(&world, "/healthz", &[]).await;
    assert_eq!(answer.code, 503, "{}", answer.text);
    // A slot comes back when a connection closes.
    idle.pop();
    let mut code = 0;
    for _ in 0..50 {
        code = call(&world, "/healthz", &[]).await.code;
        if code == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(code, 200);
}
