//! Fake Exchange Online SMTP submission server (smtp.office365.com:587 behaviour) on 127.0.0.1:0.
//!
//! Greeting, EHLO lists, STARTTLS, `AUTH XOAUTH2` (one-line and two-step), the optional `334` error
//! challenge, MAIL/RCPT/DATA/BDAT and the reply texts follow PROTOCOL.md A1–A3. XOAUTH2 payloads are
//! checked byte for byte and tokens are validated against the [`FakeEntra`] that issued them.
//! Protocol violations by the client are recorded (see [`FakeSmtp::protocol_errors`]), not panics;
//! a panic inside the fake fails the test when the fake is dropped or [`FakeSmtp::check`] is called.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::certs::TestPki;
use super::fake_entra::{AccessTokenChecker, FakeEntra};
use super::smtp_session::Session;
use super::tasks::TaskWatch;

/// A message accepted after DATA or BDAT LAST.
#[derive(Clone, Debug)]
pub struct ReceivedMessage {
    /// The `user=` value of the XOAUTH2 login.
    pub authenticated_as: String,
    pub token: String,
    /// The reverse path, without angle brackets and parameters.
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message as the client meant it: dot-unstuffed, line endings as sent (CRLF), no final `.` line.
    pub data: Vec<u8>,
}

/// One AUTH command.
#[derive(Clone, Debug)]
pub struct AuthAttempt {
    /// `XOAUTH2` or `LOGIN`, upper-cased.
    pub mechanism: String,
    /// The `user=` value (empty when the payload could not be parsed).
    pub user: String,
    pub token: String,
    pub accepted: bool,
    /// The base64-decoded payload (empty when it was not valid standard base64).
    pub raw_decoded: Vec<u8>,
    /// Whether the payload came on the AUTH line (SASL initial response) rather than after `334`.
    pub initial_response: bool,
    /// Why the fake refused it.
    pub rejection: Option<String>,
}

/// One command line as received, for transcript assertions.
#[derive(Clone, Debug)]
pub struct SmtpCommand {
    /// 1-based connection number.
    pub connection: usize,
    pub tls: bool,
    /// The line without its line ending (AUTH payloads included).
    pub line: String,
}

/// The fake server. Dropping it stops it.
pub struct FakeSmtp {
    addr: SocketAddr,
    shared: Arc<Shared>,
    watch: Arc<TaskWatch>,
}

/// State shared by the fake and its connection tasks.
pub(super) struct Shared {
    pub(super) tokens: AccessTokenChecker,
    pub(super) acceptor: TlsAcceptor,
    state: Mutex<SmtpState>,
}

#[derive(Default)]
pub(super) struct SmtpState {
    pub(super) error_challenge: bool,
    pub(super) smtp_auth_disabled: bool,
    pub(super) drop_after_auth: bool,
    pub(super) drop_in_data: bool,
    pub(super) reject_with: Option<String>,
    /// (mailbox, upn), both lower-cased.
    pub(super) delegates: HashSet<(String, String)>,
    pub(super) connections: usize,
    pub(super) messages: Vec<ReceivedMessage>,
    pub(super) auth_attempts: Vec<AuthAttempt>,
    pub(super) commands: Vec<SmtpCommand>,
    pub(super) protocol_errors: Vec<String>,
}

// === impl FakeSmtp ===

impl FakeSmtp {
    /// Binds 127.0.0.1:0; STARTTLS presents a leaf from `pki` for 127.0.0.1 and localhost.
    pub async fn start(pki: &TestPki, entra: FakeEntra) -> FakeSmtp {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake SMTP");
        let addr = listener.local_addr().expect("fake SMTP address");
        let shared = Arc::new(Shared {
            tokens: entra.checker(),
            acceptor: TlsAcceptor::from(pki.server_config(&["127.0.0.1", "localhost"])),
            state: Mutex::new(SmtpState::default()),
        });
        let watch = Arc::new(TaskWatch::new("smtp"));
        watch.spawn(accept_loop(listener, shared.clone(), watch.clone()));
        FakeSmtp {
            addr,
            shared,
            watch,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// On a failed XOAUTH2 (including the disabled-tenant case), first send a `334` challenge with
    /// base64 JSON, wait for the client's empty line, then the 535.
    pub fn set_error_challenge(&self, on: bool) {
        self.shared.lock().error_challenge = on;
    }

    /// Answer every AUTH with `535 5.7.139 ... SmtpClientAuthentication is disabled for the Tenant ...`.
    pub fn set_smtp_auth_disabled(&self, on: bool) {
        self.shared.lock().smtp_auth_disabled = on;
    }

    /// Close the connection right after `235`.
    pub fn set_drop_after_auth(&self, on: bool) {
        self.shared.lock().drop_after_auth = on;
    }

    /// Close the connection in the middle of DATA (after the first line) or on BDAT, without replying.
    pub fn set_drop_in_data(&self, on: bool) {
        self.shared.lock().drop_in_data = on;
    }

    /// Final reply after DATA / BDAT LAST instead of `250`, e.g. `554 5.2.252 SendAsDenied; ...`.
    /// The message is then not stored.
    pub fn reject_messages_with(&self, reply_line: &str) {
        self.shared.lock().reject_with = Some(reply_line.to_string());
    }

    /// Lets a token issued to `upn` open `mailbox` (a shared mailbox the user has rights on).
    pub fn grant_delegate(&self, mailbox: &str, upn: &str) {
        let key = (mailbox.to_ascii_lowercase(), upn.to_ascii_lowercase());
        self.shared.lock().delegates.insert(key);
    }

    /// Lets app-only tokens of `client_id` open `mailbox` (`Add-MailboxPermission ...
    /// -AccessRights FullAccess` for the app's service principal, PROTOCOL.md A5).
    pub fn grant_app_access(&self, mailbox: &str, client_id: &str) {
        self.grant_delegate(mailbox, &super::fake_entra::app_principal(client_id));
    }

    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.shared.lock().messages.clone()
    }

    pub fn auth_attempts(&self) -> Vec<AuthAttempt> {
        self.shared.lock().auth_attempts.clone()
    }

    /// Number of TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.lock().connections
    }

    /// Every command line received, across connections.
    pub fn commands(&self) -> Vec<SmtpCommand> {
        self.shared.lock().commands.clone()
    }

    /// Client misbehaviour the fake noticed: data pipelined after STARTTLS, over-long lines, a
    /// non-empty answer to the error challenge, failed TLS handshakes, connections lost mid-command.
    pub fn protocol_errors(&self) -> Vec<String> {
        self.shared.lock().protocol_errors.clone()
    }

    /// Panics if the fake failed (a connection task panicked) or saw client misbehaviour
    /// ([`protocol_errors`](Self::protocol_errors)). Fault-injection tests that expect misbehaviour
    /// use [`check_no_panics`](Self::check_no_panics) instead.
    pub fn check(&self) {
        self.watch.check();
        let errors = self.protocol_errors();
        assert!(
            errors.is_empty(),
            "fake smtp saw protocol errors: {errors:#?}"
        );
    }

    /// Panics only if the fake itself failed. Dropping the fake does the same check.
    pub fn check_no_panics(&self) {
        self.watch.check();
    }
}

impl Drop for FakeSmtp {
    fn drop(&mut self) {
        self.watch.shutdown();
    }
}

// === impl Shared ===

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, SmtpState> {
        // Poisoning means a connection task panicked; the TaskWatch reports that panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn protocol_error(&self, connection: usize, message: String) {
        eprintln!("fake smtp: connection {connection}: {message}");
        self.lock()
            .protocol_errors
            .push(format!("connection {connection}: {message}"));
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, watch: Arc<TaskWatch>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                watch.record_failure(format!("accept failed: {err}"));
                return;
            }
        };
        let connection = {
            let mut state = shared.lock();
            state.connections += 1;
            state.connections
        };
        let shared = shared.clone();
        watch.spawn(async move {
            let session = Session::new(shared.clone(), connection, peer, stream);
            if let Err(err) = session.run().await {
                shared.protocol_error(connection, format!("connection ended with error: {err}"));
            }
        });
    }
}
