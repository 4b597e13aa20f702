//! The vocabulary of `mailbox test`: its steps, why one failed, and who and where the test
//! is about (what the hints name).

use crate::error::Error;
use crate::oauth::TokenError;
use crate::upstream::CommandError;

/// One step of the test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Token,
    Imap,
    Pop3,
    Smtp,
    /// A Graph token for sending (mailboxes that send through Microsoft Graph).
    Graph,
    Send,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Token => "token",
            Step::Imap => "imap",
            Step::Pop3 => "pop3",
            Step::Smtp => "smtp",
            Step::Graph => "graph",
            Step::Send => "send",
        }
    }
}

/// Why a step failed: what its line prints, and what [`hint`](super::hint) looks at.
#[derive(Debug)]
pub enum Failure {
    /// No access token: none stored, the delegate is unusable, or Entra said no.
    Token(TokenError),
    /// Connecting, TLS, or the XOAUTH2 login upstream.
    Login(Error),
    /// A command after the login (SELECT, STAT, the message).
    Command(CommandError),
    /// Microsoft Graph refused or failed.
    Graph(crate::graph::GraphError),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Token(e) => write!(f, "{e}"),
            Failure::Login(e) => write!(f, "{e}"),
            Failure::Command(e) => write!(f, "{e}"),
            Failure::Graph(e) => write!(f, "Microsoft Graph: {e}"),
        }
    }
}

/// Who and where the test is about: the hints name them.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The mailbox tested (`user=` of the XOAUTH2 logins).
    pub mailbox: &'a str,
    /// The mailbox whose token it uses: itself, or its `--token-from` delegate.
    pub owner: &'a str,
    /// Whether the owner is app-only (client-credentials grant, no user sign-in).
    pub app_only: bool,
    /// The Entra login host.
    pub authority: &'a str,
}

/// A step's outcome: what to print after `ok`, or why it failed.
pub type Outcome = Result<String, Failure>;
