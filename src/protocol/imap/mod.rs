//! IMAP up to login (RFC 9051 / RFC 3501, STARTTLS per RFC 2595, SASL-IR per RFC 4959,
//! LITERAL+ per RFC 7888), as a pure state machine over the shared line reader: CAPABILITY,
//! NOOP, LOGOUT, ID, STARTTLS, LOGIN (atoms, quoted strings, literals), AUTHENTICATE PLAIN
//! and LOGIN with and without an initial response. Tags are the client's. After login the
//! client talks to the upstream server directly: IDLE, literals, COMPRESS, everything.

pub mod command;
pub mod reply;

use command::{Arg, Command, MAX_LITERALS, Part};

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
    /// The command being assembled from lines and literals.
    pending: Vec<Part>,
    pending_size: usize,
    /// An AUTHENTICATE exchange in progress, with its tag.
    auth: Option<(String, Exchange)>,
    /// Tag and command name of the login in flight.
    login: Option<(String, &'static str)>,
    tally: Tally,
}

impl Session {
    /// A session under the default limits; see [`PreAuth::with_limits`].
    pub fn new(tls: bool, auth_allowed: bool) -> Self {
        Self {
            tls,
            auth_allowed,
            pending: Vec::new(),
            pending_size: 0,
            auth: None,
            login: None,
            tally: Tally::new(PreauthLimits::imap(&Limits::default())),
        }
    }

    fn max_command(&self) -> usize {
        command::max_command(self.tally.limits.max_line, self.tally.limits.max_literal)
    }

    /// The capabilities for the current state (RFC 9051 §7.2.2): LOGINDISABLED and no
    /// AUTH= where a password may not be sent.
    fn capabilities(&self) -> String {
        let mut caps = vec!["IMAP4rev1", "SASL-IR", "LITERAL+", "ID", "ENABLE"];
        if !self.tls {
            caps.push("STARTTLS");
        }
        if self.auth_allowed {
            caps.extend(["AUTH=PLAIN", "AUTH=LOGIN"]);
        } else {
            caps.push("LOGINDISABLED");
        }
        caps.join(" ")
    }

    fn reset_pending(&mut self) -> Vec<Part> {
        self.pending_size = 0;
        std::mem::take(&mut self.pending)
    }

    fn on_command(&mut self, command: Command) -> Action {
        if let Some(close) = self.tally.count_command(reply::TOO_MANY_COMMANDS) {
            return close;
        }
        let Command { tag, name, args } = command;
        let ok = |what: &str| Reply::new(format!("{tag} OK {what} completed\r\n"));
        let bad = |why: &str| Action::Reply(Reply::new(format!("{tag} BAD {why}\r\n")));
        let reply = match name.as_str() {
            "CAPABILITY" if args.is_empty() => Reply::new(format!(
                "* CAPABILITY {}\r\n{tag} OK CAPABILITY completed\r\n",
                self.capabilities()
            )),
            "NOOP" if args.is_empty() => ok("NOOP"),
            "LOGOUT" if args.is_empty() => Reply::closing(format!(
                "* BYE m365-relay logging out\r\n{tag} OK LOGOUT completed\r\n"
            )),
            // RFC 2971: the client's ID is for logs; ours is our name and version.
            "ID" if args.len() == 1 => Reply::new(format!(
                "* ID (\"name\" \"m365-relay\" \"version\" \"{}\")\r\n{tag} OK ID completed\r\n",
                env!("CARGO_PKG_VERSION")
            )),
            "STARTTLS" if self.tls => return bad("TLS is already active"),
            "STARTTLS" if args.is_empty() => {
                return Action::StartTls(Reply::new(format!(
                    "{tag} OK Begin TLS negotiation now\r\n"
                )));
            }
            "LOGIN" | "AUTHENTICATE" if !self.auth_allowed => Reply::new(format!(
                "{tag} NO [PRIVACYREQUIRED] Use STARTTLS (or the TLS port) before logging in\r\n"
            )),
            "LOGIN" => return self.on_login(tag, &args),
            "AUTHENTICATE" => return self.on_authenticate(tag, &args),
            "CAPABILITY" | "NOOP" | "LOGOUT" | "ID" | "STARTTLS" => {
                return bad("Syntax error in arguments");
            }
            "SELECT" | "EXAMINE" | "CREATE" | "DELETE" | "RENAME" | "SUBSCRIBE" | "UNSUBSCRIBE"
            | "LIST" | "LSUB" | "NAMESPACE" | "STATUS" | "APPEND" | "IDLE" | "CHECK" | "CLOSE"
            | "UNSELECT" | "EXPUNGE" | "SEARCH" | "FETCH" | "STORE" | "COPY" | "MOVE" | "UID"
            | "ENABLE" | "COMPRESS" | "GETQUOTAROOT" | "GETQUOTA" => return bad("Log in first"),
            _ => return bad("Unknown command"),
        };
        Action::Reply(reply)
    }

    fn on_login(&mut self, tag: String, args: &[Arg]) -> Action {
        let [user, password] = args else {
            return Action::Reply(Reply::new(format!(
                "{tag} BAD Syntax: LOGIN user password\r\n"
            )));
        };
        let (Some(user), Some(password)) = (user.astring(), password.astring()) else {
            return Action::Reply(Reply::new(format!(
                "{tag} BAD Syntax: LOGIN user password\r\n"
            )));
        };
        let utf8 = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
        match (utf8(user), utf8(password)) {
            (Some(user), Some(password)) => {
                self.login = Some((tag, "LOGIN"));
                Action::Login(Credentials {
                    user,
                    password: crate::secret::Password::new(password),
                })
            }
            _ => self.failed_login(&tag),
        }
    }

    fn on_authenticate(&mut self, tag: String, args: &[Arg]) -> Action {
        let (mechanism, initial) = match args {
            [Arg::Atom(m)] => (m, None),
            [Arg::Atom(m), Arg::Atom(ir)] => (m, Some(ir.as_slice())),
            _ => {
                return Action::Reply(Reply::new(format!(
                    "{tag} BAD Syntax: AUTHENTICATE mechanism [initial-response]\r\n"
                )));
            }
        };
        let Some(mechanism) = Mechanism::parse(&String::from_utf8_lossy(mechanism)) else {
            return Action::Reply(Reply::new(format!(
                "{tag} NO [CANNOT] Unsupported authentication mechanism; use PLAIN or LOGIN\r\n"
            )));
        };
        let (exchange, step) = Exchange::start(mechanism, initial);
        self.on_step(tag, exchange, step)
    }

    /// Turns a step of an AUTHENTICATE exchange into the IMAP reply (RFC 9051 §6.2.2).
    fn on_step(&mut self, tag: String, exchange: Option<Exchange>, step: Step) -> Action {
        let text = match step {
            Step::Challenge(challenge) => {
                self.auth = exchange.map(|e| (tag, e));
                return Action::Reply(Reply::new(format!("+ {challenge}\r\n")));
            }
            Step::Done(credentials) => {
                self.login = Some((tag, "AUTHENTICATE"));
                return Action::Login(credentials);
            }
            Step::Cancelled => format!("{tag} BAD AUTHENTICATE cancelled\r\n"),
            Step::Invalid(SaslError::Base64) => format!("{tag} BAD Invalid base64 in response\r\n"),
            Step::Invalid(_) => return self.failed_login(&tag),
        };
        Action::Reply(Reply::new(text))
    }

    fn failed_login(&mut self, tag: &str) -> Action {
        let error = Error::BadCredentials {
            mailbox: String::new(),
        };
        Action::Reply(self.failure_reply(tag, &error))
    }

    fn failure_reply(&mut self, tag: &str, error: &Error) -> Reply {
        let reply = reply::reply_for(tag, error);
        if matches!(error, Error::BadCredentials { .. })
            && self.tally.failures_reach(MAX_FAILED_LOGINS)
        {
            return Reply::closing(format!("{}{}", reply.text, reply::TOO_MANY_FAILURES));
        }
        reply
    }

    /// A line of the command being assembled; it is complete unless the line announces
    /// a literal.
    fn on_command_line(&mut self, line: &[u8]) -> Action {
        self.pending_size += line.len() + 2;
        self.pending.push(Part::Text(line.to_vec()));
        let literals = self
            .pending
            .iter()
            .filter(|p| matches!(p, Part::Literal(_)))
            .count();
        let max_command = self.max_command();
        if let Some((len, non_sync)) = command::literal_announced(line) {
            let fits = len as usize <= self.tally.limits.max_literal
                && literals < MAX_LITERALS
                && self.pending_size + len as usize <= max_command;
            if fits {
                let ack = (!non_sync).then(|| Reply::new(reply::CONTINUE_LITERAL));
                return Action::Literal {
                    len: len as usize,
                    ack,
                };
            }
            let tag = command::tag_of(&self.pending).unwrap_or_else(|| "*".into());
            self.reset_pending();
            // A non-synchronizing literal is on its way regardless: the only safe answer
            // is to close (RFC 7888 §4). A synchronizing one is simply refused.
            return Action::Reply(if non_sync {
                Reply::closing(reply::LITERAL_TOO_BIG)
            } else {
                Reply::new(format!(
                    "{tag} BAD [TOOBIG] Literal too large before login\r\n"
                ))
            });
        }
        if self.pending_size > max_command {
            self.reset_pending();
            return self
                .tally
                .count_command(reply::TOO_MANY_COMMANDS)
                .unwrap_or(Action::Reply(Reply::new(reply::LINE_TOO_LONG)));
        }
        let parts = self.reset_pending();
        match command::parse(&parts) {
            Ok(command) => self.on_command(command),
            Err(e) => {
                if let Some(close) = self.tally.count_command(reply::TOO_MANY_COMMANDS) {
                    return close;
                }
                let tag = e.tag.unwrap_or_else(|| "*".into());
                Action::Reply(Reply::new(format!("{tag} BAD Syntax error\r\n")))
            }
        }
    }
}

impl PreAuth for Session {
    const TOO_MUCH_INPUT: &'static str = reply::TOO_MUCH_INPUT;
    const MAX_LINE: usize = 8192;

    super::tally_in_field!();

    fn greeting(&self) -> Reply {
        Reply::new(format!(
            "* OK [CAPABILITY {}] m365-relay ready\r\n",
            self.capabilities()
        ))
    }

    fn on_line(&mut self, line: &[u8]) -> Action {
        match self.auth.take() {
            Some((tag, exchange)) => {
                let (next, step) = exchange.step(line);
                self.on_step(tag, next, step)
            }
            None => self.on_command_line(line),
        }
    }

    fn on_too_long(&mut self) -> Action {
        self.reset_pending();
        self.auth = None;
        self.tally
            .count_command(reply::TOO_MANY_COMMANDS)
            .unwrap_or(Action::Reply(Reply::new(reply::LINE_TOO_LONG)))
    }

    fn on_literal(&mut self, bytes: Vec<u8>) -> Action {
        self.pending_size += bytes.len();
        self.pending.push(Part::Literal(bytes));
        Action::Continue
    }

    fn tls_started(&mut self, auth_allowed: bool) {
        self.tls = true;
        self.auth_allowed = auth_allowed;
        self.reset_pending();
        self.auth = None;
    }

    /// The client's tag, the upstream's `[CAPABILITY ...]` code when it sent one (so the
    /// client learns the real server's capabilities), and our own text.
    fn login_succeeded(&mut self, upstream_ok: &str) -> Reply {
        let (tag, what) = self.login.take().unwrap_or_else(|| ("*".into(), "LOGIN"));
        match capability_code(upstream_ok) {
            Some(code) => Reply::new(format!("{tag} OK {code} {what} completed\r\n")),
            None => Reply::new(format!("{tag} OK {what} completed\r\n")),
        }
    }

    fn login_failed(&mut self, error: &Error) -> Reply {
        let (tag, _) = self.login.take().unwrap_or_else(|| ("*".into(), "LOGIN"));
        self.failure_reply(&tag, error)
    }

    fn farewell(&self, error: &Error) -> Reply {
        reply::farewell(error)
    }
}

/// The `[CAPABILITY ...]` response code at the start of an upstream OK text, if any.
pub fn capability_code(text: &str) -> Option<&str> {
    let text = text.trim_start();
    if !text.get(..12)?.eq_ignore_ascii_case("[CAPABILITY ") {
        return None;
    }
    let end = text.find(']')?;
    Some(&text[..=end])
}

#[cfg(test)]
mod tests;
