//! The input of the pre-auth targets: four bytes of settings, then what the client sends,
//! as plain protocol text. Seeds are readable transcripts (fuzz/seeds/), and the
//! dictionaries (fuzz/dict/) hold the protocol words, so the fuzzer starts from complete
//! logins and mutates them instead of guessing keywords and base64.
//!
//! - byte 0, flags: bit 0 implicit TLS, bit 1 a login is allowed, bit 2 a login is allowed
//!   once TLS is on, bit 3 the peer is on loopback, bit 4 plaintext logins are allowed on
//!   loopback, bits 5-6 the protocol and bit 7 tight limits (both `preauth_driver` only;
//!   protocols: SMTP, IMAP, POP3, SMTP);
//! - byte 1: the largest read of the in-memory stream, from [`CHUNKS`];
//! - byte 2: which logins succeed upstream: login `n` (from 0) iff bit `n`;
//! - byte 3: how the others fail: login `n` with `model::login_error(byte 3 + n)`;
//! - the rest: the client's bytes. [`HANDSHAKE`] marks the client's TLS handshake; what
//!   follows it is sent over TLS.

use m365_relay::error::Error;

#[path = "../../../tests/it/props/model.rs"]
#[allow(dead_code)]
pub mod model;

/// Where the client starts its TLS handshake (after a STARTTLS go-ahead).
pub const HANDSHAKE: &[u8] = b"\0TLS\0";

/// Sizes of the reads the client's bytes arrive in.
const CHUNKS: [usize; 8] = [1, 2, 3, 7, 64, 512, 4096, 65536];

/// The upstream's success text.
pub const UPSTREAM_OK: &str = "Authentication successful";

/// Which of the three protocols a transcript is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Smtp,
    Imap,
    Pop3,
}

/// A decoded input.
pub struct Transcript<'a> {
    pub tls: bool,
    pub auth_allowed: bool,
    pub auth_after_tls: bool,
    pub loopback: bool,
    pub plaintext_on_loopback: bool,
    pub protocol: Protocol,
    pub chunk: usize,
    successes: u8,
    failure_base: u8,
    /// The client's bytes before the handshake, and after it (if it comes).
    pub segments: Vec<&'a [u8]>,
}

impl<'a> Transcript<'a> {
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let (&[flags, chunk, successes, failure_base], client) = data.split_first_chunk()?;
        let bit = |n: u8| flags & (1 << n) != 0;
        Some(Self {
            tls: bit(0),
            auth_allowed: bit(1),
            auth_after_tls: bit(2),
            loopback: bit(3),
            plaintext_on_loopback: bit(4),
            protocol: match (flags >> 5) & 3 {
                1 => Protocol::Imap,
                2 => Protocol::Pop3,
                _ => Protocol::Smtp,
            },
            chunk: CHUNKS[usize::from(chunk) % CHUNKS.len()],
            successes,
            failure_base,
            segments: split(client),
        })
    }

    /// The upstream's answer to the `n`-th login (from 0).
    pub fn outcome(&self, n: usize) -> Result<String, Error> {
        if n < 8 && self.successes & (1 << n) != 0 {
            Ok(UPSTREAM_OK.to_owned())
        } else {
            Err(model::login_error(self.failure_base.wrapping_add(n as u8)))
        }
    }
}

/// The client's bytes at each [`HANDSHAKE`] (one segment per handshake).
fn split(client: &[u8]) -> Vec<&[u8]> {
    let mut segments = Vec::new();
    let mut rest = client;
    while let Some(at) = rest.windows(HANDSHAKE.len()).position(|w| w == HANDSHAKE) {
        segments.push(&rest[..at]);
        rest = &rest[at + HANDSHAKE.len()..];
    }
    segments.push(rest);
    segments
}
