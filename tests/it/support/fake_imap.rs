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

use std::sync::Arc;

use tokio::sync::watch;

use super::certs::TestPki;
use super::fake_entra::FakeEntra;
use super::fake_server::{Core, FakeServer};
use super::imap_session::Session;
use super::imap_store::{Mailboxes, now};

/// A message in a folder of a mailbox, as [`FakeImap::messages`] returns it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMessage {
    pub uid: u32,
    /// System flags in canonical spelling (`\Seen`, `\Deleted`, ...) and keywords as stored.
    pub flags: Vec<String>,
    pub data: Vec<u8>,
}

/// The fake server. Dropping it stops it.
pub type FakeImap = FakeServer<ImapState, Signals>;

/// State shared by the fake and its connection tasks.
pub(super) type Shared = Core<ImapState, Signals>;

/// What wakes sessions, outside the lock.
pub struct Signals {
    /// Bumped whenever messages are added or removed; IDLE sessions wake on it.
    pub(super) changes: watch::Sender<u64>,
    /// Bumped by [`FakeImap::bye_token_expired`]; authenticated sessions wake on it.
    pub(super) byes: watch::Sender<u64>,
}

/// The IMAP part of the fake's state.
#[derive(Default)]
pub struct ImapState {
    pub(super) capability_in_ok: bool,
    /// The next this many connections are closed right after the greeting (as a server
    /// that times out a connection that does not log in).
    pub(super) close_after_greeting: usize,
    pub(super) mailboxes: Mailboxes,
    pub(super) commands: Vec<String>,
}

// === impl FakeImap ===

impl FakeImap {
    /// Binds 127.0.0.1:0 and speaks TLS at once with a leaf from `pki` for 127.0.0.1 and localhost.
    pub async fn start(pki: &TestPki, entra: FakeEntra) -> FakeImap {
        let signals = Signals {
            changes: watch::Sender::new(0),
            byes: watch::Sender::new(0),
        };
        FakeServer::bind(
            "imap",
            pki,
            entra,
            signals,
            |shared, connection, stream, _peer| async move {
                let Some(tls) = shared.accept_tls(connection, stream).await else {
                    return Ok(());
                };
                Session::new(shared, connection, Box::new(tls)).run().await
            },
        )
        .await
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

    /// Sends `* BYE Session invalidated - AccessTokenExpired` to every session that is
    /// authenticated now and closes it (a session busy with a command finishes it first).
    pub fn bye_token_expired(&self) {
        self.shared.signals.byes.send_modify(|n| *n += 1);
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

    /// Every command line received after a successful login, across connections, tags kept.
    /// Literal payloads are left out: a command shows its `{n}` markers only.
    pub fn commands(&self) -> Vec<String> {
        self.shared.lock().commands.clone()
    }
}

// === impl Shared ===

impl Shared {
    /// Wakes IDLE sessions after messages were added or removed.
    pub(super) fn notify_changes(&self) {
        self.signals.changes.send_modify(|n| *n += 1);
    }
}
