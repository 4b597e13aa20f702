//! Shared upstream SMTP connections, with real clients (Python's smtplib) against the fake
//! Exchange Online, which refuses messages on a 4th concurrent connection of one mailbox with
//! `432 4.3.2` as Exchange does (PROTOCOL.md A12): parallel sessions share at most 3
//! connections, a later session reuses one without logging in again, a connection the server
//! closed is replaced, idle ones are closed, a transaction that finds all busy gets the
//! relay's own temporary reply, and a mailbox with its own SMTP server sends there.

use std::time::{Duration, Instant};

use crate::harness::{World, python};
use m365_relay::submission::SmtpVia;
use m365_relay::submission::pool::SmtpSend;
use m365_relay::submission::route::Route;

use crate::support::fake_smtp::FakeSmtp;

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "correct horse battery staple";
const BOB: &str = "bob@fabrikam.com";

/// `n` smtplib clients log in, wait for each other, then each send one message; one line
/// per client: `sent`, `refused CODE TEXT` or `error ...`.
const PARALLEL_SEND: &str = r#"
import smtplib, ssl, sys, threading
port, cafile, user, password, to, n = sys.argv[1:7]
n = int(n)
ctx = ssl.create_default_context(cafile=cafile)
barrier = threading.Barrier(n)
results = [None] * n
def client(i):
    try:
        with smtplib.SMTP("127.0.0.1", int(port), timeout=60) as s:
            s.starttls(context=ctx)
            s.login(user, password)
            barrier.wait()
            msg = f"From: {user}\r\nTo: {to}\r\nSubject: parallel {i}\r\n\r\nbody {i}\r\n"
            s.sendmail(user, [to], msg.encode())
            results[i] = "sent"
    except smtplib.SMTPRecipientsRefused as e:
        results[i] = f"refused {e.recipients}"
    except smtplib.SMTPResponseException as e:
        results[i] = f"refused {e.smtp_code} {e.smtp_error.decode()}"
    except Exception as e:
        results[i] = f"error {type(e).__name__} {e}"
threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
for r in results: print(r)
"#;

/// Three sessions open a transaction each (MAIL FROM) and keep it moving with a BDAT chunk
/// every 1.5 s (a slow message, within the hold limit); meanwhile a 4th session's MAIL FROM
/// is timed; then the three give up (RSET) and the 4th sends.
const HOLD_THREE: &str = r#"
import smtplib, ssl, sys, threading, time
port, cafile, user, password, to = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=cafile)
def session():
    s = smtplib.SMTP("127.0.0.1", int(port), timeout=60)
    s.starttls(context=ctx)
    s.login(user, password)
    return s
def chunk(s, data):
    s.send(b"BDAT %d\r\n" % len(data) + data)
    return s.getreply()[0]
held = []
for i in range(3):
    s = session()
    code, _ = s.mail(user)
    s.rcpt(to)
    print("held", code)
    held.append(s)
fourth = session()
result = []
def fourth_mail():
    started = time.monotonic()
    code, text = fourth.mail(user)
    result.append(f"fourth {code} {text.decode()} {round(time.monotonic() - started, 1)}")
waiting = threading.Thread(target=fourth_mail)
waiting.start()
head = f"From: {user}\r\n\r\n".encode()
chunks = [chunk(s, head) for s in held]
for k in range(4):
    time.sleep(1.5)
    chunks += [chunk(s, b"line %d\r\n" % k) for s in held]
waiting.join()
print(result[0])
assert chunks == [250] * 15, chunks
for s in held:
    s.rset()
    s.quit()
msg = f"From: {user}\r\nTo: {to}\r\nSubject: after\r\n\r\nafter\r\n"
fourth.rset()
fourth.sendmail(user, [to], msg.encode())
print("fourth sent")
fourth.quit()
"#;

async fn parallel_send(world: &World, n: usize) -> Vec<String> {
    let args = [
        world.smtp_port().to_string(),
        crate::harness::path_str(&world.ca_path),
        ALICE.into(),
        ALICE_PW.into(),
        BOB.into(),
        n.to_string(),
    ];
    let out = python(PARALLEL_SEND, &args).await;
    out.lines().map(str::to_owned).collect()
}

async fn send_one(world: &World) -> String {
    parallel_send(world, 1).await.concat()
}

/// Waits up to 10 s for `done`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn six_parallel_clients_share_three_connections_and_never_see_432() {
    let world =
        World::started_after(ALICE, ALICE_PW, |w| w.smtp.limit_connections_per_user(3)).await;
    let results = parallel_send(&world, 6).await;
    assert_eq!(results, vec!["sent"; 6], "{results:?}");
    assert_eq!(world.smtp.messages().len(), 6);
    assert!(
        world.smtp.peak_connections(ALICE) <= 3,
        "peak {}",
        world.smtp.peak_connections(ALICE)
    );
    assert_eq!(world.smtp.limit_refusals(), 0);
    world.check_fakes();
}

#[tokio::test]
async fn a_second_session_reuses_the_connection_without_logging_in_again() {
    let world = World::started_with(ALICE, ALICE_PW).await;
    assert_eq!(send_one(&world).await, "sent");
    assert_eq!(send_one(&world).await, "sent");
    assert_eq!(world.smtp.messages().len(), 2);
    assert_eq!(world.smtp.connections(), 1, "one TLS connection upstream");
    assert_eq!(world.smtp.auth_attempts().len(), 1, "one XOAUTH2 login");
    let commands: Vec<String> = world.smtp.commands().into_iter().map(|c| c.line).collect();
    assert!(!commands.iter().any(|c| c == "QUIT"), "{commands:?}");
    world.check_fakes();
}

#[tokio::test]
async fn a_connection_the_server_closed_is_replaced() {
    let world = World::started_with(ALICE, ALICE_PW).await;
    assert_eq!(send_one(&world).await, "sent");
    assert_eq!(
        world.smtp.open_connections(ALICE),
        1,
        "kept for the next session"
    );
    world.smtp.close_idle_connections();
    eventually("the fake closed it", || {
        world.smtp.open_connections(ALICE) == 0
    })
    .await;
    assert_eq!(send_one(&world).await, "sent");
    assert_eq!(world.smtp.messages().len(), 2);
    assert_eq!(
        world.smtp.connections(),
        2,
        "a new connection replaced the closed one"
    );
    world.check_fakes();
}

#[tokio::test]
async fn an_idle_connection_is_closed_with_quit_after_the_idle_limit() {
    let world = World::started_after(ALICE, ALICE_PW, |w| {
        w.limits("smtp_connection_idle_secs = 1")
    })
    .await;
    assert_eq!(send_one(&world).await, "sent");
    assert_eq!(world.smtp.open_connections(ALICE), 1, "kept while idle");
    let kept_since = Instant::now();
    eventually("the idle connection closed", || {
        world.smtp.open_connections(ALICE) == 0
    })
    .await;
    assert!(kept_since.elapsed() >= Duration::from_millis(500));
    let commands: Vec<String> = world.smtp.commands().into_iter().map(|c| c.line).collect();
    assert_eq!(
        commands.last().map(String::as_str),
        Some("QUIT"),
        "{commands:?}"
    );
    world.check_fakes();
}

#[tokio::test]
async fn a_transaction_that_finds_all_connections_busy_waits_then_gets_a_temporary_reply() {
    // The test config's limits.upstream_timeout_secs is 5.
    let world =
        World::started_after(ALICE, ALICE_PW, |w| w.smtp.limit_connections_per_user(3)).await;
    let args = [
        world.smtp_port().to_string(),
        crate::harness::path_str(&world.ca_path),
        ALICE.into(),
        ALICE_PW.into(),
        BOB.into(),
    ];
    let out = python(HOLD_THREE, &args).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..3], ["held 250"; 3], "{out}");
    let fourth: Vec<&str> = lines[3].splitn(4, ' ').collect();
    assert_eq!(&fourth[..3], ["fourth", "451", "4.4.5"], "{out}");
    let waited: f64 = lines[3]
        .rsplit(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    assert!(waited >= 4.5, "waited {waited} s: {out}");
    assert_eq!(lines[4], "fourth sent", "{out}");
    assert!(world.smtp.peak_connections(ALICE) <= 3);
    assert_eq!(world.smtp.limit_refusals(), 0);
    assert_eq!(world.smtp.messages().len(), 1);
    world.check_fakes();
}

#[tokio::test]
async fn a_mailbox_with_its_own_smtp_server_sends_there() {
    let mut world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    let hve = FakeSmtp::start(&world.pki, world.entra.clone()).await;
    let server = format!("127.0.0.1:{}", hve.addr().port());
    let shown = world.admin(&["mailbox", "sending", ALICE, "--smtp-server", &server], "");
    assert!(shown.contains(&format!("smtp server: {server}")), "{shown}");
    let listed = world.admin(&["mailbox", "list"], "");
    assert!(
        listed.contains(&format!("smtp-server={server}")),
        "{listed}"
    );
    world.start().await;
    assert_eq!(send_one(&world).await, "sent");
    assert_eq!(
        hve.messages().len(),
        1,
        "sent through the mailbox's own server"
    );
    assert_eq!(hve.messages()[0].authenticated_as, ALICE);
    assert_eq!(world.smtp.messages().len(), 0);
    assert_eq!(world.smtp.connections(), 0);
    let shown = world.admin(
        &["mailbox", "sending", ALICE, "--smtp-server", "default"],
        "",
    );
    assert!(shown.contains("smtp server: default"), "{shown}");
    hve.check();
    world.check_fakes();
}

#[tokio::test]
async fn an_own_smtp_server_is_validated_like_the_relays() {
    let world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    for bad in [
        "smtp.hve.mx.microsoft",
        "smtp.hve.mx.microsoft:0",
        "bad host:587",
        ":587",
    ] {
        let out = world.cli(&["mailbox", "sending", ALICE, "--smtp-server", bad], "");
        assert!(!out.status.success(), "{bad} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--smtp-server"), "{stderr}");
    }
    // Another Microsoft cloud's server, for a mailbox of the worldwide cloud.
    let out = world.cli(
        &[
            "mailbox",
            "sending",
            ALICE,
            "--smtp-server",
            "smtp.office365.us:587",
        ],
        "",
    );
    assert!(!out.status.success());
    let shown = world.admin(
        &[
            "mailbox",
            "sending",
            ALICE,
            "--smtp-server",
            "smtp.hve.mx.microsoft:587",
        ],
        "",
    );
    assert!(
        shown.contains("smtp server: smtp.hve.mx.microsoft:587"),
        "{shown}"
    );
}

/// The queue's call: a whole message on a pooled connection, and its verdict.
#[tokio::test]
async fn send_message_reports_each_verdict_and_reuses_the_connection() {
    let world = World::started_with(ALICE, ALICE_PW).await;
    let services = world.services();
    let registry = services.registry.current_registry();
    let mailbox = registry.get_arc(ALICE).expect("registered").clone();
    let pool = &services.submissions.pool;
    let message = b"From: alice@contoso.com\r\nSubject: queued\r\n\r\n.leading dot\r\n..two\r\nend";
    let rcpts = [BOB.to_owned()];
    let sent = pool
        .send_message(&mailbox, ALICE, &[], &rcpts, message)
        .await;
    let SmtpSend::Accepted { reply, refused } = sent else {
        panic!("not accepted: {sent:?}");
    };
    assert!(reply.starts_with("250 2.0.0 OK"), "{reply}");
    assert!(refused.is_empty());
    let received = &world.smtp.messages()[0];
    assert_eq!(received.rcpt_to, [BOB]);
    let mut expected = message.to_vec();
    expected.extend_from_slice(b"\r\n");
    assert_eq!(
        received.data, expected,
        "dot-stuffed on the wire, unstuffed by the server"
    );

    world
        .smtp
        .reject_messages_with("554 5.2.252 SendAsDenied; alice@contoso.com not allowed");
    let sent = pool
        .send_message(&mailbox, ALICE, &[], &rcpts, message)
        .await;
    assert!(
        matches!(&sent, SmtpSend::Permanent { reply } if reply.starts_with("554 5.2.252")),
        "{sent:?}"
    );
    world
        .smtp
        .reject_messages_with("451 4.7.500 Server busy. Please try again later");
    let sent = pool
        .send_message(&mailbox, ALICE, &[], &rcpts, message)
        .await;
    assert!(
        matches!(&sent, SmtpSend::Temporary { reply } if reply.starts_with("451 4.7.500")),
        "{sent:?}"
    );

    let stats = pool.stats();
    assert_eq!((stats.dials, stats.reuses), (1, 2), "{stats:?}");
    assert_eq!(stats.open.len(), 1);
    assert_eq!(world.smtp.auth_attempts().len(), 1);

    // SMTP AUTH switched off: the queue waits, and an `auto` mailbox goes to Graph.
    world.smtp.set_smtp_auth_disabled(true);
    world.smtp.close_idle_connections();
    eventually("the fake closed it", || {
        world.smtp.open_connections(ALICE) == 0
    })
    .await;
    let sent = pool
        .send_message(&mailbox, ALICE, &[], &rcpts, message)
        .await;
    assert!(
        matches!(&sent, SmtpSend::Temporary { reply } if reply.contains("5.7.139")),
        "{sent:?}"
    );
    let route = services.submissions.routes.route(ALICE, SmtpVia::Auto);
    assert_eq!(route, Route::Graph);
    world.check_fakes();
}

/// A session opens a transaction (MAIL FROM) and then only sends NOOP, each answered by
/// the relay; prints each reply code with the seconds since MAIL FROM until one is not 250
/// (or 12 s pass), then whether the connection was closed.
const HOLD_WITH_NOOPS: &str = r#"
import smtplib, ssl, sys, time
port, cafile, user, password = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=cafile)
s = smtplib.SMTP("127.0.0.1", int(port), timeout=60)
s.starttls(context=ctx)
s.login(user, password)
code, _ = s.mail(user)
print("mail", code)
started = time.monotonic()
while time.monotonic() - started < 12:
    time.sleep(1)
    try:
        code, text = s.noop()
    except smtplib.SMTPServerDisconnected:
        print("closed", round(time.monotonic() - started, 1))
        break
    if code != 250:
        print("noop", code, text.decode(), round(time.monotonic() - started, 1))
        try:
            s.noop()
        except smtplib.SMTPServerDisconnected:
            print("closed")
        break
else:
    print("still held")
"#;

/// NOOPs after MAIL FROM do not hold a shared connection past `limits.upstream_timeout_secs`
/// (5 s in the tests): the session is closed with `421 4.4.2` and the connection, reset,
/// serves the next session.
#[tokio::test]
async fn a_session_holding_a_connection_with_noops_is_closed_after_the_hold_limit() {
    let world = World::started_with(ALICE, ALICE_PW).await;
    let args = [
        world.smtp_port().to_string(),
        crate::harness::path_str(&world.ca_path),
        ALICE.into(),
        ALICE_PW.into(),
    ];
    let out = python(HOLD_WITH_NOOPS, &args).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"mail 250"), "{out}");
    let noop = lines.get(1).copied().unwrap_or_default();
    assert!(
        noop.starts_with("noop 421 4.4.2") && noop.contains("transaction took too long"),
        "{out}"
    );
    let after: f64 = noop
        .rsplit(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    assert!((4.0..9.0).contains(&after), "closed after {after} s: {out}");
    assert_eq!(lines.get(2), Some(&"closed"), "{out}");
    eventually("the connection was reset and kept", || {
        world.smtp.commands().iter().any(|c| c.line == "RSET")
    })
    .await;
    assert_eq!(send_one(&world).await, "sent");
    assert_eq!(
        world.smtp.connections(),
        1,
        "the held connection was reused"
    );
    world.check_fakes();
}

/// A BDAT message whose first chunk Exchange refuses, ended with `BDAT 0 LAST`, then RSET;
/// with that session still open, a second session sends a message.
const REFUSED_CHUNK_THEN_ANOTHER: &str = r#"
import smtplib, ssl, sys
port, cafile, user, password, to = sys.argv[1:6]
ctx = ssl.create_default_context(cafile=cafile)
def session():
    s = smtplib.SMTP("127.0.0.1", int(port), timeout=60)
    s.starttls(context=ctx)
    s.login(user, password)
    return s
first = session()
first.mail(user)
first.rcpt(to)
head = f"From: {user}\r\n\r\n".encode()
first.send(b"BDAT %d\r\n" % len(head) + head)
print("chunk", first.getreply()[0])
first.send(b"BDAT 0 LAST\r\n")
print("last", first.getreply()[0])
print("rset", first.rset()[0])
second = session()
msg = f"From: {user}\r\nTo: {to}\r\nSubject: second\r\n\r\nsecond\r\n"
second.sendmail(user, [to], msg.encode())
print("second sent")
second.quit()
first.quit()
"#;

/// A transaction ended by a refused chunk gives its connection back: the next session
/// reuses it instead of dialling another.
#[tokio::test]
async fn a_bdat_message_refused_upstream_gives_its_connection_back() {
    let world = World::started_with(ALICE, ALICE_PW).await;
    world
        .smtp
        .refuse_chunks_with("452 4.3.1 Insufficient system resources");
    let args = [
        world.smtp_port().to_string(),
        crate::harness::path_str(&world.ca_path),
        ALICE.into(),
        ALICE_PW.into(),
        BOB.into(),
    ];
    let out = python(REFUSED_CHUNK_THEN_ANOTHER, &args).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["chunk 452", "last 452", "rset 250", "second sent"],
        "{out}"
    );
    assert_eq!(world.smtp.messages().len(), 1);
    assert_eq!(world.smtp.connections(), 1, "the second session reused it");
    world.check_fakes();
}

/// An upstream that stops reading in the middle of a message: the write gives up after
/// `limits.upstream_timeout_secs` (5 s in the tests), the queue hears a temporary failure,
/// and the connection is closed, never reused.
#[tokio::test]
async fn a_write_the_upstream_does_not_read_times_out_and_the_connection_is_dropped() {
    let world = World::started_with(ALICE, ALICE_PW).await;
    let services = world.services();
    let registry = services.registry.current_registry();
    let mailbox = registry.get_arc(ALICE).expect("registered").clone();
    let pool = &services.submissions.pool;
    world.smtp.stall_in_data(true);
    // Far more than the loopback socket buffers hold.
    let mut message = b"From: alice@contoso.com\r\nSubject: big\r\n\r\n".to_vec();
    message.extend(
        b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n".repeat(512 * 1024),
    );
    let rcpts = [BOB.to_owned()];
    let started = Instant::now();
    let sending = pool.send_message(&mailbox, ALICE, &[], &rcpts, &message);
    let sent = tokio::time::timeout(Duration::from_secs(30), sending)
        .await
        .expect("the write to a stalled upstream gave up");
    assert!(
        matches!(&sent, SmtpSend::Temporary { reply } if reply.contains("not read for 5 s")),
        "{sent:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    world.smtp.stall_in_data(false);
    let small = b"From: alice@contoso.com\r\nSubject: small\r\n\r\nsmall";
    let sent = pool.send_message(&mailbox, ALICE, &[], &rcpts, small).await;
    assert!(matches!(sent, SmtpSend::Accepted { .. }), "{sent:?}");
    let stats = pool.stats();
    assert_eq!((stats.dials, stats.reuses), (2, 0), "{stats:?}");
    assert_eq!(world.smtp.connections(), 2);
    world.check_fakes();
}

/// A session holds a transaction (MAIL FROM) past the connections' maximum age; a second
/// session then logs in.
const LOGIN_WHILE_AN_OLD_ONE_IS_BUSY: &str = r#"
import smtplib, ssl, sys, time
port, cafile, user, password = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=cafile)
def session():
    s = smtplib.SMTP("127.0.0.1", int(port), timeout=60)
    s.starttls(context=ctx)
    s.login(user, password)
    return s
first = session()
print("mail", first.mail(user)[0])
time.sleep(2.5)
second = session()
print("second logged in")
first.rset()
second.quit()
first.quit()
"#;

/// Connections past `limits.smtp_connection_max_age_secs` are not reused but closed with
/// QUIT, and a busy one that old no longer proves a login: the mailbox logs in afresh.
#[tokio::test]
async fn connections_past_their_maximum_age_are_replaced_and_prove_no_login() {
    let world = World::started_after(ALICE, ALICE_PW, |w| {
        w.limits("smtp_connection_max_age_secs = 2")
    })
    .await;
    assert_eq!(send_one(&world).await, "sent");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(send_one(&world).await, "sent");
    assert_eq!(
        world.smtp.connections(),
        2,
        "the old connection was replaced"
    );
    assert_eq!(world.smtp.auth_attempts().len(), 2);
    let commands: Vec<String> = world.smtp.commands().into_iter().map(|c| c.line).collect();
    assert!(commands.iter().any(|c| c == "QUIT"), "{commands:?}");

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let args = [
        world.smtp_port().to_string(),
        crate::harness::path_str(&world.ca_path),
        ALICE.into(),
        ALICE_PW.into(),
    ];
    let out = python(LOGIN_WHILE_AN_OLD_ONE_IS_BUSY, &args).await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["mail 250", "second logged in"]
    );
    assert_eq!(
        world.smtp.auth_attempts().len(),
        4,
        "the first session's login dialled (the kept one was too old), and so did the second's"
    );
    world.check_fakes();
}
