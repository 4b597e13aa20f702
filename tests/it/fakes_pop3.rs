//! Self-tests of the fake Exchange Online POP3 server, driven over TLS by the raw `LineClient` and
//! by Python's poplib, independent of the relay.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::fakes::{assert_refused, pki_entra_token, refused_xoauth2, tls_greeted, xoauth2};
use crate::harness::{path_str, run};
use crate::support::certs::TestPki;
use crate::support::fake_entra::FakeEntra;
use crate::support::fake_pop3::FakePop3;
use crate::support::fixture::UPN;
use crate::support::line_client::LineClient;

const SHARED: &str = "helpdesk@contoso.com";
const GREETING: &str = "+OK The Microsoft Exchange POP3 service is ready. [UABBADIAUABSADEAMgBDAEEAMAAwADEANQAuAG4AYQBtAHAAcgBkADEAMgAuAHAAcgBvAGQALgBvAHUAdABsAG8AbwBrAC4AYwBvAG0A]";
const AUTH_OK: &str = "+OK User successfully authenticated.";
const AUTH_FAILED: &str = "-ERR Authentication failure: unknown user name or bad password.";
const INVALID_STATE: &str = "-ERR Command is not valid in this state.";
const SIGNING_OFF: &str = "+OK Microsoft Exchange Server POP3 server signing off.";

/// Short, with a header, a blank line and two body lines.
const PLAIN: &[u8] =
    b"From: <bob@example.net>\r\nSubject: one\r\n\r\nbody line 1\r\nbody line 2\r\n";
/// Lines that need dot-stuffing, including one that is a lone dot.
const DOTTED: &[u8] =
    b"From: <bob@example.net>\r\nSubject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nlast\r\n";
const THIRD: &[u8] = b"Subject: three\r\n\r\nthree\r\n";

async fn pop3_world() -> (TestPki, FakeEntra, FakePop3, String) {
    let (pki, entra, token) = pki_entra_token("POP.AccessAsUser.All").await;
    let pop3 = FakePop3::start(&pki, entra.clone()).await;
    (pki, entra, pop3, token)
}

/// Sends one command and returns the first line of the reply.
async fn cmd(client: &mut LineClient, line: &str) -> String {
    client.send(line).await;
    reply(client).await
}

async fn reply(client: &mut LineClient) -> String {
    client
        .read_line()
        .await
        .expect("server closed instead of replying")
}

/// The lines of a multi-line response up to (without) the `.` line, as sent (still dot-stuffed).
async fn lines(client: &mut LineClient) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        match reply(client).await {
            end if end == "." => return lines,
            line => lines.push(line),
        }
    }
}

/// A multi-line response body, dot-unstuffed, with CRLF line endings.
async fn body(client: &mut LineClient) -> Vec<u8> {
    let mut body = Vec::new();
    for line in lines(client).await {
        body.extend_from_slice(line.strip_prefix('.').unwrap_or(&line).as_bytes());
        body.extend_from_slice(b"\r\n");
    }
    body
}

/// The two-step XOAUTH2 login of PROTOCOL.md A2.
async fn login(client: &mut LineClient, user: &str, token: &str) {
    assert_eq!(cmd(client, "AUTH XOAUTH2").await, "+ ");
    assert_eq!(cmd(client, &xoauth2(user, token)).await, AUTH_OK);
}

/// About 10.5 MB of CRLF lines, some starting with a dot or two or being a lone dot.
/// Delivers [`big_message`] to the mailbox; the message.
fn deliver_big_message(pop3: &FakePop3) -> Vec<u8> {
    let big = big_message();
    pop3.deliver(UPN, &big);
    big
}

fn big_message() -> Vec<u8> {
    let mut m = b"From: <bob@example.net>\r\nSubject: large\r\n\r\n".to_vec();
    for i in 0.. {
        if m.len() > 10 * 1024 * 1024 + 512 * 1024 {
            break;
        }
        let line = match i % 997 {
            0 => ".\r\n".to_string(),
            1 => format!(".line {i:07} with a leading dot\r\n"),
            2 => format!("..line {i:07} with two leading dots\r\n"),
            _ => format!("line {i:07} of a large message body, padded to a typical width.\r\n"),
        };
        m.extend_from_slice(line.as_bytes());
    }
    m
}

#[tokio::test]
async fn pop3_greets_and_refuses_basic_auth() {
    let (pki, _entra, pop3, _token) = pop3_world().await;
    let mut client = tls_greeted(pop3.addr(), &pki, GREETING).await;
    client.send("CAPA").await;
    assert_eq!(reply(&mut client).await, "+OK");
    assert_eq!(
        lines(&mut client).await,
        ["TOP", "UIDL", "SASL PLAIN XOAUTH2", "USER"]
    );
    assert_eq!(cmd(&mut client, "NOOP").await, INVALID_STATE);
    assert_eq!(cmd(&mut client, "USER alice@contoso.com").await, "+OK");
    assert_eq!(
        cmd(&mut client, "PASS secret").await,
        "-ERR Logon failure: unknown user name or bad password."
    );
    client.send("AUTH").await;
    assert_eq!(reply(&mut client).await, "+OK");
    assert_eq!(lines(&mut client).await, ["PLAIN", "XOAUTH2"]);
    assert_eq!(cmd(&mut client, "AUTH PLAIN").await, "+ ");
    let plain = STANDARD.encode(format!("\0{UPN}\0secret"));
    assert_eq!(cmd(&mut client, &plain).await, AUTH_FAILED);
    assert_eq!(
        cmd(&mut client, "AUTH CRAM-MD5").await,
        "-ERR Protocol error. 14"
    );
    assert_eq!(cmd(&mut client, "QUIT").await, SIGNING_OFF);
    client.expect_closed().await;

    // Like Exchange, the third invalid command gets its reply and the connection is closed.
    let mut client = tls_greeted(pop3.addr(), &pki, GREETING).await;
    assert_eq!(cmd(&mut client, "XYZZY").await, "-ERR Protocol error. 19");
    assert_eq!(cmd(&mut client, "STAT").await, INVALID_STATE);
    assert_eq!(cmd(&mut client, "PASS x").await, INVALID_STATE);
    assert_eq!(
        reply(&mut client).await,
        "Connection is closed. 21",
        "third strike"
    );
    client.expect_closed().await;

    let attempts: Vec<_> = pop3
        .auth_attempts()
        .into_iter()
        .map(|a| (a.mechanism, a.user, a.accepted))
        .collect();
    assert_eq!(
        attempts,
        [
            ("USER".to_string(), UPN.to_string(), false),
            ("PLAIN".to_string(), UPN.to_string(), false)
        ]
    );
    assert_eq!(pop3.connections(), 2);
    assert_eq!(pop3.commands()[..2], ["CAPA", "NOOP"]);
    pop3.check();
}

#[tokio::test]
async fn pop3_xoauth2_checks_the_payload_and_the_token() {
    let (pki, entra, pop3, token) = pop3_world().await;
    let cases = refused_xoauth2(&entra, &token, "POP.AccessAsUser.All", SHARED);
    let mut client = tls_greeted(pop3.addr(), &pki, GREETING).await;
    for (payload, _) in &cases {
        assert_eq!(cmd(&mut client, "AUTH XOAUTH2").await, "+ ");
        assert_eq!(cmd(&mut client, payload).await, AUTH_FAILED, "{payload}");
    }
    assert_refused(&pop3.auth_attempts(), &cases, Some(false));
    assert_eq!(cmd(&mut client, "AUTH XOAUTH2").await, "+ ");
    assert_eq!(
        cmd(&mut client, "*").await,
        "-ERR The AUTH protocol exchange was canceled by the client."
    );
    assert!(pop3.protocol_errors().is_empty());

    // The one-line form logs in but is recorded: Exchange Online refuses it (PROTOCOL.md A2).
    let one_line = format!("AUTH XOAUTH2 {}", xoauth2("ALICE@contoso.com", &token));
    assert_eq!(cmd(&mut client, &one_line).await, AUTH_OK);
    let last = pop3.auth_attempts().pop().expect("attempt");
    assert!(last.accepted && last.initial_response && last.raw_decoded.ends_with(b"\x01\x01"));
    assert_eq!(cmd(&mut client, "STAT").await, "+OK 0 0");
    assert_eq!(cmd(&mut client, "AUTH XOAUTH2").await, INVALID_STATE);
    let errors = pop3.protocol_errors();
    assert!(
        errors.len() == 1 && errors[0].contains("RFC 5034"),
        "{errors:?}"
    );

    // A shared mailbox opens with a delegate's token and has its own messages.
    pop3.grant_delegate(SHARED, UPN);
    pop3.deliver(SHARED, THIRD);
    let mut client = tls_greeted(pop3.addr(), &pki, GREETING).await;
    login(&mut client, SHARED, &token).await;
    assert_eq!(
        cmd(&mut client, "STAT").await,
        format!("+OK 1 {}", THIRD.len())
    );
    assert!(pop3.messages(UPN).is_empty());
    let last = pop3.auth_attempts().pop().expect("attempt");
    assert!(last.accepted && !last.initial_response && last.user == SHARED);
    assert!(pop3.commands().contains(&xoauth2(SHARED, &token)));
    pop3.check_no_panics();
}

#[tokio::test]
async fn pop3_lists_retrieves_and_deletes_with_pipelining() {
    let (pki, _entra, pop3, token) = pop3_world().await;
    for message in [PLAIN, DOTTED, THIRD] {
        pop3.deliver(UPN, message);
    }
    let mut client = tls_greeted(pop3.addr(), &pki, GREETING).await;
    // RFC 2449 PIPELINING: the whole login and a few commands in one packet.
    let batch = format!(
        "AUTH XOAUTH2\r\n{}\r\nSTAT\r\nLIST\r\nUIDL\r\nLIST 2\r\nRETR 2\r\nTOP 1 0\r\nTOP 1 1\r\n",
        xoauth2(UPN, &token)
    );
    client.send_raw(batch.as_bytes()).await;
    assert_eq!(reply(&mut client).await, "+ ");
    assert_eq!(reply(&mut client).await, AUTH_OK);
    let total = PLAIN.len() + DOTTED.len() + THIRD.len();
    assert_eq!(reply(&mut client).await, format!("+OK 3 {total}"));
    assert_eq!(reply(&mut client).await, format!("+OK 3 {total}"));
    let sizes = [PLAIN.len(), DOTTED.len(), THIRD.len()];
    let listing: Vec<String> = (1..=3).map(|n| format!("{n} {}", sizes[n - 1])).collect();
    assert_eq!(lines(&mut client).await, listing);
    assert_eq!(reply(&mut client).await, "+OK");
    let uids = lines(&mut client).await;
    assert_eq!(uids.len(), 3);
    assert_eq!(reply(&mut client).await, format!("+OK 2 {}", DOTTED.len()));
    assert_eq!(reply(&mut client).await, "+OK");
    let wire = lines(&mut client).await;
    assert_eq!(wire[3..], ["..leading dot", "...two dots", "..", "last"]);
    assert_eq!(reply(&mut client).await, "+OK");
    assert_eq!(
        body(&mut client).await,
        b"From: <bob@example.net>\r\nSubject: one\r\n\r\n"
    );
    assert_eq!(reply(&mut client).await, "+OK");
    assert_eq!(
        lines(&mut client).await.last().map(String::as_str),
        Some("body line 1")
    );

    client.send("RETR 2").await;
    assert_eq!(reply(&mut client).await, "+OK");
    assert_eq!(body(&mut client).await, DOTTED);
    assert_eq!(cmd(&mut client, "DELE 2").await, "+OK");
    let deleted = "-ERR The requested message is no longer available; it may have been deleted.";
    assert_eq!(cmd(&mut client, "RETR 2").await, deleted);
    assert_eq!(cmd(&mut client, "DELE 2").await, deleted);
    assert_eq!(
        cmd(&mut client, "RETR 4").await,
        "-ERR The specified message is out of range."
    );
    assert_eq!(cmd(&mut client, "RETR 0").await, "-ERR Protocol error. 14");
    assert_eq!(cmd(&mut client, "TOP 1").await, "-ERR Protocol error. 16");
    let after_dele = format!("+OK 2 {}", PLAIN.len() + THIRD.len());
    assert_eq!(cmd(&mut client, "STAT").await, after_dele);
    assert_eq!(cmd(&mut client, "RSET").await, "+OK");
    assert_eq!(cmd(&mut client, "STAT").await, format!("+OK 3 {total}"));
    client.send_raw(b"DELE 2\r\nNOOP\r\nQUIT\r\n").await;
    for want in ["+OK", "+OK", SIGNING_OFF] {
        assert_eq!(reply(&mut client).await, want);
    }
    client.expect_closed().await;
    assert_eq!(pop3.messages(UPN), [PLAIN.to_vec(), THIRD.to_vec()]);

    // UIDs are stable across sessions; without QUIT nothing is deleted (RFC 1939 §6).
    let mut client = tls_greeted(pop3.addr(), &pki, GREETING).await;
    login(&mut client, UPN, &token).await;
    assert_eq!(
        cmd(&mut client, "UIDL 2").await,
        format!("+OK 2 {}", &uids[2][2..])
    );
    assert_eq!(cmd(&mut client, "DELE 1").await, "+OK");
    drop(client);
    assert_eq!(pop3.messages(UPN).len(), 2);
    pop3.check();
}

#[tokio::test]
async fn pop3_streams_a_10_mb_message_byte_identical() {
    let (pki, _entra, pop3, token) = pop3_world().await;
    let big = deliver_big_message(&pop3);
    let mut client = tls_greeted(pop3.addr(), &pki, GREETING).await;
    login(&mut client, UPN, &token).await;
    assert_eq!(
        cmd(&mut client, "LIST 1").await,
        format!("+OK 1 {}", big.len())
    );
    let started = Instant::now();
    assert_eq!(cmd(&mut client, "RETR 1").await, "+OK");
    let received = body(&mut client).await;
    eprintln!("RETR of {} bytes took {:?}", big.len(), started.elapsed());
    assert!(received == big, "RETR returned different bytes");
    assert_eq!(cmd(&mut client, "QUIT").await, SIGNING_OFF);
    pop3.check();
}

#[tokio::test]
async fn pop3_bounds_lines_and_drops_after_auth() {
    let (pki, _entra, pop3, token) = pop3_world().await;
    let mut client = tls_greeted(pop3.addr(), &pki, GREETING).await;
    let long = format!("NOOP {}", "x".repeat(300));
    let too_long = "-ERR Protocol error. Connection is closed. 10";
    assert_eq!(cmd(&mut client, &long).await, too_long);
    client.expect_closed().await;
    drop(client);

    // SASL responses may be long, but the fake buffers at most 64 KiB of one line.
    let mut client = tls_greeted(pop3.addr(), &pki, GREETING).await;
    assert_eq!(cmd(&mut client, "AUTH XOAUTH2").await, "+ ");
    assert_eq!(cmd(&mut client, &"A".repeat(200 * 1024)).await, too_long);
    client.expect_closed().await;
    drop(client);

    pop3.set_drop_after_auth(true);
    let mut client = tls_greeted(pop3.addr(), &pki, GREETING).await;
    login(&mut client, UPN, &token).await;
    client.expect_closed().await;

    let mut errors = pop3.protocol_errors();
    for _ in 0..100 {
        if errors.len() >= 2 {
            break;
        }
        // The second connection's error is recorded once its task has seen the client go.
        tokio::time::sleep(Duration::from_millis(10)).await;
        errors = pop3.protocol_errors();
    }
    assert!(errors.len() == 2, "{errors:#?}");
    assert!(errors[0].contains("RFC 2449") && errors[1].contains("64 KiB"));
    pop3.check_no_panics();
}

#[tokio::test]
async fn poplib_logs_in_with_xoauth2_and_retrieves() {
    let (pki, _entra, pop3, token) = pop3_world().await;
    let big = deliver_big_message(&pop3);
    pop3.deliver(UPN, DOTTED);
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = pki.write_ca(dir.path());
    let big_path = dir.path().join("big.eml");
    let dotted_path = dir.path().join("dotted.eml");
    std::fs::write(&big_path, &big).expect("write big.eml");
    std::fs::write(&dotted_path, DOTTED).expect("write dotted.eml");
    let script = r#"
import base64, poplib, ssl, sys
port, ca, user, token, big_path, dotted_path = sys.argv[1:]
big, dotted = open(big_path, "rb").read(), open(dotted_path, "rb").read()
ctx = ssl.create_default_context(cafile=ca)
p = poplib.POP3_SSL("localhost", int(port), context=ctx, timeout=20)
assert p.getwelcome().startswith(b"+OK The Microsoft Exchange POP3 service is ready. ["), p.getwelcome()
assert p.capa() == {"TOP": [], "UIDL": [], "SASL": ["PLAIN", "XOAUTH2"], "USER": []}, p.capa()

def xoauth2(token):
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()

def refused(*lines):
    try:
        for line in lines:
            last = p._shortcmd(line)
    except poplib.error_proto as e:
        assert e.args[0] == b"-ERR Authentication failure: unknown user name or bad password.", e
    else:
        raise SystemExit(f"accepted: {last}")

refused("AUTH XOAUTH2", xoauth2("not-a-token"))
refused("AUTH XOAUTH2 " + xoauth2(token + "x"))
assert p._shortcmd("AUTH XOAUTH2") == b"+ "
assert p._shortcmd(xoauth2(token)) == b"+OK User successfully authenticated."
count, size = p.stat()
assert (count, size) == (2, len(big) + len(dotted)), (count, size)
assert p.list()[1] == [b"1 %d" % len(big), b"2 %d" % len(dotted)], p.list()
uids = [line.split()[1] for line in p.uidl()[1]]
assert len(set(uids)) == 2, uids
assert b"\r\n".join(p.retr(1)[1]) + b"\r\n" == big, "RETR 1 differs"
assert b"\r\n".join(p.retr(2)[1]) + b"\r\n" == dotted, "RETR 2 differs"
assert p.top(2, 1)[1][-1] == b".leading dot", p.top(2, 1)
p.dele(2)
assert p.quit() == b"+OK Microsoft Exchange Server POP3 server signing off."
print("ok")
"#;
    let args = vec![
        "-c".into(),
        script.into(),
        pop3.addr().port().to_string(),
        path_str(&ca),
        UPN.into(),
        token.clone(),
        path_str(&big_path),
        path_str(&dotted_path),
    ];
    let started = Instant::now();
    let out = run("python3", args, None).await;
    eprintln!("poplib run took {:?}", started.elapsed());
    assert!(
        out.status.success() && out.stdout == b"ok\n",
        "poplib: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        pop3.messages(UPN) == [big],
        "DELE 2 + QUIT removes only message 2"
    );
    let attempts: Vec<_> = pop3
        .auth_attempts()
        .into_iter()
        .map(|a| (a.accepted, a.initial_response))
        .collect();
    assert_eq!(attempts, [(false, false), (false, true), (true, false)]);
    let errors = pop3.protocol_errors();
    assert!(
        errors.len() == 1 && errors[0].contains("initial response"),
        "only the one-line AUTH is flagged: {errors:#?}"
    );
    pop3.check_no_panics();
}
