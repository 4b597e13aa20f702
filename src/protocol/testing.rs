//! Helpers for the pre-auth state machines' tests: a line in, the reply or the login out.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{Action, PreAuth};

/// Feeds `line` and returns the reply text, panicking on any other action.
pub fn say<S: PreAuth>(s: &mut S, line: &str) -> String {
    match s.on_line(line.as_bytes()) {
        Action::Reply(r) => r.text.into_owned(),
        other => panic!("{line}: expected a reply, got {other:?}"),
    }
}

/// Feeds `line` and returns the text of the reply, panicking on any other action or on
/// a reply that keeps the connection open.
pub fn say_closing<S: PreAuth>(s: &mut S, line: &str) -> String {
    match s.on_line(line.as_bytes()) {
        Action::Reply(r) if r.close => r.text.into_owned(),
        other => panic!("{line}: expected a closing reply, got {other:?}"),
    }
}

/// The user and password of a login action, panicking on any other.
pub fn login(action: Action) -> (String, String) {
    match action {
        Action::Login(c) => (c.user, c.password.expose().to_owned()),
        other => panic!("expected a login, got {other:?}"),
    }
}

pub fn b64(s: &str) -> String {
    STANDARD.encode(s)
}
