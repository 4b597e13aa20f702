//! The core the fake Exchange Online mail servers (IMAP, POP3, SMTP) share: binding 127.0.0.1:0,
//! the accept loop, the recording every test reads (connections, login attempts, protocol
//! errors), the scripted behaviours they have in common (delegates, app access, dropping the
//! connection after login), the XOAUTH2 check against the [`FakeEntra`] that issued the token,
//! and the [`TaskWatch`] that turns a panic inside a fake into a failed test.
//!
//! Each protocol keeps its own session code and its own state `S` (kept behind the same lock as
//! the common records, reachable through them by `Deref`), plus optional signals `E` outside
//! the lock (IMAP's change and BYE notifications).

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::certs::TestPki;
use super::fake_entra::{AccessTokenChecker, FakeEntra};
use super::tasks::TaskWatch;

/// One login attempt: an AUTH/AUTHENTICATE command, a LOGIN, or a USER/PASS pair.
#[derive(Clone, Debug)]
pub struct AuthAttempt {
    /// `XOAUTH2`, `PLAIN` or `LOGIN` (upper-cased), or `USER` for POP3's USER/PASS.
    pub mechanism: String,
    /// The `user=` value (the authentication identity for PLAIN and LOGIN; empty when the
    /// payload could not be parsed).
    pub user: String,
    pub token: String,
    pub accepted: bool,
    /// The base64-decoded payload (empty when it was not valid standard base64, and for a
    /// basic-auth attempt that carries none).
    pub raw_decoded: Vec<u8>,
    /// Whether the payload came on the command line (SASL initial response) rather than after
    /// the server's continuation.
    pub initial_response: bool,
    /// Why the fake refused it.
    pub rejection: Option<String>,
}

impl AuthAttempt {
    /// An attempt with `mechanism` and nothing else known yet.
    pub(super) fn new(mechanism: &str) -> Self {
        Self {
            mechanism: mechanism.to_string(),
            user: String::new(),
            token: String::new(),
            accepted: false,
            raw_decoded: Vec::new(),
            initial_response: false,
            rejection: None,
        }
    }

    /// A basic-auth attempt (a password instead of a token), refused: Microsoft has it off.
    pub(super) fn basic_refused(mechanism: &str, user: String, raw_decoded: Vec<u8>) -> Self {
        Self {
            user,
            raw_decoded,
            rejection: Some("basic authentication is disabled".to_string()),
            ..Self::new(mechanism)
        }
    }
}

/// What the fake records for every protocol, and the protocol's own state `S` beside it.
#[derive(Default)]
pub struct Recorded<S> {
    /// Close the connection right after a successful login.
    pub(super) drop_after_auth: bool,
    /// (mailbox, upn), both lower-cased.
    pub(super) delegates: HashSet<(String, String)>,
    pub(super) connections: usize,
    pub(super) auth_attempts: Vec<AuthAttempt>,
    pub(super) protocol_errors: Vec<String>,
    protocol: S,
}

impl<S> Deref for Recorded<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.protocol
    }
}

impl<S> DerefMut for Recorded<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.protocol
    }
}

/// State shared by a fake and its connection tasks.
pub struct Core<S, E = ()> {
    /// `imap`, `pop3` or `smtp`, for messages.
    name: &'static str,
    pub(super) tokens: AccessTokenChecker,
    pub(super) acceptor: TlsAcceptor,
    /// Notifications outside the lock (IMAP's change and BYE signals).
    pub(super) signals: E,
    state: Mutex<Recorded<S>>,
}

impl<S, E> Core<S, E> {
    pub(super) fn lock(&self) -> MutexGuard<'_, Recorded<S>> {
        // Poisoning means a connection task panicked; the TaskWatch reports that panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn protocol_error(&self, connection: usize, message: String) {
        eprintln!("fake {}: connection {connection}: {message}", self.name);
        self.lock()
            .protocol_errors
            .push(format!("connection {connection}: {message}"));
    }

    /// The TLS handshake of an implicit-TLS connection; a failure is a protocol error.
    pub(super) async fn accept_tls(
        &self,
        connection: usize,
        stream: TcpStream,
    ) -> Option<TlsStream<TcpStream>> {
        match self.acceptor.accept(stream).await {
            Ok(tls) => Some(tls),
            Err(err) => {
                self.protocol_error(connection, format!("TLS handshake failed: {err}"));
                None
            }
        }
    }

    /// Decodes and checks an XOAUTH2 payload exactly as PROTOCOL.md A1 describes it; the token
    /// must carry `scope`.
    pub(super) fn check_xoauth2(&self, payload: &str, scope: &str) -> AuthAttempt {
        let mut attempt = AuthAttempt::new("XOAUTH2");
        let verdict = match STANDARD.decode(payload) {
            Err(err) => Err(format!("not standard base64 with padding: {err}")),
            Ok(raw) => {
                let parsed = parse_xoauth2(&raw);
                attempt.raw_decoded = raw;
                parsed.and_then(|(user, token)| {
                    let verdict = self.authorize(&user, &token, scope);
                    attempt.user = user;
                    attempt.token = token;
                    verdict
                })
            }
        };
        match verdict {
            Ok(()) => attempt.accepted = true,
            Err(reason) => attempt.rejection = Some(reason),
        }
        attempt
    }

    /// Whether `token` is live, has `scope`, and may open `mailbox` (its own, or as a delegate).
    fn authorize(&self, mailbox: &str, token: &str, scope: &str) -> Result<(), String> {
        let info = self.tokens.info(token).ok_or("unknown access token")?;
        if info.expired || info.revoked {
            let why = if info.revoked { "revoked" } else { "expired" };
            return Err(format!("access token is {why}"));
        }
        if !info.has_scope(scope) {
            return Err(format!(
                "access token lacks {scope} (scopes: {:?})",
                info.scopes
            ));
        }
        let delegated = self
            .lock()
            .delegates
            .contains(&(mailbox.to_ascii_lowercase(), info.upn.to_ascii_lowercase()));
        if info.upn.eq_ignore_ascii_case(mailbox) || delegated {
            Ok(())
        } else {
            Err(format!(
                "token of {} may not open mailbox {mailbox}",
                info.upn
            ))
        }
    }
}

/// A fake server: its address, its shared state and its tasks. Dropping it stops it.
pub struct FakeServer<S, E = ()> {
    addr: SocketAddr,
    pub(super) shared: Arc<Core<S, E>>,
    watch: Arc<TaskWatch>,
}

impl<S, E> FakeServer<S, E>
where
    S: Default + Send + 'static,
    E: Send + Sync + 'static,
{
    /// Binds 127.0.0.1:0 and hands each accepted connection (numbered from 1) to `serve`; TLS
    /// presents a leaf from `pki` for 127.0.0.1 and localhost. An error `serve` returns is a
    /// protocol error (the connection ended with it).
    pub(super) async fn bind<F, Fut>(
        name: &'static str,
        pki: &TestPki,
        entra: FakeEntra,
        signals: E,
        serve: F,
    ) -> Self
    where
        F: Fn(Arc<Core<S, E>>, usize, TcpStream, SocketAddr) -> Fut + Send + 'static,
        Fut: Future<Output = io::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|err| panic!("bind fake {name}: {err}"));
        let addr = listener.local_addr().expect("fake server address");
        let shared = Arc::new(Core {
            name,
            tokens: entra.checker(),
            acceptor: TlsAcceptor::from(pki.server_config(&["127.0.0.1", "localhost"])),
            signals,
            state: Mutex::new(Recorded::default()),
        });
        let watch = Arc::new(TaskWatch::new(name));
        watch.spawn(accept_loop(listener, shared.clone(), watch.clone(), serve));
        FakeServer {
            addr,
            shared,
            watch,
        }
    }
}

impl<S, E> FakeServer<S, E> {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Close the connection right after the successful login reply.
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

    /// Number of TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.lock().connections
    }

    /// Client misbehaviour the fake noticed: failed TLS handshakes, over-long lines,
    /// connections lost mid-command, and each protocol's own (see its fake).
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
            "fake {} saw protocol errors: {errors:#?}",
            self.shared.name
        );
    }

    /// Panics only if the fake itself failed. Dropping the fake does the same check.
    pub fn check_no_panics(&self) {
        self.watch.check();
    }
}

impl<S, E> Drop for FakeServer<S, E> {
    fn drop(&mut self) {
        self.watch.shutdown();
    }
}

async fn accept_loop<S, E, F, Fut>(
    listener: TcpListener,
    shared: Arc<Core<S, E>>,
    watch: Arc<TaskWatch>,
    serve: F,
) where
    S: Send + 'static,
    E: Send + Sync + 'static,
    F: Fn(Arc<Core<S, E>>, usize, TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = io::Result<()>> + Send + 'static,
{
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
        let session = serve(shared.clone(), connection, stream, peer);
        let shared = shared.clone();
        watch.spawn(async move {
            if let Err(err) = session.await {
                shared.protocol_error(connection, format!("connection ended with error: {err}"));
            }
        });
    }
}

/// Splits `user=<addr>\x01auth=Bearer <token>\x01\x01` and refuses any deviation.
pub(super) fn parse_xoauth2(raw: &[u8]) -> Result<(String, String), String> {
    let body = raw
        .strip_suffix(b"\x01\x01")
        .ok_or("payload must end with two 0x01 bytes")?;
    let rest = body
        .strip_prefix(b"user=")
        .ok_or("payload must start with user=")?;
    let split = rest
        .iter()
        .position(|&b| b == 0x01)
        .ok_or("missing 0x01 after the user")?;
    let (user, auth) = (&rest[..split], &rest[split + 1..]);
    let token = auth
        .strip_prefix(b"auth=Bearer ")
        .ok_or("expected 'auth=Bearer ' (one space) after the first 0x01")?;
    let clean = |field: &[u8]| {
        !field.is_empty() && field.iter().all(|&b| b.is_ascii_graphic() || b >= 0x80)
    };
    if !clean(user) {
        return Err("user is empty or has spaces or control bytes".to_string());
    }
    if !clean(token) {
        return Err("token is empty or has spaces or control bytes".to_string());
    }
    let text = |field: &[u8]| String::from_utf8_lossy(field).into_owned();
    Ok((text(user), text(token)))
}
