//! The SMTP pre-auth state machine, line by line, without I/O.

use super::*;
use crate::protocol::PreAuth;
use crate::protocol::testing::{b64, say, say_closing};

fn session(tls: bool, auth_allowed: bool) -> Session {
    let ext: Vec<String> = EXCHANGE_ONLINE_EXTENSIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    Session::new("relay.test".into(), ext.into(), tls, auth_allowed)
}

fn login(s: &mut Session, line: &str) -> (String, String) {
    match s.on_line(line.as_bytes()) {
        Action::Login(c) => (c.user, c.password.expose().to_owned()),
        other => panic!("{line}: expected a login, got {other:?}"),
    }
}

#[test]
fn ehlo_offers_auth_only_where_allowed() {
    let mut plain_remote = session(false, false);
    let r = say(&mut plain_remote, "EHLO client.example");
    assert!(r.starts_with("250-relay.test Hello\r\n"), "{r}");
    assert!(
        r.ends_with("250 STARTTLS\r\n") && !r.contains("AUTH"),
        "{r}"
    );
    assert!(
        r.contains("250-SIZE 157286400\r\n") && r.contains("250-PIPELINING\r\n"),
        "{r}"
    );

    let mut tls = session(true, true);
    let r = say(&mut tls, "ehlo client.example");
    assert!(
        !r.contains("STARTTLS") && r.contains("250-AUTH PLAIN LOGIN\r\n"),
        "{r}"
    );
    assert!(r.ends_with("250 AUTH=PLAIN LOGIN\r\n"), "{r}");
}

#[test]
fn auth_plain_with_initial_response_and_authzid() {
    let mut s = session(true, true);
    say(&mut s, "EHLO c");
    let creds = login(
        &mut s,
        &format!("AUTH PLAIN {}", b64("alice@x.com\0alice@x.com\0s3cret pw")),
    );
    assert_eq!(creds, ("alice@x.com".into(), "s3cret pw".into()));
}

#[test]
fn auth_plain_without_initial_response() {
    let mut s = session(true, true);
    say(&mut s, "EHLO c");
    assert_eq!(say(&mut s, "AUTH plain"), "334 \r\n");
    assert_eq!(
        login(&mut s, &b64("\0alice@x.com\0pw")),
        ("alice@x.com".into(), "pw".into())
    );
}

#[test]
fn auth_login_both_forms() {
    let mut s = session(true, true);
    say(&mut s, "EHLO c");
    assert_eq!(say(&mut s, "AUTH LOGIN"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(say(&mut s, &b64("bob@x.com")), "334 UGFzc3dvcmQ6\r\n");
    assert_eq!(
        login(&mut s, &b64("pässwörd")),
        ("bob@x.com".into(), "pässwörd".into())
    );

    let mut s = session(true, true);
    say(&mut s, "EHLO c");
    assert_eq!(
        say(&mut s, &format!("AUTH LOGIN {}", b64("bob@x.com"))),
        "334 UGFzc3dvcmQ6\r\n"
    );
    assert_eq!(login(&mut s, &b64("pw")), ("bob@x.com".into(), "pw".into()));
}

#[test]
fn auth_can_be_cancelled_and_retried() {
    let mut s = session(true, true);
    say(&mut s, "EHLO c");
    say(&mut s, "AUTH LOGIN");
    assert!(say(&mut s, "*").starts_with("501 5.7.0"));
    assert_eq!(say(&mut s, "NOOP"), "250 2.0.0 OK\r\n");
    say(&mut s, "AUTH PLAIN");
    assert!(say(&mut s, "!!!").starts_with("501 5.5.2"));
}

#[test]
fn auth_is_refused_in_plaintext_from_afar_and_before_ehlo() {
    let mut s = session(false, false);
    assert!(say(&mut s, "AUTH PLAIN AGEAYg==").starts_with("503 5.5.1"));
    say(&mut s, "EHLO c");
    assert!(say(&mut s, "AUTH PLAIN AGEAYg==").starts_with("538 5.7.11"));
    assert!(say(&mut s, "AUTH XOAUTH2 abc").starts_with("504 5.5.4"));
    s.tls_started(true);
    assert!(
        say(&mut s, "AUTH PLAIN AGEAYg==").starts_with("503 5.5.1"),
        "EHLO again after TLS"
    );
}

#[test]
fn starttls_only_once_and_without_arguments() {
    let mut s = session(false, false);
    assert!(matches!(s.on_line(b"STARTTLS"), Action::StartTls(_)));
    assert!(say(&mut s, "STARTTLS now").starts_with("501"));
    s.tls_started(true);
    assert!(say(&mut s, "STARTTLS").starts_with("503"));
}

#[test]
fn mail_before_auth_is_refused() {
    let mut s = session(true, true);
    say(&mut s, "EHLO c");
    for cmd in [
        "MAIL FROM:<a@b.c>",
        "RCPT TO:<a@b.c>",
        "DATA",
        "BDAT 10 LAST",
    ] {
        assert!(say(&mut s, cmd).starts_with("530 5.7.0"), "{cmd}");
    }
}

#[test]
fn three_bad_logins_close_the_connection() {
    let mut s = session(true, true);
    say(&mut s, "EHLO c");
    let bad = Error::BadCredentials {
        mailbox: "a@b.c".into(),
    };
    assert!(!s.login_failed(&bad).close);
    assert!(!s.login_failed(&bad).close);
    let last = s.login_failed(&bad);
    assert!(last.close && last.text.starts_with("421 4.7.0"), "{last:?}");
}

#[test]
fn malformed_plain_counts_as_a_failure() {
    let mut s = session(true, true);
    say(&mut s, "EHLO c");
    let other = b64("bob@x.com\0alice@x.com\0pw");
    assert!(say(&mut s, &format!("AUTH PLAIN {other}")).starts_with("535 5.7.8"));
}

#[test]
fn long_lines_are_refused_except_auth() {
    let mut s = session(true, true);
    say(&mut s, "EHLO c");
    let long = format!("NOOP {}", "x".repeat(600));
    assert!(say(&mut s, &long).starts_with("500 5.5.2"));
    let long_auth = format!(
        "AUTH PLAIN {}",
        b64(&format!("\0alice@x.com\0{}", "p".repeat(2000)))
    );
    assert_eq!(login(&mut s, &long_auth).0, "alice@x.com");
}

#[test]
fn quit_closes_and_unknown_commands_are_refused() {
    let mut s = session(false, true);
    assert!(say(&mut s, "FOO bar").starts_with("500 5.5.2"));
    assert!(say(&mut s, "EXPN list").starts_with("502"));
    let r = say_closing(&mut s, "QUIT");
    assert!(r.starts_with("221"));
}

#[test]
fn too_many_commands_before_login_close_the_connection() {
    let mut s = session(true, true);
    for _ in 0..Limits::default().preauth_max_commands {
        assert_eq!(say(&mut s, "NOOP"), "250 2.0.0 OK\r\n");
    }
    let r = say_closing(&mut s, "NOOP");
    assert!(r.starts_with("421"));
}

#[test]
fn passthrough_keeps_only_what_upstream_honours() {
    let upstream: Vec<String> = [
        "SIZE 35882577",
        "PIPELINING",
        "AUTH LOGIN XOAUTH2",
        "STARTTLS",
        "X-EXPS GSSAPI",
        "CHUNKING",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        passthrough(&upstream),
        vec!["SIZE 35882577", "PIPELINING", "CHUNKING"]
    );
}

#[test]
fn configured_limits_replace_the_defaults() {
    let limits = PreauthLimits {
        max_line: 1000,
        max_literal: 0,
        max_commands: 3,
        max_bytes: 20_000,
    };
    let mut s = session(true, true).with_limits(limits);
    assert_eq!(
        s.max_line(),
        MAX_AUTH_LINE,
        "AUTH lines keep RFC 4954's 12288"
    );
    assert_eq!(s.max_bytes(), 20_000);
    assert!(s.too_much_input().close && s.too_much_input().text.starts_with("421 4.7.0 "));
    // 600 octets: too long under the default 512, fine under 1000.
    assert!(say(&mut s, &format!("EHLO {}", "x".repeat(600))).starts_with("250-"));
    assert!(say(&mut s, &format!("NOOP {}", "x".repeat(1000))).starts_with("500 5.5.2"));
    assert_eq!(say(&mut s, "NOOP"), "250 2.0.0 OK\r\n");
    let r = say_closing(&mut s, "NOOP");
    assert!(r.starts_with("421 4.7.0"), "{r:?}");
    // Over-long lines count as commands too.
    let mut s = session(true, true).with_limits(limits);
    for _ in 0..3 {
        assert!(matches!(s.on_too_long(), Action::Reply(r) if !r.close));
    }
    assert!(matches!(s.on_too_long(), Action::Reply(r) if r.close));
}

#[test]
fn a_refused_source_is_told_and_closed() {
    let mut s = session(true, true);
    let r = s.login_failed(&Error::SourceBlocked);
    assert!(r.close && r.text.starts_with("421 4.7.0 "), "{r:?}");
}

#[test]
fn the_default_line_limit_is_the_constant() {
    assert_eq!(
        session(true, true).max_line(),
        <Session as PreAuth>::MAX_LINE
    );
}

#[test]
fn greeting_refusals_are_421() {
    assert_eq!(
        reply::closing("454 4.7.0 Mailbox a@b.c needs the relay admin\r\n"),
        "421 4.4.0 Mailbox a@b.c needs the relay admin\r\n"
    );
}
