//! Fake Exchange Online IMAP server (outlook.office365.com:993 behaviour, implicit TLS) on
//! 127.0.0.1:0.
//!
//! The greeting, capability lists, `AUTHENTICATE XOAUTH2` (SASL-IR and two-step) and the reply
//! texts follow PROTOCOL.md A1–A3; XOAUTH2 payloads are checked byte for byte and tokens are
//! validated against the [`FakeEntra`] that issued them (scope `IMAP.AccessAsUser.All`). After
//! login it serves enough of IMAP4rev1 for imaplib, curl and async-imap: folders, SELECT,
//! FETCH (literals written straight from the store), SEARCH, STORE, EXPUNGE, COPY/MOVE, APPEND
//! (`{n}` and `{n+}`) and IDLE. Each mailbox (the `user=` value) has its own store, so a shared
//! mailbox is separate from its delegate's.
//!
//! Protocol violations by the client are recorded (see [`FakeImap::protocol_errors`]), not
//! panics; a panic inside the fake fails the test when the fake is dropped or
//! [`FakeImap::check`] is called.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::certs::TestPki;
use super::fake_entra::{AccessTokenChecker, FakeEntra};
use super::imap_session::Session;
use super::imap_store::{Mailboxes, now};
use super::tasks::TaskWatch;

/// A message in a folder of a mailbox, as [`FakeImap::messages`] returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMessage {
    pub uid: u32,
    /// System flags in canonical spelling (`\Seen`, `\Deleted`, ...) and keywords as stored.
    pub flags: Vec<String>,
    pub data: Vec<u8>,
}

/// One AUTHENTICATE or LOGIN command.
#[derive(Clone, Debug)]
pub struct AuthAttempt {
    /// `XOAUTH2`, `PLAIN` or `LOGIN`, upper-cased.
    pub mechanism: String,
    /// The `user=` value (the authentication identity for PLAIN and LOGIN; empty when the
    /// payload could not be parsed).
    pub user: String,
    pub token: String,
    pub accepted: bool,
    /// The base64-decoded payload (empty when it was not valid standard base64, and for LOGIN).
    pub raw_decoded: Vec<u8>,
    /// Whether the payload came on the AUTHENTICATE line (SASL-IR) rather than after `+`.
    pub initial_response: bool,
    /// Why the fake refused it.
    pub rejection: Option<String>,
}

/// The fake server. Dropping it stops it.
pub struct FakeImap {
    addr: SocketAddr,
    shared: Arc<Shared>,
    watch: Arc<TaskWatch>,
}

/// State shared by the fake and its connection tasks.
pub(super) struct Shared {
    pub(super) tokens: AccessTokenChecker,
    pub(super) acceptor: TlsAcceptor,
    state: Mutex<ImapState>,
    /// Bumped whenever messages are added or removed; IDLE sessions wake on it.
    pub(super) changes: watch::Sender<u64>,
    /// Bumped by [`FakeImap::bye_token_expired`]; authenticated sessions wake on it.
    pub(super) byes: watch::Sender<u64>,
}

#[derive(Default)]
pub(super) struct ImapState {
    pub(super) capability_in_ok: bool,
    pub(super) drop_after_auth: bool,
    /// The next this many connections are closed right after the greeting (as a server
    /// that times out a connection that does not log in).
    pub(super) close_after_greeting: usize,
    /// (mailbox, upn), both lower-cased.
    pub(super) delegates: HashSet<(String, String)>,
    pub(super) connections: usize,
    pub(super) mailboxes: Mailboxes,
    pub(super) auth_attempts: Vec<AuthAttempt>,
    pub(super) commands: Vec<String>,
    pub(super) protocol_errors: Vec<String>,
}

// === impl FakeImap ===

impl FakeImap {
    /// Binds 127.0.0.1:0 and speaks TLS at once with a leaf from `pki` for 127.0.0.1 and localhost.
    pub async fn start(pki: &TestPki, entra: FakeEntra) -> FakeImap {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake IMAP");
        let addr = listener.local_addr().expect("fake IMAP address");
        let shared = Arc::new(Shared {
            tokens: entra.checker(),
            acceptor: TlsAcceptor::from(pki.server_config(&["127.0.0.1", "localhost"])),
            state: Mutex::new(ImapState::default()),
            changes: watch::Sender::new(0),
            byes: watch::Sender::new(0),
        });
        let watch = Arc::new(TaskWatch::new("imap"));
        watch.spawn(accept_loop(listener, shared.clone(), watch.clone()));
        FakeImap {
            addr,
            shared,
            watch,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answer a successful AUTHENTICATE with `OK [CAPABILITY ...] AUTHENTICATE completed.`
    /// (the post-login list) instead of the plain `OK AUTHENTICATE completed.`.
    pub fn set_capability_in_ok(&self, on: bool) {
        self.shared.lock().capability_in_ok = on;
    }

    /// Close each of the next `connections` connections right after its greeting.
    pub fn close_after_greeting(&self, connections: usize) {
        self.shared.lock().close_after_greeting = connections;
    }

    /// Close the connection right after `OK AUTHENTICATE completed.`.
    pub fn set_drop_after_auth(&self, on: bool) {
        self.shared.lock().drop_after_auth = on;
    }

    /// Sends `* BYE Session invalidated - AccessTokenExpired` to every session that is
    /// authenticated now and closes it (a session busy with a command finishes it first).
    pub fn bye_token_expired(&self) {
        self.shared.byes.send_modify(|n| *n += 1);
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

    /// Chooses the mailbox that [`deliver`](Self::deliver) and [`messages`](Self::messages)
    /// use. Without this call it is the first mailbox that logs in; messages delivered before
    /// that are kept aside and move into it at its first login.
    pub fn set_primary_mailbox(&self, mailbox: &str) {
        self.shared.lock().mailboxes.set_primary(mailbox);
    }

    /// Adds a message (no flags) to `folder` of the primary mailbox and returns its UID.
    /// IDLE sessions on that folder get `* n EXISTS`.
    pub fn deliver(&self, folder: &str, message: &[u8]) -> u32 {
        let key = self.shared.lock().mailboxes.primary_key();
        self.deliver_to(&key, folder, message)
    }

    /// Adds a message to `folder` (created if missing) of `mailbox` and returns its UID.
    pub fn deliver_to(&self, mailbox: &str, folder: &str, message: &[u8]) -> u32 {
        let uid = self
            .shared
            .lock()
            .mailboxes
            .mailbox_mut(mailbox)
            .folder_or_create(folder)
            .append(Arc::from(message), &[], now());
        self.shared.notify_changes();
        uid
    }

    /// The messages of `folder` in the primary mailbox, in UID order.
    pub fn messages(&self, folder: &str) -> Vec<StoredMessage> {
        let key = self.shared.lock().mailboxes.primary_key();
        self.messages_of(&key, folder)
    }

    /// The messages of `folder` in `mailbox`, in UID order (empty if either does not exist).
    pub fn messages_of(&self, mailbox: &str, folder: &str) -> Vec<StoredMessage> {
        let state = self.shared.lock();
        let folder = state
            .mailboxes
            .get(&mailbox.to_ascii_lowercase())
            .and_then(|m| m.folder(folder));
        folder.map_or_else(Vec::new, |f| {
            f.messages
                .iter()
                .map(|m| StoredMessage {
                    uid: m.uid,
                    flags: m.flags.clone(),
                    data: m.data.to_vec(),
                })
                .collect()
        })
    }

    pub fn auth_attempts(&self) -> Vec<AuthAttempt> {
        self.shared.lock().auth_attempts.clone()
    }

    /// Every command line received after a successful login, across connections, tags kept.
    /// Literal payloads are left out: a command shows its `{n}` markers only.
    pub fn commands(&self) -> Vec<String> {
        self.shared.lock().commands.clone()
    }

    /// Number of TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.lock().connections
    }

    /// Client misbehaviour the fake noticed: failed TLS handshakes, over-long lines, oversized
    /// literals, lines other than DONE during IDLE, connections lost mid-command.
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
            "fake imap saw protocol errors: {errors:#?}"
        );
    }

    /// Panics only if the fake itself failed. Dropping the fake does the same check.
    pub fn check_no_panics(&self) {
        self.watch.check();
    }
}

impl Drop for FakeImap {
    fn drop(&mut self) {
        self.watch.shutdown();
    }
}

// === impl Shared ===

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, ImapState> {
        // Poisoning means a connection task panicked; the TaskWatch reports that panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn protocol_error(&self, connection: usize, message: String) {
        eprintln!("fake imap: connection {connection}: {message}");
        self.lock()
            .protocol_errors
            .push(format!("connection {connection}: {message}"));
    }

    /// Wakes IDLE sessions after messages were added or removed.
    pub(super) fn notify_changes(&self) {
        self.changes.send_modify(|n| *n += 1);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, watch: Arc<TaskWatch>) {
    loop {
        let (stream, _peer) = match listener.accept().await {
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
            let tls = match shared.acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(err) => {
                    shared.protocol_error(connection, format!("TLS handshake failed: {err}"));
                    return;
                }
            };
            let session = Session::new(shared.clone(), connection, Box::new(tls));
            if let Err(err) = session.run().await {
                shared.protocol_error(connection, format!("connection ended with error: {err}"));
            }
        });
    }
}
