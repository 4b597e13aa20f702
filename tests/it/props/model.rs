//! The relay's pre-auth driver without sockets, for the property tests (`tests/it/props.rs`)
//! and the fuzz targets (`fuzz/`, which include this file by path): client bytes go through
//! the real [`LineReader`] over an in-memory reader that hands them out in chunks of a given
//! size, and the session's actions are recorded as [`Event`]s. It plays
//! `protocol::driver::preauth` step for step: literals are read with `read_exact`, a
//! STARTTLS drops what the client sent before the handshake, a login is answered by a
//! scripted outcome, and a closing reply ends the session.
//!
//! Only the crate's public API and std: the fuzz crate has neither proptest nor the test
//! support code.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use m365_relay::codec::{Line, LineReader};
use m365_relay::error::Error;
use m365_relay::oauth::{IdpError, TokenError};
use m365_relay::protocol::{Action, PreAuth, Reply};
use tokio::io::{AsyncRead, ReadBuf};

/// What the session did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Reply {
        text: String,
        close: bool,
    },
    StartTls(String),
    Login {
        user: String,
        password: String,
    },
    Literal {
        len: usize,
        ack: Option<String>,
    },
    Continue,
    /// The client's input ended (an unfinished line or literal is dropped).
    Eof,
}

/// The client's input: the bytes sent before a STARTTLS handshake, then those sent after
/// it (one segment per handshake). What is left of a segment when the session starts TLS
/// is dropped, as the driver drops what it buffered.
pub struct Input<'a> {
    pub segments: &'a [Vec<u8>],
    /// Largest read the in-memory stream returns (at least 1).
    pub chunk: usize,
    /// Whether a client may log in once TLS is on.
    pub auth_after_tls: bool,
}

/// Runs `session` over `input`; `login(n)` answers the `n`-th login (0-based) with the
/// upstream's OK text or the error that failed it. Panics where the relay would misbehave:
/// a reply line that is not CRLF-terminated or carries a bare CR or LF, a line left
/// unanswered, a literal over the pre-login cap, or an action after the session ended.
pub fn run<S: PreAuth>(
    mut session: S,
    input: &Input<'_>,
    mut login: impl FnMut(usize) -> Result<String, Error>,
) -> Vec<Event> {
    let mut events = Vec::new();
    check_reply(&session.greeting());
    let mut segments = input.segments.iter();
    let first = segments.next().cloned().unwrap_or_default();
    let mut reader = LineReader::new(Chunked::new(first, input.chunk), S::MAX_LINE);
    let mut logins = 0;
    let mut literal: Option<Vec<u8>> = None;
    loop {
        let action = match literal.take() {
            Some(bytes) => session.on_literal(bytes),
            None => {
                let action = match ready(reader.read_line()) {
                    Ok(Some(Line::Complete(line))) => session.on_line(&line),
                    Ok(Some(Line::TooLong)) => session.on_too_long(),
                    Ok(None) | Err(_) => {
                        events.push(Event::Eof);
                        return events;
                    }
                };
                assert!(
                    !matches!(action, Action::Continue),
                    "a client line went unanswered"
                );
                action
            }
        };
        match action {
            Action::Continue => events.push(Event::Continue),
            Action::Reply(reply) => {
                if record_reply(&mut events, &reply) {
                    return events;
                }
            }
            Action::Literal { len, ack } => {
                assert!(
                    len <= m365_relay::protocol::imap::command::MAX_LITERAL,
                    "a literal of {len} bytes accepted before login"
                );
                if let Some(ack) = &ack {
                    check_reply(ack);
                }
                events.push(Event::Literal {
                    len,
                    ack: ack.map(|a| a.text.into_owned()),
                });
                match ready(reader.read_exact(len)) {
                    Ok(bytes) => literal = Some(bytes),
                    Err(_) => {
                        events.push(Event::Eof);
                        return events;
                    }
                }
            }
            Action::StartTls(go_ahead) => {
                check_reply(&go_ahead);
                events.push(Event::StartTls(go_ahead.text.into_owned()));
                let next = segments.next().cloned().unwrap_or_default();
                reader = LineReader::new(Chunked::new(next, input.chunk), S::MAX_LINE);
                session.tls_started(input.auth_after_tls);
            }
            Action::Login(credentials) => {
                events.push(Event::Login {
                    user: credentials.user.clone(),
                    password: credentials.password.expose().to_owned(),
                });
                let outcome = login(logins);
                logins += 1;
                match outcome {
                    Ok(upstream_ok) => {
                        let reply = session.login_succeeded(&upstream_ok);
                        check_reply(&reply);
                        events.push(Event::Reply {
                            text: reply.text.into_owned(),
                            close: false,
                        });
                        // The handoff: from here on the relay only pipes bytes.
                        return events;
                    }
                    Err(error) => {
                        let reply = session.login_failed(&error);
                        if record_reply(&mut events, &reply) {
                            return events;
                        }
                    }
                }
            }
        }
    }
}

/// A reply is whole CRLF-terminated lines, with no CR or LF anywhere else: nothing a
/// client sent can start a line of its own in what the relay answers.
/// Checks `reply` and records it; whether it closes the connection.
fn record_reply(events: &mut Vec<Event>, reply: &Reply) -> bool {
    check_reply(reply);
    events.push(Event::Reply {
        text: reply.text.clone().into_owned(),
        close: reply.close,
    });
    reply.close
}

pub fn check_reply(reply: &Reply) {
    let text = reply.text.as_bytes();
    if text.is_empty() {
        assert!(reply.close, "an empty reply that does not close");
        return;
    }
    assert!(
        text.ends_with(b"\r\n"),
        "reply not CRLF-terminated: {text:?}"
    );
    for (i, &b) in text.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(text.get(i + 1), Some(&b'\n'), "bare CR in {text:?}"),
            b'\n' => assert_eq!(text[i - 1], b'\r', "bare LF in {text:?}"),
            _ => {}
        }
    }
}

/// Every kind of login failure the relay can meet, picked by `n`.
pub fn login_error(n: u8) -> Error {
    let unavailable = || IdpError::Unavailable {
        reason: "HTTP 503".into(),
        retry_after: None,
    };
    let token = |source| Error::Token {
        mailbox: "alice@contoso.com".into(),
        source,
    };
    let server = "outlook.office365.com:993".to_owned();
    match n % 14 {
        0 => Error::BadCredentials {
            mailbox: "alice@contoso.com".into(),
        },
        1 => token(TokenError::Idp(unavailable())),
        2 => token(TokenError::Idp(IdpError::Rejected {
            status: 400,
            error: "invalid_grant".into(),
            description: "AADSTS700082: expired".into(),
            codes: vec![700082],
        })),
        3 => token(TokenError::Idp(IdpError::Malformed("not JSON".into()))),
        4 => token(TokenError::NotAuthorized),
        5 => token(TokenError::Store("unreadable".into())),
        6 => Error::UpstreamUnreachable {
            server,
            source: std::io::ErrorKind::ConnectionRefused.into(),
        },
        7 => Error::UpstreamTimeout {
            server,
            during: "connecting and logging in",
        },
        8 => Error::UpstreamTls {
            server,
            detail: "invalid peer certificate: UnknownIssuer".into(),
        },
        9 => Error::UpstreamRejected {
            server,
            mailbox: "alice@contoso.com".into(),
            reply: "535 5.7.3 Authentication unsuccessful".into(),
        },
        10 => Error::UpstreamProtocol {
            server,
            detail: "closed the connection".into(),
        },
        11 => Error::ShuttingDown,
        12 => Error::PreauthTimeout,
        _ => token(TokenError::DelegateMissing("bob@contoso.com".into())),
    }
}

/// Polls `f` once: in-memory reads never wait.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("an in-memory read waited"),
    }
}

/// Hands out `data` at most `chunk` bytes per read.
pub struct Chunked {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
}

impl Chunked {
    pub fn new(data: Vec<u8>, chunk: usize) -> Self {
        Self {
            data,
            pos: 0,
            chunk: chunk.max(1),
        }
    }
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self
            .chunk
            .min(buf.remaining())
            .min(self.data.len() - self.pos);
        let pos = self.pos;
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}
