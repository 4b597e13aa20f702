//! Running as a service: reload without dropping sessions (in-process, and SIGHUP on the
//! real binary), a broken config refused while the old one stays in force, and SIGTERM
//! letting open sessions finish within the grace period before exiting 0.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::harness::{RelayProcess, World};
use crate::support::line_client::LineClient;

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "correct horse battery staple";
const BOB: &str = "bob@contoso.com";
const BOB_PW: &str = "bob's local password";

async fn tls(world_port: u16, world: &World) -> LineClient {
    LineClient::connect_tls(
        ([127, 0, 0, 1], world_port).into(),
        world.pki.client_config(),
        "127.0.0.1",
    )
    .await
}

async fn until_tagged(c: &mut LineClient, tag: &str) -> String {
    loop {
        let line = c.read_line().await.expect("server closed the connection");
        if line.starts_with(&format!("{tag} ")) {
            return line;
        }
    }
}

/// An IMAP session logged in, INBOX selected.
async fn imap_session(world: &World, port: u16, user: &str, password: &str) -> LineClient {
    let mut c = tls(port, world).await;
    c.read_line().await.expect("greeting");
    c.send(&format!("a LOGIN {user} \"{password}\"")).await;
    let ok = until_tagged(&mut c, "a").await;
    assert!(ok.starts_with("a OK"), "{ok}");
    c.send("b SELECT INBOX").await;
    until_tagged(&mut c, "b").await;
    c
}

/// An SMTP session logged in.
async fn smtp_session(world: &World, port: u16) -> LineClient {
    let mut c = tls(port, world).await;
    c.read_smtp_reply().await;
    c.smtp("EHLO app").await;
    let plain = STANDARD.encode(format!("\0{ALICE}\0{ALICE_PW}"));
    assert!(
        c.smtp(&format!("AUTH PLAIN {plain}"))
            .await
            .starts_with("235 ")
    );
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The DER of the certificate a TLS server at `port` presents.
async fn presented_certificate(port: u16, world: &World) -> Vec<u8> {
    let tls = world.tls_connect(port).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn a_reload_takes_a_new_mailbox_certificate_and_address_without_dropping_sessions() {
    let mut world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    world.imap.set_primary_mailbox(ALICE);
    world.start().await;
    let old_cert = presented_certificate(world.port("imaps"), &world).await;

    let mut idle = imap_session(&world, world.port("imaps"), ALICE, ALICE_PW).await;
    idle.send("c IDLE").await;
    assert!(idle.read_line().await.unwrap().starts_with("+ "));
    let mut smtp = smtp_session(&world, world.port("smtps")).await;

    // The admin adds a mailbox, renews the certificate, and moves the POP3 TLS port.
    world.add_mailbox(BOB, BOB_PW);
    world
        .pki
        .issue(&["127.0.0.1", "localhost"])
        .write_to(&world.dir.path().join("certs"), "relay");
    let old_pop3s = world.port("pop3s");
    let new_pop3s = free_port();
    let config = std::fs::read_to_string(&world.config_path).unwrap();
    let moved = config.replacen(
        "[pop3]\nlisten_starttls = \"127.0.0.1:0\"\nlisten_tls = \"127.0.0.1:0\"",
        &format!(
            "[pop3]\nlisten_starttls = \"127.0.0.1:0\"\nlisten_tls = \"127.0.0.1:{new_pop3s}\""
        ),
        1,
    );
    assert_ne!(
        config, moved,
        "the harness config has the expected [pop3] section"
    );
    std::fs::write(&world.config_path, moved).unwrap();

    let summary = world.reload().await.expect("reload");
    assert!(summary.contains("re-bound pop3s"), "{summary}");

    // The sessions that were open still work.
    world
        .imap
        .deliver("INBOX", b"Subject: during reload\r\n\r\nx\r\n");
    assert!(idle.read_line().await.unwrap().ends_with("EXISTS"));
    idle.send("DONE").await;
    assert!(until_tagged(&mut idle, "c").await.starts_with("c OK"));
    assert!(
        smtp.smtp(&format!("MAIL FROM:<{ALICE}>"))
            .await
            .starts_with("250 ")
    );
    assert!(
        smtp.smtp("RCPT TO:<bob@example.com>")
            .await
            .starts_with("250 ")
    );
    assert!(smtp.smtp("DATA").await.starts_with("354 "));
    assert!(
        smtp.smtp("Subject: sent across a reload\r\n\r\nhi\r\n.")
            .await
            .starts_with("250 ")
    );
    assert_eq!(world.smtp.messages().len(), 1);

    // New connections see the new certificate, the new mailbox and the moved port.
    assert_ne!(
        presented_certificate(world.port("imaps"), &world).await,
        old_cert
    );
    imap_session(&world, world.port("imaps"), BOB, BOB_PW).await;
    assert_eq!(world.port("pop3s"), new_pop3s);
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", old_pop3s))
            .await
            .is_err(),
        "the old port is closed"
    );
    let mut pop = tls(new_pop3s, &world).await;
    assert!(pop.read_line().await.unwrap().starts_with("+OK"));
}

#[tokio::test]
async fn a_broken_config_is_refused_and_the_old_one_stays_in_force() {
    let world = World::started_with(ALICE, ALICE_PW).await;
    let good = std::fs::read_to_string(&world.config_path).unwrap();

    // Writes `config` and reloads; why the reload was refused.
    let refused = async |config: String| {
        std::fs::write(&world.config_path, config).unwrap();
        world.reload().await.unwrap_err()
    };
    let why = refused(format!("{good}\n[smtp]\nlisten_tls = \"not an address\"\n")).await;
    assert!(why.contains("relay.toml"), "{why}");

    let why = refused(good.replace("[pop3]\n", "[pop3]\nlisten_tlss = \"x\"\n")).await;
    assert!(why.contains("listen_tlss"), "{why}");

    let why = refused(good.replace("state_dir = \"state\"", "state_dir = \"elsewhere\"")).await;
    assert!(
        why.contains("`state_dir` changed: that needs a restart"),
        "{why}"
    );

    // Still serving with the old configuration.
    imap_session(&world, world.port("imaps"), ALICE, ALICE_PW).await;
}

#[tokio::test]
async fn sighup_reloads_the_real_binary() {
    let world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    let relay = RelayProcess::start(&world);
    relay.signal("HUP");
    relay.wait_for_log("reloaded", Duration::from_secs(10));
    // A broken config: refused, and the relay keeps serving.
    let config = std::fs::read_to_string(&world.config_path).unwrap();
    std::fs::write(&world.config_path, format!("{config}\nnonsense = 1\n")).unwrap();
    relay.signal("HUP");
    let line = relay.wait_for_log("reload refused", Duration::from_secs(10));
    assert!(line.contains("nonsense"), "{line}");
    imap_session(&world, relay.port("imaps"), ALICE, ALICE_PW).await;
    // `m365-relay reload` says the same through the admin endpoint.
    let url = format!("http://127.0.0.1:{}", relay.port("admin"));
    let out = world.cli(&["reload", "--admin", &url], "");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nonsense"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn sigterm_lets_an_open_session_finish_then_exits_0() {
    let world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    let mut relay = RelayProcess::start(&world);
    let mut session = imap_session(&world, relay.port("imaps"), ALICE, ALICE_PW).await;
    relay.signal("TERM");
    relay.wait_for_log("shutting down", Duration::from_secs(10));
    // No new connections...
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", relay.port("imaps")))
            .await
            .is_err()
    );
    // ...but the open session goes on until the client is done.
    session.send("d NOOP").await;
    assert!(until_tagged(&mut session, "d").await.starts_with("d OK"));
    session.send("e LOGOUT").await;
    until_tagged(&mut session, "e").await;
    drop(session);
    assert_eq!(relay.wait_exit(Duration::from_secs(10)), Some(0));
}

#[tokio::test]
async fn sigterm_closes_sessions_that_outlast_the_grace_period() {
    let world = World::new().await;
    let config = std::fs::read_to_string(&world.config_path).unwrap();
    std::fs::write(
        &world.config_path,
        config.replace("[limits]\n", "[limits]\nshutdown_grace_secs = 1\n"),
    )
    .unwrap();
    world.add_mailbox(ALICE, ALICE_PW);
    let mut relay = RelayProcess::start(&world);
    let mut session = imap_session(&world, relay.port("imaps"), ALICE, ALICE_PW).await;
    relay.signal("TERM");
    assert_eq!(relay.wait_exit(Duration::from_secs(10)), Some(0));
    session.expect_closed().await;
}

#[tokio::test]
async fn no_secret_reaches_the_log_even_at_trace_level() {
    let world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    let relay = RelayProcess::start_with_env(&world, &[("M365_RELAY_LOG", "trace")]);
    // Logins on all three protocols (SASL PLAIN, LOGIN with a literal, USER/PASS), one
    // with a wrong password.
    let plain = STANDARD.encode(format!("\0{ALICE}\0{ALICE_PW}"));
    let mut smtp = tls(relay.port("smtps"), &world).await;
    smtp.read_smtp_reply().await;
    smtp.smtp("EHLO app").await;
    assert!(
        smtp.smtp(&format!("AUTH PLAIN {plain}"))
            .await
            .starts_with("235 ")
    );
    smtp.smtp("QUIT").await;
    let mut imap = tls(relay.port("imaps"), &world).await;
    imap.read_line().await;
    imap.send(&format!(
        "a LOGIN {ALICE} {{{}+}}\r\n{ALICE_PW}",
        ALICE_PW.len()
    ))
    .await;
    assert!(until_tagged(&mut imap, "a").await.starts_with("a OK"));
    let mut pop = tls(relay.port("pop3s"), &world).await;
    pop.read_line().await;
    pop.send(&format!("USER {ALICE}")).await;
    pop.read_line().await;
    pop.send("PASS not the password").await;
    pop.read_line().await;
    drop((smtp, imap, pop));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let log: Vec<String> = relay.log.try_iter().collect();
    assert!(log.len() > 50, "trace logging is on: {} lines", log.len());
    let mut secrets = vec![ALICE_PW.to_owned(), plain, "not the password".to_owned()];
    secrets.extend(world.entra.issued_access_tokens());
    if let Some(rt) =
        world
            .entra
            .latest_refresh_token(crate::harness::TENANT, crate::harness::CLIENT_ID, ALICE)
    {
        secrets.push(rt);
    }
    for token in world.entra.issued_access_tokens() {
        secrets.push(crate::harness::xoauth2_b64(ALICE, &token));
    }
    for line in &log {
        for secret in &secrets {
            assert!(
                !line.contains(secret.as_str()),
                "a secret in the log: {line}"
            );
        }
    }
}

#[tokio::test]
async fn listeners_queue_a_burst_of_connections() {
    let mut world = World::new().await;
    world.start().await;
    let port = world.port("imaps");
    let out = std::process::Command::new("ss")
        .args(["-tlnH", &format!("sport = :{port}")])
        .output()
        .expect("ss");
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    // `State Recv-Q Send-Q Local Peer`: for a listener, Send-Q is its backlog.
    let backlog: u32 = line
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        backlog,
        m365_relay::server::LISTEN_BACKLOG.min(somaxconn),
        "{line}"
    );
    assert!(backlog > 128, "more than std's default: {line}");
}
