//! `mailbox add`: registers a mailbox with its own app registration, or with the token of
//! another registered mailbox (`--token-from`), and prints what the administrator does next.

use anyhow::{Context, bail};

use super::console::{CLIENT_SECRET_ENV, Console, unix_now};
use super::credential::{CredentialArgs, credential, describe_credential};
use super::input::{validate_guid, validate_tenant};
use crate::cloud::Cloud;
use crate::mailbox::{Mailbox, Registration, normalize_address};
use crate::state::State;

/// `mailbox add`: the mailbox and its app registration.
#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// The mailbox address, e.g. alice@contoso.com.
    pub(super) address: String,
    /// The Entra tenant: its GUID, a verified domain, `organizations` or `common`.
    #[arg(long, required_unless_present = "token_from", requires = "client_id")]
    pub(super) tenant: Option<String>,
    /// The application (client) id of the app registration (a GUID).
    #[arg(long, required_unless_present = "token_from", requires = "tenant")]
    pub(super) client_id: Option<String>,
    #[command(flatten)]
    pub(super) credential: CredentialArgs,
    /// The Microsoft cloud of the tenant: global (default), usgov (GCC High), usgovdod
    /// (DoD) or china (21Vianet). It sets the login host and the scopes; the configured
    /// upstream servers must be that cloud's.
    #[arg(long, value_enum)]
    pub(super) cloud: Option<Cloud>,
    /// Get tokens with the app's own application permissions (client-credentials grant;
    /// IMAP.AccessAsApp, POP.AccessAsApp, SMTP.SendAsApp) instead of a user's sign-in.
    /// Needs a client secret or a certificate, and a tenant GUID or domain.
    #[arg(long)]
    pub(super) app_only: bool,
    /// Use the token of DELEGATE, a registered mailbox with its own app registration
    /// whose user has rights on this one (e.g. Full Access to a shared mailbox). Clients
    /// still log in as ADDRESS, with its own local password.
    #[command(flatten)]
    pub(super) sending: crate::cli::sending::SendingArgs,
    #[arg(
        long,
        value_name = "DELEGATE",
        conflicts_with_all = [
            "tenant", "client_id", "client_secret_file", "secret_expires", "certificate",
            "private_key", "assertion_alg", "cloud", "app_only",
        ]
    )]
    pub(super) token_from: Option<String>,
}

/// `mailbox add`: the mailbox that `args` describe, registered.
pub(super) fn run(args: AddArgs, state: &State, io: &mut Console<'_>) -> anyhow::Result<()> {
    let address = normalize_address(&args.address)?;
    let registration = registration(&args, io)?;
    let cloud = match &registration {
        Registration::App { cloud, .. } => Some(*cloud),
        Registration::TokenFrom { .. } => None,
    };
    let sending = args
        .sending
        .apply(crate::submission::Sending::default(), cloud)?;
    let mailbox = Mailbox {
        address,
        registration,
        password: None,
        created: unix_now(),
        sending,
    };
    add(state, mailbox, io)
}

/// Where the mailbox's tokens come from, as `args` say.
fn registration(args: &AddArgs, io: &mut Console<'_>) -> anyhow::Result<Registration> {
    match (&args.token_from, &args.tenant, &args.client_id) {
        (Some(delegate), _, _) => {
            if io.env_secret.take().is_some_and(|v| !v.is_empty()) {
                writeln!(
                    io.err,
                    "warning: {CLIENT_SECRET_ENV} is ignored: a mailbox added with \
                     --token-from has no app registration"
                )?;
            }
            let delegate = normalize_address(delegate).context("--token-from")?;
            Ok(Registration::TokenFrom { delegate })
        }
        (None, Some(tenant), Some(client_id)) => app_registration(args, tenant, client_id, io),
        // clap enforces one or the other; this is only the message if it did not.
        _ => bail!("give either --token-from, or both --tenant and --client-id"),
    }
}

/// The mailbox's own app registration: tenant, client id, credential and cloud.
fn app_registration(
    args: &AddArgs,
    tenant: &str,
    client_id: &str,
    io: &mut Console<'_>,
) -> anyhow::Result<Registration> {
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
    Ok(Registration::App {
        tenant,
        client_id,
        credential,
        cloud: args.cloud.unwrap_or_default(),
        app_only: args.app_only,
    })
}

/// Registers `mailbox` (its address already normalized) after checking that a delegate it
/// takes its token from can lend it.
fn add(state: &State, mailbox: Mailbox, io: &mut Console<'_>) -> anyhow::Result<()> {
    let address = mailbox.address.clone();
    let mut registry = state.registry().locked()?;
    registry.insert(mailbox)?;
    let Some(added) = registry.get(&address) else {
        bail!("mailbox {address} vanished from the registry while being added");
    };
    match &added.registration {
        Registration::App {
            credential,
            cloud,
            app_only,
            ..
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
            describe_cloud(*cloud, io)?;
            next_for_app(added, io)?;
        }
        Registration::TokenFrom { delegate } => {
            let owner = registry.token_owner(added).context("--token-from")?;
            registry.save()?;
            writeln!(io.out, "added {address} (token from {delegate})")?;
            next_for_borrower(&address, delegate, &owner, state, io)?;
        }
    }
    Ok(())
}

/// Where a mailbox of another cloud than the global one signs in.
fn describe_cloud(cloud: Cloud, io: &mut Console<'_>) -> anyhow::Result<()> {
    if cloud != Cloud::Global {
        writeln!(
            io.out,
            "cloud: {cloud} (sign-in at {}, scopes of {})",
            cloud.login_authority(),
            cloud.delegated_scopes()[0]
                .rsplit_once('/')
                .map_or("", |(host, _)| host)
        )?;
    }
    Ok(())
}

/// What to do after adding a mailbox with its own app registration.
fn next_for_app(mailbox: &Mailbox, io: &mut Console<'_>) -> anyhow::Result<()> {
    let address = mailbox.address.as_str();
    let Registration::App {
        tenant,
        client_id,
        credential,
        cloud,
        app_only: true,
    } = &mailbox.registration
    else {
        writeln!(
            io.out,
            "next: `m365-relay mailbox password {address} --generate` and \
             `m365-relay mailbox import-token {address}`"
        )?;
        return Ok(());
    };
    exchange_setup(address, tenant, client_id, *cloud, io)?;
    writeln!(
        io.out,
        "next: `m365-relay mailbox password {address} --generate`; there is no \
         sign-in: the relay gets its tokens with the app's {}",
        credential.kind()
    )?;
    Ok(())
}

/// What to do after adding a mailbox that takes its token from `delegate` (whose token
/// comes from `owner`).
fn next_for_borrower(
    address: &str,
    delegate: &str,
    owner: &Mailbox,
    state: &State,
    io: &mut Console<'_>,
) -> anyhow::Result<()> {
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
