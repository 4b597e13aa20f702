//! Fake Exchange Online POP3 server (outlook.office365.com:995 behaviour, implicit TLS) on 127.0.0.1:0.
//!
//! The greeting, CAPA, the two-step `AUTH XOAUTH2` and the reply texts follow PROTOCOL.md A1–A3 and
//! Exchange's POP3 service; USER/PASS is refused because basic authentication is off at Microsoft.
//! XOAUTH2 payloads are checked byte for byte and tokens are validated against the [`FakeEntra`]
//! that issued them (scope `POP.AccessAsUser.All`). Each mailbox, keyed by the `user=` address, has
//! its own messages, which RETR streams dot-stuffed from the stored bytes. Protocol violations by
//! the client are recorded (see [`FakePop3::protocol_errors`]), not panics; a panic inside the fake
//! fails the test when the fake is dropped or [`FakePop3::check`] is called.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::certs::TestPki;
use super::fake_entra::{AccessTokenChecker, FakeEntra};
use super::pop3_session::Session;
use super::tasks::TaskWatch;

/// One AUTH command, or one USER/PASS pair.
#[derive(Clone, Debug)]
pub struct AuthAttempt {
    /// `XOAUTH2` or `PLAIN` (upper-cased), or `USER` for USER/PASS.
    pub mechanism: String,
    /// The `user=` value (empty when the payload could not be parsed).
    pub user: String,
    pub token: String,
    pub accepted: bool,
    /// The base64-decoded payload (empty when it was not valid standard base64).
    pub raw_decoded: Vec<u8>,
    /// Whether the payload came on the AUTH line (RFC 5034 initial response) rather than after `+ `.
    pub initial_response: bool,
    /// Why the fake refused it.
    pub rejection: Option<String>,
}

/// The fake server. Dropping it stops it.
pub struct FakePop3 {
    addr: SocketAddr,
    shared: Arc<Shared>,
    watch: Arc<TaskWatch>,
}

/// State shared by the fake and its connection tasks.
pub(super) struct Shared {
    pub(super) tokens: AccessTokenChecker,
    acceptor: TlsAcceptor,
    state: Mutex<Pop3State>,
}

#[derive(Default)]
pub(super) struct Pop3State {
    pub(super) drop_after_auth: bool,
    /// (mailbox, upn), both lower-cased.
    pub(super) delegates: HashSet<(String, String)>,
    /// Messages per lower-cased mailbox address, oldest first.
    mailboxes: HashMap<String, Vec<StoredMessage>>,
    next_serial: u64,
    pub(super) connections: usize,
    pub(super) auth_attempts: Vec<AuthAttempt>,
    pub(super) commands: Vec<String>,
    pub(super) protocol_errors: Vec<String>,
}

/// A delivered message. Sessions share the bytes, so a large message exists once.
#[derive(Clone)]
pub(super) struct StoredMessage {
    /// Unique across the fake; the UIDL value is derived from it, so it is stable across sessions.
    pub(super) serial: u64,
    pub(super) bytes: Arc<[u8]>,
}

// === impl FakePop3 ===

impl FakePop3 {
    /// Binds 127.0.0.1:0 and speaks TLS at once, presenting a leaf from `pki` for 127.0.0.1 and localhost.
    pub async fn start(pki: &TestPki, entra: FakeEntra) -> FakePop3 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake POP3");
        let addr = listener.local_addr().expect("fake POP3 address");
        let shared = Arc::new(Shared {
            tokens: entra.checker(),
            acceptor: TlsAcceptor::from(pki.server_config(&["127.0.0.1", "localhost"])),
            state: Mutex::new(Pop3State::default()),
        });
        let watch = Arc::new(TaskWatch::new("pop3"));
        watch.spawn(accept_loop(listener, shared.clone(), watch.clone()));
        FakePop3 {
            addr,
            shared,
            watch,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Puts `message` (CRLF line endings, as Exchange serves them) into `mailbox`. Sessions that
    /// are already logged in keep the maildrop they started with, as RFC 1939 §8 allows.
    pub fn deliver(&self, mailbox: &str, message: &[u8]) {
        let mut state = self.shared.lock();
        state.next_serial += 1;
        let stored = StoredMessage {
            serial: state.next_serial,
            bytes: Arc::from(message),
        };
        let key = mailbox.to_ascii_lowercase();
        state.mailboxes.entry(key).or_default().push(stored);
    }

    /// The messages still in `mailbox` (deletions are applied when a session QUITs).
    pub fn messages(&self, mailbox: &str) -> Vec<Vec<u8>> {
        self.shared
            .snapshot(mailbox)
            .iter()
            .map(|m| m.bytes.to_vec())
            .collect()
    }

    /// Close the connection right after `+OK User successfully authenticated.`.
    pub fn set_drop_after_auth(&self, on: bool) {
        self.shared.lock().drop_after_auth = on;
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

    pub fn auth_attempts(&self) -> Vec<AuthAttempt> {
        self.shared.lock().auth_attempts.clone()
    }

    /// Every line received, across connections, without its line ending: commands and the SASL
    /// responses sent after `+ `.
    pub fn commands(&self) -> Vec<String> {
        self.shared.lock().commands.clone()
    }

    /// Number of TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.lock().connections
    }

    /// Client misbehaviour the fake noticed: over-long command lines, the one-line `AUTH XOAUTH2`
    /// that Exchange Online refuses, failed TLS handshakes, connections lost mid-command.
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
            "fake pop3 saw protocol errors: {errors:#?}"
        );
    }

    /// Panics only if the fake itself failed. Dropping the fake does the same check.
    pub fn check_no_panics(&self) {
        self.watch.check();
    }
}

impl Drop for FakePop3 {
    fn drop(&mut self) {
        self.watch.shutdown();
    }
}

// === impl Shared ===

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Pop3State> {
        // Poisoning means a connection task panicked; the TaskWatch reports that panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn protocol_error(&self, connection: usize, message: String) {
        eprintln!("fake pop3: connection {connection}: {message}");
        self.lock()
            .protocol_errors
            .push(format!("connection {connection}: {message}"));
    }

    /// The maildrop of `mailbox` as it is now (cheap: the message bytes are shared).
    pub(super) fn snapshot(&self, mailbox: &str) -> Vec<StoredMessage> {
        let state = self.lock();
        let messages = state.mailboxes.get(&mailbox.to_ascii_lowercase());
        messages.cloned().unwrap_or_default()
    }

    /// The UPDATE state (RFC 1939 §6): removes the messages a session marked as deleted.
    pub(super) fn expunge(&self, mailbox: &str, serials: &[u64]) {
        if let Some(messages) = self.lock().mailboxes.get_mut(&mailbox.to_ascii_lowercase()) {
            messages.retain(|m| !serials.contains(&m.serial));
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, watch: Arc<TaskWatch>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
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
            let tls = match shared.acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(err) => {
                    shared.protocol_error(connection, format!("TLS handshake failed: {err}"));
                    return;
                }
            };
            let session = Session::new(shared.clone(), connection, tls);
            if let Err(err) = session.run().await {
                shared.protocol_error(connection, format!("connection ended with error: {err}"));
            }
        });
    }
}
