//! One refresh of a slot's token, with its refresh lock held and in turn with the fleet
//! ([`super::fleet`]): the refresh-token grant (stored refresh token → Entra → rotated
//! token persisted), or the client-credentials grant of an app-only mailbox. Refused
//! tokens and credentials are recognised by a digest, so that Entra is not asked again with
//! what it refused.

use std::time::SystemTime;

use tokio::time::Instant;

use super::fleet::{Failure, Fleet, Turn};
use super::slot::{Cached, Slot};
use super::source::{Resource, TokenSource};
use crate::mailbox::{Credential, Mailbox, Registration};
use crate::oauth::TokenError;
use crate::oauth::endpoint::App;
use crate::oauth::health::RECHECK_REAUTH;
use crate::secret::RefreshToken;
use crate::state::Lease;

/// How long an app-only mailbox whose credentials Entra refused fails at once, without
/// asking Entra: as long as the refresher waits before it looks at a mailbox in
/// needs-reauth again.
pub const APP_ONLY_RECHECK: std::time::Duration = RECHECK_REAUTH;

/// The refresh itself, in turn with the fleet ([`Fleet::turn`]): another relay's shared
/// token, or under the mailbox's lease the refresh-token grant, or for an app-only mailbox
/// the client-credentials grant. The lease is released whatever happens.
pub(super) async fn redeem<S: TokenSource>(
    source: &S,
    fleet: &Fleet<'_>,
    slot: &Slot,
    resource: Resource,
) -> Result<Cached, Failure> {
    let mailbox = fleet.mailbox;
    let Some(app) = App::of(&mailbox.registration) else {
        tracing::error!(mailbox = %mailbox.address,
            "asked for the token of a mailbox that takes its token from another; the caller must ask for its token owner");
        return Err((TokenError::UnknownMailbox, None));
    };
    let lease = match fleet.turn(slot).await? {
        Turn::Adopted(cached) => {
            tracing::debug!(mailbox = %mailbox.address, "took the access token another relay obtained");
            return Ok(cached);
        }
        Turn::Redeem(lease) => lease,
    };
    let result = if is_app_only(mailbox) {
        let scopes = resource.scopes(&app, true);
        redeem_app_only(source, fleet, &lease, slot, &app, scopes).await
    } else {
        redeem_refresh_token(source, fleet, &lease, slot, &app, resource).await
    };
    if result.is_err() {
        fleet.release(&lease).await;
    }
    result
}

/// The refresh-token grant under `lease`: the stored refresh token → Entra → the rotated
/// token stored over the redeemed one only (one stored meanwhile is newer and stays),
/// before the new access token is used (see the module documentation of [`super`]).
async fn redeem_refresh_token<S: TokenSource>(
    source: &S,
    fleet: &Fleet<'_>,
    lease: &Lease,
    slot: &Slot,
    app: &App<'_>,
    resource: Resource,
) -> Result<Cached, Failure> {
    let mailbox = fleet.mailbox;
    let redeemable = fleet
        .refresh_token(lease)
        .await?
        .ok_or((TokenError::NotAuthorized, None))?;
    // The refresh token and the app's credentials together: a new secret or
    // certificate (`mailbox credential`) is worth asking Entra again, as is a new token.
    let digest = [digest(&redeemable.token), credential_digest(app)].concat();
    let refused = slot.health().refused(&digest, None);
    if let Some(error) = refused {
        // Entra refused exactly this token already; wait for a new one.
        return Err((error, Some(digest)));
    }
    let obtained = (Instant::now(), SystemTime::now());
    let grant = source
        .refresh(app, &redeemable.token, resource.scopes(app, false))
        .await
        .map_err(|e| {
            tracing::warn!(mailbox = %mailbox.address, error = %e, "token refresh failed");
            (TokenError::Idp(e), Some(digest.clone()))
        })?;
    fleet.finish(lease, Some(redeemable), grant, obtained).await
}

/// The client-credentials grant of an app-only mailbox, under `lease`. A refusal of the
/// same credentials less than [`APP_ONLY_RECHECK`] ago is shared without asking Entra.
async fn redeem_app_only<S: TokenSource>(
    source: &S,
    fleet: &Fleet<'_>,
    lease: &Lease,
    slot: &Slot,
    app: &App<'_>,
    scopes: &[&str],
) -> Result<Cached, Failure> {
    let digest = credential_digest(app);
    let refused = slot.health().refused(&digest, Some(APP_ONLY_RECHECK));
    if let Some(error) = refused {
        return Err((error, Some(digest)));
    }
    let obtained = (Instant::now(), SystemTime::now());
    let grant = source.client_credentials(app, scopes).await.map_err(|e| {
        tracing::warn!(mailbox = %fleet.mailbox.address, error = %e, "client credentials grant failed");
        (TokenError::Idp(e), Some(digest.clone()))
    })?;
    fleet.finish(lease, None, grant, obtained).await
}

/// Whether `mailbox` gets its tokens with the client-credentials grant.
pub(super) fn is_app_only(mailbox: &Mailbox) -> bool {
    matches!(
        mailbox.registration,
        Registration::App { app_only: true, .. }
    )
}

/// A digest of an app's client credentials (tenant, client, and the secret or the
/// certificate's thumbprint), to recognise them without keeping them.
fn credential_digest(app: &App<'_>) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [app.tenant, app.client_id, app.cloud.name()] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    match app.credential {
        Credential::None => ctx.update(b"public"),
        Credential::Secret { secret, .. } => ctx.update(secret.expose().as_bytes()),
        Credential::Certificate(c) => ctx.update(c.x5t_s256().as_bytes()),
    }
    ctx.finish().as_ref().to_vec()
}

/// A digest of a refresh token, to recognise it without keeping it.
fn digest(token: &RefreshToken) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.expose().as_bytes())
        .as_ref()
        .to_vec()
}
