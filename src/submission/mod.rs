//! SMTP after login: the relay as the submission server.
//!
//! Once a client has logged in (or connected from a trusted network), the relay reads
//! its mail transactions itself rather than piping bytes, because it has rules to apply
//! before Microsoft sees a message: the mailbox's allowed senders ([`rules`]), checked
//! on `MAIL FROM` and on the header From and Sender; and Microsoft's sending limits
//! ([`limits`]), answered with temporary replies so that clients queue rather than being
//! refused late. A message then goes out one of two ways ([`SmtpVia`]): over the
//! mailbox's XOAUTH2 connection to Exchange Online, streamed (the relay holds only the
//! header section), or through Microsoft Graph's `sendMail`, held in memory within
//! bounds. `250` is only ever answered after the upstream accepted the message.
//!
//! - [`settings`]: what a mailbox's registration says about sending.
//! - [`rules`], [`limits`]: the checks.
//! - [`data`]: the DATA stream: its end, bare line ends, dot-unstuffing.
//! - [`header`]: the header section, read strictly, and its senders.
//! - [`address`]: strict readings of header addresses and SMTP paths.
//! - [`driver`]: the async session.
//! - [`session`]: a logged-in session as the server starts it, and its way out
//!   ([`upstream`]: SMTP AUTH to Exchange Online; [`graph_sender`]: Microsoft Graph).

pub mod address;
pub mod data;
pub mod driver;
pub mod graph_sender;
pub mod header;
pub mod limits;
pub mod pool;
pub mod route;
pub mod rules;
pub mod session;
pub mod upstream;

pub use crate::mailbox::{Sending, SmtpVia};
