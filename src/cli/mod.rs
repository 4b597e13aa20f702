//! The command line: `serve` runs the relay, `mailbox ...` administers mailboxes,
//! `check-config` validates a configuration. `main.rs` only parses and calls [`run`].

pub mod log;
pub mod mailbox;
pub mod probe;
pub mod queue;
pub mod sending;
pub mod state;
pub mod state_move;
pub mod state_status;
pub mod status;

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

    /// Log lines as text or as JSON objects (one per line). The level comes from
    /// M365_RELAY_LOG (env-filter syntax, default `info`).
    #[arg(long, global = true, env = "M365_RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the relay: listen for clients and relay them to Microsoft 365.
    Serve,
    /// Check the configuration and print where everything is, then exit.
    CheckConfig,
    /// Exit 0 if a running relay's admin endpoint says it is healthy, 1 otherwise (for
    /// container health checks).
    Health {
        /// The admin endpoint, e.g. http://127.0.0.1:9587 (default: `admin.listen`).
        #[arg(long, value_name = "URL")]
        admin: Option<String>,
    },
    /// Make a running relay re-read its config, mailboxes and certificate (like SIGHUP),
    /// through its admin endpoint.
    Reload {
        /// The admin endpoint, e.g. http://127.0.0.1:9587 (default: `admin.listen`).
        #[arg(long, value_name = "URL")]
        admin: Option<String>,
    },
    /// Show a running relay's listeners, sessions and mailboxes (from its admin endpoint).
    Status {
        /// Print the JSON the admin endpoint answered.
        #[arg(long)]
        json: bool,
        /// The admin endpoint, e.g. http://127.0.0.1:9587 (default: `admin.listen`).
        #[arg(long, value_name = "URL")]
        admin: Option<String>,
    },
    /// Register mailboxes and manage their passwords and tokens.
    #[command(subcommand)]
    Mailbox(Box<mailbox::MailboxCommand>),
    /// The state as a whole: schema migrations and status, export and import between a
    /// state folder and the database, reseal a refused registry.
    #[command(subcommand)]
    State(state::StateCommand),
    /// The outbound queue: list, show, retry or remove queued messages.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    /// The delivery log: what happened to each message, and what Microsoft said.
    Log(log::LogArgs),
}

/// Runs a parsed command line. Errors are printed as one line and give exit code 1.
pub fn run(cli: Cli) -> ExitCode {
    let result = Config::load(cli.config.as_deref())
        .map_err(anyhow::Error::from)
        .and_then(|config| match cli.command {
            Command::Serve => serve(config),
            Command::CheckConfig => check_config(&config),
            Command::Status { json, admin } => status::run(&config, admin.as_deref(), json),
            Command::Reload { admin } => status::reload(&config, admin.as_deref()),
            Command::Health { admin } => status::health(&config, admin.as_deref()),
            Command::Mailbox(command) => mailbox::run(*command, &config),
            Command::State(command) => state::run(&command, &config, &mut std::io::stdout()),
            Command::Queue(command) => queue::run(&command, &config, &mut std::io::stdout()),
            Command::Log(args) => log::run(&args, &config, &mut std::io::stdout().lock()),
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
    match &config.state {
        crate::config::StateBackend::Files => println!("state: files in state_dir"),
        crate::config::StateBackend::Postgres(db) => {
            println!("state: postgres at {} (pool {})", db.server, db.pool_size)
        }
    }
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
    if let Some(trusted) = &config.trusted {
        let networks: Vec<String> = trusted.networks.iter().map(|n| n.to_string()).collect();
        println!(
            "smtp trusted: {} from {} as {}",
            trusted.listen,
            networks.join(", "),
            trusted.mailbox
        );
    }
    println!("entra: {}", config.entra.authority);
    println!("graph: {}", config.graph.endpoint);
    Ok(())
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tracing::info!(config = %config.describe_source(), version = env!("CARGO_PKG_VERSION"), "starting m365-relay");
        // Listen for SIGHUP before the listeners are up: a SIGHUP that came in between
        // would otherwise end the process (its default action).
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        let shutdown = CancellationToken::new();
        let running = crate::server::start(config, shutdown.clone()).await?;
        reload_on_hangup(&running, hangups, wait_for_signal()).await;
        tracing::info!("shutting down: no new connections; open sessions get the grace period");
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

/// Reloads on every SIGHUP until `stop` completes.
async fn reload_on_hangup(
    running: &crate::server::Running,
    hangups: std::io::Result<tokio::signal::unix::Signal>,
    stop: impl std::future::Future<Output = ()>,
) {
    let Ok(mut hangups) = hangups else {
        tracing::warn!("cannot listen for SIGHUP; reload with `m365-relay reload` instead");
        return stop.await;
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = hangups.recv() => {
                tracing::info!("SIGHUP: reloading");
                // The outcome is logged where the reload runs.
                let _ = running.reload().await;
            }
        }
    }
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
