//! Speculative upstream connections: an IMAP or POP3 client's upstream connection is opened
//! while the client is still logging in, used by its login, and never left behind by a
//! client that leaves or fails to log in. Only for a returning client: each world starts
//! with one login from 127.0.0.1 (one upstream connection), so that its address is known.

use std::time::Duration;

use crate::harness::World;
use crate::support::line_client::LineClient;
use crate::util;

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "correct horse battery staple";

async fn world_with_alice() -> World {
    let world = World::started_with(ALICE, ALICE_PW).await;
    // Before anyone logs in: the fake's primary mailbox.
    world.imap.set_primary_mailbox(ALICE);
    // A first login makes the address a returning one.
    let mut c = imap_client(&world).await;
    c.send(&format!("p1 LOGIN {ALICE} \"{ALICE_PW}\"")).await;
    assert!(tagged(&mut c, "p1").await.starts_with("p1 OK "));
    c.send("p2 LOGOUT").await;
    tagged(&mut c, "p2").await;
    assert_eq!(
        world.imap.connections(),
        1,
        "a stranger's login connects at login"
    );
    world
}

/// Waits up to 5 s for `done`.
async fn eventually(what: &str, done: impl FnMut() -> bool) {
    util::eventually(what, Duration::from_secs(5), done).await;
}

/// An IMAP client, once `connected` says the relay has connected upstream for it.
async fn imap_client_connected(world: &World, connected: impl FnMut() -> bool) -> LineClient {
    let c = imap_client(world).await;
    eventually("the relay connects upstream", connected).await;
    c
}

async fn speculative_connection_dropped(world: &World) {
    eventually("the speculative connection is dropped", || {
        world.preconnects_in_flight() == 0
    })
    .await;
}

async fn imap_client(world: &World) -> LineClient {
    let addr = ([127, 0, 0, 1], world.port("imaps")).into();
    let mut c = LineClient::connect_tls(addr, world.pki.client_config(), "127.0.0.1").await;
    let greeting = c.read_line().await.expect("greeting");
    assert!(greeting.starts_with("* OK "), "{greeting}");
    c
}

/// Reads lines up to and including the one tagged `tag`; the last one.
async fn tagged(c: &mut LineClient, tag: &str) -> String {
    loop {
        let line = c.read_line().await.expect("server closed the connection");
        if line.starts_with(&format!("{tag} ")) {
            return line;
        }
    }
}

#[tokio::test]
async fn an_imap_login_uses_the_connection_opened_when_the_client_connected() {
    let world = world_with_alice().await;
    // Upstream was connected before the client sent anything.
    let mut c = imap_client_connected(&world, || world.imap.connections() == 2).await;
    c.send(&format!("a1 LOGIN {ALICE} \"{ALICE_PW}\"")).await;
    let ok = tagged(&mut c, "a1").await;
    assert!(ok.starts_with("a1 OK "), "{ok}");
    c.send("a2 SELECT INBOX").await;
    let ok = tagged(&mut c, "a2").await;
    assert!(ok.starts_with("a2 OK "), "{ok}");
    assert_eq!(world.imap.connections(), 2, "no second connection");
    assert_eq!(world.preconnects_in_flight(), 0, "it is a session now");
    c.send("a3 LOGOUT").await;
    tagged(&mut c, "a3").await;
    world.check_fakes();
}

#[tokio::test]
async fn a_pop3_login_uses_the_connection_opened_when_the_client_connected() {
    let world = world_with_alice().await;
    world.pop3.deliver(ALICE, b"Subject: one\r\n\r\nbody\r\n");
    let addr = ([127, 0, 0, 1], world.port("pop3s")).into();
    let mut c = LineClient::connect_tls(addr, world.pki.client_config(), "127.0.0.1").await;
    assert!(c.read_line().await.unwrap().starts_with("+OK"));
    eventually("the relay connects upstream", || {
        world.pop3.connections() == 1
    })
    .await;
    c.send(&format!("USER {ALICE}")).await;
    assert!(c.read_line().await.unwrap().starts_with("+OK"));
    c.send(&format!("PASS {ALICE_PW}")).await;
    let ok = c.read_line().await.unwrap();
    assert!(ok.starts_with("+OK"), "{ok}");
    c.send("STAT").await;
    let stat = c.read_line().await.unwrap();
    assert!(stat.starts_with("+OK 1 "), "{stat}");
    assert_eq!(world.pop3.connections(), 1, "no second connection");
    c.send("QUIT").await;
    assert!(c.read_line().await.unwrap().starts_with("+OK"));
    world.check_fakes();
}

#[tokio::test]
async fn a_client_that_leaves_without_logging_in_leaves_no_upstream_connection() {
    let world = world_with_alice().await;
    let mut c = imap_client_connected(&world, || {
        world.imap.connections() == 2 && world.preconnects_in_flight() == 1
    })
    .await;
    c.send("a1 LOGOUT").await;
    tagged(&mut c, "a1").await;
    drop(c);
    speculative_connection_dropped(&world).await;
    // And one that just disconnects.
    let c = imap_client_connected(&world, || world.imap.connections() == 3).await;
    drop(c);
    speculative_connection_dropped(&world).await;
    // And ten that leave at once, while their upstream connections are being made: each
    // is finished and closed politely (the server sees no reset or broken handshake).
    for _ in 0..10 {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], world.port("imap")));
        drop(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    eventually("every speculative connection is closed", || {
        world.imap.connections() == 13 && world.preconnects_in_flight() == 0
    })
    .await;
    world.check_fakes();
}

#[tokio::test]
async fn a_failed_login_drops_it_and_its_source_gets_no_more() {
    let world = world_with_alice().await;
    let mut c = imap_client_connected(&world, || world.preconnects_in_flight() == 1).await;
    c.send(&format!("a1 LOGIN {ALICE} wrong")).await;
    let no = tagged(&mut c, "a1").await;
    assert!(no.starts_with("a1 NO "), "{no}");
    speculative_connection_dropped(&world).await;
    // The same address, with a failed login on record: nothing opened before its login.
    let mut second = imap_client(&world).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(world.imap.connections(), 2);
    assert_eq!(world.preconnects_in_flight(), 0);
    // It still logs in (connecting at login).
    second
        .send(&format!("b1 LOGIN {ALICE} \"{ALICE_PW}\""))
        .await;
    let ok = tagged(&mut second, "b1").await;
    assert!(ok.starts_with("b1 OK "), "{ok}");
    assert_eq!(world.imap.connections(), 3);
    drop(c);
    world.check_fakes();
}

#[tokio::test]
async fn a_speculative_connection_the_server_closed_is_replaced_at_login() {
    let world = world_with_alice().await;
    // The server drops the connection opened when the client connects, as Exchange drops
    // one that stays unauthenticated too long.
    world.imap.close_after_greeting(1);
    let mut c = imap_client_connected(&world, || world.imap.connections() == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.send(&format!("a1 LOGIN {ALICE} \"{ALICE_PW}\"")).await;
    let ok = tagged(&mut c, "a1").await;
    assert!(ok.starts_with("a1 OK "), "{ok}");
    assert_eq!(world.imap.connections(), 3, "a fresh connection at login");
    c.send("a2 SELECT INBOX").await;
    let ok = tagged(&mut c, "a2").await;
    assert!(ok.starts_with("a2 OK "), "{ok}");
    world.check_fakes();
}
