//! SASL pieces as small pure functions: decoding what clients send us (PLAIN, RFC 4616;
//! LOGIN, draft-murchison-sasl-login) and encoding what we send upstream (XOAUTH2, as
//! Microsoft documents it: `user=…^Aauth=Bearer …^A^A`, standard base64).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::secret::{AccessToken, Password};
use zeroize::Zeroizing;

/// The mechanisms the relay accepts from clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    pub fn parse(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("PLAIN") {
            Some(Self::Plain)
        } else if name.eq_ignore_ascii_case("LOGIN") {
            Some(Self::Login)
        } else {
            None
        }
    }
}

/// A user name and password a client presented.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: String,
    pub password: Password,
}

/// Why a SASL response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("not valid base64")]
    Base64,
    #[error("malformed PLAIN message")]
    Malformed,
    #[error("authorization identity differs from authentication identity")]
    AuthzidMismatch,
}

/// Decodes one base64 line of a SASL exchange; `=` stands for an empty response
/// (RFC 4954 §4).
pub fn decode_response(line: &[u8]) -> Result<Zeroizing<Vec<u8>>, SaslError> {
    let line = line.trim_ascii();
    if line == b"=" {
        return Ok(Zeroizing::new(Vec::new()));
    }
    STANDARD
        .decode(line)
        .map(Zeroizing::new)
        .map_err(|_| SaslError::Base64)
}

/// Decodes a PLAIN message `[authzid] NUL authcid NUL passwd` (RFC 4616 §2). An authzid
/// is accepted when it is empty or names the same user: a client may not ask to act as
/// another mailbox.
pub fn decode_plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(passwd), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let utf8 = |b: &[u8]| {
        std::str::from_utf8(b)
            .map(|s| Zeroizing::new(s.to_owned()))
            .map_err(|_| SaslError::Malformed)
    };
    let (authzid, user, password) = (utf8(authzid)?, utf8(authcid)?, utf8(passwd)?);
    if user.is_empty() || password.is_empty() {
        return Err(SaslError::Malformed);
    }
    if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(&user) {
        return Err(SaslError::AuthzidMismatch);
    }
    Ok(Credentials {
        user: user.to_string(),
        password: Password::new(password.as_str()),
    })
}

/// `Username:` in base64, the first AUTH LOGIN challenge.
pub const LOGIN_USERNAME: &str = "VXNlcm5hbWU6";
/// `Password:` in base64, the second AUTH LOGIN challenge.
pub const LOGIN_PASSWORD: &str = "UGFzc3dvcmQ6";

/// A PLAIN or LOGIN exchange in progress, independent of the protocol that carries it:
/// each protocol wraps the challenges in its own syntax (`334 ...`, `+ ...`).
#[derive(Debug)]
pub enum Exchange {
    /// PLAIN, waiting for the client's message.
    Plain,
    /// LOGIN, waiting for the user name.
    LoginUser,
    /// LOGIN, waiting for the password.
    LoginPassword { user: String },
}

/// What a step of an exchange produced.
#[derive(Debug)]
pub enum Step {
    /// Send this challenge (base64, possibly empty) and wait for the next line.
    Challenge(&'static str),
    /// The exchange is complete.
    Done(Credentials),
    /// The client sent `*`.
    Cancelled,
    /// The client's response could not be used.
    Invalid(SaslError),
}

impl Exchange {
    /// Starts `mechanism`, with the initial response if the client sent one (`=` for an
    /// empty one). Returns the exchange to continue, if any, and what to do now.
    pub fn start(mechanism: Mechanism, initial: Option<&[u8]>) -> (Option<Exchange>, Step) {
        let exchange = match mechanism {
            Mechanism::Plain => Exchange::Plain,
            Mechanism::Login => Exchange::LoginUser,
        };
        match initial {
            Some(response) => exchange.step(response),
            None => {
                let challenge = match exchange {
                    Exchange::Plain => "",
                    _ => LOGIN_USERNAME,
                };
                (Some(exchange), Step::Challenge(challenge))
            }
        }
    }

    /// The client's next line: `*` cancels (RFC 4954 §4, RFC 9051 §6.2.2), otherwise
    /// base64.
    pub fn step(self, line: &[u8]) -> (Option<Exchange>, Step) {
        if line.trim_ascii() == b"*" {
            return (None, Step::Cancelled);
        }
        let bytes = match decode_response(line) {
            Ok(bytes) => bytes,
            Err(e) => return (None, Step::Invalid(e)),
        };
        match self {
            Exchange::Plain => match decode_plain(bytes.as_slice()) {
                Ok(credentials) => (None, Step::Done(credentials)),
                Err(e) => (None, Step::Invalid(e)),
            },
            Exchange::LoginUser => match std::str::from_utf8(&bytes).map(str::to_owned) {
                Ok(user) => (
                    Some(Exchange::LoginPassword { user }),
                    Step::Challenge(LOGIN_PASSWORD),
                ),
                Err(_) => (None, Step::Invalid(SaslError::Malformed)),
            },
            Exchange::LoginPassword { user } => match std::str::from_utf8(&bytes) {
                Ok(password) => (
                    None,
                    Step::Done(Credentials {
                        user,
                        password: Password::new(password),
                    }),
                ),
                Err(_) => (None, Step::Invalid(SaslError::Malformed)),
            },
        }
    }
}

/// The XOAUTH2 initial client response, base64-encoded, for `user` (the mailbox to open)
/// and `token`. Callers put it on the wire and drop it: it is a bearer credential.
pub fn xoauth2(user: &str, token: &AccessToken) -> Zeroizing<String> {
    let raw = Zeroizing::new(format!(
        "user={user}\x01auth=Bearer {}\x01\x01",
        token.expose()
    ));
    Zeroizing::new(STANDARD.encode(raw.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> Vec<u8> {
        STANDARD.encode(s).into_bytes()
    }

    #[test]
    fn xoauth2_matches_microsofts_worked_example() {
        // The start of Microsoft's example token, cut to a length whose encoding ends the
        // way the documented example does (`...AQE=`: the two 0x01 bytes, one pad).
        let token = AccessToken::new("EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAAQ");
        let encoded = xoauth2("test@contoso.onmicrosoft.com", &token).to_string();
        assert!(encoded.starts_with("dXNlcj10ZXN0QGNvbnRvc28u"), "{encoded}");
        assert!(encoded.ends_with("AQE="), "{encoded}");
        let raw = STANDARD.decode(&encoded).unwrap();
        assert_eq!(
            raw,
            b"user=test@contoso.onmicrosoft.com\x01auth=Bearer EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAAQ\x01\x01"
        );
    }

    #[test]
    fn plain_edge_cases() {
        let ok = |m: &[u8]| decode_plain(m).map(|c| (c.user, c.password.expose().to_owned()));
        assert_eq!(
            ok(b"\0alice@x.com\0pw"),
            Ok(("alice@x.com".into(), "pw".into()))
        );
        assert_eq!(
            ok(b"alice@x.com\0alice@x.com\0p w"),
            Ok(("alice@x.com".into(), "p w".into()))
        );
        assert_eq!(
            ok(b"ALICE@x.com\0alice@x.com\0pw"),
            Ok(("alice@x.com".into(), "pw".into()))
        );
        assert_eq!(
            ok("\0a@x.com\0pässwörd".as_bytes()),
            Ok(("a@x.com".into(), "pässwörd".into()))
        );
        assert_eq!(
            ok(b"bob@x.com\0alice@x.com\0pw"),
            Err(SaslError::AuthzidMismatch)
        );
        for bad in [
            &b"alice\0pw"[..],
            b"\0\0pw",
            b"\0alice\0",
            b"\0a\0b\0c",
            b"",
            b"\0\xff\0pw",
        ] {
            assert_eq!(ok(bad), Err(SaslError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn responses_decode_with_the_empty_marker() {
        assert_eq!(decode_response(b"="), Ok(Zeroizing::new(Vec::new())));
        assert_eq!(
            decode_response(&b64(b"\0a\0b")),
            Ok(Zeroizing::new(b"\0a\0b".to_vec()))
        );
        assert_eq!(decode_response(b"not base64!"), Err(SaslError::Base64));
    }

    fn done(step: Step) -> (String, String) {
        match step {
            Step::Done(c) => (c.user, c.password.expose().to_owned()),
            other => panic!("expected credentials, got {other:?}"),
        }
    }

    #[test]
    fn login_exchange_step_by_step() {
        let (next, step) = Exchange::start(Mechanism::Login, None);
        assert!(matches!(step, Step::Challenge(LOGIN_USERNAME)));
        let (next, step) = next.unwrap().step(&b64(b"bob@x.com"));
        assert!(matches!(step, Step::Challenge(LOGIN_PASSWORD)));
        let (next, step) = next.unwrap().step(&b64("pässwörd".as_bytes()));
        assert!(next.is_none());
        assert_eq!(done(step), ("bob@x.com".into(), "pässwörd".into()));
    }

    #[test]
    fn initial_responses_and_cancel() {
        let (_, step) = Exchange::start(Mechanism::Plain, Some(&b64(b"\0a@x.com\0pw")));
        assert_eq!(done(step), ("a@x.com".into(), "pw".into()));
        let (next, step) = Exchange::start(Mechanism::Login, Some(&b64(b"a@x.com")));
        assert!(matches!(step, Step::Challenge(LOGIN_PASSWORD)));
        assert!(matches!(next.unwrap().step(b"*"), (None, Step::Cancelled)));
        let (next, step) = Exchange::start(Mechanism::Plain, None);
        assert!(matches!(step, Step::Challenge("")));
        assert!(matches!(
            next.unwrap().step(b"%%%"),
            (None, Step::Invalid(SaslError::Base64))
        ));
        assert!(matches!(
            Exchange::start(Mechanism::Plain, Some(b"=")),
            (None, Step::Invalid(SaslError::Malformed))
        ));
    }

    #[test]
    fn mechanism_names_are_case_insensitive() {
        assert_eq!(Mechanism::parse("plain"), Some(Mechanism::Plain));
        assert_eq!(Mechanism::parse("LoGiN"), Some(Mechanism::Login));
        assert_eq!(Mechanism::parse("XOAUTH2"), None);
    }
}
