//! Hermetic fakes of Microsoft 365 for the integration tests (and a private PostgreSQL cluster,
//! `postgres`): a test PKI, Entra ID's token endpoint,
//! Exchange Online's SMTP, IMAP and POP3 servers and Microsoft Graph's sendMail, all on 127.0.0.1
//! port 0. The three mail servers share one core (`fake_server`: accept loop, recording, XOAUTH2
//! check, panic watch) and one line reader (`line_io`); `relay_launch` starts the relay as a
//! process (also for the benchmark).
#![allow(dead_code)] // not every test uses every helper

pub mod certs;
pub mod entra_errors;
mod entra_state;
pub mod fake_entra;
pub mod fake_graph;
pub mod fake_imap;
pub mod fake_pop3;
pub mod fake_server;
pub mod fake_smtp;
pub mod fleet;
mod graph_state;
mod graph_wire;
mod imap_commands;
mod imap_fetch;
mod imap_search;
mod imap_selected;
mod imap_session;
mod imap_store;
mod imap_wire;
pub mod line_client;
mod line_io;
mod pg_machine;
mod pop3_session;
mod pop3_wire;
pub mod postgres;
pub mod relay_launch;
pub mod smtp_delivery;
pub mod smtp_limits;
pub mod smtp_pool_knobs;
mod smtp_session;
mod smtp_wire;
pub mod tasks;

/// The fixture of the fakes' own tests (`fakes*.rs`, `graph.rs`): a tenant, a public client
/// app registered in it, and a user of it.
pub mod fixture {
    pub const TENANT: &str = "contoso.onmicrosoft.com";
    pub const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
    pub const UPN: &str = "alice@contoso.com";
}
