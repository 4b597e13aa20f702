//! One connection of the fake Exchange Online POP3 server: the AUTHORIZATION state with the
//! XOAUTH2 check against the fake Entra, then the TRANSACTION state over a fixed maildrop, and
//! the UPDATE state on QUIT (RFC 1939).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::fake_pop3::{Shared, StoredMessage};
use super::fake_server::AuthAttempt;
use super::line_io::{LineIo, MAX_LINE, trim_eol};
use super::pop3_wire::{Command, MAX_COMMAND, reply, send_message};

/// Exchange closes the connection on the third invalid command (`InvalidCommands > 2`).
const MAX_INVALID_COMMANDS: u32 = 2;
/// How long the fake keeps reading after refusing an over-long line (see `close_too_long`).
const LINGER: Duration = Duration::from_secs(1);

enum Flow {
    Continue,
    Close,
}

/// The state of one POP3 connection.
pub(super) struct Session {
    shared: Arc<Shared>,
    connection: usize,
    io: LineIo,
    /// The name given with USER, waiting for PASS.
    pending_user: Option<String>,
    /// `None` in the AUTHORIZATION state, the opened mailbox in the TRANSACTION state.
    login: Option<Maildrop>,
    invalid_commands: u32,
}

/// A logged-in session's mailbox: fixed at login, deletions only marked until QUIT.
struct Maildrop {
    mailbox: String,
    messages: Vec<Entry>,
}

struct Entry {
    message: StoredMessage,
    deleted: bool,
}

/// What a TRANSACTION command produces.
enum Answer {
    Text(String),
    /// `+OK`, then the message (or its top for TOP) as a multi-line body.
    Message {
        bytes: Arc<[u8]>,
        body_lines: Option<usize>,
    },
    NotValidHere,
}

// === impl Session ===

impl Session {
    pub(super) fn new(
        shared: Arc<Shared>,
        connection: usize,
        stream: TlsStream<TcpStream>,
    ) -> Self {
        Self {
            shared,
            connection,
            io: LineIo::new(Box::new(stream)),
            pending_user: None,
            login: None,
            invalid_commands: 0,
        }
    }

    pub(super) async fn run(mut self) -> io::Result<()> {
        self.io.send(reply::GREETING).await?;
        while let Some(line) = self.next_line().await? {
            if let Flow::Close = self.dispatch(&line).await? {
                break;
            }
        }
        Ok(())
    }

    /// The next line without its line ending, recorded in the transcript; `None` on a clean EOF.
    async fn next_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        let raw = match self.io.read_line().await {
            Ok(raw) => raw,
            Err(err) if self.io.buf.len() > MAX_LINE => {
                // The caller reports `err` as the reason the connection ended.
                self.close_too_long().await?;
                return Err(err);
            }
            Err(err) => return Err(err),
        };
        Ok(raw.map(|raw| {
            let line = trim_eol(&raw).to_vec();
            let text = String::from_utf8_lossy(&line).into_owned();
            self.shared.lock().commands.push(text);
            line
        }))
    }

    async fn dispatch(&mut self, line: &[u8]) -> io::Result<Flow> {
        let command = Command::parse(&String::from_utf8_lossy(line));
        let octets = line.len() + 2;
        if octets > MAX_COMMAND && !matches!(command, Command::Auth { .. }) {
            let message = format!("a command line of {octets} octets (RFC 2449 §4 allows 255)");
            self.shared.protocol_error(self.connection, message);
            self.close_too_long().await?;
            return Ok(Flow::Close);
        }
        if !line.is_ascii() && command != Command::Pass {
            return self.invalid(reply::NOT_ASCII).await;
        }
        match command {
            Command::Unknown => return self.invalid(reply::UNKNOWN_COMMAND).await,
            Command::BadArguments(reply) => return self.invalid(reply).await,
            Command::Capa => self.io.send(reply::CAPA).await?,
            Command::Quit => return self.quit().await,
            command => return self.by_state(command, octets).await,
        }
        Ok(Flow::Continue)
    }

    /// TRANSACTION commands go to the maildrop once logged in; before that, to `authorization`.
    async fn by_state(&mut self, command: Command, octets: usize) -> io::Result<Flow> {
        let Some(maildrop) = &mut self.login else {
            return self.authorization(command, octets).await;
        };
        match maildrop.answer(command) {
            Answer::Text(text) => self.io.send(&text).await?,
            Answer::Message { bytes, body_lines } => {
                self.io.send(reply::OK).await?;
                send_message(&mut self.io.stream, &bytes, body_lines).await?;
            }
            Answer::NotValidHere => return self.invalid(reply::INVALID_STATE).await,
        }
        Ok(Flow::Continue)
    }

    async fn authorization(&mut self, command: Command, octets: usize) -> io::Result<Flow> {
        match command {
            Command::User(name) => {
                self.pending_user = Some(name);
                self.io.send(reply::OK).await?;
            }
            Command::Pass => return self.pass().await,
            Command::Auth {
                mechanism: None, ..
            } => self.io.send(reply::MECHANISMS).await?,
            Command::Auth {
                mechanism: Some(mechanism),
                initial,
            } => return self.auth(&mechanism, initial, octets).await,
            _ => return self.invalid(reply::INVALID_STATE).await,
        }
        Ok(Flow::Continue)
    }

    /// Exchange's answer to an over-long line, then a lingering close: the fake ends TLS and
    /// discards what the client still sends for a moment, so that closing a socket with unread
    /// data does not reset the connection and destroy the reply before the client reads it.
    async fn close_too_long(&mut self) -> io::Result<()> {
        self.io.send(reply::COMMAND_TOO_LONG).await?;
        let _ = self.io.stream.shutdown().await;
        let mut sink = vec![0u8; 64 * 1024];
        let drain = async { while let Ok(1..) = self.io.stream.read(&mut sink).await {} };
        let _ = tokio::time::timeout(LINGER, drain).await;
        Ok(())
    }

    /// An invalid command; like Exchange, the third one also closes the connection.
    async fn invalid(&mut self, text: &str) -> io::Result<Flow> {
        self.invalid_commands += 1;
        if self.invalid_commands > MAX_INVALID_COMMANDS {
            let last = format!("{text}{}", reply::CLOSING_AFTER_ERRORS);
            self.io.send(&last).await?;
            return Ok(Flow::Close);
        }
        self.io.send(text).await?;
        Ok(Flow::Continue)
    }

    /// Basic auth is off at Microsoft: USER then PASS always fails (PROTOCOL.md A3).
    async fn pass(&mut self) -> io::Result<Flow> {
        let Some(user) = self.pending_user.take() else {
            return self.invalid(reply::INVALID_STATE).await;
        };
        let attempt = AuthAttempt::basic_refused("USER", user, Vec::new());
        self.shared.lock().auth_attempts.push(attempt);
        self.io.send(reply::LOGON_FAILED).await?;
        Ok(Flow::Continue)
    }

    async fn auth(
        &mut self,
        mechanism: &str,
        initial: Option<String>,
        octets: usize,
    ) -> io::Result<Flow> {
        if !matches!(mechanism, "XOAUTH2" | "PLAIN") {
            self.io.send(reply::BAD_ARGUMENT).await?;
            return Ok(Flow::Continue);
        }
        let initial_response = initial.is_some();
        if initial_response && octets > MAX_COMMAND {
            let message = format!(
                "AUTH {mechanism} with an initial response is {octets} octets: RFC 5034 §4 says to \
                 send it after `+ ` instead, and Exchange Online answers the one-line form with \
                 `-ERR Protocol error. Connection is closed. 10` (PROTOCOL.md A2)"
            );
            self.shared.protocol_error(self.connection, message);
        }
        let payload = match initial {
            Some(payload) => payload,
            None => {
                self.io.send(reply::CONTINUE).await?;
                let line = self
                    .next_line()
                    .await?
                    .ok_or(io::ErrorKind::UnexpectedEof)?;
                String::from_utf8_lossy(&line).into_owned()
            }
        };
        if payload == "*" {
            self.io.send(reply::AUTH_CANCELLED).await?;
            return Ok(Flow::Continue);
        }
        let mut attempt = match mechanism {
            "PLAIN" => plain_attempt(&payload),
            _ => self.shared.check_xoauth2(&payload, "POP.AccessAsUser.All"),
        };
        attempt.initial_response = initial_response;
        let (accepted, mailbox) = (attempt.accepted, attempt.user.clone());
        let drop_after_auth = {
            let mut state = self.shared.lock();
            state.auth_attempts.push(attempt);
            state.drop_after_auth
        };
        if !accepted {
            self.io.send(reply::AUTH_FAILED).await?;
            return Ok(Flow::Continue);
        }
        let messages = self.shared.snapshot(&mailbox);
        self.login = Some(Maildrop::new(mailbox, messages));
        self.io.send(reply::AUTH_OK).await?;
        Ok(match drop_after_auth {
            true => Flow::Close,
            false => Flow::Continue,
        })
    }

    /// QUIT: in the TRANSACTION state this is the UPDATE state, which removes deleted messages.
    async fn quit(&mut self) -> io::Result<Flow> {
        if let Some(maildrop) = self.login.take() {
            let deleted: Vec<u64> = maildrop
                .messages
                .iter()
                .filter(|e| e.deleted)
                .map(|e| e.message.serial)
                .collect();
            self.shared.expunge(&maildrop.mailbox, &deleted);
        }
        self.io.send(reply::SIGNING_OFF).await?;
        // Best effort close_notify; the client may already be gone, which is fine after QUIT.
        let _ = self.io.stream.shutdown().await;
        Ok(Flow::Close)
    }
}

/// SASL PLAIN walks through and fails: basic authentication is off at Microsoft.
fn plain_attempt(payload: &str) -> AuthAttempt {
    let raw_decoded = STANDARD.decode(payload).unwrap_or_default();
    // authzid NUL authcid NUL passwd (RFC 4616); the authcid is the user.
    let user = raw_decoded.split(|&b| b == 0).nth(1).unwrap_or_default();
    let user = String::from_utf8_lossy(user).into_owned();
    AuthAttempt::basic_refused("PLAIN", user, raw_decoded)
}

/// The UIDL value of a stored message: Exchange-like, unique and stable across sessions.
fn uid(message: &StoredMessage) -> String {
    format!("AAQkADZmYWtlLXBvcDMtbWFpbGJveAAQA{:010}", message.serial)
}

// === impl Maildrop ===

impl Maildrop {
    fn new(mailbox: String, messages: Vec<StoredMessage>) -> Self {
        let messages = messages
            .into_iter()
            .map(|message| Entry {
                message,
                deleted: false,
            })
            .collect();
        Self { mailbox, messages }
    }

    fn answer(&mut self, command: Command) -> Answer {
        let size = |m: &StoredMessage| m.bytes.len().to_string();
        let text = match command {
            Command::Stat => {
                let (count, octets) = self.totals();
                format!("+OK {count} {octets}")
            }
            Command::List(None) => self.listing(Some(self.totals()), size),
            Command::List(Some(n)) => self.one(n, size),
            Command::Uidl(None) => self.listing(None, uid),
            Command::Uidl(Some(n)) => self.one(n, uid),
            Command::Retr(n) => return self.body(n, None),
            Command::Top { message, lines } => return self.body(message, Some(lines)),
            Command::Dele(n) => match self.entry(n) {
                Ok(entry) => {
                    entry.deleted = true;
                    reply::OK.to_string()
                }
                Err(refusal) => refusal.to_string(),
            },
            Command::Rset => {
                self.messages.iter_mut().for_each(|e| e.deleted = false);
                reply::OK.to_string()
            }
            Command::Noop => reply::OK.to_string(),
            _ => return Answer::NotValidHere,
        };
        Answer::Text(text)
    }

    /// Message `n` (1-based) unless it is out of range or marked as deleted.
    fn entry(&mut self, n: usize) -> Result<&mut Entry, &'static str> {
        let entry = n
            .checked_sub(1)
            .and_then(|i| self.messages.get_mut(i))
            .ok_or(reply::OUT_OF_RANGE)?;
        match entry.deleted {
            true => Err(reply::DELETED),
            false => Ok(entry),
        }
    }

    /// (messages, octets) not marked as deleted.
    fn totals(&self) -> (usize, usize) {
        let live = self.messages.iter().filter(|e| !e.deleted);
        live.fold((0, 0), |(n, o), e| (n + 1, o + e.message.bytes.len()))
    }

    /// `+OK n value` for one message (LIST n, UIDL n).
    fn one(&mut self, n: usize, value: impl Fn(&StoredMessage) -> String) -> String {
        match self.entry(n) {
            Ok(entry) => format!("+OK {n} {}", value(&entry.message)),
            Err(refusal) => refusal.to_string(),
        }
    }

    /// A multi-line listing of the messages not marked as deleted (LIST, UIDL).
    fn listing(
        &self,
        totals: Option<(usize, usize)>,
        value: impl Fn(&StoredMessage) -> String,
    ) -> String {
        let head = match totals {
            Some((count, octets)) => format!("+OK {count} {octets}"),
            None => reply::OK.to_string(),
        };
        let mut lines = vec![head];
        for (i, entry) in self.messages.iter().enumerate() {
            if !entry.deleted {
                lines.push(format!("{} {}", i + 1, value(&entry.message)));
            }
        }
        lines.push(".".to_string());
        lines.join("\r\n")
    }

    fn body(&mut self, n: usize, body_lines: Option<usize>) -> Answer {
        match self.entry(n) {
            Ok(entry) => Answer::Message {
                bytes: entry.message.bytes.clone(),
                body_lines,
            },
            Err(refusal) => Answer::Text(refusal.to_string()),
        }
    }
}
