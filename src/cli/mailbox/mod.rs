//! `m365-relay mailbox ...`: the administrator's commands to register mailboxes, set their
//! local passwords, import refresh tokens, list and remove them. They edit the files in
//! `state_dir`; a running relay notices registry changes at the next login.
//!
//! A mailbox either has its own app registration and refresh token, or takes the token of
//! another registered mailbox (`add --token-from`, for a shared mailbox: PROTOCOL.md A6).
//! The commands keep that relation sound: the delegate must exist and have its own app
//! registration, it cannot be removed while others use its token, and a mailbox that
//! borrows a token never gets one imported.
//!
//! One file per command: [`add`], [`password`], [`token`] (import-token), [`authorize`],
//! [`credential`], [`list`], [`remove`]; `sending` and `test` live beside this directory
//! (`cli/sending.rs`, `cli/probe/`). [`console`] and [`input`] are what they share.

mod add;
mod authorize;
mod console;
mod credential;
mod input;
mod list;
mod password;
mod remove;
#[cfg(test)]
mod tests;
mod token;

use std::io;

use anyhow::bail;

pub use add::AddArgs;
pub use authorize::AuthorizeArgs;
pub use console::CLIENT_SECRET_ENV;
use console::Console;
pub use credential::{CredentialArgs, CredentialCommand};
pub use list::CREDENTIAL_WARNING;
pub use password::PasswordSource;

use crate::config::Config;
use crate::state::State;

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

/// Runs a mailbox command against `config.state_dir`.
pub fn run(command: MailboxCommand, config: &Config) -> anyhow::Result<()> {
    let stdin = io::stdin();
    // Standard error unlocked: other threads log to it meanwhile (the state database's
    // runtime), and would wait for a lock held for the whole command.
    let mut console = Console {
        input: &mut stdin.lock(),
        out: &mut io::stdout().lock(),
        err: &mut io::stderr(),
        env_secret: std::env::var_os(CLIENT_SECRET_ENV),
    };
    let state = crate::state::open(config)?;
    match command {
        MailboxCommand::Authorize(args) => authorize::authorize(args, config, &state, &mut console),
        // A mailbox's cloud must be the one of the configured mail servers.
        MailboxCommand::Add(args) if args.token_from.is_none() => {
            config
                .check_cloud(args.cloud.unwrap_or_default())
                .map_err(anyhow::Error::msg)?;
            execute(MailboxCommand::Add(args), &state, &mut console)
        }
        MailboxCommand::Test(args) => super::probe::run(args, config, &state, console.out),
        command => execute(command, &state, &mut console),
    }
}

/// Runs the commands that need only the state folder.
fn execute(command: MailboxCommand, state: &State, io: &mut Console<'_>) -> anyhow::Result<()> {
    match command {
        MailboxCommand::Add(args) => add::run(args, state, io),
        MailboxCommand::Password { address, source } => password::run(&address, &source, state, io),
        MailboxCommand::ImportToken { address } => token::import(&address, state, io),
        MailboxCommand::List { json } => list::list(state, json, io),
        MailboxCommand::Credential(command) => credential::replace_credential(state, command, io),
        MailboxCommand::Sending(command) => super::sending::run(&command, state, io.out),
        MailboxCommand::Remove { address } => remove::remove(state, &address, io),
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
}
