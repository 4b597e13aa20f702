//! Integration tests: the relay in-process, driven by real clients against the fakes of
//! Entra ID and Exchange Online in `support/`.

// A test fails by panicking: its helpers may unwrap, expect and panic (Cargo.toml [lints]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
mod admin_access;
mod architecture;
mod at_rest;
mod authorize;
mod cli;
mod compose_fleet;
mod container;
mod crash;
mod credentials;
mod degraded;
mod deploy;
mod fakes;
mod fakes_imap;
mod fakes_pop3;
mod faults;
mod fleet;
mod fleet_counters;
mod fleet_limits;
mod fleet_tokens;
mod graph;
mod graph_relay;
mod guard;
mod harness;
mod imap;
mod kubernetes;
mod lifecycle;
mod limits;
mod log_injection;
mod memory;
mod pop3;
mod postgres;
mod preconnect;
mod probe;
mod props;
mod proxy_protocol;
mod queue_accept;
mod queue_cli;
mod queue_delivery;
mod queue_fleet;
mod queue_integrity;
mod queue_postgres;
mod revocation;
mod service;
mod shared;
mod smtp;
mod smtp_pool;
mod smuggling;
mod state_cli;
mod state_integrity;
mod state_postgres;
mod state_relay;
mod submission;
mod support;
mod util;
