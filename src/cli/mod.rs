//! The command line: `serve` runs the relay, `mailbox ...` administers mailboxes,
//! `check-config` validates a configuration. `main.rs` only parses and calls [`run`].

pub mod mailbox;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{CONFIG_ENV, Config};

/// Lets legacy mail clients log in to Microsoft 365 with a password: the relay logs in
/// upstream with OAuth 2.0 (XOAUTH2) on their behalf.
#[derive(Parser, Debug)]
#[command(name = "m365-relay", version, about, long_about = None)]
pub struct Cli {
    /// The config file. Without it (and without M365_RELAY_CONFIG), the built-in default
    /// config is used, with paths relative to the working directory.
    #[arg(long, global = true, env = CONFIG_ENV, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the relay: listen for clients and relay them to Microsoft 365.
    Serve,
    /// Check the configuration and print where everything is, then exit.
    CheckConfig,
    /// Register mailboxes and manage their passwords and tokens.
    #[command(subcommand)]
    Mailbox(mailbox::MailboxCommand),
}

/// Runs a parsed command line. Errors are printed as one line and give exit code 1.
pub fn run(cli: Cli) -> ExitCode {
    let result = Config::load(cli.config.as_deref())
        .map_err(anyhow::Error::from)
        .and_then(|config| match cli.command {
            Command::Serve => serve(config),
            Command::CheckConfig => check_config(&config),
            Command::Mailbox(command) => mailbox::run(command, &config),
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(config: &Config) -> anyhow::Result<()> {
    let listen = |a: Option<std::net::SocketAddr>| a.map_or("off".to_owned(), |a| a.to_string());
    println!("config: {} is valid", config.describe_source());
    println!("state_dir: {}", config.state_dir.display());
    println!(
        "tls: {} / {}",
        config.tls.cert.display(),
        config.tls.key.display()
    );
    println!(
        "smtp: starttls {}, tls {}, upstream {}",
        listen(config.smtp.listen_starttls),
        listen(config.smtp.listen_tls),
        config.smtp.upstream
    );
    println!("entra: {}", config.entra.authority);
    Ok(())
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tracing::info!(config = %config.describe_source(), version = env!("CARGO_PKG_VERSION"), "starting m365-relay");
        let shutdown = CancellationToken::new();
        let running = crate::server::start(config, shutdown.clone()).await?;
        wait_for_signal().await;
        tracing::info!("shutting down: no new connections; waiting for open sessions");
        let second = tokio::spawn(async {
            wait_for_signal().await;
            tracing::warn!("second signal: exiting now");
            std::process::exit(0);
        });
        running.shutdown().await;
        second.abort();
        tracing::info!("stopped");
        Ok(())
    })
}

/// SIGINT or SIGTERM.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
