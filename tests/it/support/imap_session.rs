//! One connection of the fake Exchange Online IMAP server: the read loop, the not-authenticated
//! state (CAPABILITY, ID, LOGIN refused, AUTHENTICATE with the XOAUTH2 check against the fake
//! Entra), command dispatch, IDLE, the per-session view of the selected folder, and the
//! token-expiry BYE. The authenticated-state commands live in `imap_commands` and
//! `imap_selected`.

use std::io;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::sync::watch;

use super::fake_imap::Shared;
use super::fake_server::AuthAttempt;
use super::imap_wire::{ImapIo, RawCommand, Token, reply, tokenize};
use super::line_io::{Stream, trim_eol};

/// Command names the fake knows; others get `BAD Command Error. 12`.
const KNOWN: [&str; 29] = [
    "APPEND",
    "AUTHENTICATE",
    "CAPABILITY",
    "CHECK",
    "CLOSE",
    "COPY",
    "CREATE",
    "DELETE",
    "EXAMINE",
    "EXPUNGE",
    "FETCH",
    "ID",
    "IDLE",
    "LIST",
    "LOGIN",
    "LOGOUT",
    "LSUB",
    "MOVE",
    "NAMESPACE",
    "NOOP",
    "RENAME",
    "SEARCH",
    "SELECT",
    "STARTTLS",
    "STATUS",
    "STORE",
    "SUBSCRIBE",
    "UID",
    "UNSELECT",
];

/// How a command ends.
pub(super) enum Outcome {
    /// The tagged reply (`status` is OK, NO or BAD), then close if `close`.
    Reply {
        status: &'static str,
        text: String,
        close: bool,
    },
    /// Close at once (the handler sent what had to be sent).
    Close,
}

pub(super) fn ok(text: impl Into<String>) -> Outcome {
    reply_with("OK", text)
}

pub(super) fn no(text: impl Into<String>) -> Outcome {
    reply_with("NO", text)
}

pub(super) fn bad(text: impl Into<String>) -> Outcome {
    reply_with("BAD", text)
}

fn reply_with(status: &'static str, text: impl Into<String>) -> Outcome {
    Outcome::Reply {
        status,
        text: text.into(),
        close: false,
    }
}

pub(super) struct Login {
    /// The store key: the lower-cased `user=` value.
    pub(super) mailbox: String,
}

pub(super) struct Selected {
    pub(super) folder: String,
    pub(super) read_only: bool,
    /// UIDs the client knows, in message-number order (RFC 3501 §2.3.1.2).
    pub(super) view: Vec<u32>,
}

/// The state of one IMAP connection.
pub(super) struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) connection: usize,
    pub(super) io: ImapIo,
    pub(super) login: Option<Login>,
    pub(super) selected: Option<Selected>,
    byes: watch::Receiver<u64>,
    changes: watch::Receiver<u64>,
}

impl Session {
    pub(super) fn new(shared: Arc<Shared>, connection: usize, stream: Box<dyn Stream>) -> Self {
        Self {
            byes: shared.signals.byes.subscribe(),
            changes: shared.signals.changes.subscribe(),
            shared,
            connection,
            io: ImapIo::new(stream),
            login: None,
            selected: None,
        }
    }

    pub(super) async fn run(mut self) -> io::Result<()> {
        self.io.send(reply::GREETING).await?;
        let close_now = {
            let mut state = self.shared.lock();
            let close = state.close_after_greeting > 0;
            state.close_after_greeting = state.close_after_greeting.saturating_sub(1);
            close
        };
        if close_now {
            let _ = self.io.shutdown().await;
            return Ok(());
        }
        loop {
            let raw = tokio::select! {
                _ = changed(&mut self.byes), if self.login.is_some() => {
                    return self.bye_token_expired().await;
                }
                raw = self.io.read_command() => raw?,
            };
            let Some(raw) = raw else {
                return Ok(());
            };
            let close = self.handle(raw).await?;
            self.io.flush().await?;
            if close {
                // Best effort close_notify; the client may already be gone.
                let _ = self.io.shutdown().await;
                return Ok(());
            }
        }
    }

    async fn bye_token_expired(&mut self) -> io::Result<()> {
        self.io.send(reply::BYE_TOKEN_EXPIRED).await?;
        let _ = self.io.shutdown().await;
        Ok(())
    }

    /// Runs one command; true when the connection is to be closed.
    async fn handle(&mut self, raw: RawCommand) -> io::Result<bool> {
        let text = raw.display();
        if self.login.is_some() {
            self.shared.lock().commands.push(text.clone());
        }
        let mut words = text.split(' ');
        let (tag, name) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        if tag.is_empty() || name.is_empty() {
            let tag = if tag.is_empty() { "*" } else { tag };
            self.io
                .queue(&format!("{tag} BAD {}", reply::COMMAND_ERROR));
            return Ok(false);
        }
        let (tag, name) = (tag.to_string(), name.to_ascii_uppercase());
        let tokens = match tokenize(raw) {
            Ok(tokens) => tokens,
            Err(_) => {
                self.io
                    .queue(&format!("{tag} BAD {}", reply::ARGUMENT_ERROR));
                return Ok(false);
            }
        };
        let args = tokens.get(2..).unwrap_or(&[]);
        let subcommand = match name.as_str() {
            "UID" => args
                .first()
                .and_then(Token::atom)
                .map(str::to_ascii_uppercase),
            _ => None,
        };
        match self.dispatch(&name, args).await? {
            Outcome::Reply {
                status,
                text,
                close,
            } => {
                // Untagged news about the selected folder goes before the tagged reply.
                self.sync_view(reports_expunges(&name, subcommand.as_deref()));
                self.io.queue(&format!("{tag} {status} {text}"));
                Ok(close)
            }
            Outcome::Close => Ok(true),
        }
    }

    async fn dispatch(&mut self, name: &str, args: &[Token]) -> io::Result<Outcome> {
        let capabilities = match self.login {
            None => reply::CAPABILITIES,
            Some(_) => reply::CAPABILITIES_AUTHENTICATED,
        };
        Ok(match name {
            "CAPABILITY" => {
                self.io.queue(&format!("* CAPABILITY {capabilities}"));
                ok("CAPABILITY completed.")
            }
            "NOOP" => ok("NOOP completed."),
            "ID" => {
                self.io.queue("* ID NIL");
                ok("ID completed.")
            }
            "LOGOUT" => {
                self.io.queue(reply::BYE_LOGOUT);
                Outcome::Reply {
                    status: "OK",
                    text: "LOGOUT completed.".to_string(),
                    close: true,
                }
            }
            "AUTHENTICATE" if self.login.is_none() => self.authenticate(args).await?,
            "LOGIN" if self.login.is_none() => self.login_refused(args),
            _ if self.login.is_some() => self.authenticated(name, args).await?,
            _ if KNOWN.contains(&name) => bad(reply::INVALID_STATE),
            _ => bad(reply::COMMAND_ERROR),
        })
    }

    /// Basic auth is off at Microsoft (PROTOCOL.md A10): every LOGIN fails.
    fn login_refused(&mut self, args: &[Token]) -> Outcome {
        let user = args.first().and_then(Token::text).unwrap_or_default();
        let attempt = AuthAttempt::basic_refused("LOGIN", user, Vec::new());
        self.shared.lock().auth_attempts.push(attempt);
        no(reply::LOGIN_FAILED)
    }

    async fn authenticate(&mut self, args: &[Token]) -> io::Result<Outcome> {
        let mechanism = args
            .first()
            .and_then(Token::atom)
            .map(str::to_ascii_uppercase);
        let Some(mechanism) = mechanism.filter(|m| m == "XOAUTH2" || m == "PLAIN") else {
            return Ok(bad(reply::ARGUMENT_ERROR));
        };
        if args.len() > 2 {
            return Ok(bad(reply::ARGUMENT_ERROR));
        }
        let initial = args.get(1).and_then(Token::text);
        let initial_response = initial.is_some();
        let payload = match initial {
            // RFC 4959: `=` is an empty initial response.
            Some(payload) if payload == "=" => String::new(),
            Some(payload) => payload,
            None => self.io.prompt(reply::AUTH_CONTINUE).await?,
        };
        if payload == "*" {
            return Ok(no(reply::AUTH_CANCELLED));
        }
        let mut attempt = match mechanism.as_str() {
            "PLAIN" => plain_attempt(&payload),
            _ => self.shared.check_xoauth2(&payload, "IMAP.AccessAsUser.All"),
        };
        attempt.initial_response = initial_response;
        let accepted = attempt.accepted;
        let user = attempt.user.clone();
        let mut state = self.shared.lock();
        state.auth_attempts.push(attempt);
        if !accepted {
            return Ok(no(reply::AUTH_FAILED));
        }
        let mailbox = state.mailboxes.open(&user);
        let (capability_in_ok, close) = (state.capability_in_ok, state.drop_after_auth);
        drop(state);
        self.login = Some(Login { mailbox });
        // Only BYEs asked for from now on concern this session.
        self.byes.borrow_and_update();
        let text = match capability_in_ok {
            true => format!(
                "[CAPABILITY {}] {}",
                reply::CAPABILITIES_AUTHENTICATED,
                reply::AUTH_OK
            ),
            false => reply::AUTH_OK.to_string(),
        };
        Ok(Outcome::Reply {
            status: "OK",
            text,
            close,
        })
    }

    /// RFC 2177 IDLE: pushes EXISTS/EXPUNGE as the folder changes, until DONE.
    pub(super) async fn idle(&mut self) -> io::Result<Outcome> {
        self.io.queue(reply::IDLE_ACCEPTED);
        self.changes.borrow_and_update();
        self.sync_view(true);
        self.io.flush().await?;
        loop {
            tokio::select! {
                _ = changed(&mut self.byes) => {
                    self.bye_token_expired().await?;
                    return Ok(Outcome::Close);
                }
                _ = changed(&mut self.changes) => {
                    self.sync_view(true);
                    self.io.flush().await?;
                }
                line = self.io.read_line() => {
                    let Some(line) = line? else {
                        return Ok(Outcome::Close);
                    };
                    let line = trim_eol(&line);
                    if line.eq_ignore_ascii_case(b"DONE") {
                        return Ok(ok("IDLE completed."));
                    }
                    let line = String::from_utf8_lossy(line).into_owned();
                    let message = format!("expected DONE during IDLE, got {line:?}");
                    self.shared.protocol_error(self.connection, message);
                    return Ok(bad(reply::COMMAND_ERROR));
                }
            }
        }
    }

    /// Brings the client's view of the selected folder up to date: `* n EXPUNGE` for messages
    /// that are gone (only where RFC 3501 §7.4.1 allows it), then `* n EXISTS` for new ones.
    pub(super) fn sync_view(&mut self, expunges: bool) {
        let (Some(login), Some(selected)) = (&self.login, &mut self.selected) else {
            return;
        };
        let mut lines = Vec::new();
        {
            let state = self.shared.lock();
            let folder = state
                .mailboxes
                .get(&login.mailbox)
                .and_then(|m| m.folder(&selected.folder));
            let Some(folder) = folder else {
                return;
            };
            if expunges {
                let mut i = 0;
                while i < selected.view.len() {
                    match folder.get(selected.view[i]) {
                        Some(_) => i += 1,
                        None => {
                            lines.push(format!("* {} EXPUNGE", i + 1));
                            selected.view.remove(i);
                        }
                    }
                }
            }
            let known = selected.view.last().copied().unwrap_or(0);
            let before = selected.view.len();
            let new = folder.messages.iter().map(|m| m.uid).filter(|&u| u > known);
            selected.view.extend(new);
            if selected.view.len() > before {
                lines.push(format!("* {} EXISTS", selected.view.len()));
            }
        }
        for line in lines {
            self.io.queue(&line);
        }
    }
}

/// `* n EXPUNGE` may not be sent during FETCH, STORE or SEARCH (RFC 3501 §7.4.1); the fake
/// sends it only after commands that are about expunging or polling.
fn reports_expunges(name: &str, uid_subcommand: Option<&str>) -> bool {
    match name {
        "NOOP" | "CHECK" | "IDLE" | "EXPUNGE" | "MOVE" => true,
        "UID" => matches!(uid_subcommand, Some("EXPUNGE" | "MOVE")),
        _ => false,
    }
}

/// Basic auth is off: PLAIN is decoded for the record, then refused.
fn plain_attempt(payload: &str) -> AuthAttempt {
    let raw_decoded = STANDARD.decode(payload).unwrap_or_default();
    let mut parts = raw_decoded.split(|&b| b == 0);
    let (authz, authn) = (parts.next(), parts.next());
    let user = String::from_utf8_lossy(authn.or(authz).unwrap_or_default()).into_owned();
    AuthAttempt::basic_refused("PLAIN", user, raw_decoded)
}

/// Waits for the next change; a closed channel never fires.
async fn changed(rx: &mut watch::Receiver<u64>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}
