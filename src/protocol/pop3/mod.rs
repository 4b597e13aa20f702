//! POP3 up to login (RFC 1939, CAPA and response codes per RFC 2449, AUTH per RFC 5034,
//! STLS per RFC 2595), as a pure state machine: CAPA, STLS, USER/PASS, AUTH PLAIN and
//! AUTH LOGIN (with and without an initial response), NOOP, QUIT. After login the client
//! talks to the upstream server directly.

pub mod reply;

use crate::config::Limits;
use crate::error::Error;
use crate::protocol::sasl::{Credentials, Exchange, Mechanism, SaslError, Step};
use crate::protocol::{Action, PreAuth, PreauthLimits, Reply, Tally};

/// Failed logins on one connection before it is closed.
pub const MAX_FAILED_LOGINS: u32 = 3;

/// One client's pre-login conversation.
#[derive(Debug)]
pub struct Session {
    tls: bool,
    auth_allowed: bool,
    /// The name given by USER, waiting for PASS.
    user: Option<String>,
    /// An AUTH exchange in progress.
    auth: Option<Exchange>,
    tally: Tally,
}

impl Session {
    /// A session under the default limits; see [`PreAuth::with_limits`]. (RFC 2449 allows
    /// 255 octets for commands, but SASL responses, RFC 5034 §4, are longer: the line limit
    /// is a few KB.)
    pub fn new(tls: bool, auth_allowed: bool) -> Self {
        Self {
            tls,
            auth_allowed,
            user: None,
            auth: None,
            tally: Tally::new(PreauthLimits::pop3(&Limits::default())),
        }
    }

    /// RFC 2449 §6: USER and SASL only where a password may be sent.
    fn capabilities(&self) -> String {
        let mut lines = vec!["+OK Capability list follows"];
        if self.auth_allowed {
            lines.extend(["USER", "SASL PLAIN LOGIN"]);
        }
        if !self.tls {
            lines.push("STLS");
        }
        lines.extend([
            "TOP",
            "UIDL",
            "PIPELINING",
            "RESP-CODES",
            "AUTH-RESP-CODE",
            "IMPLEMENTATION m365-relay",
            ".",
        ]);
        lines.iter().map(|l| format!("{l}\r\n")).collect()
    }

    fn on_command(&mut self, line: &[u8]) -> Action {
        if let Some(close) = self.tally.count_command(reply::TOO_MANY_COMMANDS) {
            return close;
        }
        let (verb, arg) = match line.iter().position(|&b| b == b' ') {
            Some(at) => (&line[..at], Some(&line[at + 1..])),
            None => (line, None),
        };
        let verb = String::from_utf8_lossy(verb).to_ascii_uppercase();
        let text: String = match (verb.as_str(), arg) {
            ("CAPA", None) => self.capabilities(),
            ("NOOP", None) => reply::OK.into(),
            ("QUIT", None) => return Action::Reply(Reply::closing(reply::BYE)),
            ("STLS", None) if self.tls => reply::ALREADY_TLS.into(),
            ("STLS", None) => return Action::StartTls(Reply::new(reply::BEGIN_TLS)),
            ("USER" | "PASS" | "AUTH", _) if !self.auth_allowed => reply::PLAINTEXT_REFUSED.into(),
            ("USER", Some(name)) if !name.is_empty() => match String::from_utf8(name.to_vec()) {
                Ok(name) => {
                    self.user = Some(name);
                    reply::OK.into()
                }
                Err(_) => return self.failed_login(),
            },
            // The password is the rest of the line: passwords hold spaces.
            ("PASS", Some(password)) => return self.on_pass(password),
            ("AUTH", None) => "+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n".into(),
            ("AUTH", Some(args)) => return self.on_auth(args),
            ("STAT" | "LIST" | "RETR" | "DELE" | "RSET" | "TOP" | "UIDL" | "LAST" | "APOP", _) => {
                reply::NOT_BEFORE_LOGIN.into()
            }
            _ => reply::UNKNOWN_COMMAND.into(),
        };
        Action::Reply(Reply::new(text))
    }

    fn on_pass(&mut self, password: &[u8]) -> Action {
        let Some(user) = self.user.take() else {
            return Action::Reply(Reply::new(reply::USER_FIRST));
        };
        match String::from_utf8(password.to_vec()) {
            Ok(password) => Action::Login(Credentials {
                user,
                password: crate::secret::Password::new(password),
            }),
            Err(_) => self.failed_login(),
        }
    }

    fn on_auth(&mut self, args: &[u8]) -> Action {
        let args = String::from_utf8_lossy(args);
        let mut words = args.split(' ');
        let mechanism = words.next().unwrap_or("");
        let initial = words.next();
        let Some(mechanism) = Mechanism::parse(mechanism) else {
            return Action::Reply(Reply::new(reply::UNKNOWN_MECHANISM));
        };
        let (exchange, step) = Exchange::start(mechanism, initial.map(str::as_bytes));
        self.auth = exchange;
        self.on_step(step)
    }

    /// Turns a step of an AUTH exchange into the POP3 reply (RFC 5034 §4).
    fn on_step(&mut self, step: Step) -> Action {
        let text = match step {
            Step::Challenge(challenge) => format!("+ {challenge}\r\n"),
            Step::Done(credentials) => return Action::Login(credentials),
            Step::Cancelled => reply::AUTH_CANCELLED.into(),
            Step::Invalid(SaslError::Base64) => reply::BAD_BASE64.into(),
            Step::Invalid(_) => return self.failed_login(),
        };
        Action::Reply(Reply::new(text))
    }

    fn failed_login(&mut self) -> Action {
        Action::Reply(self.login_failed(&Error::BadCredentials {
            mailbox: String::new(),
        }))
    }
}

impl PreAuth for Session {
    const TOO_MUCH_INPUT: &'static str = reply::TOO_MUCH_INPUT;
    const MAX_LINE: usize = 8192;

    super::tally_in_field!();

    fn greeting(&self) -> Reply {
        Reply::new("+OK m365-relay POP3 ready\r\n")
    }

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

    fn on_too_long(&mut self) -> Action {
        self.auth = None;
        self.tally
            .count_command(reply::TOO_MANY_COMMANDS)
            .unwrap_or(Action::Reply(Reply::new(reply::LINE_TOO_LONG)))
    }

    fn on_literal(&mut self, _bytes: Vec<u8>) -> Action {
        // POP3 has no literals; the state machine never asks for one.
        Action::Reply(Reply::new(reply::UNKNOWN_COMMAND))
    }

    fn tls_started(&mut self, auth_allowed: bool) {
        self.tls = true;
        self.auth_allowed = auth_allowed;
        self.user = None;
        self.auth = None;
    }

    /// Passes on the upstream server's own success text.
    fn login_succeeded(&mut self, upstream_ok: &str) -> Reply {
        match upstream_ok.trim() {
            "" => Reply::new("+OK Logged in\r\n"),
            text => Reply::new(format!("+OK {text}\r\n")),
        }
    }

    fn login_failed(&mut self, error: &Error) -> Reply {
        if matches!(error, Error::BadCredentials { .. })
            && self.tally.failures_reach(MAX_FAILED_LOGINS)
        {
            return Reply::closing(reply::TOO_MANY_FAILURES);
        }
        reply::reply_for(error)
    }

    fn farewell(&self, error: &Error) -> Reply {
        reply::reply_for(error)
    }
}

#[cfg(test)]
mod tests;
