//! The real pre-auth driver (`protocol::driver::preauth`) of SMTP, IMAP and POP3 over an
//! in-memory stream: the line reader, IMAP literals, the byte budget, the deadline and a
//! real STARTTLS handshake, with a scripted login. Input: a transcript
//! (`common/transcript.rs`; bits 5-6 of its first byte pick the protocol). After its
//! plaintext part the client waits until the relay is idle; if the relay's last words were
//! the STARTTLS go-ahead, it runs the TLS handshake and sends the rest over TLS.
//! Findings: a reply that is not clean CRLF lines; a login tried where the relay's own
//! rule allows none (plaintext from a non-loopback peer); plaintext after the go-ahead (a
//! command pipelined behind STARTTLS was run, CVE-2011-0411).
#![no_main]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::transcript::{HANDSHAKE, Protocol, Transcript};
use common::{depth, memory, tls_pair};
use libfuzzer_sys::fuzz_target;
use m365_relay::error::Error;
use m365_relay::protocol::driver::{PreauthParams, may_authenticate, preauth};
use m365_relay::protocol::{Credentials, LoggedIn, Login, PreAuth, PreauthLimits, auth_allowed};
use m365_relay::protocol::{imap, pop3, smtp};
use m365_relay::tls::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf};

/// The scripted upstream: records when it was asked.
struct ScriptedLogin<'a> {
    transcript: &'a Transcript<'a>,
    /// Whether the client's bytes now come over TLS.
    tls: &'a AtomicBool,
    peer: SocketAddr,
    calls: AtomicUsize,
    succeeded: AtomicBool,
}

impl Login for ScriptedLogin<'_> {
    type Upstream = ();

    async fn login(&self, credentials: Credentials) -> Result<LoggedIn<()>, Error> {
        let tls = self.transcript.tls || self.tls.load(Ordering::SeqCst);
        assert!(
            auth_allowed(self.peer, tls, self.transcript.plaintext_on_loopback),
            "a login from {} without TLS",
            self.peer
        );
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let upstream_ok = self.transcript.outcome(n)?;
        self.succeeded.store(true, Ordering::SeqCst);
        Ok(LoggedIn {
            mailbox: credentials.user.to_ascii_lowercase(),
            upstream: (),
            upstream_ok,
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(transcript) = Transcript::parse(data) else {
        return;
    };
    // Bit 7: tight limits, so that small inputs reach the byte budget and the caps.
    let tight = data[0] & 0x80 != 0;
    let limits = PreauthLimits {
        max_line: 256,
        max_literal: 512,
        max_commands: 12,
        max_bytes: 3000,
    };
    match transcript.protocol {
        Protocol::Smtp => {
            let extensions: Arc<[String]> = smtp::EXCHANGE_ONLINE_EXTENSIONS
                .iter()
                .map(|s| s.to_string())
                .collect();
            let make = |tls, auth| {
                let s = smtp::Session::new("relay.test".into(), extensions.clone(), tls, auth);
                if tight { s.with_limits(limits) } else { s }
            };
            run(&transcript, make, "220 2.0.0 Ready to start TLS\r\n");
        }
        Protocol::Imap => {
            let make = |tls, auth| {
                let s = imap::Session::new(tls, auth);
                if tight { s.with_limits(limits) } else { s }
            };
            run(&transcript, make, " OK Begin TLS negotiation now\r\n");
        }
        Protocol::Pop3 => {
            let make = |tls, auth| {
                let s = pop3::Session::new(tls, auth);
                if tight { s.with_limits(limits) } else { s }
            };
            run(&transcript, make, "+OK Begin TLS negotiation\r\n");
        }
    }
});

/// Runs one session; `make(tls, auth_allowed)` builds its state machine, `go_ahead` ends
/// the STARTTLS go-ahead reply.
fn run<S: PreAuth>(transcript: &Transcript<'_>, make: impl Fn(bool, bool) -> S, go_ahead: &str) {
    let peer: SocketAddr = if transcript.loopback {
        "127.0.0.1:40000".parse().expect("an address")
    } else {
        "192.0.2.7:40000".parse().expect("an address")
    };
    let tls = AtomicBool::new(false);
    let login = ScriptedLogin {
        transcript,
        tls: &tls,
        peer,
        calls: AtomicUsize::new(0),
        succeeded: AtomicBool::new(false),
    };
    let (client, server) = tokio::io::duplex(memory::PIPE_BYTES);
    let stream = Stream::InMemory {
        pipe: Box::new(server),
        tls: transcript.tls,
    };
    let (handshake, over_budget) = memory::block_on(async {
        let params = PreauthParams {
            tls: tls_pair::acceptor(),
            allow_plaintext_on_loopback: transcript.plaintext_on_loopback,
            deadline: tokio::time::Instant::now() + Duration::from_secs(60),
            greeted: false,
        };
        let session = make(transcript.tls, may_authenticate(&stream, peer, &params));
        let too_much = session.too_much_input().text.into_owned();
        let relay = async {
            // The handoff holds the client's stream: drop it, so the client sees the end.
            let _ = preauth(stream, peer, session, &params, &login).await;
        };
        let ((), (plain, secure, handshake)) =
            tokio::join!(relay, client_side(client, transcript, &tls, go_ahead));
        // Up to the go-ahead, whole CRLF lines; after it, only TLS records (the relay's
        // handshake alert, when what the client sent was no ClientHello): never a reply.
        let go = plain
            .windows(go_ahead.len())
            .position(|w| w == go_ahead.as_bytes())
            .map(|at| at + go_ahead.len());
        let (replies, after) = plain.split_at(go.unwrap_or(plain.len()));
        memory::reply_lines(replies);
        assert!(
            after.is_empty() || (0x14..=0x17).contains(&after[0]),
            "plaintext after the STARTTLS go-ahead: {after:?}"
        );
        memory::reply_lines(&secure);
        let last = |out: &[u8]| out.ends_with(too_much.as_bytes()) && !too_much.is_empty();
        (handshake, last(&plain) || last(&secure))
    });
    depth::report(&[
        ("starttls", handshake),
        ("login_attempt", login.calls.load(Ordering::SeqCst) > 0),
        ("login", login.succeeded.load(Ordering::SeqCst)),
        ("over_budget", over_budget),
    ]);
}

/// The client: its plaintext part, then (after a go-ahead) a TLS handshake and the rest.
/// What it read in plaintext and over TLS, and whether the handshake succeeded.
async fn client_side(
    pipe: DuplexStream,
    transcript: &Transcript<'_>,
    tls: &AtomicBool,
    go_ahead: &str,
) -> (Vec<u8>, Vec<u8>, bool) {
    let chunk = transcript.chunk;
    let (mut rd, mut wr) = tokio::io::split(pipe);
    let Some((first, rest)) = transcript
        .segments
        .split_first()
        .filter(|(_, r)| !r.is_empty())
    else {
        let read = read_to_end(&mut rd);
        let ((), plain) = tokio::join!(
            memory::write_in_pieces(&mut wr, transcript.segments[0], chunk),
            read
        );
        return (plain, Vec::new(), false);
    };
    let mut plain = Vec::new();
    let write = async {
        for piece in first.chunks(chunk) {
            if wr.write_all(piece).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    let ((), ()) = tokio::join!(write, read_until_idle(&mut rd, &mut plain));
    read_until_idle(&mut rd, &mut plain).await;
    if !plain.ends_with(go_ahead.as_bytes()) {
        let _ = wr.shutdown().await;
        plain.extend(read_to_end(&mut rd).await);
        return (plain, Vec::new(), false);
    }
    tls.store(true, Ordering::SeqCst);
    let pipe = rd.unsplit(wr);
    let Ok(secure) = tls_pair::connector()
        .connect(tls_pair::server_name(), pipe)
        .await
    else {
        return (plain, Vec::new(), false);
    };
    let (mut rd, mut wr) = tokio::io::split(secure);
    let rest = rest.join(HANDSHAKE);
    let ((), secure) = tokio::join!(
        memory::write_in_pieces(&mut wr, &rest, chunk),
        read_to_end(&mut rd)
    );
    (plain, secure, true)
}

async fn read_to_end<R: tokio::io::AsyncRead + Unpin>(rd: &mut R) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = rd.read_to_end(&mut out).await;
    out
}

/// Reads what the relay wrote until it waits (the paused clock moves only then).
async fn read_until_idle(rd: &mut ReadHalf<DuplexStream>, out: &mut Vec<u8>) {
    let mut buf = [0; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), rd.read(&mut buf)).await {
        if n == 0 {
            return;
        }
        out.extend_from_slice(&buf[..n]);
    }
}
