//! `m365-relay mailbox ...`: the administrator's commands to register mailboxes, set their
//! local passwords, import refresh tokens, list and remove them. They edit the files in
//! `state_dir`; a running relay notices registry changes at the next login.
//!
//! A mailbox either has its own app registration and refresh token, or takes the token of
//! another registered mailbox (`add --token-from`, for a shared mailbox: PROTOCOL.md A6).
//! The commands keep that relation sound: the delegate must exist and have its own app
//! registration, it cannot be removed while others use its token, and a mailbox that
//! borrows a token never gets one imported.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::future::Future;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::auth::{generate_password, hash_chosen};
use crate::config::Config;
use crate::mailbox::{
    Credential, Mailbox, PasswordVerifier, Registration, Registry, is_host_name, normalize_address,
};
use crate::oauth::TokenGrant;
use crate::oauth::assertion::{AssertionAlg, CertificateCredential};
use crate::oauth::cloud::{self, Cloud};
use crate::oauth::endpoint::{App, TokenEndpoint};
use crate::oauth::flows::{self, FlowError, Loopback, Method};
use crate::secret::{ClientSecret, Password, RefreshToken};
use crate::state::State;

/// Environment variable that may hold the client secret for `mailbox add`.
pub const CLIENT_SECRET_ENV: &str = "M365_RELAY_CLIENT_SECRET";

/// Longest local password read from standard input.
const MAX_PASSWORD_LEN: usize = 1024;

/// Longest refresh token read from standard input (Entra's are about 1-2 KB).
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Mailbox administration.
#[derive(clap::Subcommand, Debug)]
pub enum MailboxCommand {
    /// Register a mailbox and where its tokens come from: an Entra app registration
    /// (--tenant and --client-id), or the token of another registered mailbox
    /// (--token-from, for a shared mailbox).
    ///
    /// A confidential app proves itself with a client secret, given in a file
    /// (--client-secret-file) or in the environment variable M365_RELAY_CLIENT_SECRET, never
    /// on the command line; or with a certificate (--certificate and --private-key). Without
    /// either it is a public client. With --app-only the relay gets its tokens with the
    /// app's own permissions (client credentials), with no user sign-in.
    Add(AddArgs),
    /// Set the local password that mail clients use for this mailbox.
    Password {
        /// The mailbox address.
        address: String,
        #[command(flatten)]
        source: PasswordSource,
    },
    /// Store a refresh token for the mailbox, read from standard input (not for a mailbox
    /// added with --token-from: import its delegate's token).
    ImportToken {
        /// The mailbox address.
        address: String,
    },
    /// Sign in to Microsoft 365 as the mailbox's user and store the refresh token (for a
    /// mailbox added with --token-from: as its delegate, whose token it uses).
    ///
    /// By default with a device code: open `https://microsoft.com/devicelogin` on any device
    /// and enter the code shown (the app registration needs "Allow public client flows").
    /// --browser and --paste sign in with an authorization code and PKCE instead; the app
    /// registration needs the redirect URI `http://localhost` (for --browser) or
    /// `https://login.microsoftonline.com/common/oauth2/nativeclient` (for --paste) under
    /// "Mobile and desktop applications". Only the right user's token is stored.
    Authorize(AuthorizeArgs),
    /// Replace the credential of a mailbox's app registration: a new client secret (from a
    /// file or M365_RELAY_CLIENT_SECRET) or certificate, e.g. before the old one expires, or
    /// --public for none. Its refresh token is kept: no new sign-in is needed.
    Credential(CredentialCommand),
    /// Show a mailbox's sending settings, or change them: how SMTP submissions go out
    /// (--smtp-via), the allowed senders (--allowed-from, --default-senders) and Graph's
    /// copy in Sent Items (--save-to-sent-items). A running relay uses them at the next
    /// login.
    Sending(super::sending::SendingCommand),
    /// List the registered mailboxes (never their secrets).
    List {
        /// Print a JSON array instead of one line per mailbox.
        #[arg(long)]
        json: bool,
    },
    /// Remove a mailbox and its stored refresh token (refused while other mailboxes take
    /// their token from it).
    Remove {
        /// The mailbox address.
        address: String,
    },
    /// Test the mailbox end to end: token, IMAP, POP3 and SMTP, one line per step.
    ///
    /// Gets an access token (a real refresh, stored as the relay stores it), logs in to the
    /// configured IMAP, POP3 and SMTP upstreams (then SELECT INBOX and STAT), and with
    /// --send-to sends a short test message from the mailbox. A failed step shows the
    /// server's reply and, for known failures, a hint. Fails unless every step passed.
    Test(super::probe::TestArgs),
}

/// `mailbox add`: the mailbox and its app registration.
#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// The mailbox address, e.g. alice@contoso.com.
    address: String,
    /// The Entra tenant: its GUID, a verified domain, `organizations` or `common`.
    #[arg(long, required_unless_present = "token_from", requires = "client_id")]
    tenant: Option<String>,
    /// The application (client) id of the app registration (a GUID).
    #[arg(long, required_unless_present = "token_from", requires = "tenant")]
    client_id: Option<String>,
    #[command(flatten)]
    credential: CredentialArgs,
    /// The Microsoft cloud of the tenant: global (default), usgov (GCC High), usgovdod
    /// (DoD) or china (21Vianet). It sets the login host and the scopes; the configured
    /// upstream servers must be that cloud's.
    #[arg(long, value_enum)]
    cloud: Option<Cloud>,
    /// Get tokens with the app's own application permissions (client-credentials grant;
    /// IMAP.AccessAsApp, POP.AccessAsApp, SMTP.SendAsApp) instead of a user's sign-in.
    /// Needs a client secret or a certificate, and a tenant GUID or domain.
    #[arg(long)]
    app_only: bool,
    /// Use the token of DELEGATE, a registered mailbox with its own app registration
    /// whose user has rights on this one (e.g. Full Access to a shared mailbox). Clients
    /// still log in as ADDRESS, with its own local password.
    #[command(flatten)]
    sending: super::sending::SendingArgs,
    #[arg(
        long,
        value_name = "DELEGATE",
        conflicts_with_all = [
            "tenant", "client_id", "client_secret_file", "secret_expires", "certificate",
            "private_key", "assertion_alg", "cloud", "app_only",
        ]
    )]
    token_from: Option<String>,
}

/// `mailbox credential`: the mailbox and its app's new credential.
#[derive(clap::Args, Debug)]
pub struct CredentialCommand {
    /// The mailbox address (one with its own app registration, not --token-from).
    address: String,
    #[command(flatten)]
    credential: CredentialArgs,
    /// No secret and no certificate: the app is a public client.
    #[arg(long, conflicts_with_all = ["client_secret_file", "secret_expires", "certificate", "private_key", "assertion_alg"])]
    public: bool,
}

/// The credential of a confidential app: a client secret, or a certificate and its key.
/// Neither makes a public client.
#[derive(clap::Args, Debug)]
pub struct CredentialArgs {
    /// A file holding the client secret of a confidential app (a trailing newline is
    /// ignored).
    #[arg(long, value_name = "FILE", conflicts_with = "certificate")]
    client_secret_file: Option<PathBuf>,
    /// When the client secret expires (the date the Entra admin center shows), so that the
    /// relay can warn in time.
    #[arg(
        long,
        value_name = "YYYY-MM-DD",
        value_parser = parse_date,
        conflicts_with = "certificate"
    )]
    secret_expires: Option<u64>,
    /// A PEM file with the certificate uploaded to the app registration (under
    /// Certificates & secrets): the app signs a client assertion with its key instead of
    /// sending a secret. Its expiry is read from it.
    #[arg(long, value_name = "CERT.pem", requires = "private_key")]
    certificate: Option<PathBuf>,
    /// A PEM file with the certificate's RSA private key (PKCS#8 or PKCS#1, unencrypted).
    /// It is stored encrypted in the state folder; the file is not needed afterwards.
    #[arg(long, value_name = "KEY.pem", requires = "certificate")]
    private_key: Option<PathBuf>,
    /// How the client assertion is signed: ps256 (RSA-PSS, with the SHA-256 thumbprint
    /// x5t#S256, as Microsoft documents it now) or rs256 (PKCS#1 v1.5, with the SHA-1
    /// thumbprint x5t). Default: ps256.
    #[arg(long, value_enum, value_name = "ALG", requires = "certificate")]
    assertion_alg: Option<AssertionAlg>,
}

/// Where a new local password comes from: exactly one of the two.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct PasswordSource {
    /// Generate a random password and print it once.
    #[arg(long)]
    generate: bool,
    /// Read the password from one line of standard input.
    #[arg(long)]
    stdin: bool,
}

/// How `mailbox authorize` signs in.
#[derive(clap::Args, Debug)]
pub struct AuthorizeArgs {
    /// The mailbox address.
    address: String,
    /// Sign in with a browser on this machine; it comes back to `http://localhost:PORT/`.
    #[arg(long, conflicts_with = "paste")]
    browser: bool,
    /// Sign in with a browser on any machine, then paste the address it ends on here.
    #[arg(long)]
    paste: bool,
    /// With --browser: the local port for the browser to come back to (0: any free port).
    #[arg(
        long,
        default_value_t = 0,
        requires = "browser",
        conflicts_with = "paste"
    )]
    port: u16,
    /// With --browser: how long to wait for the browser to come back, in seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = flows::DEFAULT_BROWSER_TIMEOUT.as_secs(),
        requires = "browser",
        conflicts_with = "paste",
        value_parser = clap::value_parser!(u64).range(1..=86_400)
    )]
    timeout: u64,
}

/// Longest address read back from the browser for `authorize --paste`.
const MAX_PASTED_LEN: usize = 16 * 1024;

/// Runs a mailbox command against `config.state_dir`.
pub fn run(command: MailboxCommand, config: &Config) -> anyhow::Result<()> {
    let stdin = io::stdin();
    let mut console = Console {
        input: &mut stdin.lock(),
        out: &mut io::stdout().lock(),
        err: &mut io::stderr().lock(),
        env_secret: std::env::var_os(CLIENT_SECRET_ENV),
    };
    let state = crate::state::open(config)?;
    match command {
        MailboxCommand::Authorize(args) => authorize(args, config, &state, &mut console),
        // A mailbox's cloud must be the one of the configured mail servers.
        MailboxCommand::Add(args) if args.token_from.is_none() => {
            cloud::check_upstreams(args.cloud.unwrap_or_default(), config)
                .map_err(anyhow::Error::msg)?;
            execute(MailboxCommand::Add(args), &state, &mut console)
        }
        MailboxCommand::Test(args) => super::probe::run(args, config, &state, console.out),
        command => execute(command, &state, &mut console),
    }
}

/// The process's standard streams and environment, replaceable in tests.
struct Console<'a> {
    input: &'a mut dyn BufRead,
    out: &'a mut dyn Write,
    err: &'a mut dyn Write,
    env_secret: Option<OsString>,
}

fn execute(command: MailboxCommand, state: &State, io: &mut Console<'_>) -> anyhow::Result<()> {
    match command {
        MailboxCommand::Add(args) => {
            let address = normalize_address(&args.address)?;
            let registration = match (&args.token_from, &args.tenant, &args.client_id) {
                (Some(delegate), _, _) => {
                    if io.env_secret.take().is_some_and(|v| !v.is_empty()) {
                        writeln!(
                            io.err,
                            "warning: {CLIENT_SECRET_ENV} is ignored: a mailbox added with \
                             --token-from has no app registration"
                        )?;
                    }
                    let delegate = normalize_address(delegate).context("--token-from")?;
                    Registration::TokenFrom { delegate }
                }
                (None, Some(tenant), Some(client_id)) => {
                    let tenant = validate_tenant(tenant).context("--tenant")?;
                    let client_id = validate_guid(client_id).context("--client-id")?;
                    if args.app_only && matches!(tenant.as_str(), "common" | "organizations") {
                        bail!(
                            "--app-only needs the tenant's GUID or domain in --tenant, not \
                             `{tenant}`: the client-credentials grant is made in one tenant"
                        );
                    }
                    let credential = credential(&args.credential, io)?;
                    if args.app_only && !credential.is_confidential() {
                        bail!(
                            "--app-only needs the app's client secret (--client-secret-file or \
                             {CLIENT_SECRET_ENV}) or certificate (--certificate and \
                             --private-key): a public client has no permissions of its own"
                        );
                    }
                    Registration::App {
                        tenant,
                        client_id,
                        credential,
                        cloud: args.cloud.unwrap_or_default(),
                        app_only: args.app_only,
                    }
                }
                // clap enforces one or the other; this is only the message if it did not.
                _ => bail!("give either --token-from, or both --tenant and --client-id"),
            };
            let sending = args.sending.apply(crate::submission::Sending::default())?;
            let mailbox = Mailbox {
                address,
                registration,
                password: None,
                created: unix_now(),
                sending,
            };
            add(state, mailbox, io)?;
        }
        MailboxCommand::Password { address, source } => {
            let address = normalize_address(&address)?;
            // Checked before the password is asked for; set under the lock (no prompt and no
            // hashing while it is held).
            if state.registry().load_and_migrate()?.get(&address).is_none() {
                bail!("mailbox {address} is not registered");
            }
            if source.generate {
                let (password, verifier) = generate_password()?;
                set_password(state, &address, verifier)?;
                writeln!(io.out, "{}", password.expose())?;
                writeln!(
                    io.err,
                    "This is the new password of {address}. It will not be shown again."
                )?;
            } else {
                let password = read_password(io.input)?;
                set_password(state, &address, hash_chosen(&password)?)?;
                writeln!(io.out, "password of {address} set")?;
            }
        }
        MailboxCommand::ImportToken { address } => {
            let address = normalize_address(&address)?;
            let registry = state.registry().load_and_migrate()?;
            let Some(mailbox) = registry.get(&address) else {
                bail!("mailbox {address} is not registered; add it first");
            };
            match &mailbox.registration {
                Registration::TokenFrom { delegate } => bail!(
                    "{address} takes its token from {delegate}; import {delegate}'s token instead"
                ),
                Registration::App { app_only: true, .. } => bail!(
                    "{address} is app-only: it has no refresh token; the relay gets its tokens \
                     with the app's client credentials"
                ),
                Registration::App { .. } => {}
            }
            let token = read_token(io.input)?;
            state.tokens().save(&address, &token)?;
            writeln!(io.out, "refresh token of {address} stored")?;
        }
        MailboxCommand::List { json } => list(state, json, io)?,
        MailboxCommand::Credential(command) => replace_credential(state, command, io)?,
        MailboxCommand::Sending(command) => {
            super::sending::run(&command, state, io.out)?;
        }
        MailboxCommand::Remove { address } => remove(state, &address, io)?,
        // It needs the whole configuration (the Entra authority): `run` handles it.
        MailboxCommand::Authorize(args) => {
            bail!(
                "`mailbox authorize {}` needs the configuration",
                args.address
            )
        }
        MailboxCommand::Test(args) => {
            bail!("`mailbox test {}` needs the configuration", args.address)
        }
    }
    Ok(())
}

/// Gives the registered mailbox `address` the password `verifier`, under the state lock.
fn set_password(state: &State, address: &str, verifier: PasswordVerifier) -> anyhow::Result<()> {
    let mut registry = state.registry().locked()?;
    registry.set_password(address, Some(verifier))?;
    registry.save()?;
    Ok(())
}

/// `mailbox add`: registers `mailbox` (its address already normalized) after checking that
/// a delegate it takes its token from can lend it.
fn add(state: &State, mailbox: Mailbox, io: &mut Console<'_>) -> anyhow::Result<()> {
    let address = mailbox.address.clone();
    let mut registry = state.registry().locked()?;
    registry.insert(mailbox)?;
    let Some(added) = registry.get(&address) else {
        bail!("mailbox {address} vanished from the registry while being added");
    };
    match &added.registration {
        Registration::App {
            tenant,
            client_id,
            credential,
            cloud,
            app_only,
        } => {
            let kind = if credential.is_confidential() {
                "confidential"
            } else {
                "public"
            };
            registry.save()?;
            let app_only_note = if *app_only { "app-only, " } else { "" };
            writeln!(io.out, "added {address} ({app_only_note}{kind} client)")?;
            describe_credential(credential, io)?;
            if *cloud != Cloud::Global {
                writeln!(
                    io.out,
                    "cloud: {cloud} (sign-in at {}, scopes of {})",
                    cloud.login_authority(),
                    cloud.delegated_scopes()[0]
                        .rsplit_once('/')
                        .map_or("", |(host, _)| host)
                )?;
            }
            if *app_only {
                exchange_setup(&address, tenant, client_id, *cloud, io)?;
                writeln!(
                    io.out,
                    "next: `m365-relay mailbox password {address} --generate`; there is no \
                     sign-in: the relay gets its tokens with the app's {}",
                    credential.kind()
                )?;
            } else {
                writeln!(
                    io.out,
                    "next: `m365-relay mailbox password {address} --generate` and \
                     `m365-relay mailbox import-token {address}`"
                )?;
            }
        }
        Registration::TokenFrom { delegate } => {
            let owner = registry.token_owner(added).context("--token-from")?;
            registry.save()?;
            writeln!(io.out, "added {address} (token from {delegate})")?;
            if let Registration::App { app_only: true, .. } = owner.registration {
                writeln!(
                    io.out,
                    "next: `m365-relay mailbox password {address} --generate`; in Exchange \
                     Online, the app of {delegate} needs Full Access to {address}: \
                     `Add-MailboxPermission -Identity {address} -User <OBJECT_ID> \
                     -AccessRights FullAccess`"
                )?;
                return Ok(());
            }
            writeln!(
                io.out,
                "next: `m365-relay mailbox password {address} --generate`; in Exchange Online, \
                 {delegate} needs Full Access to {address}"
            )?;
            if !matches!(state.tokens().load(delegate), Ok(Some(_))) {
                writeln!(
                    io.out,
                    "and {delegate} has no refresh token yet: \
                     `m365-relay mailbox import-token {delegate}`"
                )?;
            }
        }
    }
    Ok(())
}

/// Prints what the app proves itself with, and until when.
fn describe_credential(credential: &Credential, io: &mut Console<'_>) -> anyhow::Result<()> {
    let until = |expires: Option<u64>| match expires {
        Some(at) => format!(
            ", expires {}",
            flows::utc(UNIX_EPOCH + Duration::from_secs(at))
        ),
        None => String::new(),
    };
    match credential {
        Credential::None => {}
        Credential::Secret { expires, .. } => {
            writeln!(io.out, "credential: client secret{}", until(*expires))?;
        }
        Credential::Certificate(c) => {
            let thumbprint = match c.alg() {
                AssertionAlg::Ps256 => "x5t#S256",
                AssertionAlg::Rs256 => "x5t",
            };
            writeln!(
                io.out,
                "credential: certificate with thumbprint {} ({}, {thumbprint}){}",
                c.thumbprint_hex(),
                c.alg().jws_name(),
                until(Some(c.not_after()))
            )?;
            writeln!(
                io.out,
                "the app registration must have this certificate (its public part, the \
                 --certificate file) under Certificates & secrets > Certificates"
            )?;
        }
    }
    Ok(())
}

/// Prints what an Exchange Online administrator must run once for an app-only mailbox
/// (PROTOCOL.md A5).
fn exchange_setup(
    address: &str,
    tenant: &str,
    client_id: &str,
    cloud: Cloud,
    io: &mut Console<'_>,
) -> anyhow::Result<()> {
    let connect = match cloud {
        Cloud::Global => "Connect-ExchangeOnline".to_owned(),
        other => format!(
            "Connect-ExchangeOnline -ExchangeEnvironmentName {}",
            other.exchange_environment()
        ),
    };
    writeln!(
        io.out,
        "App-only access needs, in the app registration, the application permissions \
         IMAP.AccessAsApp, POP.AccessAsApp and SMTP.SendAsApp of \"Office 365 Exchange \
         Online\" with admin consent for {tenant}; and in Exchange Online PowerShell:\n\
         \n  {connect}\
         \n  New-ServicePrincipal -AppId {client_id} -ObjectId <OBJECT_ID>\
         \n  Add-MailboxPermission -Identity {address} -User <OBJECT_ID> -AccessRights FullAccess\n\
         \n<OBJECT_ID> is the Object ID of the Enterprise Application (Entra admin center > \
         Enterprise applications > the app), NOT the Object ID shown under App registrations: \
         with that one, logins fail. New-ServicePrincipal is needed once per app; \
         Add-MailboxPermission once per mailbox. If clients send as other addresses, those \
         need SendAs for it too (Add-RecipientPermission)."
    )?;
    Ok(())
}

/// `mailbox authorize`: signs in as the user whose token ADDRESS uses (itself, or its
/// delegate), checks that it was that user, and stores the refresh token. Prints one line;
/// never a token.
fn authorize(
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
    let client_id = app.client_id;
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
    let signed_in = flows::check_identity(&grant, client_id, user, method)?;
    let refresh_token = grant
        .refresh_token
        .as_ref()
        .ok_or(FlowError::NoRefreshToken)?;
    state.tokens().save(user, refresh_token)?;

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
    let scopes = app.cloud.sign_in_scopes();
    let redeem = |request, code: String| async move {
        endpoint
            .redeem_code(app, request, &code, scopes)
            .await
            .map_err(|e| flows::idp_error(e, method))
    };
    match method {
        Method::DeviceCode => {
            let device = endpoint
                .start_device_code(app, scopes)
                .await
                .map_err(|e| flows::idp_error(e, method))?;
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
        Method::Browser => {
            let loopback = Loopback::bind(args.port).await?;
            let request =
                endpoint.authorization_request(app, scopes, &loopback.redirect_uri(), user)?;
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
            Ok(redeem(request, code).await?)
        }
        Method::Paste => {
            let redirect_uri = endpoint.native_client_redirect_uri(app.cloud);
            let request = endpoint.authorization_request(app, scopes, &redirect_uri, user)?;
            writeln!(
                io.err,
                "Open this address in a browser (on any machine) and sign in as {user}:\n\n{}\n\n\
                 The browser ends on a blank page whose address starts with {redirect_uri}?code=\n\
                 Copy that whole address and paste it here, then press Enter:",
                request.url()
            )?;
            let pasted = read_pasted(io.input)?;
            let code = flows::code_from_pasted(&request, &pasted)?;
            Ok(redeem(request, code).await?)
        }
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

/// One line of input: the address the browser ended on.
fn read_pasted(input: &mut dyn BufRead) -> anyhow::Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    input
        .take(MAX_PASTED_LEN as u64 + 1)
        .read_line(&mut line)
        .context("reading the address from standard input")?;
    if line.len() > MAX_PASTED_LEN {
        bail!("the pasted address is longer than {MAX_PASTED_LEN} bytes");
    }
    if line.trim().is_empty() {
        bail!("nothing was pasted; run the command again");
    }
    Ok(line)
}

/// `mailbox remove`: refused while other mailboxes take their token from this one.
fn remove(state: &State, address: &str, io: &mut Console<'_>) -> anyhow::Result<()> {
    let address = normalize_address(address)?;
    let mut registry = state.registry().locked()?;
    if registry.get(&address).is_none() {
        bail!("mailbox {address} is not registered");
    }
    let dependents: Vec<&str> = registry
        .dependents(&address)
        .into_iter()
        .map(|m| m.address.as_str())
        .collect();
    if !dependents.is_empty() {
        bail!(
            "{address} lends its token to {}; remove them first (or remove them and add them \
             again with another --token-from)",
            dependents.join(", ")
        );
    }
    let Some(removed) = registry.remove(&address) else {
        bail!("mailbox {address} is not registered");
    };
    registry.save()?;
    // The token store takes the lock itself.
    drop(registry);
    // A mailbox with --token-from has no token file; removing is harmless and thorough.
    state.tokens().remove(&address)?;
    match &removed.registration {
        Registration::App { .. } => writeln!(io.out, "removed {address} and its refresh token")?,
        Registration::TokenFrom { delegate } => writeln!(
            io.out,
            "removed {address} (the token of {delegate} is kept)"
        )?,
    }
    Ok(())
}

/// What `list` shows of a mailbox: never a secret.
#[derive(Serialize)]
struct Listed<'a> {
    address: &'a str,
    /// `None` for a mailbox that takes its token from another.
    tenant: Option<&'a str>,
    /// `None` for a mailbox that takes its token from another.
    client_id: Option<&'a str>,
    /// `public`, `confidential` or `token-from`.
    client_type: &'static str,
    /// The mailbox whose token this one uses, or `None` when it has its own.
    token_from: Option<&'a str>,
    password_set: bool,
    /// Whether the token owner (the mailbox itself, or the one in `token_from`) has a
    /// refresh token stored.
    token_stored: bool,
    /// App-only (client credentials): no refresh token is ever stored.
    app_only: bool,
    /// How SMTP mail goes out: `xoauth2`, `graph`, `auto`, or `auto:graph` once Exchange
    /// refused SMTP AUTH and the relay switched to Graph.
    smtp_via: String,
    created: u64,
    /// The token state a running relay last recorded (`ok`, `failing`, `needs-reauth`,
    /// `no-token`), or `unknown` before any refresh.
    state: &'static str,
    /// Unix seconds.
    access_token_expires: Option<u64>,
    last_refresh: Option<u64>,
    last_outcome: Option<String>,
    /// When the client secret or certificate expires (Unix seconds).
    credential_expires: Option<u64>,
}

/// A credential this close to its expiry is warned about.
pub const CREDENTIAL_WARNING: u64 = 30 * 24 * 3600;

fn list(state: &State, json: bool, io: &mut Console<'_>) -> anyhow::Result<()> {
    let registry = state.registry().load_and_migrate()?;
    let store = state.tokens();
    let switches = state.switches();
    // Per token owner, whether it has a token: read (and warned about) once, however many
    // mailboxes use it.
    let mut stored: BTreeMap<String, bool> = BTreeMap::new();
    let mut rows = Vec::with_capacity(registry.len());
    for m in registry.iter() {
        let token_stored = match registry.token_owner(m) {
            Ok(owner) => match stored.get(&owner.address) {
                Some(&known) => known,
                None => {
                    let known = match store.load(&owner.address) {
                        Ok(token) => token.is_some(),
                        Err(e) => {
                            writeln!(io.err, "warning: {e}")?;
                            false
                        }
                    };
                    stored.insert(owner.address.clone(), known);
                    known
                }
            },
            Err(e) => {
                writeln!(io.err, "warning: {e}")?;
                false
            }
        };
        let (tenant, client_id, client_type, token_from) = match &m.registration {
            Registration::App {
                tenant,
                client_id,
                credential,
                ..
            } => {
                let kind = if credential.is_confidential() {
                    "confidential"
                } else {
                    "public"
                };
                (Some(tenant.as_str()), Some(client_id.as_str()), kind, None)
            }
            Registration::TokenFrom { delegate } => {
                (None, None, "token-from", Some(delegate.as_str()))
            }
        };
        let owner = token_from.unwrap_or(&m.address);
        let app_only = registry
            .token_owner(m)
            .is_ok_and(|o| matches!(o.registration, Registration::App { app_only: true, .. }));
        let status = state.statuses().read(owner);
        let token_state = match &status {
            Some(status) => status.state.as_str(),
            None if token_stored || app_only => "unknown",
            None => "no-token",
        };
        let credential_expires = registry
            .token_owner(m)
            .ok()
            .and_then(|o| o.credential_expires());
        rows.push(Listed {
            address: &m.address,
            tenant,
            client_id,
            client_type,
            token_from,
            password_set: m.password.is_some(),
            token_stored,
            app_only,
            smtp_via: match m.sending.smtp_via {
                crate::submission::SmtpVia::Auto if switches.switched_at(&m.address).is_some() => {
                    "auto:graph".to_owned()
                }
                via => via.to_string(),
            },
            created: m.created,
            state: token_state,
            access_token_expires: status.as_ref().and_then(|s| s.access_token_expires),
            last_refresh: status.as_ref().and_then(|s| s.last_refresh),
            last_outcome: status.and_then(|s| s.last_outcome),
            credential_expires,
        });
    }
    if json {
        writeln!(io.out, "{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    if rows.is_empty() {
        writeln!(io.err, "no mailboxes registered")?;
    }
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    for r in rows {
        let source = match (r.token_from, r.tenant, r.client_id) {
            (Some(delegate), _, _) => format!("token-from={delegate}"),
            (None, tenant, client_id) => format!(
                "tenant={}  client_id={}  {}",
                tenant.unwrap_or_default(),
                client_id.unwrap_or_default(),
                r.client_type
            ),
        };
        let now = unix_now();
        let when = |t: u64| {
            if t >= now {
                format!("in {}", human_span(t - now))
            } else {
                format!("{} ago", human_span(now - t))
            }
        };
        let access = r
            .access_token_expires
            .map_or("-".into(), |t| format!("expires {}", when(t)));
        let last = match (r.last_refresh, &r.last_outcome) {
            (Some(t), Some(outcome)) => format!("{} ({outcome})", when(t)),
            _ => "-".into(),
        };
        writeln!(
            io.out,
            "{}  {source}  password={}  token={}  state={}  smtp={}  access-token={access}  last-refresh={last}",
            r.address,
            yes_no(r.password_set),
            if r.app_only {
                "app-only"
            } else {
                yes_no(r.token_stored)
            },
            r.state,
            r.smtp_via,
        )?;
        if let Some(t) = r.credential_expires {
            let warn = if t <= now + CREDENTIAL_WARNING {
                "WARNING: "
            } else {
                ""
            };
            let verb = if t >= now { "expires" } else { "expired" };
            let renew = if warn.is_empty() {
                String::new()
            } else {
                format!(
                    "; register a new one with `m365-relay mailbox credential {}`",
                    r.address
                )
            };
            writeln!(
                io.out,
                "  {warn}the app's credential {verb} {}{renew}",
                when(t)
            )?;
        }
    }
    Ok(())
}

/// `mailbox credential`: the app's new secret or certificate replaces the old one; the
/// refresh token stays.
fn replace_credential(
    state: &State,
    command: CredentialCommand,
    io: &mut Console<'_>,
) -> anyhow::Result<()> {
    let address = normalize_address(&command.address)?;
    // Checked before the credential is read, and again under the lock.
    let app_only = app_only_of(&state.registry().load_and_migrate()?, &address)?;
    let new = credential(&command.credential, io)?;
    if !new.is_confidential() && !command.public {
        bail!(
            "give the new credential: --client-secret-file (or {CLIENT_SECRET_ENV}), or \
             --certificate and --private-key; or --public for none"
        );
    }
    let mut registry = state.registry().locked()?;
    if (app_only || app_only_of(&registry, &address)?) && !new.is_confidential() {
        bail!("{address} is app-only: its app needs a client secret or a certificate");
    }
    registry.set_credential(&address, new)?;
    registry.save()?;
    writeln!(
        io.out,
        "credential of {address} replaced; its refresh token is kept"
    )?;
    if let Some(Registration::App { credential, .. }) =
        registry.get(&address).map(|m| &m.registration)
    {
        describe_credential(credential, io)?;
    }
    Ok(())
}

/// Whether `address` is app-only; an error if it is not registered or has no app of its own.
fn app_only_of(registry: &Registry, address: &str) -> anyhow::Result<bool> {
    let Some(mailbox) = registry.get(address) else {
        bail!("mailbox {address} is not registered");
    };
    match &mailbox.registration {
        Registration::App { app_only, .. } => Ok(*app_only),
        Registration::TokenFrom { delegate } => {
            bail!("{address} takes its token from {delegate}: replace the credential of {delegate}")
        }
    }
}

/// `3 days`, `5 h`, `12 min`.
fn human_span(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs} s"),
        120..7200 => format!("{} min", secs / 60),
        7200..172_800 => format!("{} h", secs / 3600),
        _ => format!("{} days", secs / 86400),
    }
}

/// The credential `mailbox add` was given: a certificate and its key, a client secret (from
/// a file or the environment) with its expiry, or none.
fn credential(args: &CredentialArgs, io: &mut Console<'_>) -> anyhow::Result<Credential> {
    let env = io.env_secret.take();
    if let (Some(cert), Some(key)) = (&args.certificate, &args.private_key) {
        if env.as_ref().is_some_and(|v| !v.is_empty()) {
            writeln!(
                io.err,
                "warning: {CLIENT_SECRET_ENV} is ignored: the app proves itself with its \
                 certificate"
            )?;
        }
        let cert_pem = std::fs::read(cert)
            .with_context(|| format!("reading the certificate {}", cert.display()))?;
        let key_pem = Zeroizing::new(
            std::fs::read(key)
                .with_context(|| format!("reading the private key {}", key.display()))?,
        );
        let alg = args.assertion_alg.unwrap_or_default();
        let certificate =
            CertificateCredential::from_pem(&cert_pem, &key_pem, alg).with_context(|| {
                format!(
                    "--certificate {} --private-key {}",
                    cert.display(),
                    key.display()
                )
            })?;
        if certificate.not_after() <= unix_now() {
            bail!(
                "the certificate {} expired on {}; make a new one and upload it to the app \
                 registration",
                cert.display(),
                flows::utc(UNIX_EPOCH + Duration::from_secs(certificate.not_after()))
            );
        }
        return Ok(Credential::Certificate(certificate));
    }
    match client_secret(args.client_secret_file.as_deref(), env)? {
        Some(secret) => {
            if let Some(at) = args.secret_expires
                && at <= unix_now()
            {
                bail!(
                    "--secret-expires is in the past ({}): the secret no longer works; make a \
                     new one in the app registration",
                    flows::utc(UNIX_EPOCH + Duration::from_secs(at))
                );
            }
            Ok(Credential::Secret {
                secret,
                expires: args.secret_expires,
            })
        }
        None if args.secret_expires.is_some() => bail!(
            "--secret-expires needs a client secret (--client-secret-file or {CLIENT_SECRET_ENV})"
        ),
        None => Ok(Credential::None),
    }
}

/// A `YYYY-MM-DD` date as seconds since the Unix epoch, at 00:00 UTC of that day.
fn parse_date(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a date in the form YYYY-MM-DD");
    let mut parts = text.splitn(3, '-');
    let mut next = |digits: usize| -> Result<i64, String> {
        let part = parts.next().filter(|p| p.len() == digits).ok_or_else(bad)?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    let (year, month, day) = (next(4)?, next(2)?, next(2)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if year < 1970 || !(1..=days_in_month).contains(&day) {
        return Err(bad());
    }
    // Days from 1970-01-01 to a civil date (H. Hinnant's `days_from_civil`).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400).map_err(|_| bad())
}

/// The client secret from `file` if given, else from the environment, else none.
fn client_secret(
    file: Option<&Path>,
    env: Option<OsString>,
) -> anyhow::Result<Option<ClientSecret>> {
    let (raw, from) = match (file, env) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading client secret file {}", path.display()))?;
            (Zeroizing::new(text), path.display().to_string())
        }
        (None, Some(value)) if !value.is_empty() => {
            let text = value
                .into_string()
                .map_err(|_| anyhow::anyhow!("{CLIENT_SECRET_ENV} is not valid UTF-8"))?;
            (Zeroizing::new(text), CLIENT_SECRET_ENV.to_owned())
        }
        (None, _) => return Ok(None),
    };
    let secret = raw.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        bail!("the client secret in {from} is empty");
    }
    if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("the client secret in {from} contains white space or control characters");
    }
    Ok(Some(ClientSecret::new(secret)))
}

/// One line of input as a password, without its line ending.
fn read_password(input: &mut dyn BufRead) -> anyhow::Result<Password> {
    let mut line = Zeroizing::new(String::with_capacity(MAX_PASSWORD_LEN + 2));
    input
        .take(MAX_PASSWORD_LEN as u64 + 2)
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    if line.len() > MAX_PASSWORD_LEN + 1 || (line.len() > MAX_PASSWORD_LEN && !line.ends_with('\n'))
    {
        bail!("the password is longer than {MAX_PASSWORD_LEN} bytes");
    }
    let password = line.trim_end_matches('\n').trim_end_matches('\r');
    if password.is_empty() {
        bail!("the password read from standard input is empty");
    }
    Ok(Password::new(password))
}

/// All of the input as a refresh token, trimmed.
fn read_token(input: &mut dyn BufRead) -> anyhow::Result<RefreshToken> {
    let mut text = Zeroizing::new(String::new());
    input
        .take(MAX_TOKEN_LEN as u64 + 1)
        .read_to_string(&mut text)
        .context("reading the refresh token from standard input")?;
    let token = text.trim();
    if text.len() > MAX_TOKEN_LEN {
        bail!("the refresh token is longer than {MAX_TOKEN_LEN} bytes");
    }
    if token.is_empty() {
        bail!("no refresh token on standard input");
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("the refresh token contains white space; paste exactly one token");
    }
    Ok(RefreshToken::new(token))
}

/// A tenant: a GUID, `organizations`, `common`, or a domain name; lower-cased.
fn validate_tenant(tenant: &str) -> anyhow::Result<String> {
    let t = tenant.to_ascii_lowercase();
    if t == "organizations" || t == "common" || validate_guid(&t).is_ok() {
        return Ok(t);
    }
    if !is_host_name(&t) {
        bail!("`{tenant}` is not a tenant GUID, a domain name, `organizations` or `common`");
    }
    Ok(t)
}

/// A GUID in its 8-4-4-4-12 hex form; lower-cased.
fn validate_guid(s: &str) -> anyhow::Result<String> {
    let ok = s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if !ok {
        bail!("`{s}` is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
    }
    Ok(s.to_ascii_lowercase())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    const GUID: &str = "11111111-2222-3333-4444-555555555555";

    /// The state folder `dir`, sealed with the tests' key.
    fn state(dir: &Path) -> State {
        crate::state::files::with_key(dir, crate::state::StateKey::from_bytes(&[3; 32]))
    }

    #[derive(Parser)]
    struct TestCli {
        #[command(subcommand)]
        command: MailboxCommand,
    }

    /// Runs `mailbox {args}` (split at spaces; `GUID` stands for [`GUID`]); returns
    /// (stdout, stderr).
    fn exec_env(
        dir: &Path,
        args: &str,
        stdin: &str,
        env: Option<&str>,
    ) -> anyhow::Result<(String, String)> {
        let args = args.replace("GUID", GUID);
        let cli = TestCli::try_parse_from(std::iter::once("mailbox").chain(args.split(' ')))?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut console = Console {
            input: &mut stdin.as_bytes(),
            out: &mut out,
            err: &mut err,
            env_secret: env.map(OsString::from),
        };
        execute(cli.command, &state(dir), &mut console)?;
        Ok((String::from_utf8(out)?, String::from_utf8(err)?))
    }

    fn exec(dir: &Path, args: &str, stdin: &str) -> anyhow::Result<String> {
        exec_env(dir, args, stdin, None).map(|(out, _)| out)
    }

    fn fails(dir: &Path, args: &str, stdin: &str) -> String {
        format!("{:#}", exec(dir, args, stdin).err().unwrap())
    }

    #[test]
    fn the_command_definition_is_consistent() {
        TestCli::command().debug_assert();
    }

    #[test]
    fn add_and_list_never_show_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let file = d.join("secret");
        std::fs::write(&file, "Abc~secret.value\n").unwrap();
        let args = format!(
            "add Alice@Contoso.com --tenant GUID --client-id GUID --client-secret-file {}",
            file.display()
        );
        let out = exec(d, &args, "").unwrap();
        assert!(
            out.starts_with("added alice@contoso.com (confidential client)"),
            "{out}"
        );
        let args = "add bob@contoso.com --tenant common --client-id GUID";
        exec_env(d, args, "", Some("env~secret")).unwrap();
        exec(
            d,
            "add carol@contoso.com --tenant contoso.com --client-id GUID",
            "",
        )
        .unwrap();

        let registry = state(d).registry().load().unwrap();
        let secret = |a: &str| match &registry.get(a).unwrap().registration {
            Registration::App {
                credential: Credential::Secret { secret, .. },
                ..
            } => Some(secret.expose().to_owned()),
            Registration::App { .. } => None,
            Registration::TokenFrom { .. } => panic!("{a} has no app registration"),
        };
        assert_eq!(
            secret("alice@contoso.com").as_deref(),
            Some("Abc~secret.value")
        );
        assert_eq!(secret("bob@contoso.com").as_deref(), Some("env~secret"));
        assert_eq!(secret("carol@contoso.com"), None);

        let text = exec(d, "list", "").unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        let alice = format!(
            "alice@contoso.com  tenant={GUID}  client_id={GUID}  confidential  password=no  token=no  state=no-token  smtp=auto  access-token=-  last-refresh=-\n"
        );
        assert!(text.starts_with(&alice), "{text}");
        let json = exec(d, "list --json", "").unwrap();
        let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (&rows[2]["address"], &rows[2]["client_type"]),
            (&"carol@contoso.com".into(), &"public".into())
        );
        assert_eq!(rows[0]["password_set"], false);
        assert!(
            !text.contains("secret") && !json.contains("secret"),
            "{text}{json}"
        );
    }

    #[test]
    fn add_refuses_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        exec(
            d,
            "add alice@contoso.com --tenant common --client-id GUID",
            "",
        )
        .unwrap();
        for (args, expected) in [
            (
                "add ALICE@contoso.com --tenant common --client-id GUID",
                "already registered",
            ),
            (
                "add x@contoso.com --tenant contoso --client-id GUID",
                "--tenant",
            ),
            (
                "add x@contoso.com --tenant common --client-id app",
                "--client-id",
            ),
            (
                "add x@ --tenant common --client-id GUID",
                "not a valid mailbox",
            ),
            (
                "add x@contoso.com --tenant common --client-id GUID --client-secret-file /no/file",
                "/no/file",
            ),
            (
                "add x@contoso.com --tenant common --client-id GUID --client-secret oops",
                "--client-secret",
            ),
        ] {
            let e = fails(d, args, "");
            assert!(e.contains(expected), "{args}: {e}");
        }
        let e = exec_env(
            d,
            "add x@contoso.com --tenant common --client-id GUID",
            "",
            Some("a b"),
        );
        assert!(e.err().unwrap().to_string().contains("white space"));
        assert_eq!(state(d).registry().load().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn generated_and_chosen_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        exec(
            d,
            "add alice@contoso.com --tenant common --client-id GUID",
            "",
        )
        .unwrap();
        let (out, err) = exec_env(d, "password alice@contoso.com --generate", "", None).unwrap();
        assert_eq!(out.lines().count(), 1);
        assert!(err.contains("will not be shown again"), "{err}");
        let generated = Password::new(out.trim_end());
        let auth = crate::auth::LocalAuth::open(state(d).registry()).unwrap();
        assert!(auth.check("alice@contoso.com", &generated).await.is_some());

        assert!(fails(d, "password alice@contoso.com --stdin", "\n").contains("empty"));
        exec(d, "password alice@contoso.com --stdin", "correct horse\r\n").unwrap();
        assert!(auth.check("alice@contoso.com", &generated).await.is_none());
        let chosen = Password::new("correct horse");
        assert!(auth.check("ALICE@contoso.com", &chosen).await.is_some());

        for args in [
            "password alice@contoso.com",
            "password alice@contoso.com --stdin --generate",
        ] {
            assert!(exec(d, args, "x\n").is_err(), "{args}");
        }
        assert!(fails(d, "password nobody@contoso.com --generate", "").contains("not registered"));
    }

    #[test]
    fn import_token_then_remove() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert!(fails(d, "import-token alice@contoso.com", "rt").contains("not registered"));
        exec(
            d,
            "add alice@contoso.com --tenant common --client-id GUID",
            "",
        )
        .unwrap();
        for bad in ["", " \n", "two tokens\n"] {
            assert!(
                exec(d, "import-token alice@contoso.com", bad).is_err(),
                "{bad:?}"
            );
        }
        exec(d, "import-token Alice@contoso.com", "  0.AAAA-rt\n").unwrap();
        let store = state(d).tokens();
        assert_eq!(
            store.load("alice@contoso.com").unwrap().unwrap().expose(),
            "0.AAAA-rt"
        );
        assert!(exec(d, "list", "").unwrap().contains("token=yes"));

        let out = exec(d, "remove alice@contoso.com", "").unwrap();
        assert!(out.contains("removed alice@contoso.com"), "{out}");
        assert!(store.load("alice@contoso.com").unwrap().is_none());
        assert!(state(d).registry().load().unwrap().is_empty());
        assert!(fails(d, "remove alice@contoso.com", "").contains("not registered"));
        let listed = exec_env(d, "list", "", None).unwrap();
        assert_eq!(
            listed,
            (String::new(), "no mailboxes registered\n".to_owned())
        );
    }

    #[test]
    fn a_shared_mailbox_borrows_its_delegates_token() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        exec(
            d,
            "add alice@contoso.com --tenant common --client-id GUID",
            "",
        )
        .unwrap();
        let (out, err) = exec_env(
            d,
            "add Help@Contoso.com --token-from ALICE@contoso.com",
            "",
            Some("env~secret"),
        )
        .unwrap();
        assert!(
            out.starts_with("added help@contoso.com (token from alice@contoso.com)\n"),
            "{out}"
        );
        assert!(out.contains("import-token alice@contoso.com"), "{out}");
        assert!(err.contains("M365_RELAY_CLIENT_SECRET is ignored"), "{err}");
        let registry = state(d).registry().load().unwrap();
        let help = registry.get("help@contoso.com").unwrap();
        assert!(matches!(
            &help.registration,
            Registration::TokenFrom { delegate } if delegate == "alice@contoso.com"
        ));
        assert_eq!(
            registry.token_owner(help).unwrap().address,
            "alice@contoso.com"
        );

        let e = fails(d, "import-token help@contoso.com", "rt\n");
        assert!(e.contains("import alice@contoso.com's token"), "{e}");
        exec(d, "import-token alice@contoso.com", "rt\n").unwrap();
        let list = exec(d, "list", "").unwrap();
        assert!(
            list.contains(
                "help@contoso.com  token-from=alice@contoso.com  password=no  token=yes  state=unknown  smtp=auto  access-token=-  last-refresh=-\n"
            ),
            "{list}"
        );
        let out = exec(
            d,
            "add sales@contoso.com --token-from alice@contoso.com",
            "",
        )
        .unwrap();
        assert!(
            !out.contains("import-token"),
            "alice has a token now: {out}"
        );

        for (args, expected) in [
            (
                "add self@contoso.com --token-from self@contoso.com",
                "cannot take its token from itself",
            ),
            (
                "add x@contoso.com --token-from nobody@contoso.com",
                "nobody@contoso.com, which is not registered",
            ),
            (
                "add x@contoso.com --token-from help@contoso.com",
                "which takes its own from alice@contoso.com",
            ),
            ("add x@contoso.com --token-from alice", "--token-from"),
            (
                "add help@contoso.com --token-from alice@contoso.com",
                "already registered",
            ),
        ] {
            let e = fails(d, args, "");
            assert!(e.contains(expected), "{args}: {e}");
        }
        for args in [
            "add x@contoso.com --token-from alice@contoso.com --tenant common",
            "add x@contoso.com --token-from alice@contoso.com --client-id GUID",
            "add x@contoso.com --token-from alice@contoso.com --client-secret-file /f",
            "add x@contoso.com --tenant common",
            "add x@contoso.com --client-id GUID",
            "add x@contoso.com",
        ] {
            let e = exec(d, args, "").unwrap_err();
            assert!(e.downcast_ref::<clap::Error>().is_some(), "{args}: {e}");
        }
        assert_eq!(state(d).registry().load().unwrap().len(), 3);

        let e = fails(d, "remove alice@contoso.com", "");
        assert!(
            e.contains("lends its token to help@contoso.com, sales@contoso.com"),
            "{e}"
        );
        let out = exec(d, "remove help@contoso.com", "").unwrap();
        assert!(
            out.contains("the token of alice@contoso.com is kept"),
            "{out}"
        );
        exec(d, "remove sales@contoso.com", "").unwrap();
        assert!(
            state(d)
                .tokens()
                .load("alice@contoso.com")
                .unwrap()
                .is_some()
        );
        exec(d, "remove alice@contoso.com", "").unwrap();
        assert!(state(d).registry().load().unwrap().is_empty());
    }

    #[test]
    fn tenants_and_guids() {
        for ok in ["common", "Organizations", "contoso.onmicrosoft.com", GUID] {
            assert!(validate_tenant(ok).is_ok(), "{ok}");
        }
        for bad in ["", "contoso", "consumers", "a_b.com", "x/y.com", "-a.com"] {
            assert!(validate_tenant(bad).is_err(), "{bad}");
        }
        assert_eq!(validate_guid(&GUID.to_uppercase()).unwrap(), GUID);
        assert!(validate_guid("11111111222233334444555555555555").is_err());
    }
}
