//! Integration tests: the relay in-process, driven by real clients against the fakes of
//! Entra ID and Exchange Online in `support/`.

mod cli;
mod fakes;
mod harness;
mod smtp;
mod support;
