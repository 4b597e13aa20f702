//! SMTP: the commands ([`command`]) and replies ([`reply`]) before and after login, the
//! paths of MAIL and RCPT ([`path`]), and the conversation up to AUTH (RFC 5321, RFC 3207
//! STARTTLS, RFC 4954 AUTH) as a pure state machine: [`Session::on_line`] takes one client
//! line and says what to do; the shared async [`crate::protocol::driver`] does it. After
//! AUTH the submission layer serves the session, with the same commands and replies.

pub mod command;
pub mod path;
pub mod reply;

use std::sync::Arc;

use crate::config::Limits;
use crate::error::Error;
use crate::protocol::sasl::{Exchange, Mechanism, SaslError, Step};
use crate::protocol::{Action, PreAuth, PreauthLimits, Reply, Tally};
use command::Command;

/// Longest AUTH line, CRLF included (RFC 4954 §4): initial responses are long. Other
/// command lines are held to `limits.max_line_smtp` (512, RFC 5321 §4.5.3.1.4).
pub const MAX_AUTH_LINE: usize = crate::config::SMTP_AUTH_LINE;
/// Failed logins on one connection before it is closed.
pub const MAX_FAILED_LOGINS: u32 = 3;

/// Exchange Online's post-STARTTLS EHLO keywords (PROTOCOL.md A2) that the relay passes
/// on, advertised until the relay has seen its upstream's own list. After AUTH the relay
/// forwards each MAIL and RCPT line (with its parameters) and the DATA stream, so these
/// are honoured by upstream, and the relay's own replies honour PIPELINING and
/// ENHANCEDSTATUSCODES. BDAT chunks (CHUNKING) are read and passed on too (by the
/// submission layer, after login); BINARYMIME is not offered.
pub const EXCHANGE_ONLINE_EXTENSIONS: &[&str] = &[
    "SIZE 157286400",
    "PIPELINING",
    "DSN",
    "ENHANCEDSTATUSCODES",
    "8BITMIME",
    "CHUNKING",
    "SMTPUTF8",
];

/// The keyword of an EHLO line (`SIZE` of `SIZE 157286400`).
fn keyword(line: &str) -> &str {
    line.split(' ').next().unwrap_or("")
}

/// Keeps from an upstream EHLO list the keywords the relay may advertise: those of
/// [`EXCHANGE_ONLINE_EXTENSIONS`], with upstream's own parameters.
pub fn passthrough(upstream_keywords: &[String]) -> Vec<String> {
    upstream_keywords
        .iter()
        .filter(|kw| {
            EXCHANGE_ONLINE_EXTENSIONS
                .iter()
                .any(|p| keyword(p).eq_ignore_ascii_case(keyword(kw)))
        })
        .cloned()
        .collect()
}

/// One client's pre-auth conversation.
#[derive(Debug)]
pub struct Session {
    host: Arc<str>,
    extensions: Arc<[String]>,
    tls: bool,
    auth_allowed: bool,
    /// EHLO seen since the session (re)started: AUTH needs it (RFC 4954 §4).
    ehlo: bool,
    /// An AUTH exchange in progress: the next line is its response.
    auth: Option<Exchange>,
    tally: Tally,
}

impl Session {
    /// `extensions` are the keywords to advertise besides STARTTLS and AUTH. The limits
    /// are the defaults; see [`PreAuth::with_limits`].
    pub fn new(host: Arc<str>, extensions: Arc<[String]>, tls: bool, auth_allowed: bool) -> Self {
        Self {
            host,
            extensions,
            tls,
            auth_allowed,
            ehlo: false,
            auth: None,
            tally: Tally::new(PreauthLimits::smtp(&Limits::default())),
        }
    }

    fn on_command(&mut self, line: &[u8]) -> Action {
        if let Some(close) = self.tally.count_command(reply::TOO_MANY_COMMANDS) {
            return close;
        }
        let command = Command::parse(line);
        if line.len() + 2 > self.tally.limits.max_line && !matches!(command, Command::Auth { .. }) {
            return Action::Reply(Reply::new(reply::LINE_TOO_LONG));
        }
        let text = match command {
            Command::Ehlo("") => reply::EHLO_SYNTAX.into(),
            Command::Ehlo(_) => {
                self.ehlo = true;
                self.ehlo_reply()
            }
            Command::Helo(_) => {
                self.ehlo = false;
                reply::helo(&self.host)
            }
            Command::StartTls(args) if !args.is_empty() => reply::NO_PARAMETERS.into(),
            Command::StartTls(_) if self.tls => reply::ALREADY_TLS.into(),
            Command::StartTls(_) => return Action::StartTls(Reply::new(reply::READY_FOR_TLS)),
            Command::Auth { mechanism, initial } => return self.on_auth(mechanism, initial),
            Command::Rset | Command::Noop => reply::OK.into(),
            Command::Quit => return Action::Reply(Reply::closing(reply::BYE)),
            Command::Help => reply::HELP.into(),
            Command::Vrfy => reply::CANNOT_VRFY.into(),
            // A mail transaction needs AUTH first, whatever its syntax.
            Command::Mail { .. }
            | Command::Rcpt { .. }
            | Command::Data
            | Command::Bdat { .. }
            | Command::BadBdat
            | Command::Syntax(_) => reply::AUTH_REQUIRED.into(),
            Command::NotImplemented => reply::NOT_IMPLEMENTED.into(),
            Command::Unknown => reply::UNRECOGNIZED.into(),
        };
        Action::Reply(Reply::new(text))
    }

    fn ehlo_reply(&self) -> String {
        let mut lines = vec![format!("{} Hello", self.host)];
        lines.extend(self.extensions.iter().cloned());
        if !self.tls {
            lines.push("STARTTLS".into());
        }
        if self.auth_allowed {
            lines.push("AUTH PLAIN LOGIN".into());
            // The pre-RFC 2554 form that some old clients look for (Postfix's
            // broken_sasl_auth_clients); standard clients ignore it.
            lines.push("AUTH=PLAIN LOGIN".into());
        }
        multiline(250, &lines)
    }

    fn on_auth(&mut self, mechanism: &str, initial: Option<&[u8]>) -> Action {
        let reply = |text: &'static str| Action::Reply(Reply::new(text));
        if mechanism.is_empty() {
            return reply(reply::AUTH_SYNTAX);
        }
        if !self.ehlo {
            return reply(reply::EHLO_FIRST);
        }
        let Some(mechanism) = Mechanism::parse(mechanism) else {
            return reply(reply::UNKNOWN_MECHANISM);
        };
        if !self.auth_allowed {
            return reply(reply::ENCRYPTION_REQUIRED);
        }
        let (exchange, step) = Exchange::start(mechanism, initial);
        self.auth = exchange;
        self.on_step(step)
    }

    /// Turns a step of an AUTH exchange into the SMTP reply (RFC 4954 §4).
    fn on_step(&mut self, step: Step) -> Action {
        let text: String = match step {
            Step::Challenge(challenge) => reply::challenge(challenge),
            Step::Done(credentials) => return Action::Login(credentials),
            Step::Cancelled => reply::AUTH_CANCELLED.into(),
            Step::Invalid(SaslError::Base64) => reply::BAD_BASE64.into(),
            Step::Invalid(_) => {
                if self.tally.failures_reach(MAX_FAILED_LOGINS) {
                    return Action::Reply(Reply::closing(reply::TOO_MANY_FAILURES));
                }
                reply::BAD_CREDENTIALS.into()
            }
        };
        Action::Reply(Reply::new(text))
    }

    fn counted(&mut self, reply: Reply) -> Action {
        self.tally
            .count_command(reply::TOO_MANY_COMMANDS)
            .unwrap_or(Action::Reply(reply))
    }
}

impl PreAuth for Session {
    const TOO_MUCH_INPUT: &'static str = reply::TOO_MUCH_INPUT;
    const MAX_LINE: usize = MAX_AUTH_LINE;

    /// AUTH lines may be long; the others are checked against `max_line` once read.
    fn max_line(&self) -> usize {
        self.tally.limits.max_line.max(MAX_AUTH_LINE)
    }

    super::tally_in_field!();

    fn greeting(&self) -> Reply {
        Reply::new(reply::greeting(&self.host))
    }

    /// The TLS handshake after STARTTLS succeeded: the client starts over with EHLO
    /// (RFC 3207 §4.2).
    fn tls_started(&mut self, auth_allowed: bool) {
        self.tls = true;
        self.auth_allowed = auth_allowed;
        self.ehlo = false;
        self.auth = None;
    }

    fn login_succeeded(&mut self, _upstream_ok: &str) -> Reply {
        Reply::new(reply::AUTH_OK)
    }

    /// The reply for a failed login; the connection closes after too many.
    fn login_failed(&mut self, error: &Error) -> Reply {
        if matches!(error, Error::BadCredentials { .. })
            && self.tally.failures_reach(MAX_FAILED_LOGINS)
        {
            return Reply::closing(reply::TOO_MANY_FAILURES);
        }
        reply::reply_for(error)
    }

    /// A line that exceeded [`MAX_AUTH_LINE`]. It also ends an AUTH exchange.
    fn on_too_long(&mut self) -> Action {
        self.auth = None;
        self.counted(Reply::new(reply::LINE_TOO_LONG))
    }

    /// One complete client line, without its CRLF.
    fn on_line(&mut self, line: &[u8]) -> Action {
        match self.auth.take() {
            Some(exchange) => {
                let (next, step) = exchange.step(line);
                self.auth = next;
                self.on_step(step)
            }
            None => self.on_command(line),
        }
    }

    fn on_literal(&mut self, _bytes: Vec<u8>) -> Action {
        // SMTP has no literals; the state machine never asks for one.
        Action::Reply(Reply::new(reply::UNRECOGNIZED))
    }

    fn farewell(&self, error: &Error) -> Reply {
        reply::reply_for(error)
    }
}

/// `code-line1`, `code-line2`, …, `code lineN`, each with CRLF.
pub fn multiline(code: u16, lines: &[String]) -> String {
    let last = lines.len().saturating_sub(1);
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{code}{}{l}\r\n", if i == last { ' ' } else { '-' }))
        .collect()
}

#[cfg(test)]
mod tests;
