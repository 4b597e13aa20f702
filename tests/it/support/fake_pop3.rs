//! Fake Exchange Online POP3 server (outlook.office365.com:995 behaviour, implicit TLS) on 127.0.0.1:0.
//!
//! The greeting, CAPA, the two-step `AUTH XOAUTH2` and the reply texts follow PROTOCOL.md A1–A3 and
//! Exchange's POP3 service; USER/PASS is refused because basic authentication is off at Microsoft.
//! XOAUTH2 payloads are checked byte for byte and tokens are validated against the [`FakeEntra`]
//! that issued them (scope `POP.AccessAsUser.All`). Each mailbox, keyed by the `user=` address, has
//! its own messages, which RETR streams dot-stuffed from the stored bytes. Protocol violations by
//! the client are recorded (see [`FakePop3::protocol_errors`]), not panics; a panic inside the fake
//! fails the test when the fake is dropped or [`FakePop3::check`] is called.

use std::collections::HashMap;
use std::sync::Arc;

use super::certs::TestPki;
use super::fake_entra::FakeEntra;
use super::fake_server::{Core, FakeServer};
use super::pop3_session::Session;

/// The fake server. Dropping it stops it.
pub type FakePop3 = FakeServer<Pop3State>;

/// State shared by the fake and its connection tasks.
pub(super) type Shared = Core<Pop3State>;

/// The POP3 part of the fake's state.
#[derive(Default)]
pub struct Pop3State {
    /// Messages per lower-cased mailbox address, oldest first.
    mailboxes: HashMap<String, Vec<StoredMessage>>,
    next_serial: u64,
    pub(super) commands: Vec<String>,
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
        FakeServer::bind(
            "pop3",
            pki,
            entra,
            (),
            |shared, connection, stream, _peer| async move {
                let Some(tls) = shared.accept_tls(connection, stream).await else {
                    return Ok(());
                };
                Session::new(shared, connection, tls).run().await
            },
        )
        .await
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

    /// Every line received, across connections, without its line ending: commands and the SASL
    /// responses sent after `+ `.
    pub fn commands(&self) -> Vec<String> {
        self.shared.lock().commands.clone()
    }
}

// === impl Shared ===

impl Shared {
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
