//! The administrator's interactive sign-ins for `m365-relay mailbox authorize`: each one
//! gets a refresh token for a mailbox's user from Entra ID (PROTOCOL.md A8).
//!
//! - **Device code** (RFC 8628): the user opens `https://microsoft.com/devicelogin` on any
//!   device and types a short code; [`wait_for_device_sign_in`] polls the token endpoint
//!   until they are done. The app registration needs "Allow public client flows".
//! - **Browser** (authorization code with PKCE, RFC 7636, and a loopback redirect,
//!   RFC 8252 §7.3): the browser comes back to `http://localhost:PORT/`, where a
//!   [`Loopback`] listener on 127.0.0.1 takes the code.
//! - **Paste**: the same, but Entra sends the browser to its own blank `nativeclient` page;
//!   the admin pastes the address it ended on, and [`code_from_pasted`] reads it.
//!
//! Whichever way, [`check_identity`] then makes sure that the user who signed in is the one
//! whose token is wanted. The requests themselves are [`TokenEndpoint`]'s; printing and
//! storing are the CLI's. Nothing here prints or logs a token or a code.
//!
//! [`TokenEndpoint`]: super::endpoint::TokenEndpoint

mod device;
mod error;
mod identity;
mod loopback;
mod redirect;
#[cfg(test)]
mod tests;

pub use device::{SLOW_DOWN_STEP, wait_for_device_sign_in};
pub use error::{FlowError, Method, idp_error};
pub use identity::{check_identity, signed_in_user};
pub use loopback::{DEFAULT_BROWSER_TIMEOUT, Loopback};
pub use redirect::code_from_pasted;

/// The admin's words for dates and durations, where the command line has long found them.
pub use crate::datetime::{countdown, duration_words, utc};
