//! The IMAP pre-login state machine, line by line and literal by literal, without I/O.

use super::*;
use crate::protocol::testing::{b64, login, say, say_closing};
use crate::protocol::{PreAuth, PreauthLimits};

#[test]
fn capabilities_follow_the_state() {
    let mut plain_remote = Session::new(false, false);
    let caps = say(&mut plain_remote, "a CAPABILITY");
    assert!(
        caps.starts_with("* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID"),
        "{caps}"
    );
    assert!(
        caps.contains("STARTTLS") && caps.contains("LOGINDISABLED") && !caps.contains("AUTH="),
        "{caps}"
    );
    assert!(caps.ends_with("a OK CAPABILITY completed\r\n"));

    let mut tls = Session::new(true, true);
    let caps = say(&mut tls, "b capability");
    assert!(
        caps.contains("AUTH=PLAIN AUTH=LOGIN")
            && !caps.contains("STARTTLS")
            && !caps.contains("LOGINDISABLED"),
        "{caps}"
    );
    assert!(
        tls.greeting()
            .text
            .starts_with("* OK [CAPABILITY IMAP4rev1 ")
    );
}

#[test]
fn login_with_quoted_strings() {
    let mut s = Session::new(true, true);
    let creds = login(s.on_line(br#"a1 LOGIN "alice@x.com" "p w \"q\" \\ z""#));
    assert_eq!(creds, ("alice@x.com".into(), r#"p w "q" \ z"#.into()));
    let ok = s.login_succeeded("AUTHENTICATE completed.");
    assert_eq!(ok.text, "a1 OK LOGIN completed\r\n");
}

#[test]
fn login_with_synchronizing_and_non_synchronizing_literals() {
    let password = "pä ss \"wörd\"";
    let mut s = Session::new(true, true);
    match s.on_line(b"a2 LOGIN {11}") {
        Action::Literal {
            len: 11,
            ack: Some(ack),
        } => assert_eq!(ack.text, "+ Ready for literal data\r\n"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.on_literal(b"alice@x.com".to_vec()),
        Action::Continue
    ));
    let line = format!(" {{{}+}}", password.len());
    match s.on_line(line.as_bytes()) {
        Action::Literal { len, ack: None } => assert_eq!(len, password.len()),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.on_literal(password.as_bytes().to_vec()),
        Action::Continue
    ));
    assert_eq!(
        login(s.on_line(b"")),
        ("alice@x.com".into(), password.into())
    );
}

#[test]
fn oversized_literals_are_refused_without_losing_framing() {
    let mut s = Session::new(true, true);
    let r = say(&mut s, "a3 LOGIN {100000}");
    assert_eq!(r, "a3 BAD [TOOBIG] Literal too large before login\r\n");
    assert_eq!(say(&mut s, "a4 NOOP"), "a4 OK NOOP completed\r\n");
    let r = say_closing(&mut s, "a5 LOGIN {100000+}");
    assert!(r.starts_with("* BYE [TOOBIG]"));
}

#[test]
fn authenticate_plain_with_and_without_sasl_ir() {
    let mut s = Session::new(true, true);
    let ir = b64("\0alice@x.com\0pw one");
    assert_eq!(
        login(s.on_line(format!("t1 AUTHENTICATE PLAIN {ir}").as_bytes())),
        ("alice@x.com".into(), "pw one".into())
    );
    let ok = s.login_succeeded("[CAPABILITY IMAP4rev1 IDLE MOVE] AUTHENTICATE completed.");
    assert_eq!(
        ok.text,
        "t1 OK [CAPABILITY IMAP4rev1 IDLE MOVE] AUTHENTICATE completed\r\n"
    );

    let mut s = Session::new(true, true);
    assert_eq!(say(&mut s, "t2 AUTHENTICATE plain"), "+ \r\n");
    assert_eq!(login(s.on_line(ir.as_bytes())).0, "alice@x.com");
}

#[test]
fn authenticate_login_and_cancel() {
    let mut s = Session::new(true, true);
    assert_eq!(say(&mut s, "t3 AUTHENTICATE LOGIN"), "+ VXNlcm5hbWU6\r\n");
    assert_eq!(say(&mut s, &b64("bob@x.com")), "+ UGFzc3dvcmQ6\r\n");
    assert_eq!(say(&mut s, "*"), "t3 BAD AUTHENTICATE cancelled\r\n");
    assert_eq!(say(&mut s, "t4 AUTHENTICATE LOGIN"), "+ VXNlcm5hbWU6\r\n");
    assert_eq!(say(&mut s, "!!"), "t4 BAD Invalid base64 in response\r\n");
    assert!(say(&mut s, "t5 AUTHENTICATE XOAUTH2 abc").starts_with("t5 NO [CANNOT]"));
}

#[test]
fn no_password_in_plaintext_from_afar() {
    let mut s = Session::new(false, false);
    assert!(say(&mut s, "a LOGIN alice pw").starts_with("a NO [PRIVACYREQUIRED]"));
    assert!(say(&mut s, "b AUTHENTICATE PLAIN").starts_with("b NO [PRIVACYREQUIRED]"));
    match s.on_line(b"c STARTTLS") {
        Action::StartTls(r) => assert_eq!(r.text, "c OK Begin TLS negotiation now\r\n"),
        other => panic!("{other:?}"),
    }
    s.tls_started(true);
    assert_eq!(say(&mut s, "d STARTTLS"), "d BAD TLS is already active\r\n");
    assert!(matches!(s.on_line(b"e LOGIN alice pw"), Action::Login(_)));
}

#[test]
fn failures_are_mapped_and_counted() {
    let mut s = Session::new(true, true);
    let bad = Error::BadCredentials {
        mailbox: "a@x.com".into(),
    };
    for tag in ["a", "b"] {
        login(s.on_line(format!("{tag} LOGIN a@x.com wrong").as_bytes()));
        let r = s.login_failed(&bad);
        assert_eq!(
            r.text,
            format!("{tag} NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
        );
        assert!(!r.close);
    }
    login(s.on_line(b"c LOGIN a@x.com wrong"));
    let r = s.login_failed(&bad);
    assert!(
        r.close && r.text.ends_with("* BYE Too many failed logins\r\n"),
        "{r:?}"
    );

    let mut s = Session::new(true, true);
    login(s.on_line(b"d LOGIN a@x.com right"));
    let down = Error::UpstreamTimeout {
        server: "x:993".into(),
        during: "login",
    };
    assert!(
        s.login_failed(&down)
            .text
            .starts_with("d NO [UNAVAILABLE] ")
    );
}

#[test]
fn other_commands_before_login() {
    let mut s = Session::new(true, true);
    assert_eq!(say(&mut s, "a SELECT INBOX"), "a BAD Log in first\r\n");
    assert_eq!(say(&mut s, "b FROB"), "b BAD Unknown command\r\n");
    assert_eq!(say(&mut s, "c NOOP"), "c OK NOOP completed\r\n");
    assert!(
        say(&mut s, "d ID (\"name\" \"osTicket\")").starts_with("* ID (\"name\" \"m365-relay\"")
    );
    assert_eq!(say(&mut s, "e ID"), "e BAD Syntax error in arguments\r\n");
    assert_eq!(say(&mut s, ""), "* BAD Syntax error\r\n");
    let r = say_closing(&mut s, "f LOGOUT");
    assert!(r.ends_with("f OK LOGOUT completed\r\n"));
}

#[test]
fn capability_codes_are_found() {
    assert_eq!(
        capability_code("[CAPABILITY IMAP4rev1 IDLE] done"),
        Some("[CAPABILITY IMAP4rev1 IDLE]")
    );
    assert_eq!(capability_code("AUTHENTICATE completed."), None);
    assert_eq!(capability_code("[READ-WRITE] x"), None);
}

fn small_limits() -> PreauthLimits {
    PreauthLimits {
        max_line: 600,
        max_literal: 10,
        max_commands: 4,
        max_bytes: 20_000,
    }
}

#[test]
fn configured_limits_replace_the_defaults() {
    let mut s = Session::new(true, true).with_limits(small_limits());
    assert_eq!((s.max_line(), s.max_bytes()), (600, 20_000));
    assert_eq!(
        s.too_much_input(),
        Reply::closing("* BYE Too much input before login\r\n")
    );
    // A literal of 11 octets is over a limit of 10: refused, or closed if non-synchronizing.
    assert_eq!(
        say(&mut s, "a LOGIN {11}"),
        "a BAD [TOOBIG] Literal too large before login\r\n"
    );
    match s.on_line(b"b LOGIN {10}") {
        Action::Literal {
            len: 10,
            ack: Some(_),
        } => {}
        other => panic!("{other:?}"),
    }
    let r = say_closing(&mut s, "c LOGIN {11+}");
    assert!(r.starts_with("* BYE [TOOBIG]"), "{r:?}");
}

#[test]
fn every_kind_of_command_counts_toward_the_limit() {
    let mut s = Session::new(true, true).with_limits(small_limits());
    assert_eq!(say(&mut s, "a NOOP"), "a OK NOOP completed\r\n");
    assert_eq!(say(&mut s, ""), "* BAD Syntax error\r\n");
    assert!(matches!(s.on_too_long(), Action::Reply(r) if !r.close));
    assert_eq!(say(&mut s, "b NOOP"), "b OK NOOP completed\r\n");
    match s.on_too_long() {
        Action::Reply(r) => assert!(
            r.close && r.text == "* BYE Too many commands before login\r\n",
            "{r:?}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_refused_source_gets_bye_unavailable() {
    let mut s = Session::new(true, true);
    login(s.on_line(b"a LOGIN alice pw"));
    let r = s.login_failed(&Error::SourceBlocked);
    assert!(
        r.close && r.text.starts_with("* BYE [UNAVAILABLE] "),
        "{r:?}"
    );
}

#[test]
fn the_defaults_are_the_constants() {
    assert_eq!(
        Session::new(true, true).max_line(),
        <Session as PreAuth>::MAX_LINE
    );
    assert_eq!(Limits::default().max_literal_imap, command::MAX_LITERAL);
}
