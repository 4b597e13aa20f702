//! Property tests of the pre-auth state machines and the SASL decoders (proptest; the
//! fuzz targets in `fuzz/` push the same properties much further). Each session is driven
//! through the real `LineReader` over an in-memory reader by [`model::run`], which plays
//! the relay's pre-auth driver and checks every reply on the way:
//!
//! - any byte string gets a reply to each of its lines, or a clean close, never a panic;
//! - the same input cut into reads of any size gives the same actions;
//! - the SASL decoders take any bytes without panicking, and PLAIN decodes what it encodes;
//! - an SMTP DATA stream ends at its end marker in any chunking, and unstuffs to the message.

pub mod model;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use m365_relay::error::Error;
use m365_relay::protocol::sasl::{Exchange, Mechanism, Step, decode_plain, decode_response};
use m365_relay::protocol::{PreAuth, imap, pop3, smtp};
use proptest::prelude::*;
use proptest::test_runner::Config;

use model::{Event, Input};

// === the sessions ===

fn smtp_session(tls: bool, auth: bool) -> smtp::Session {
    let extensions: Vec<String> = smtp::EXCHANGE_ONLINE_EXTENSIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    smtp::Session::new(Arc::from("relay.test"), extensions.into(), tls, auth)
}

fn imap_session(tls: bool, auth: bool) -> imap::Session {
    imap::Session::new(tls, auth)
}

fn pop3_session(tls: bool, auth: bool) -> pop3::Session {
    pop3::Session::new(tls, auth)
}

/// The upstream's answer to the `n`-th login: one in sixteen codes logs in, the others
/// are each kind of failure.
fn outcome(codes: &[u8], n: usize) -> Result<String, Error> {
    match codes.get(n) {
        Some(code) if code % 16 == 15 => Ok("[CAPABILITY IMAP4rev1 IDLE] Logged in".into()),
        Some(code) => Err(model::login_error(*code)),
        None => Err(model::login_error(0)),
    }
}

fn run<S: PreAuth>(session: S, segments: &[Vec<u8>], chunk: usize, codes: &[u8]) -> Vec<Event> {
    let input = Input {
        segments,
        chunk,
        auth_after_tls: true,
    };
    model::run(session, &input, |n| outcome(codes, n))
}

/// The session ended as a session may: input ran out, it said goodbye, or it logged in.
fn ends_cleanly(events: &[Event]) -> bool {
    match events.last() {
        Some(Event::Eof | Event::Reply { close: true, .. }) => true,
        Some(Event::Reply { .. }) => {
            events.len() >= 2 && matches!(events[events.len() - 2], Event::Login { .. })
        }
        _ => false,
    }
}

// === input strategies ===

/// Words of SMTP, IMAP, POP3 and SASL before login, and some that sit on limits.
const WORDS: &[&str] = &[
    "EHLO c",
    "HELO c",
    "STARTTLS",
    "AUTH",
    "PLAIN",
    "LOGIN",
    "RSET",
    "NOOP",
    "QUIT",
    "MAIL",
    "DATA",
    "a1",
    "b2",
    "*",
    "+",
    "CAPABILITY",
    "AUTHENTICATE",
    "LOGOUT",
    "ID",
    "NIL",
    "(",
    ")",
    "\"",
    "\\",
    "{",
    "}",
    "{0}",
    "{3}",
    "{4+}",
    "{4097}",
    "{99999999999}",
    "CAPA",
    "USER",
    "PASS",
    "STLS",
    "STAT",
    "=",
    "alice@contoso.com",
];

/// One piece of a client line.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let bytes = || prop::collection::vec(any::<u8>(), 0..16);
    prop_oneof![
        6 => prop::sample::select(WORDS).prop_map(|w| w.as_bytes().to_vec()),
        3 => Just(b" ".to_vec()),
        1 => bytes(),
        1 => "[ -~]{0,12}".prop_map(String::into_bytes),
        1 => bytes().prop_map(|b| STANDARD.encode(b).into_bytes()),
        2 => ("[a-z@.]{0,12}", "[ -~]{0,12}").prop_map(|(user, pw)| {
            STANDARD.encode(format!("\0{user}\0{pw}")).into_bytes()
        }),
        1 => (bytes(), any::<bool>()).prop_map(|(data, plus)| {
            let plus = if plus { "+" } else { "" };
            [format!("{{{}{plus}}}\r\n", data.len()).into_bytes(), data].concat()
        }),
        1 => "[ -~]{0,12}".prop_map(|s| format!("{s:?}").into_bytes()),
    ]
}

/// A client line, with one of the line ends clients use (or none).
fn line() -> impl Strategy<Value = Vec<u8>> {
    const ENDS: [&[u8]; 4] = [b"\r\n", b"\n", b"\r", b""];
    let end = prop::sample::select(&ENDS[..]);
    (prop::collection::vec(piece(), 0..6), end).prop_map(|(pieces, end)| {
        let mut line = pieces.concat();
        line.extend_from_slice(end);
        line
    })
}

/// What a client sends between two TLS handshakes: lines, now and then one over every
/// limit (13 KB).
fn segment() -> impl Strategy<Value = Vec<u8>> {
    let long = Just([vec![b'x'; 13 * 1024], b"\r\n".to_vec()].concat());
    prop::collection::vec(prop_oneof![40 => line(), 1 => long], 0..12)
        .prop_map(|lines| lines.concat())
}

fn segments() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(segment(), 1..3)
}

/// Read sizes, from one byte at a time to everything at once.
const CHUNKS: [usize; 5] = [1, 3, 64, 4096, usize::MAX];

fn chunk() -> impl Strategy<Value = usize> {
    prop::sample::select(&CHUNKS[..])
}

fn config() -> Config {
    Config {
        cases: 64,
        ..Config::default()
    }
}

// === the properties ===

/// Any bytes: every line answered, the session ends cleanly, no panic (and `model::run`
/// checked every reply's line ends).
fn any_bytes<S: PreAuth>(session: S, bytes: Vec<u8>, chunk: usize, codes: &[u8]) {
    let events = run(session, &[bytes], chunk, codes);
    assert!(ends_cleanly(&events), "{events:?}");
}

/// The same input in reads of every size in [`CHUNKS`]: the same actions.
fn rechunked<S: PreAuth>(new: impl Fn() -> S, segments: &[Vec<u8>], codes: &[u8]) {
    let whole = run(new(), segments, usize::MAX, codes);
    assert!(ends_cleanly(&whole), "{whole:?}");
    for chunk in CHUNKS {
        assert_eq!(
            run(new(), segments, chunk, codes),
            whole,
            "reads of {chunk} bytes"
        );
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn smtp_any_bytes_get_replies_or_a_clean_close(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        chunk in chunk(),
        flags in any::<(bool, bool)>(),
        codes in prop::collection::vec(any::<u8>(), 0..4),
    ) {
        any_bytes(smtp_session(flags.0, flags.1), bytes, chunk, &codes);
    }

    #[test]
    fn imap_any_bytes_get_replies_or_a_clean_close(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        chunk in chunk(),
        flags in any::<(bool, bool)>(),
        codes in prop::collection::vec(any::<u8>(), 0..4),
    ) {
        any_bytes(imap_session(flags.0, flags.1), bytes, chunk, &codes);
    }

    #[test]
    fn pop3_any_bytes_get_replies_or_a_clean_close(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        chunk in chunk(),
        flags in any::<(bool, bool)>(),
        codes in prop::collection::vec(any::<u8>(), 0..4),
    ) {
        any_bytes(pop3_session(flags.0, flags.1), bytes, chunk, &codes);
    }

    #[test]
    fn smtp_rechunked_input_gives_the_same_actions(
        segments in segments(),
        flags in any::<(bool, bool)>(),
        codes in prop::collection::vec(any::<u8>(), 0..4),
    ) {
        rechunked(|| smtp_session(flags.0, flags.1), &segments, &codes);
    }

    #[test]
    fn imap_rechunked_input_gives_the_same_actions(
        segments in segments(),
        flags in any::<(bool, bool)>(),
        codes in prop::collection::vec(any::<u8>(), 0..4),
    ) {
        rechunked(|| imap_session(flags.0, flags.1), &segments, &codes);
    }

    #[test]
    fn pop3_rechunked_input_gives_the_same_actions(
        segments in segments(),
        flags in any::<(bool, bool)>(),
        codes in prop::collection::vec(any::<u8>(), 0..4),
    ) {
        rechunked(|| pop3_session(flags.0, flags.1), &segments, &codes);
    }

    #[test]
    fn sasl_decoders_take_any_bytes(
        line in prop::collection::vec(any::<u8>(), 0..256),
        responses in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..4),
        encode in any::<bool>(),
    ) {
        let _ = decode_response(&line);
        if let Ok(c) = decode_plain(&line) {
            prop_assert!(!c.user.is_empty() && !c.password.expose().is_empty());
        }
        for mechanism in [Mechanism::Plain, Mechanism::Login] {
            let (mut next, mut step) = Exchange::start(mechanism, Some(&line));
            for response in &responses {
                prop_assert_eq!(next.is_some(), matches!(step, Step::Challenge(_)));
                let Some(exchange) = next else { break };
                let response = match encode {
                    true => STANDARD.encode(response).into_bytes(),
                    false => response.clone(),
                };
                (next, step) = exchange.step(&response);
            }
        }
    }

    #[test]
    fn plain_decodes_what_it_encodes(
        user in "[^\0]{1,24}",
        password in "[^\0]{1,24}",
        same_authzid in any::<bool>(),
    ) {
        let authzid = if same_authzid { user.to_uppercase() } else { String::new() };
        let line = STANDARD.encode(format!("{authzid}\0{user}\0{password}"));
        let (next, step) = Exchange::start(Mechanism::Plain, Some(line.as_bytes()));
        prop_assert!(next.is_none());
        match step {
            Step::Done(c) if authzid.is_empty() || authzid.eq_ignore_ascii_case(&user) => {
                prop_assert_eq!(c.user, user);
                prop_assert_eq!(c.password.expose(), password.as_str());
            }
            Step::Invalid(_) => prop_assert!(!authzid.eq_ignore_ascii_case(&user)),
            other => prop_assert!(false, "{other:?}"),
        }
    }
}

// === whole logins in every chunking ===

fn b64(s: &str) -> String {
    STANDARD.encode(s)
}

/// A login that goes through each protocol's deep states (STARTTLS, a refused try, a
/// SASL exchange over several lines, literals) in reads of every size from 1 byte to all
/// of it, and the same actions each time.
fn every_chunking<S: PreAuth>(new: impl Fn() -> S, segments: &[Vec<u8>], logins: usize) {
    let codes = [0, 15];
    let whole = run(new(), segments, usize::MAX, &codes);
    let tried = whole
        .iter()
        .filter(|e| matches!(e, Event::Login { .. }))
        .count();
    assert_eq!(tried, logins, "{whole:#?}");
    let total: usize = segments.iter().map(Vec::len).sum();
    for chunk in 1..=total {
        assert_eq!(
            run(new(), segments, chunk, &codes),
            whole,
            "reads of {chunk} bytes"
        );
    }
}

#[test]
fn an_smtp_login_is_the_same_in_any_chunking() {
    let before_tls = b"EHLO app\r\nSTARTTLS\r\nMAIL FROM:<dropped@x.com>\r\n".to_vec();
    let after_tls = format!(
        "EHLO app\r\nAUTH LOGIN\r\n{}\r\n{}\r\nAUTH PLAIN {}\r\nMAIL FROM:<a@b.c>\r\n",
        b64("alice@contoso.com"),
        b64("wrong"),
        b64("\0alice@contoso.com\0right pw")
    );
    every_chunking(
        || smtp_session(false, false),
        &[before_tls, after_tls.into_bytes()],
        2,
    );
}

#[test]
fn an_imap_login_is_the_same_in_any_chunking() {
    let before_tls = b"a CAPABILITY\r\nb STARTTLS\r\nc LOGIN dropped x\r\n".to_vec();
    let after_tls = format!(
        "c ID (\"name\" \"app\")\r\nd AUTHENTICATE PLAIN\r\n{}\r\ne LOGIN {{17}}\r\nalice@contoso.com {{8+}}\r\nright pw\r\nf SELECT INBOX\r\n",
        b64("\0alice@contoso.com\0wrong"),
    );
    every_chunking(
        || imap_session(false, false),
        &[before_tls, after_tls.into_bytes()],
        2,
    );
}

#[test]
fn a_pop3_login_is_the_same_in_any_chunking() {
    let before_tls = b"CAPA\r\nSTLS\r\nUSER dropped\r\n".to_vec();
    let after_tls = format!(
        "CAPA\r\nAUTH LOGIN {}\r\n{}\r\nUSER alice@contoso.com\r\nPASS right pw\r\nSTAT\r\n",
        b64("alice@contoso.com"),
        b64("wrong"),
    );
    every_chunking(
        || pop3_session(false, false),
        &[before_tls, after_tls.into_bytes()],
        2,
    );
}

// === the DATA stream after login (crate::submission::data) ===

/// RFC 5321 §4.5.2 transparency, written independently of the relay's code.
fn dot_stuffed(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out
}

proptest! {
    #![proptest_config(Config::with_cases(300))]

    /// Any message of CRLF lines (dots, bare CRs, empty lines), dot-stuffed and ended with
    /// `.` CRLF, ends exactly there however the stream is cut into reads, and unstuffing
    /// gives the message back.
    #[test]
    fn a_data_stream_ends_at_its_end_marker_in_any_chunking(
        lines in proptest::collection::vec("[.a\r ]{0,5}", 0..24),
        cuts in proptest::collection::vec(1usize..40, 1..12),
    ) {
        use m365_relay::submission::data::{DataEnd, unstuffed_message};
        let message: Vec<u8> = lines.iter().flat_map(|l| format!("{l}\r\n").into_bytes()).collect();
        let mut stream = dot_stuffed(&message);
        stream.extend_from_slice(b".\r\nQUIT\r\n");
        let end_at = stream.len() - b"QUIT\r\n".len();
        let mut end = DataEnd::default();
        let (mut offset, mut found, mut cut) = (0, None, cuts.iter().cycle());
        while offset < stream.len() && found.is_none() {
            let n = (*cut.next().unwrap()).min(stream.len() - offset);
            found = end.scan(&stream[offset..offset + n]).map(|at| offset + at);
            offset += n;
        }
        prop_assert_eq!(found, Some(end_at));
        prop_assert_eq!(unstuffed_message(&stream[..end_at]), message);
    }
}
