//! One connection of the fake Exchange Online SMTP server: the command state machine, STARTTLS,
//! the XOAUTH2 check against the fake Entra, and DATA/BDAT.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::fake_server::AuthAttempt;
use super::fake_smtp::{ReceivedMessage, Shared, SmtpCommand};
use super::line_io::{LineIo, trim_eol};
use super::smtp_delivery;
use super::smtp_limits;
use super::smtp_pool_knobs;
use super::smtp_wire::{Command, MAX_MESSAGE, parse_path, reply};

enum Flow {
    Continue,
    Close,
}

struct Login {
    user: String,
    token: String,
    /// Counted against the per-user connection limit while the connection lasts.
    counted: smtp_limits::Counted,
}

/// The state of one SMTP connection.
pub(super) struct Session {
    shared: Arc<Shared>,
    connection: usize,
    peer: SocketAddr,
    io: LineIo,
    tls: bool,
    ehlo: bool,
    login: Option<Login>,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
    /// BDAT chunks received so far in this transaction.
    chunks: Option<Vec<u8>>,
    message_serial: usize,
}

impl Session {
    pub(super) fn new(
        shared: Arc<Shared>,
        connection: usize,
        peer: SocketAddr,
        stream: TcpStream,
    ) -> Self {
        Self {
            shared,
            connection,
            peer,
            io: LineIo::new(Box::new(stream)),
            tls: false,
            ehlo: false,
            login: None,
            mail_from: None,
            rcpt_to: Vec::new(),
            chunks: None,
            message_serial: 0,
        }
    }

    pub(super) async fn run(mut self) -> io::Result<()> {
        self.io.send(reply::GREETING).await?;
        let close_idle = self.shared.lock().limits.close_idle.clone();
        loop {
            let raw = tokio::select! {
                raw = self.io.read_line() => raw?,
                _ = close_idle.notified() => {
                    self.io.send(smtp_limits::IDLE_CLOSED).await?;
                    break;
                }
            };
            let Some(raw) = raw else { break };
            let line = String::from_utf8_lossy(trim_eol(&raw)).into_owned();
            self.shared.lock().commands.push(SmtpCommand {
                connection: self.connection,
                tls: self.tls,
                line: line.clone(),
            });
            if let Flow::Close = self.dispatch(&line).await? {
                break;
            }
        }
        Ok(())
    }

    async fn dispatch(&mut self, line: &str) -> io::Result<Flow> {
        match Command::parse(line) {
            Command::Ehlo { extended, domain } => self.ehlo(extended, &domain).await?,
            Command::StartTls => return self.starttls().await,
            Command::Auth { mechanism, initial } => return self.auth(&mechanism, initial).await,
            Command::Mail(args) => self.mail(&args).await?,
            Command::Rcpt(args) => self.rcpt(&args).await?,
            Command::Data => return self.data().await,
            Command::Bdat(args) => return self.bdat(&args).await,
            Command::Rset => {
                self.reset_transaction();
                self.io.send(reply::RESETTING).await?;
            }
            Command::Noop => self.io.send(reply::OK).await?,
            Command::Quit => {
                self.io.send(reply::CLOSING).await?;
                // Best effort close_notify; the client may already be gone, which is fine after QUIT.
                let _ = self.io.stream.shutdown().await;
                return Ok(Flow::Close);
            }
            Command::Unknown => self.io.send(reply::UNRECOGNIZED).await?,
        }
        Ok(Flow::Continue)
    }

    async fn ehlo(&mut self, extended: bool, domain: &str) -> io::Result<()> {
        if domain.is_empty() {
            return self.io.send(reply::BAD_DOMAIN).await;
        }
        self.reset_transaction();
        self.ehlo = true;
        let hello = format!("{} Hello [{}]", reply::HOST, self.peer.ip());
        if !extended {
            return self.io.send(&format!("250 {hello}")).await;
        }
        let security = if self.tls {
            "AUTH LOGIN XOAUTH2"
        } else {
            "STARTTLS"
        };
        let lines = [
            hello.as_str(),
            "SIZE 157286400",
            "PIPELINING",
            "DSN",
            "ENHANCEDSTATUSCODES",
            security,
            "8BITMIME",
            "BINARYMIME",
            "CHUNKING",
            "SMTPUTF8",
        ];
        let last = lines.len() - 1;
        let text: Vec<String> = lines
            .iter()
            .enumerate()
            .map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }))
            .collect();
        self.io.send(&text.join("\r\n")).await
    }

    async fn starttls(&mut self) -> io::Result<Flow> {
        if self.tls {
            self.io.send(reply::BAD_SEQUENCE).await?;
            return Ok(Flow::Continue);
        }
        self.io.send(reply::READY_FOR_TLS).await?;
        let io = std::mem::replace(&mut self.io, LineIo::new(Box::new(tokio::io::empty())));
        if !io.buf.is_empty() {
            // RFC 3207 §4.2: the client must not pipeline after STARTTLS; such bytes are discarded.
            let message = format!(
                "{} plaintext bytes pipelined after STARTTLS were discarded",
                io.buf.len()
            );
            self.shared.protocol_error(self.connection, message);
        }
        match self.shared.acceptor.accept(io.stream).await {
            Ok(tls) => self.io = LineIo::new(Box::new(tls)),
            Err(err) => {
                self.shared
                    .protocol_error(self.connection, format!("TLS handshake failed: {err}"));
                return Ok(Flow::Close);
            }
        }
        self.tls = true;
        self.ehlo = false;
        self.login = None;
        self.reset_transaction();
        Ok(Flow::Continue)
    }

    async fn auth(&mut self, mechanism: &str, initial: Option<String>) -> io::Result<Flow> {
        let refusal = if !self.ehlo {
            Some(reply::SEND_HELLO_FIRST)
        } else if !self.tls || !matches!(mechanism, "XOAUTH2" | "LOGIN") {
            Some(reply::UNKNOWN_MECHANISM)
        } else if self.login.is_some() {
            Some(reply::ALREADY_AUTHENTICATED)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            self.io.send(refusal).await?;
            return Ok(Flow::Continue);
        }
        if mechanism == "LOGIN" {
            return self.auth_login(initial).await;
        }
        let initial_response = initial.is_some();
        let payload = match initial {
            Some(payload) => payload,
            None => self.io.prompt("334 ").await?,
        };
        if payload == "*" {
            self.io.send(reply::AUTH_CANCELLED).await?;
            return Ok(Flow::Continue);
        }
        let (disabled, challenge, drop_after_auth) = {
            let state = self.shared.lock();
            (
                state.smtp_auth_disabled,
                state.error_challenge,
                state.drop_after_auth,
            )
        };
        let mut attempt = self.shared.check_xoauth2(&payload, "SMTP.Send");
        attempt.initial_response = initial_response;
        if disabled {
            attempt.accepted = false;
            attempt.rejection = Some("SmtpClientAuthentication is disabled".to_string());
        }
        let accepted = attempt.accepted;
        let (user, token) = (attempt.user.clone(), attempt.token.clone());
        self.shared.lock().auth_attempts.push(attempt);
        if accepted {
            let counted = smtp_limits::authenticated(&self.shared, &user);
            self.login = Some(Login {
                user,
                token,
                counted,
            });
            self.io.send(reply::AUTH_OK).await?;
            return Ok(if drop_after_auth {
                Flow::Close
            } else {
                Flow::Continue
            });
        }
        // The challenge, when enabled, precedes every XOAUTH2 failure (the disabled-tenant one too).
        if challenge {
            let challenge = format!("334 {}", STANDARD.encode(reply::CHALLENGE_JSON));
            let text = self.io.prompt(&challenge).await?;
            if !text.is_empty() {
                self.shared.protocol_error(
                    self.connection,
                    format!("expected an empty line after the 334 challenge, got {text:?}"),
                );
            }
        }
        let failure = if disabled {
            reply::AUTH_DISABLED
        } else {
            reply::AUTH_FAILED
        };
        self.io.send(failure).await?;
        Ok(Flow::Continue)
    }

    /// Basic auth is retired: walk through the LOGIN exchange, then refuse (PROTOCOL.md A3).
    async fn auth_login(&mut self, initial: Option<String>) -> io::Result<Flow> {
        let username = match initial {
            Some(username) => username,
            None => self.io.prompt("334 VXNlcm5hbWU6").await?,
        };
        self.io.prompt("334 UGFzc3dvcmQ6").await?;
        let raw_decoded = STANDARD.decode(&username).unwrap_or_default();
        let user = String::from_utf8_lossy(&raw_decoded).into_owned();
        let attempt = AuthAttempt::basic_refused("LOGIN", user, raw_decoded);
        self.shared.lock().auth_attempts.push(attempt);
        self.io.send(reply::BASIC_DISABLED).await?;
        Ok(Flow::Continue)
    }

    async fn mail(&mut self, args: &str) -> io::Result<()> {
        let reply = if !self.ehlo {
            reply::SEND_HELLO_FIRST
        } else if self.login.is_none() {
            reply::NOT_AUTHENTICATED
        } else if self.mail_from.is_some() {
            reply::SENDER_ALREADY
        } else if let Some(path) = parse_path(args, "FROM:") {
            self.mail_from = Some(path);
            reply::SENDER_OK
        } else {
            reply::BAD_ARGUMENTS
        };
        self.io.send(reply).await
    }

    async fn rcpt(&mut self, args: &str) -> io::Result<()> {
        let reply = if self.login.is_none() {
            reply::NOT_AUTHENTICATED
        } else if self.mail_from.is_none() {
            reply::NEED_MAIL
        } else if let Some(path) = parse_path(args, "TO:").filter(|p| !p.is_empty()) {
            if let Some(refusal) = smtp_delivery::recipient_refusal(&self.shared, &path) {
                return self.io.send(&refusal).await;
            }
            self.rcpt_to.push(path);
            reply::RECIPIENT_OK
        } else {
            reply::BAD_ARGUMENTS
        };
        self.io.send(reply).await
    }

    fn transaction_refusal(&self) -> Option<&'static str> {
        if self.login.is_none() {
            Some(reply::NOT_AUTHENTICATED)
        } else if self.mail_from.is_none() {
            Some(reply::NEED_MAIL)
        } else if self.rcpt_to.is_empty() {
            Some(reply::NEED_RCPT)
        } else {
            None
        }
    }

    async fn data(&mut self) -> io::Result<Flow> {
        if let Some(refusal) = self.transaction_refusal() {
            self.io.send(refusal).await?;
            return Ok(Flow::Continue);
        }
        if self.chunks.is_some() {
            self.io.send(reply::BAD_SEQUENCE).await?;
            return Ok(Flow::Continue);
        }
        let drop_in_data = self.shared.lock().drop_in_data;
        self.io.send(reply::START_MAIL).await?;
        if smtp_pool_knobs::stall_if_asked(&self.shared).await {
            return Ok(Flow::Close);
        }
        let mut data = Vec::new();
        let mut too_big = false;
        loop {
            let line = self
                .io
                .read_line()
                .await?
                .ok_or(io::ErrorKind::UnexpectedEof)?;
            if line == b".\r\n" || line == b".\n" {
                break;
            }
            if drop_in_data {
                return Ok(Flow::Close);
            }
            // RFC 5321 §4.5.2: a leading dot was doubled by the client; remove one.
            let content = line.strip_prefix(b".").unwrap_or(&line);
            too_big |= data.len() + content.len() > MAX_MESSAGE;
            if !too_big {
                data.extend_from_slice(content);
            }
        }
        self.finish_message(data, too_big).await?;
        Ok(Flow::Continue)
    }

    async fn bdat(&mut self, args: &str) -> io::Result<Flow> {
        let mut parts = args.split_whitespace();
        let size = parts.next().and_then(|s| s.parse::<usize>().ok());
        let last = match parts.next() {
            None => false,
            Some(word) if word.eq_ignore_ascii_case("LAST") => true,
            Some(_) => {
                self.io.send(reply::BAD_ARGUMENTS).await?;
                return Ok(Flow::Continue);
            }
        };
        let Some(size) = size else {
            self.io.send(reply::BAD_ARGUMENTS).await?;
            return Ok(Flow::Continue);
        };
        if size > MAX_MESSAGE {
            self.io.send(reply::TOO_BIG).await?;
            return Ok(Flow::Close);
        }
        // RFC 3030 §2: the chunk is read even when the command is then refused.
        let chunk = self.io.read_exact_bytes(size).await?;
        if self.shared.lock().drop_in_data {
            return Ok(Flow::Close);
        }
        if let Some(refusal) = self.transaction_refusal() {
            self.io.send(refusal).await?;
            return Ok(Flow::Continue);
        }
        if let Some(refusal) = smtp_pool_knobs::chunk_refusal(&self.shared).filter(|_| !last) {
            return self.io.send(&refusal).await.map(|()| Flow::Continue);
        }
        let data = self.chunks.get_or_insert_with(Vec::new);
        let too_big = data.len() + chunk.len() > MAX_MESSAGE;
        data.extend_from_slice(&chunk);
        if last || too_big {
            let data = self.chunks.take().unwrap_or_default();
            self.finish_message(data, too_big).await?;
        } else {
            self.io.send(reply::CHUNK_OK).await?;
        }
        Ok(Flow::Continue)
    }

    async fn finish_message(&mut self, data: Vec<u8>, too_big: bool) -> io::Result<()> {
        tokio::time::sleep(smtp_delivery::data_end_delay(&self.shared)).await;
        let reject_with = self.shared.lock().reject_with.clone();
        let over_limit = self.login.as_ref().is_some_and(|l| l.counted.over);
        let reply = if too_big {
            reply::TOO_BIG.to_string()
        } else if over_limit {
            smtp_limits::refused(&self.shared);
            smtp_limits::SENDER_THREAD_LIMIT.to_string()
        } else if let Some(reject) = reject_with {
            reject
        } else {
            let (user, token) = self
                .login
                .as_ref()
                .map(|l| (l.user.clone(), l.token.clone()))
                .unwrap_or_default();
            self.shared.lock().messages.push(ReceivedMessage {
                authenticated_as: user,
                token,
                mail_from: self.mail_from.clone().unwrap_or_default(),
                rcpt_to: self.rcpt_to.clone(),
                data,
            });
            self.message_serial += 1;
            format!(
                "250 2.0.0 OK <{:04}{:04}.BN8PR04MB0000@BN8PR04MB0000.namprd04.prod.outlook.com> \
                 [Hostname=BN8PR04MB0000.namprd04.prod.outlook.com]",
                self.connection, self.message_serial
            )
        };
        self.reset_transaction();
        self.io.send(&reply).await
    }

    fn reset_transaction(&mut self) {
        self.mail_from = None;
        self.rcpt_to.clear();
        self.chunks = None;
    }
}
