//! Self-tests of the fake Exchange Online IMAP server in `support/fake_imap.rs`, driven directly
//! over TLS by a raw line client and by Python's imaplib, independent of the relay.

use std::path::Path;
use std::process::Output;

use crate::fakes::{assert_refused, pki_entra_token, refused_xoauth2, tls_greeted, xoauth2};
use crate::support::certs::TestPki;
use crate::support::fake_entra::FakeEntra;
use crate::support::fake_imap::FakeImap;
use crate::support::fixture::UPN;
use crate::support::line_client::LineClient;

const SHARED: &str = "helpdesk@contoso.com";
const GREETING: &str = "* OK The Microsoft Exchange IMAP4 service is ready. [TQBOADIAUABSADEAMgBDAEEAMAAwADAAMQAuAG4AYQBtAHAAcgBkADEAMgAuAHAAcgBvAGQALgBvAHUAdABsAG8AbwBrAC4AYwBvAG0A]";
const CAPS_AUTHENTICATED: &str = "IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE ID UNSELECT CLIENTACCESSRULES CLIENTNETWORKPRESENCELOCATION BACKENDAUTHENTICATE CHILDREN IDLE NAMESPACE LITERAL+";

async fn imap_world() -> (TestPki, FakeEntra, FakeImap, String) {
    let (pki, entra, token) = pki_entra_token("IMAP.AccessAsUser.All").await;
    let imap = FakeImap::start(&pki, entra.clone()).await;
    (pki, entra, imap, token)
}

/// Connects with TLS and checks the greeting.
async fn connect(imap: &FakeImap, pki: &TestPki) -> LineClient {
    tls_greeted(imap.addr(), pki, GREETING).await
}

/// Connects and logs in with SASL-IR.
async fn logged_in(imap: &FakeImap, pki: &TestPki, user: &str, token: &str) -> LineClient {
    let mut client = connect(imap, pki).await;
    let login = format!("a0 AUTHENTICATE XOAUTH2 {}", xoauth2(user, token));
    assert_eq!(
        command(&mut client, &login).await,
        ["a0 OK AUTHENTICATE completed."]
    );
    client
}

/// Reads lines up to and including the tagged reply for `tag`.
async fn until_tagged(client: &mut LineClient, tag: &str) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let line = client
            .read_line()
            .await
            .unwrap_or_else(|| panic!("closed before {tag} completed; got {lines:#?}"));
        let done = line.starts_with(&format!("{tag} "));
        lines.push(line);
        if done {
            return lines;
        }
    }
}

/// Sends one command line (its first word is the tag) and returns every line of the answer.
async fn command(client: &mut LineClient, line: &str) -> Vec<String> {
    client.send(line).await;
    until_tagged(client, line.split(' ').next().expect("tag")).await
}

/// Runs `python3 -c script args...` off the async threads.
async fn python(script: String, args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .expect("run python3")
    })
    .await
    .expect("python task")
}

fn message(subject: &str, from: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: Alice <alice@contoso.com>\r\nSubject: {subject}\r\n\
         Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <{subject}@example.com>\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn imap_speaks_like_exchange_before_login() {
    let (pki, _entra, imap, _token) = imap_world().await;
    let mut client = connect(&imap, &pki).await;
    assert_eq!(
        command(&mut client, "a1 CAPABILITY").await,
        [
            "* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+",
            "a1 OK CAPABILITY completed."
        ]
    );
    assert_eq!(
        command(&mut client, "a2 NOOP").await,
        ["a2 OK NOOP completed."]
    );
    assert_eq!(
        command(&mut client, r#"a3 ID ("name" "imaplib")"#).await,
        ["* ID NIL", "a3 OK ID completed."]
    );
    let cases = [
        (
            "a4 SELECT INBOX",
            "a4 BAD Command received in Invalid state.",
        ),
        ("a5 LOGIN alice@contoso.com secret", "a5 NO LOGIN failed."),
        ("a6 XYZZY", "a6 BAD Command Error. 12"),
        (
            "a7 AUTHENTICATE PLAIN AGFsaWNlQGNvbnRvc28uY29tAHNlY3JldA==",
            "a7 NO AUTHENTICATE failed.",
        ),
        (
            "a8 AUTHENTICATE CRAM-MD5",
            "a8 BAD Command Argument Error. 11",
        ),
        ("a9", "a9 BAD Command Error. 12"),
    ];
    for (line, want) in cases {
        assert_eq!(command(&mut client, line).await, [want]);
    }
    assert_eq!(
        command(&mut client, "a10 LOGOUT").await,
        [
            "* BYE Microsoft Exchange Server IMAP4 server signing off.",
            "a10 OK LOGOUT completed."
        ]
    );
    client.expect_closed().await;

    let attempts = imap.auth_attempts();
    let summary: Vec<_> = attempts
        .iter()
        .map(|a| (a.mechanism.as_str(), a.user.as_str(), a.accepted))
        .collect();
    assert_eq!(summary, [("LOGIN", UPN, false), ("PLAIN", UPN, false)]);
    assert!(imap.commands().is_empty(), "{:?}", imap.commands());
    assert_eq!(imap.connections(), 1);
    imap.check();
}

#[tokio::test]
async fn imap_xoauth2_accepts_only_the_exact_format() {
    let (pki, entra, imap, token) = imap_world().await;
    let cases = refused_xoauth2(&entra, &token, "IMAP.AccessAsUser.All", SHARED);
    let mut client = connect(&imap, &pki).await;
    for (i, (payload, _)) in cases.iter().enumerate() {
        let line = format!("b{i} AUTHENTICATE XOAUTH2 {payload}");
        assert_eq!(
            command(&mut client, &line).await,
            [format!("b{i} NO AUTHENTICATE failed.")]
        );
    }
    assert_refused(&imap.auth_attempts(), &cases, Some(true));

    // Two-step form, lower-case mechanism: `*` cancels, then a shared mailbox via a delegate.
    client.send("c1 authenticate xoauth2").await;
    assert_eq!(client.read_line().await.as_deref(), Some("+ "));
    client.send("*").await;
    assert_eq!(
        until_tagged(&mut client, "c1").await,
        ["c1 NO The AUTH protocol exchange was canceled by the client."]
    );
    imap.grant_delegate(SHARED, UPN);
    imap.deliver_to(
        SHARED,
        "INBOX",
        &message("ticket", "carol@example.com", "hi"),
    );
    client.send("c2 AUTHENTICATE XOAUTH2").await;
    assert_eq!(client.read_line().await.as_deref(), Some("+ "));
    client.send(&xoauth2(SHARED, &token)).await;
    assert_eq!(
        until_tagged(&mut client, "c2").await,
        ["c2 OK AUTHENTICATE completed."]
    );
    let last = imap.auth_attempts().pop().expect("attempt");
    assert!(last.accepted && !last.initial_response && last.user == SHARED);
    assert_eq!(
        last.raw_decoded,
        format!("user={SHARED}\x01auth=Bearer {token}\x01\x01").into_bytes()
    );
    assert_eq!(
        command(&mut client, "c3 CAPABILITY").await,
        [
            format!("* CAPABILITY {CAPS_AUTHENTICATED}"),
            "c3 OK CAPABILITY completed.".to_string()
        ]
    );
    assert_eq!(
        command(&mut client, "c4 LOGIN a b").await,
        ["c4 BAD Command received in Invalid state."]
    );
    let select = command(&mut client, "c5 EXAMINE inbox").await;
    assert_eq!(select[0], "* 1 EXISTS", "{select:#?}");
    assert_eq!(
        imap.commands(),
        ["c3 CAPABILITY", "c4 LOGIN a b", "c5 EXAMINE inbox"]
    );

    // The shared mailbox has its own store; alice's INBOX is empty.
    imap.set_capability_in_ok(true);
    let mut alice = connect(&imap, &pki).await;
    let login = format!("d1 AUTHENTICATE XOAUTH2 {}", xoauth2(UPN, &token));
    assert_eq!(
        command(&mut alice, &login).await,
        [format!(
            "d1 OK [CAPABILITY {CAPS_AUTHENTICATED}] AUTHENTICATE completed."
        )]
    );
    let select = command(&mut alice, "d2 SELECT INBOX").await;
    assert_eq!(select[0], "* 0 EXISTS");
    assert_eq!(imap.messages_of(SHARED, "inbox").len(), 1);
    assert!(imap.messages_of(UPN, "INBOX").is_empty());
    imap.check();
}

#[tokio::test]
async fn imap_select_fetch_search_store_and_move() {
    let (pki, _entra, imap, token) = imap_world().await;
    imap.set_primary_mailbox(UPN);
    let first = message("First", "Bob <bob@example.com>", "one");
    imap.deliver("INBOX", &first);
    imap.deliver(
        "INBOX",
        &message("Second", "\"Carol C\" <carol@example.com>", "two"),
    );
    imap.deliver("INBOX", &message("Third", "dave@example.com", "three"));
    let mut client = logged_in(&imap, &pki, UPN, &token).await;

    assert_eq!(
        command(&mut client, "e1 SELECT INBOX").await,
        [
            "* 3 EXISTS",
            "* 0 RECENT",
            r"* FLAGS (\Seen \Answered \Flagged \Deleted \Draft $MDNSent)",
            r"* OK [PERMANENTFLAGS (\Seen \Answered \Flagged \Deleted \Draft $MDNSent)] Permanent flags",
            "* OK [UNSEEN 1] Is the first unseen message",
            "* OK [UIDVALIDITY 14] UIDVALIDITY value",
            "* OK [UIDNEXT 4] The next unique identifier value",
            "e1 OK [READ-WRITE] SELECT completed.",
        ]
    );
    let size = first.len();
    assert_eq!(
        command(&mut client, "e2 FETCH 1 (FLAGS UID RFC822.SIZE)").await,
        [
            format!("* 1 FETCH (FLAGS () UID 1 RFC822.SIZE {size})"),
            "e2 OK FETCH completed.".to_string()
        ]
    );
    let envelope = command(&mut client, "e3 FETCH 2 ENVELOPE").await;
    assert_eq!(
        envelope[0],
        r#"* 2 FETCH (ENVELOPE ("Mon, 1 Jan 2024 10:00:00 +0000" "Second" (("Carol C" NIL "carol" "example.com")) (("Carol C" NIL "carol" "example.com")) (("Carol C" NIL "carol" "example.com")) (("Alice" NIL "alice" "contoso.com")) NIL NIL NIL "<Second@example.com>"))"#
    );
    assert_eq!(
        command(&mut client, "e4 FETCH 1 BODY.PEEK[HEADER.FIELDS (SUBJECT)]").await,
        [
            "* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {18}",
            "Subject: First",
            "",
            ")",
            "e4 OK FETCH completed."
        ]
    );
    assert_eq!(
        command(&mut client, "e5 UID FETCH 2:* (BODY[TEXT]<0.3>)").await,
        [
            r"* 2 FETCH (UID 2 FLAGS (\Seen) BODY[TEXT]<0> {3}",
            "two)",
            r"* 3 FETCH (UID 3 FLAGS (\Seen) BODY[TEXT]<0> {3}",
            "thr)",
            "e5 OK FETCH completed."
        ]
    );
    assert_eq!(
        command(&mut client, "e6 FETCH 4 FLAGS").await,
        ["e6 BAD The specified message set is invalid."]
    );
    assert_eq!(
        command(&mut client, "e7 SEARCH UNSEEN").await,
        ["* SEARCH 1", "e7 OK SEARCH completed."]
    );
    assert_eq!(
        command(&mut client, "e8 UID SEARCH OR FROM carol SUBJECT first").await,
        ["* SEARCH 1 2", "e8 OK SEARCH completed."]
    );
    assert_eq!(
        command(&mut client, r"e9 UID STORE 1 +FLAGS (\Flagged \Seen)").await,
        [
            r"* 1 FETCH (FLAGS (\Flagged \Seen) UID 1)",
            "e9 OK STORE completed."
        ]
    );
    assert_eq!(
        command(&mut client, r"e10 STORE 1:2 -FLAGS.SILENT \Seen").await,
        ["e10 OK STORE completed."]
    );
    assert_eq!(
        command(&mut client, "e11 SEARCH UID 1:2 UNSEEN NOT DELETED").await,
        ["* SEARCH 1 2", "e11 OK SEARCH completed."]
    );
    assert_eq!(
        command(&mut client, "e12 UID MOVE 3 Approvals").await,
        [
            "* OK [COPYUID 16 3 1] Messages copied.",
            "* 3 EXPUNGE",
            "e12 OK MOVE completed."
        ]
    );
    assert_eq!(
        command(&mut client, "e13 COPY 1 \"Sent Items\"").await,
        ["e13 OK [COPYUID 15 1 1] COPY completed."]
    );
    assert_eq!(
        command(
            &mut client,
            "e14 STATUS Approvals (MESSAGES UIDNEXT UNSEEN)"
        )
        .await,
        [
            "* STATUS Approvals (MESSAGES 1 UIDNEXT 2 UNSEEN 0)",
            "e14 OK STATUS completed."
        ]
    );
    assert_eq!(
        command(&mut client, r#"e15 LIST "" "*""#).await,
        [
            r#"* LIST (\HasNoChildren) "/" INBOX"#,
            r#"* LIST (\HasNoChildren \Sent) "/" "Sent Items""#,
            r#"* LIST (\HasNoChildren) "/" Approvals"#,
            "e15 OK LIST completed."
        ]
    );
    let full = command(&mut client, "e16 FETCH 1 FULL").await;
    assert!(
        full[0].starts_with("* 1 FETCH (FLAGS (\\Flagged) INTERNALDATE \"")
            && full[0]
                .contains(r#" BODY ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 5 1))"#),
        "{full:#?}"
    );
    assert_eq!(
        command(&mut client, "e17 EXAMINE INBOX")
            .await
            .last()
            .map(String::as_str),
        Some("e17 OK [READ-ONLY] EXAMINE completed.")
    );
    assert_eq!(
        command(&mut client, r"e18 STORE 1 +FLAGS (\Deleted)").await,
        ["e18 NO Command received in Invalid state."]
    );
    assert_eq!(
        command(&mut client, "e19 UNSELECT").await,
        ["e19 OK UNSELECT completed."]
    );
    assert_eq!(
        command(&mut client, "e20 FETCH 1 FLAGS").await,
        ["e20 BAD Command received in Invalid state."]
    );
    let flags: Vec<_> = imap
        .messages("INBOX")
        .into_iter()
        .map(|m| m.flags)
        .collect();
    assert_eq!(flags, [vec![r"\Flagged".to_string()], vec![]]);
    assert_eq!(
        imap.messages("Approvals")[0].data,
        message("Third", "dave@example.com", "three")
    );
    imap.check();
}

#[tokio::test]
async fn imap_pipelined_commands_and_literals() {
    let (pki, _entra, imap, token) = imap_world().await;
    let mut client = logged_in(&imap, &pki, UPN, &token).await;
    client
        .send_raw(b"f1 SELECT INBOX\r\nf2 APPEND INBOX (\\Flagged) {11+}\r\nhello world\r\nf3 UID FETCH 1:* (FLAGS BODY[])\r\nf4 NOOP\r\n")
        .await;
    let mut lines = until_tagged(&mut client, "f4").await;
    let tail = lines.split_off(lines.len() - 6);
    assert_eq!(
        lines.last().map(String::as_str),
        Some("f1 OK [READ-WRITE] SELECT completed.")
    );
    assert_eq!(
        tail,
        [
            "* 1 EXISTS",
            "f2 OK [APPENDUID 14 1] APPEND completed.",
            r"* 1 FETCH (UID 1 FLAGS (\Flagged \Seen) BODY[] {11}",
            "hello world)",
            "f3 OK FETCH completed.",
            "f4 OK NOOP completed.",
        ]
    );

    // A synchronizing literal waits for the go-ahead.
    client
        .send(r#"f5 APPEND "Sent Items" (\Seen) "21-Nov-2026 10:00:00 +0100" {5}"#)
        .await;
    assert_eq!(
        client.read_line().await.as_deref(),
        Some("+ Ready for additional command text.")
    );
    client.send("12345").await;
    assert_eq!(
        until_tagged(&mut client, "f5").await,
        ["f5 OK [APPENDUID 15 1] APPEND completed."]
    );
    assert_eq!(
        command(&mut client, "f6 APPEND Nowhere {1+}\r\nx").await,
        ["f6 NO [TRYCREATE] Mailbox doesn't exist."]
    );
    let sent = imap.messages("Sent Items");
    assert_eq!(
        (sent[0].data.as_slice(), sent[0].flags.clone()),
        (&b"12345"[..], vec![r"\Seen".to_string()])
    );
    let commands = imap.commands();
    assert_eq!(commands[1], r"f2 APPEND INBOX (\Flagged) {11+}");
    assert!(
        commands
            .iter()
            .all(|c| !c.contains("hello") && !c.contains("12345")),
        "literal payloads must stay out of the transcript: {commands:#?}"
    );
    imap.check();
}

#[tokio::test]
async fn imap_idle_reports_deliveries_and_expunges() {
    let (pki, _entra, imap, token) = imap_world().await;
    let mut idler = logged_in(&imap, &pki, UPN, &token).await;
    assert_eq!(
        command(&mut idler, "g1 SELECT INBOX").await[0],
        "* 0 EXISTS"
    );
    idler.send("g2 IDLE").await;
    assert_eq!(
        idler.read_line().await.as_deref(),
        Some("+ IDLE accepted, awaiting DONE command.")
    );
    assert_eq!(
        imap.deliver("INBOX", &message("new", "bob@example.com", "x")),
        1
    );
    assert_eq!(idler.read_line().await.as_deref(), Some("* 1 EXISTS"));

    let mut other = logged_in(&imap, &pki, UPN, &token).await;
    command(&mut other, "h1 SELECT INBOX").await;
    command(&mut other, r"h2 STORE 1 +FLAGS.SILENT (\Deleted)").await;
    assert_eq!(
        command(&mut other, "h3 EXPUNGE").await,
        ["* 1 EXPUNGE", "h3 OK EXPUNGE completed."]
    );
    assert_eq!(idler.read_line().await.as_deref(), Some("* 1 EXPUNGE"));
    idler.send("DONE").await;
    assert_eq!(
        until_tagged(&mut idler, "g2").await,
        ["g2 OK IDLE completed."]
    );
    assert!(imap.messages("INBOX").is_empty());
    imap.check();
}

#[tokio::test]
async fn imap_token_expiry_bye_drops_and_bad_clients() {
    let (pki, _entra, imap, token) = imap_world().await;
    let mut idler = logged_in(&imap, &pki, UPN, &token).await;
    idler.send("i1 IDLE").await;
    idler.read_line().await;
    let mut busy = logged_in(&imap, &pki, UPN, &token).await;
    let mut anonymous = connect(&imap, &pki).await;
    imap.bye_token_expired();
    for client in [&mut idler, &mut busy] {
        assert_eq!(
            client.read_line().await.as_deref(),
            Some("* BYE Session invalidated - AccessTokenExpired")
        );
        client.expect_closed().await;
    }
    assert_eq!(
        command(&mut anonymous, "j1 NOOP").await,
        ["j1 OK NOOP completed."]
    );
    // A session that logs in after the BYE is not affected.
    let mut later = logged_in(&imap, &pki, UPN, &token).await;
    assert_eq!(
        command(&mut later, "k1 NOOP").await,
        ["k1 OK NOOP completed."]
    );

    imap.set_drop_after_auth(true);
    let mut dropped = connect(&imap, &pki).await;
    let login = format!("l1 AUTHENTICATE XOAUTH2 {}", xoauth2(UPN, &token));
    assert_eq!(
        command(&mut dropped, &login).await,
        ["l1 OK AUTHENTICATE completed."]
    );
    dropped.expect_closed().await;
    imap.set_drop_after_auth(false);

    command(&mut later, "k2 SELECT INBOX").await;
    later.send("k3 IDLE").await;
    later.read_line().await;
    later.send("k4 NOOP").await;
    assert_eq!(
        until_tagged(&mut later, "k3").await,
        ["k3 BAD Command Error. 12"]
    );
    let mut long = connect(&imap, &pki).await;
    long.send_raw(&vec![b'a'; 70 * 1024]).await;
    long.expect_closed().await;
    let errors = imap.protocol_errors();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("expected DONE during IDLE"))
            && errors.iter().any(|e| e.contains("longer than 64 KiB")),
        "{errors:#?}"
    );
    imap.check_no_panics();
}

/// Logs in to the fake with imaplib (two-step XOAUTH2); argv: port, CA file, user, token, extra.
const IMAPLIB_LOGIN: &str = r#"
import imaplib, ssl, sys
port, ca, user, token = sys.argv[1:5]
m = imaplib.IMAP4_SSL("127.0.0.1", int(port), ssl_context=ssl.create_default_context(cafile=ca))
typ, _ = m.authenticate("XOAUTH2", lambda _: f"user={user}\x01auth=Bearer {token}\x01\x01".encode())
assert typ == "OK", typ
"#;

/// Runs imaplib: [`IMAPLIB_LOGIN`] as alice, then `script`.
async fn imaplib(imap: &FakeImap, ca: &Path, token: &str, script: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        imap.addr().port().to_string(),
        ca.display().to_string(),
        UPN.to_string(),
        token.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let run = python(format!("{IMAPLIB_LOGIN}{script}"), args).await;
    assert!(
        run.status.success(),
        "imaplib: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    run
}

#[tokio::test]
async fn imap_imaplib_fetches_a_10_mb_message_byte_identical() {
    const SCRIPT: &str = r#"
typ, data = m.select("INBOX")
assert (typ, data) == ("OK", [b"1"]), (typ, data)
typ, data = m.fetch("1", "(RFC822.SIZE BODY.PEEK[])")
assert typ == "OK", typ
with open(sys.argv[5], "wb") as f:
    f.write(data[0][1])
print(data[0][0].decode())
m.logout()
"#;
    let (pki, _entra, imap, token) = imap_world().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = pki.write_ca(dir.path());
    let out = dir.path().join("fetched.eml");
    let mut big = message("big", "bob@example.com", "");
    let mut i = 0;
    while big.len() < 10 * 1024 * 1024 {
        let line = format!("line {i:07} of a big message, in CRLF lines like real mail\r\n");
        big.extend(line.as_bytes());
        i += 1;
    }
    // Delivered before anyone logged in: it goes to the first mailbox that does.
    imap.deliver("INBOX", &big);
    let out_arg = out.display().to_string();
    let run = imaplib(&imap, &ca, &token, SCRIPT, &[&out_arg]).await;
    let fetched = std::fs::read(&out).expect("fetched message");
    assert!(
        fetched == big,
        "{} bytes fetched, {} stored",
        fetched.len(),
        big.len()
    );
    assert_eq!(
        String::from_utf8_lossy(&run.stdout).trim(),
        format!("1 (RFC822.SIZE {} BODY[] {{{}}}", big.len(), big.len())
    );
    assert!(
        imap.messages("INBOX")[0].flags.is_empty(),
        "BODY.PEEK sets no flag"
    );
    imap.check();
}

#[tokio::test]
async fn imap_imaplib_lists_searches_expunges_and_appends() {
    const SCRIPT: &str = r#"
typ, data = m.list()
assert typ == "OK" and b'(\\HasNoChildren \\Sent) "/" "Sent Items"' in data, data
typ, data = m.select("INBOX")
assert data == [b"3"], data
typ, data = m.search(None, "ALL")
assert data == [b"1 2 3"], data
typ, data = m.store("2", "+FLAGS", "\\Deleted")
assert typ == "OK", (typ, data)
typ, data = m.expunge()
assert data == [b"2"], data
typ, data = m.uid("SEARCH", None, "ALL")
assert data == [b"1 3"], data
typ, data = m.append("INBOX", "(\\Seen)", None, b"Subject: appended\r\n\r\nbody\r\n")
assert typ == "OK" and data[0].startswith(b"[APPENDUID 14 4]"), data
typ, data = m.fetch("3", "(UID FLAGS)")
assert data == [b"3 (UID 4 FLAGS (\\Seen))"], data
m.close()
m.logout()
"#;
    let (pki, _entra, imap, token) = imap_world().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = pki.write_ca(dir.path());
    imap.set_primary_mailbox(UPN);
    for subject in ["one", "two", "three"] {
        imap.deliver("INBOX", &message(subject, "bob@example.com", subject));
    }
    imaplib(&imap, &ca, &token, SCRIPT, &[]).await;
    let inbox: Vec<_> = imap.messages("INBOX").into_iter().map(|m| m.uid).collect();
    assert_eq!(inbox, [1, 3, 4]);
    assert_eq!(
        imap.messages("INBOX")[2].data,
        b"Subject: appended\r\n\r\nbody\r\n"
    );
    let attempt = &imap.auth_attempts()[0];
    assert!(
        attempt.accepted && !attempt.initial_response,
        "{attempt:#?}"
    );
    imap.check();
}

/// Runs curl against the fake with XOAUTH2 (SASL-IR) and returns stdout.
async fn curl(imap: &FakeImap, ca: &Path, token: &str, path: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "--silent".to_string(),
        "--show-error".to_string(),
        "--cacert".to_string(),
        ca.display().to_string(),
        "--user".to_string(),
        format!("{UPN}:"),
        "--login-options".to_string(),
        "AUTH=XOAUTH2".to_string(),
        "--oauth2-bearer".to_string(),
        token.to_string(),
        format!("imaps://127.0.0.1:{}/{path}", imap.addr().port()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(args)
            .output()
            .expect("run curl")
    })
    .await
    .expect("curl task");
    assert!(
        run.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8(run.stdout).expect("curl output is UTF-8")
}

#[tokio::test]
async fn imap_curl_lists_searches_and_fetches() {
    let (pki, _entra, imap, token) = imap_world().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = pki.write_ca(dir.path());
    imap.set_primary_mailbox(UPN);
    imap.deliver("INBOX", &message("one", "bob@example.com", "first"));
    let second = message("two", "bob@example.com", "second");
    imap.deliver("INBOX", &second);

    let list = curl(&imap, &ca, &token, "", &[]).await;
    assert!(
        list.contains(r#"* LIST (\HasNoChildren \Sent) "/" "Sent Items""#),
        "{list}"
    );
    let search = curl(&imap, &ca, &token, "INBOX?SUBJECT%20two", &[]).await;
    assert_eq!(search.trim(), "* SEARCH 2");
    let fetched = curl(&imap, &ca, &token, "INBOX/;UID=2", &[]).await;
    assert_eq!(fetched.as_bytes(), second);
    assert_eq!(imap.messages("INBOX")[1].flags, [r"\Seen"]);
    let attempts = imap.auth_attempts();
    assert!(
        attempts.len() == 3 && attempts.iter().all(|a| a.accepted && a.initial_response),
        "{attempts:#?}"
    );
    let commands = imap.commands();
    assert!(
        commands.iter().any(|c| c.ends_with("UID FETCH 2 BODY[]")),
        "{commands:#?}"
    );
    imap.check();
}
