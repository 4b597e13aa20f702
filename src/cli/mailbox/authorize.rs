//! `mailbox authorize`: signs in to Microsoft 365 as the user whose token a mailbox uses
//! (itself, or its `--token-from` delegate), by device code, a local browser or a pasted
//! address, checks that it was that user, and stores the refresh token.

use std::future::Future;
use std::time::{Duration, SystemTime};

use anyhow::bail;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::console::Console;
use super::input::read_pasted;
use crate::config::Config;
use crate::mailbox::{Mailbox, Registration, Registry, normalize_address};
use crate::oauth::TokenGrant;
use crate::oauth::endpoint::{App, AuthorizationRequest, TokenEndpoint};
use crate::oauth::flows::{self, FlowError, Loopback, Method};
use crate::state::State;

/// How `mailbox authorize` signs in.
#[derive(clap::Args, Debug)]
pub struct AuthorizeArgs {
    /// The mailbox address.
    pub(super) address: String,
    /// Sign in with a browser on this machine; it comes back to `http://localhost:PORT/`.
    #[arg(long, conflicts_with = "paste")]
    pub(super) browser: bool,
    /// Sign in with a browser on any machine, then paste the address it ends on here.
    #[arg(long)]
    pub(super) paste: bool,
    /// With --browser: the local port for the browser to come back to (0: any free port).
    #[arg(
        long,
        default_value_t = 0,
        requires = "browser",
        conflicts_with = "paste"
    )]
    pub(super) port: u16,
    /// With --browser: how long to wait for the browser to come back, in seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = flows::DEFAULT_BROWSER_TIMEOUT.as_secs(),
        requires = "browser",
        conflicts_with = "paste",
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    pub(super) timeout: u64,
}

/// `mailbox authorize`: signs in as the user whose token ADDRESS uses (itself, or its
/// delegate), checks that it was that user, and stores the refresh token. Prints one line;
/// never a token.
pub(super) fn authorize(
    args: AuthorizeArgs,
    config: &Config,
    state: &State,
    io: &mut Console<'_>,
) -> anyhow::Result<()> {
    let address = normalize_address(&args.address)?;
    let registry = state.registry().load_and_migrate()?;
    let Some(mailbox) = registry.get(&address) else {
        bail!("mailbox {address} is not registered; add it first");
    };
    let owner = registry.token_owner(mailbox)?;
    let app = user_app(&address, &owner)?;
    let user = owner.address.as_str();
    if user != address {
        writeln!(
            io.err,
            "{address} takes its token from {user}: sign in as {user}; the token serves both."
        )?;
    }
    let tls = crate::tls::client_config(config.upstream.ca_file.as_deref())?;
    let endpoint = TokenEndpoint::new(&config.entra.authority, tls, config.limits.token_timeout())?;
    let method = match (args.browser, args.paste) {
        (true, _) => Method::Browser,
        (_, true) => Method::Paste,
        _ => Method::DeviceCode,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let grant = runtime.block_on(sign_in(&endpoint, &app, user, &args, method, io))?;
    let signed_in = flows::check_identity(&grant, app.client_id, user, method)?;
    let refresh_token = grant
        .refresh_token
        .as_ref()
        .ok_or(FlowError::NoRefreshToken)?;
    state.tokens().save(user, refresh_token)?;
    warn_ungranted(&app, &grant, io)?;
    report(&registry, user, &signed_in, &grant, io)
}

/// The app that `owner` (the mailbox itself or its delegate) signs in with; an error if it
/// has none or is app-only, with no user to sign in.
fn user_app<'m>(address: &str, owner: &'m Mailbox) -> anyhow::Result<App<'m>> {
    let Some(app) = App::of(&owner.registration) else {
        bail!("{} has no app registration to sign in with", owner.address);
    };
    if let Registration::App { app_only: true, .. } = owner.registration {
        let whose = if owner.address == address {
            format!("{address} is")
        } else {
            format!("{address} takes its token from {}, which is", owner.address)
        };
        bail!(
            "{whose} app-only (client credentials): there is no user to sign in; the relay gets \
             its tokens with the app's {}. If they are refused, check the app's application \
             permissions and admin consent, and its service principal in Exchange Online",
            app.credential.kind()
        );
    }
    Ok(app)
}

/// Warns about each of IMAP, POP and SMTP that Entra did not grant.
fn warn_ungranted(app: &App<'_>, grant: &TokenGrant, io: &mut Console<'_>) -> anyhow::Result<()> {
    for scope in &app.cloud.delegated_scopes()[..3] {
        let name = scope.rsplit('/').next().unwrap_or(scope);
        let granted = grant.scope.split_whitespace().any(|g| {
            g.rsplit('/')
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        });
        if !granted {
            writeln!(io.err, "warning: Entra did not grant {scope}")?;
        }
    }
    Ok(())
}

/// The one line that says who signed in, for which mailboxes, and until when.
fn report(
    registry: &Registry,
    user: &str,
    signed_in: &str,
    grant: &TokenGrant,
    io: &mut Console<'_>,
) -> anyhow::Result<()> {
    let others: Vec<&str> = registry
        .dependents(user)
        .into_iter()
        .map(|m| m.address.as_str())
        .collect();
    let also = if others.is_empty() {
        String::new()
    } else {
        format!(" (also for {})", others.join(", "))
    };
    let left = grant
        .expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    writeln!(
        io.out,
        "authorized {signed_in}{also} for {}; the access token expires at {} (in {})",
        grant.scope,
        flows::utc(grant.expires_at),
        flows::duration_words(left)
    )?;
    Ok(())
}

/// Runs the sign-in by `method` for `user` and returns what the token endpoint granted.
async fn sign_in(
    endpoint: &TokenEndpoint,
    app: &App<'_>,
    user: &str,
    args: &AuthorizeArgs,
    method: Method,
    io: &mut Console<'_>,
) -> anyhow::Result<TokenGrant> {
    let sign_in = SignIn {
        endpoint,
        app,
        user,
    };
    match method {
        Method::DeviceCode => sign_in.device_code(io).await,
        Method::Browser => sign_in.browser(args, io).await,
        Method::Paste => sign_in.paste(io).await,
    }
}

/// A sign-in of `user` with `app` at `endpoint`, by one of three ways.
struct SignIn<'s, 'a> {
    endpoint: &'s TokenEndpoint,
    app: &'s App<'a>,
    user: &'s str,
}

impl SignIn<'_, '_> {
    /// Redeems the authorization code that `request` came back with.
    async fn redeem(
        &self,
        request: AuthorizationRequest,
        code: &str,
        method: Method,
    ) -> Result<TokenGrant, FlowError> {
        let scopes = self.app.cloud.sign_in_scopes();
        self.endpoint
            .redeem_code(self.app, request, code, scopes)
            .await
            .map_err(|e| flows::idp_error(e, method))
    }

    /// The device-code sign-in: the user enters a code at Microsoft's page on any device.
    async fn device_code(&self, io: &mut Console<'_>) -> anyhow::Result<TokenGrant> {
        let (endpoint, app, user) = (self.endpoint, self.app, self.user);
        let scopes = app.cloud.sign_in_scopes();
        let device = endpoint
            .start_device_code(app, scopes)
            .await
            .map_err(|e| flows::idp_error(e, Method::DeviceCode))?;
        match &device.message {
            Some(message) => writeln!(io.err, "{message}")?,
            None => writeln!(
                io.err,
                "To sign in, open {} and enter the code {}.",
                device.verification_uri, device.user_code
            )?,
        }
        writeln!(
            io.err,
            "Sign in as {user}. The code expires in {}.",
            flows::duration_words(device.expires_in)
        )?;
        let polls = flows::wait_for_device_sign_in(&device, || {
            endpoint.poll_device_code(app, &device, scopes)
        });
        Ok(with_spinner(polls, device.expires_in, user).await?)
    }

    /// The sign-in with a browser on this machine, which comes back to a loopback port.
    async fn browser(
        &self,
        args: &AuthorizeArgs,
        io: &mut Console<'_>,
    ) -> anyhow::Result<TokenGrant> {
        let (app, user) = (self.app, self.user);
        let loopback = Loopback::bind(args.port).await?;
        let request = self.endpoint.authorization_request(
            app,
            app.cloud.sign_in_scopes(),
            &loopback.redirect_uri(),
            user,
        )?;
        writeln!(
            io.err,
            "Open this address in a browser on this machine and sign in as {user}:\n\n{}\n",
            request.url()
        )?;
        let limit = Duration::from_secs(args.timeout);
        writeln!(
            io.err,
            "Waiting up to {} for the browser to come back to {}",
            flows::duration_words(limit),
            request.redirect_uri()
        )?;
        let code = with_spinner(loopback.wait(&request, limit), limit, user).await?;
        Ok(self.redeem(request, &code, Method::Browser).await?)
    }

    /// The sign-in with a browser anywhere; the admin pastes the address it ends on.
    async fn paste(&self, io: &mut Console<'_>) -> anyhow::Result<TokenGrant> {
        let (app, user) = (self.app, self.user);
        let redirect_uri = self.endpoint.native_client_redirect_uri(app.cloud);
        let request = self.endpoint.authorization_request(
            app,
            app.cloud.sign_in_scopes(),
            &redirect_uri,
            user,
        )?;
        writeln!(
            io.err,
            "Open this address in a browser (on any machine) and sign in as {user}:\n\n{}\n\n\
             The browser ends on a blank page whose address starts with {redirect_uri}?code=\n\
             Copy that whole address and paste it here, then press Enter:",
            request.url()
        )?;
        let pasted = read_pasted(io.input)?;
        let code = flows::code_from_pasted(&request, &pasted)?;
        Ok(self.redeem(request, &code, Method::Paste).await?)
    }
}

/// Runs `work` under a spinner on standard error that counts `limit` down (hidden when
/// standard error is not a terminal). It ticks on this thread, which holds the stderr lock.
async fn with_spinner<T>(work: impl Future<Output = T>, limit: Duration, user: &str) -> T {
    let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
        spinner.set_style(style);
    }
    let deadline = tokio::time::Instant::now() + limit;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tokio::pin!(work);
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = tick.tick() => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                spinner.set_message(format!(
                    "waiting for {user} to sign in ({} left)",
                    flows::countdown(left)
                ));
                spinner.tick();
            }
        }
    };
    spinner.finish_and_clear();
    out
}
