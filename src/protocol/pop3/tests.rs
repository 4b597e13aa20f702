//! The POP3 pre-login state machine, line by line, without I/O.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::*;
use crate::protocol::testing::{login, say, say_closing};
use crate::protocol::{PreAuth, PreauthLimits};

#[test]
fn capa_follows_the_state() {
    let mut remote = Session::new(false, false);
    let capa = say(&mut remote, "CAPA");
    assert!(
        capa.starts_with("+OK") && capa.ends_with("\r\n.\r\n"),
        "{capa}"
    );
    assert!(
        capa.contains("\r\nSTLS\r\n") && !capa.contains("USER") && !capa.contains("SASL"),
        "{capa}"
    );
    let mut tls = Session::new(true, true);
    let capa = say(&mut tls, "capa");
    assert!(
        capa.contains("\r\nUSER\r\nSASL PLAIN LOGIN\r\n") && !capa.contains("STLS"),
        "{capa}"
    );
}

#[test]
fn user_pass_keeps_spaces_in_the_password() {
    let mut s = Session::new(true, true);
    assert_eq!(say(&mut s, "PASS x"), "-ERR Send USER first\r\n");
    assert_eq!(say(&mut s, "USER alice@x.com"), "+OK\r\n");
    assert_eq!(
        login(s.on_line("PASS  pä ss ".as_bytes())),
        ("alice@x.com".into(), " pä ss ".into())
    );
    assert_eq!(
        s.login_succeeded("User successfully authenticated.").text,
        "+OK User successfully authenticated.\r\n"
    );
}

#[test]
fn auth_plain_and_login() {
    let mut s = Session::new(true, true);
    let ir = STANDARD.encode("\0alice@x.com\0pw");
    assert_eq!(
        login(s.on_line(format!("AUTH PLAIN {ir}").as_bytes())).0,
        "alice@x.com"
    );
    let mut s = Session::new(true, true);
    assert_eq!(say(&mut s, "AUTH PLAIN"), "+ \r\n");
    assert_eq!(login(s.on_line(ir.as_bytes())).1, "pw");
    let mut s = Session::new(true, true);
    assert_eq!(say(&mut s, "AUTH LOGIN"), "+ VXNlcm5hbWU6\r\n");
    assert_eq!(
        say(&mut s, &STANDARD.encode("bob@x.com")),
        "+ UGFzc3dvcmQ6\r\n"
    );
    assert_eq!(say(&mut s, "*"), "-ERR Authentication cancelled\r\n");
    assert_eq!(
        say(&mut s, "AUTH XOAUTH2"),
        "-ERR Unsupported authentication mechanism; use PLAIN or LOGIN\r\n"
    );
    assert_eq!(say(&mut s, "AUTH"), "+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n");
}

#[test]
fn stls_and_plaintext_refusal() {
    let mut s = Session::new(false, false);
    assert_eq!(
        say(&mut s, "USER alice"),
        "-ERR Use STLS (or the TLS port) before logging in\r\n"
    );
    assert!(
        matches!(s.on_line(b"STLS"), Action::StartTls(r) if r.text == "+OK Begin TLS negotiation\r\n")
    );
    s.tls_started(true);
    assert_eq!(say(&mut s, "STLS"), "-ERR TLS is already active\r\n");
    assert_eq!(say(&mut s, "USER alice"), "+OK\r\n");
}

#[test]
fn failures_map_to_rfc_3206_codes() {
    let mut s = Session::new(true, true);
    let bad = Error::BadCredentials {
        mailbox: "a".into(),
    };
    assert_eq!(
        s.login_failed(&bad).text,
        "-ERR [AUTH] Authentication failed\r\n"
    );
    assert!(!s.login_failed(&bad).close);
    assert!(s.login_failed(&bad).close);
    let mut s = Session::new(true, true);
    let down = Error::UpstreamTimeout {
        server: "x:995".into(),
        during: "login",
    };
    assert!(s.login_failed(&down).text.starts_with("-ERR [SYS/TEMP] "));
}

#[test]
fn other_commands_before_login() {
    let mut s = Session::new(true, true);
    assert_eq!(say(&mut s, "STAT"), "-ERR Log in first\r\n");
    assert_eq!(say(&mut s, "FROB"), "-ERR Unknown command\r\n");
    assert_eq!(say(&mut s, "NOOP"), "+OK\r\n");
    say_closing(&mut s, "QUIT");
}

#[test]
fn configured_limits_replace_the_defaults() {
    let limits = PreauthLimits {
        max_line: 700,
        max_literal: 0,
        max_commands: 2,
        max_bytes: 20_000,
    };
    let mut s = Session::new(true, true).with_limits(limits);
    assert_eq!((s.max_line(), s.max_bytes()), (700, 20_000));
    assert!(s.too_much_input().close && s.too_much_input().text.starts_with("-ERR "));
    assert!(matches!(s.on_too_long(), Action::Reply(r) if !r.close));
    assert_eq!(say(&mut s, "NOOP"), "+OK\r\n");
    let r = say_closing(&mut s, "NOOP");
    assert!(r.starts_with("-ERR Too many commands"), "{r:?}");
}

#[test]
fn a_refused_source_gets_sys_temp() {
    let mut s = Session::new(true, true);
    let r = s.login_failed(&Error::SourceBlocked);
    assert!(r.close && r.text.starts_with("-ERR [SYS/TEMP] "), "{r:?}");
}

#[test]
fn the_default_line_limit_is_the_constant() {
    assert_eq!(
        Session::new(true, true).max_line(),
        <Session as PreAuth>::MAX_LINE
    );
}
