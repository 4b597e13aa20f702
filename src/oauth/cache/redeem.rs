//! One refresh of a slot's token, with its refresh lock held: the refresh-token grant
//! (stored refresh token → Entra → rotated token persisted), or the client-credentials
//! grant of an app-only mailbox. Refused tokens and credentials are recognised by a digest,
//! so that Entra is not asked again with what it refused.

use tokio::time::Instant;

use super::slot::{Cached, Slot};
use super::source::{Resource, TokenSource};
use crate::mailbox::{Credential, Mailbox, Registration};
use crate::oauth::endpoint::App;
use crate::oauth::health::RECHECK_REAUTH;
use crate::oauth::{TokenError, TokenGrant};
use crate::secret::RefreshToken;
use crate::state::RefreshTokens;

/// How long an app-only mailbox whose credentials Entra refused fails at once, without
/// asking Entra: as long as the refresher waits before it looks at a mailbox in
/// needs-reauth again.
pub const APP_ONLY_RECHECK: std::time::Duration = RECHECK_REAUTH;

/// Why a refresh failed, with the digest of the refresh token or client credentials that
/// were refused or failed (`None` when Entra was not asked).
pub(super) type Failure = (TokenError, Option<Vec<u8>>);

/// The refresh itself: the refresh-token grant, or for an app-only mailbox the
/// client-credentials grant.
pub(super) async fn redeem<S: TokenSource>(
    source: &S,
    store: &std::sync::Arc<dyn RefreshTokens>,
    slot: &Slot,
    mailbox: &Mailbox,
    resource: Resource,
) -> Result<Cached, Failure> {
    let Some(app) = App::of(&mailbox.registration) else {
        tracing::error!(mailbox = %mailbox.address,
            "asked for the token of a mailbox that takes its token from another; the caller must ask for its token owner");
        return Err((TokenError::UnknownMailbox, None));
    };
    if is_app_only(mailbox) {
        return redeem_app_only(source, slot, mailbox, &app, resource.scopes(&app, true)).await;
    }
    let (address, loader) = (mailbox.address.clone(), store.clone());
    let refresh_token = blocking(move || loader.load(&address))
        .await
        .map_err(|e| (e, None))?
        .ok_or((TokenError::NotAuthorized, None))?;
    // The refresh token and the app's credentials together: a new secret or
    // certificate (`mailbox credential`) is worth asking Entra again, as is a new token.
    let digest = [digest(&refresh_token), credential_digest(&app)].concat();
    let refused = slot.health().refused(&digest, None);
    if let Some(error) = refused {
        // Entra refused exactly this token already; wait for a new one.
        return Err((error, Some(digest)));
    }
    let obtained = Instant::now();
    let grant = source
        .refresh(&app, &refresh_token, resource.scopes(&app, false))
        .await
        .map_err(|e| {
            tracing::warn!(mailbox = %mailbox.address, error = %e, "token refresh failed");
            (TokenError::Idp(e), Some(digest.clone()))
        })?;
    persist_rotated(store, mailbox, &refresh_token, &grant).await?;
    Ok(Cached::of(mailbox, grant, obtained))
}

/// Stores the refresh token Entra rotated, over the one redeemed only: one imported
/// meanwhile is newer and stays. This write is finished before the new access token is
/// used (see the module documentation of [`super`]).
async fn persist_rotated(
    store: &std::sync::Arc<dyn RefreshTokens>,
    mailbox: &Mailbox,
    redeemed: &RefreshToken,
    grant: &TokenGrant,
) -> Result<(), Failure> {
    let Some(rotated) = grant.refresh_token.clone() else {
        return Ok(());
    };
    let (address, store, redeemed) = (mailbox.address.clone(), store.clone(), redeemed.clone());
    let replaced = blocking(move || store.replace(&address, &redeemed, &rotated))
        .await
        .map_err(|e| (e, None))?;
    if !replaced {
        tracing::info!(mailbox = %mailbox.address,
            "a new refresh token was stored while this one was redeemed; it is kept");
    }
    Ok(())
}

/// The client-credentials grant of an app-only mailbox. A refusal of the same
/// credentials less than [`APP_ONLY_RECHECK`] ago is shared without asking Entra.
async fn redeem_app_only<S: TokenSource>(
    source: &S,
    slot: &Slot,
    mailbox: &Mailbox,
    app: &App<'_>,
    scopes: &[&str],
) -> Result<Cached, Failure> {
    let digest = credential_digest(app);
    let refused = slot.health().refused(&digest, Some(APP_ONLY_RECHECK));
    if let Some(error) = refused {
        return Err((error, Some(digest)));
    }
    let obtained = Instant::now();
    let grant = source.client_credentials(app, scopes).await.map_err(|e| {
        tracing::warn!(mailbox = %mailbox.address, error = %e, "client credentials grant failed");
        (TokenError::Idp(e), Some(digest.clone()))
    })?;
    Ok(Cached::of(mailbox, grant, obtained))
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

/// Runs a token-store call off the async threads.
async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, TokenError>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| TokenError::Store(e.to_string())),
        Err(e) => Err(TokenError::Store(format!("token store task failed: {e}"))),
    }
}
