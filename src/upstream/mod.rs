//! The upstream side: connects to the Microsoft 365 (or other XOAUTH2) mail server,
//! always over verified TLS, and logs in with XOAUTH2. One [`Connector`] does what every
//! protocol shares (connecting, TLS, greeting, deadlines); each protocol adds only its small
//! login exchange ([`Login`] for the implicit-TLS ones, IMAP and POP3; SMTP with STARTTLS
//! has its own conversation).

pub mod connector;
pub mod imap;
pub mod pop3;
pub mod preconnect;
pub mod smtp;

pub use connector::{CommandError, Connector, Login, MAX_REPLY_LINE, MAX_REPLY_LINES, Upstream};
pub use imap::Imap;
pub use pop3::Pop3;
pub use preconnect::{Greeted, Preconnect, Preconnects};
