//! Why a sign-in produced no token worth storing, with a message that says what to do,
//! and which way the admin signed in (it decides the hints).

use std::io;
use std::time::Duration;

use crate::datetime::duration_words;
use crate::oauth::IdpError;

/// Which way the admin signs in; it decides the hints in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    DeviceCode,
    Browser,
    Paste,
}

/// Why a sign-in did not produce a token worth storing. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error(
        "the sign-in code expired before the sign-in was finished (expired_token); run the \
         command again and finish the sign-in in time"
    )]
    Expired,
    #[error("the sign-in was declined (authorization_declined); run the command again")]
    Declined,
    #[error(
        "Entra did not recognise the device code (bad_verification_code); run the command again"
    )]
    BadVerificationCode,
    #[error("no sign-in came back within {}; run the command again", duration_words(*.0))]
    TimedOut(Duration),
    #[error(
        "the redirect does not carry the `state` of this sign-in (a stale or forged address); \
         nothing was stored; run the command again and open the address it prints"
    )]
    StateMismatch,
    #[error("the sign-in failed: {error}: {description}")]
    Denied { error: String, description: String },
    #[error(
        "the address has no authorization code (`code=`); paste the whole address the browser \
         ended on"
    )]
    NoCode,
    #[error(
        "{signed_in} signed in, but {expected} was expected; nothing was stored. To sign in as \
         {expected}, sign out of Microsoft 365 in the browser first or use a private \
         window{}", wrong_user_hint(*.method, expected)
    )]
    WrongUser {
        signed_in: String,
        expected: String,
        method: Method,
    },
    #[error("Entra returned no id_token, so who signed in cannot be checked; nothing was stored")]
    NoIdToken,
    #[error("the id_token cannot be read: {0}; nothing was stored")]
    BadIdToken(&'static str),
    #[error("Entra returned no refresh token (was offline_access granted?); nothing was stored")]
    NoRefreshToken,
    #[error("{error}{}", hint.map(|h| format!("\nhint: {h}")).unwrap_or_default())]
    Idp {
        error: IdpError,
        hint: Option<&'static str>,
    },
    #[error("the loopback listener for the browser's redirect: {0}")]
    Listener(io::Error),
}

/// Wraps an endpoint failure of a sign-in by `method`, with a hint when Entra's answer
/// points at the app registration.
pub fn idp_error(error: IdpError, method: Method) -> FlowError {
    let public_client_flows = matches!(
        &error,
        IdpError::Rejected { error, codes, .. }
            if error == "unauthorized_client" || codes.contains(&7_000_218)
    );
    let hint = public_client_flows.then_some(match method {
        Method::DeviceCode => {
            "the device code sign-in needs \"Allow public client flows\" turned on for the app \
             registration (Entra admin center: App registrations > the app > Authentication > \
             Advanced settings); or sign in with --browser or --paste"
        }
        Method::Browser | Method::Paste => {
            "a public client needs \"Allow public client flows\" turned on for the app \
             registration and its redirect URI under \"Mobile and desktop applications\" \
             (http://localhost for --browser, \
             https://login.microsoftonline.com/common/oauth2/nativeclient for --paste); a \
             confidential client needs its client secret in the mailbox registration"
        }
    });
    FlowError::Idp { error, hint }
}

fn wrong_user_hint(method: Method, expected: &str) -> String {
    match method {
        Method::DeviceCode => {
            "; or sign in with --browser, which fills in the account (login_hint)".to_owned()
        }
        Method::Browser | Method::Paste => {
            format!("; the sign-in page is filled in with {expected} (login_hint): keep it")
        }
    }
}
