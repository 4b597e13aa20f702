//! Waiting for a device code sign-in (RFC 8628 §3.4, §3.5): polling the token endpoint
//! at the interval Entra asked for, slowing down when told to, and riding out a few
//! transient failures.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use super::error::{FlowError, Method, idp_error};
use crate::oauth::endpoint::{DeviceAuthorization, MIN_POLL_INTERVAL};
use crate::oauth::{IdpError, TokenGrant};

/// What RFC 8628 §3.5 adds to the poll interval at each `slow_down`.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Transient endpoint failures in a row that a device code poll rides out.
pub(super) const MAX_TRANSIENT_FAILURES: u32 = 5;
/// Longest back-off between polls after transient failures (RFC 8628 §3.5).
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Polls for the tokens of a device code sign-in until the user finishes it, declines it,
/// or the code expires (RFC 8628 §3.4, §3.5). `poll` makes one token request, e.g.
/// [`TokenEndpoint::poll_device_code`](super::endpoint::TokenEndpoint::poll_device_code).
///
/// It waits `interval` before each poll; `authorization_pending` polls again, `slow_down`
/// adds [`SLOW_DOWN_STEP`] to the interval for good, and a transient failure of the
/// endpoint backs off exponentially (a few times in a row at most).
pub async fn wait_for_device_sign_in<P, F>(
    device: &DeviceAuthorization,
    mut poll: P,
) -> Result<TokenGrant, FlowError>
where
    P: FnMut() -> F,
    F: Future<Output = Result<TokenGrant, IdpError>>,
{
    let deadline = Instant::now() + device.expires_in;
    let mut interval = device.interval.max(MIN_POLL_INTERVAL);
    let mut wait = interval;
    let mut failures = 0;
    loop {
        let next = Instant::now() + wait;
        if next > deadline {
            sleep_until(deadline).await;
            return Err(FlowError::Expired);
        }
        sleep_until(next).await;
        let error = match poll().await {
            Ok(grant) => return Ok(grant),
            Err(e) => e,
        };
        match &error {
            IdpError::Rejected { error: code, .. } => match code.as_str() {
                "authorization_pending" => {}
                "slow_down" => interval += SLOW_DOWN_STEP,
                "expired_token" | "code_expired" => return Err(FlowError::Expired),
                "authorization_declined" | "access_denied" => return Err(FlowError::Declined),
                "bad_verification_code" => return Err(FlowError::BadVerificationCode),
                _ => return Err(idp_error(error, Method::DeviceCode)),
            },
            IdpError::Unavailable { retry_after, .. } if failures < MAX_TRANSIENT_FAILURES => {
                failures += 1;
                let backoff = interval.saturating_mul(1 << failures).min(MAX_BACKOFF);
                wait = backoff.max(retry_after.unwrap_or_default());
                tracing::debug!(error = %error, wait = ?wait, "device code poll failed; backing off");
                continue;
            }
            IdpError::Unavailable { .. } | IdpError::Malformed(_) => {
                return Err(idp_error(error, Method::DeviceCode));
            }
        }
        failures = 0;
        wait = interval;
    }
}
