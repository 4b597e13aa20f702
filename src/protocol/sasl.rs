//! SASL pieces as small pure functions: decoding what clients send us (PLAIN, RFC 4616;
//! LOGIN, draft-murchison-sasl-login) and encoding what we send upstream (XOAUTH2, as
//! Microsoft documents it: `user=…^Aauth=Bearer …^A^A`, standard base64).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::secret::{AccessToken, Password};

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
pub fn decode_response(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    let line = line.trim_ascii();
    if line == b"=" {
        return Ok(Vec::new());
    }
    STANDARD.decode(line).map_err(|_| SaslError::Base64)
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
    let utf8 = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| SaslError::Malformed);
    let (authzid, user, password) = (utf8(authzid)?, utf8(authcid)?, utf8(passwd)?);
    if user.is_empty() || password.is_empty() {
        return Err(SaslError::Malformed);
    }
    if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(&user) {
        return Err(SaslError::AuthzidMismatch);
    }
    Ok(Credentials {
        user,
        password: Password::new(password),
    })
}

/// Decodes one LOGIN step (user name or password) from its base64 line.
pub fn decode_login_step(line: &[u8]) -> Result<String, SaslError> {
    String::from_utf8(decode_response(line)?).map_err(|_| SaslError::Malformed)
}

/// The XOAUTH2 initial client response, base64-encoded, for `user` (the mailbox to open)
/// and `token`. Callers put it on the wire and drop it: it is a bearer credential.
pub fn xoauth2(user: &str, token: &AccessToken) -> String {
    let raw = format!("user={user}\x01auth=Bearer {}\x01\x01", token.expose());
    STANDARD.encode(raw)
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
        let encoded = xoauth2("test@contoso.onmicrosoft.com", &token);
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
        assert_eq!(decode_response(b"="), Ok(Vec::new()));
        assert_eq!(decode_response(&b64(b"\0a\0b")), Ok(b"\0a\0b".to_vec()));
        assert_eq!(decode_response(b"not base64!"), Err(SaslError::Base64));
        assert_eq!(
            decode_login_step(&b64(b"alice@x.com")),
            Ok("alice@x.com".into())
        );
    }

    #[test]
    fn mechanism_names_are_case_insensitive() {
        assert_eq!(Mechanism::parse("plain"), Some(Mechanism::Plain));
        assert_eq!(Mechanism::parse("LoGiN"), Some(Mechanism::Login));
        assert_eq!(Mechanism::parse("XOAUTH2"), None);
    }
}
