//! Fake Exchange Online SMTP submission server (smtp.office365.com:587 behaviour) on 127.0.0.1:0.
//!
//! Greeting, EHLO lists, STARTTLS, `AUTH XOAUTH2` (one-line and two-step), the optional `334` error
//! challenge, MAIL/RCPT/DATA/BDAT and the reply texts follow PROTOCOL.md A1–A3. XOAUTH2 payloads are
//! checked byte for byte and tokens are validated against the [`FakeEntra`] that issued them.
//! Protocol violations by the client are recorded (see [`FakeSmtp::protocol_errors`]), not panics;
//! a panic inside the fake fails the test when the fake is dropped or [`FakeSmtp::check`] is called.

use super::certs::TestPki;
use super::fake_entra::FakeEntra;
use super::fake_server::{Core, FakeServer};
use super::smtp_session::Session;

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
pub type FakeSmtp = FakeServer<SmtpState>;

/// State shared by the fake and its connection tasks.
pub(super) type Shared = Core<SmtpState>;

/// The SMTP part of the fake's state.
#[derive(Default)]
pub struct SmtpState {
    pub(super) error_challenge: bool,
    pub(super) smtp_auth_disabled: bool,
    pub(super) drop_in_data: bool,
    pub(super) reject_with: Option<String>,
    pub(super) messages: Vec<ReceivedMessage>,
    pub(super) commands: Vec<SmtpCommand>,
    /// Exchange's per-mailbox connection limit (`smtp_limits.rs`).
    pub(super) limits: super::smtp_limits::SmtpLimits,
    /// Refused recipients and a slow end of DATA (`smtp_delivery.rs`).
    pub(super) delivery: super::smtp_delivery::DeliveryKnobs,
    /// A server that stops reading, refused BDAT chunks (`smtp_pool_knobs.rs`).
    pub(super) pool: super::smtp_pool_knobs::PoolKnobs,
}

// === impl FakeSmtp ===

impl FakeSmtp {
    /// Binds 127.0.0.1:0; STARTTLS presents a leaf from `pki` for 127.0.0.1 and localhost.
    pub async fn start(pki: &TestPki, entra: FakeEntra) -> FakeSmtp {
        FakeServer::bind(
            "smtp",
            pki,
            entra,
            (),
            |shared, connection, stream, peer| Session::new(shared, connection, peer, stream).run(),
        )
        .await
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

    /// Close the connection in the middle of DATA (after the first line) or on BDAT, without replying.
    pub fn set_drop_in_data(&self, on: bool) {
        self.shared.lock().drop_in_data = on;
    }

    /// Final reply after DATA / BDAT LAST instead of `250`, e.g. `554 5.2.252 SendAsDenied; ...`.
    /// The message is then not stored.
    pub fn reject_messages_with(&self, reply_line: &str) {
        self.shared.lock().reject_with = Some(reply_line.to_string());
    }

    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.shared.lock().messages.clone()
    }

    /// Every command line received, across connections.
    pub fn commands(&self) -> Vec<SmtpCommand> {
        self.shared.lock().commands.clone()
    }
}
