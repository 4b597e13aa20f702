//! The SASL pieces: the base64 response decoder, the PLAIN decoder (and its round trip),
//! PLAIN and LOGIN exchanges step by step, and the XOAUTH2 encoder.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use m365_relay::protocol::sasl::{
    Exchange, LOGIN_PASSWORD, LOGIN_USERNAME, Mechanism, SaslError, Step, decode_plain,
    decode_response, xoauth2,
};
use m365_relay::secret::AccessToken;

/// A client response: raw, or these bytes in base64 (to get past the decoder).
#[derive(Arbitrary, Debug)]
enum Response {
    Raw(Vec<u8>),
    Encoded(Vec<u8>),
}

impl Response {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Response::Raw(b) => b.clone(),
            Response::Encoded(b) => STANDARD.encode(b).into_bytes(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Decode(Vec<u8>),
    Plain(Vec<u8>),
    PlainRoundTrip(String, String, String),
    Exchange {
        login: bool,
        initial: Option<Response>,
        steps: Vec<Response>,
    },
    Mechanism(String),
    Xoauth2(String, String),
}

fuzz_target!(|ops: Vec<Op>| {
    for op in ops {
        run(op);
    }
});

fn run(op: Op) {
    match op {
        Op::Decode(line) => {
            if let Ok(bytes) = decode_response(&line) {
                assert!(bytes.len() <= line.len(), "base64 decodes to less");
            }
        }
        Op::Plain(message) => {
            if let Ok(c) = decode_plain(&message) {
                check_credentials(&c.user, c.password.expose());
            }
        }
        Op::PlainRoundTrip(authzid, user, password) => {
            let message = format!("{authzid}\0{user}\0{password}");
            let valid = !user.is_empty()
                && !password.is_empty()
                && ![&authzid, &user, &password]
                    .iter()
                    .any(|s| s.contains('\0'));
            match decode_plain(message.as_bytes()) {
                Ok(c) => {
                    assert!(valid, "accepted {message:?}");
                    assert_eq!((c.user.as_str(), c.password.expose()), (&*user, &*password));
                    assert!(authzid.is_empty() || authzid.eq_ignore_ascii_case(&user));
                }
                Err(SaslError::AuthzidMismatch) => {
                    assert!(valid && !authzid.eq_ignore_ascii_case(&user));
                }
                Err(_) => assert!(!valid, "refused {message:?}"),
            }
        }
        Op::Exchange {
            login,
            initial,
            steps,
        } => {
            let mechanism = if login {
                Mechanism::Login
            } else {
                Mechanism::Plain
            };
            let initial = initial.map(|r| r.bytes());
            let (mut next, mut step) = Exchange::start(mechanism, initial.as_deref());
            let mut steps = steps.iter();
            loop {
                assert_eq!(
                    next.is_some(),
                    matches!(step, Step::Challenge(_)),
                    "an exchange goes on exactly while it challenges"
                );
                match &step {
                    Step::Challenge(c) => {
                        assert!([LOGIN_USERNAME, LOGIN_PASSWORD, ""].contains(c));
                    }
                    Step::Done(c) if mechanism == Mechanism::Plain => {
                        check_credentials(&c.user, c.password.expose());
                    }
                    _ => {}
                }
                let (Some(exchange), Some(response)) = (next, steps.next()) else {
                    break;
                };
                (next, step) = exchange.step(&response.bytes());
            }
        }
        Op::Mechanism(name) => {
            if let Some(m) = Mechanism::parse(&name) {
                let expected = match m {
                    Mechanism::Plain => "PLAIN",
                    Mechanism::Login => "LOGIN",
                };
                assert!(name.eq_ignore_ascii_case(expected));
            }
        }
        Op::Xoauth2(user, token) => {
            let encoded = xoauth2(&user, &AccessToken::new(token.clone()));
            let raw = STANDARD.decode(encoded).expect("XOAUTH2 is valid base64");
            assert_eq!(
                raw,
                format!("user={user}\x01auth=Bearer {token}\x01\x01").as_bytes()
            );
        }
    }
}

/// What PLAIN hands on: a user and a password, neither empty, neither holding NUL.
fn check_credentials(user: &str, password: &str) {
    assert!(!user.is_empty() && !password.is_empty());
    assert!(!user.contains('\0') && !password.contains('\0'));
}
