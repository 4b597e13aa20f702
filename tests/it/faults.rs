//! Faults of the identity platform and of the upstream mail server, through real sockets
//! against the in-process relay. Whatever fails, a client gets the temporary reply of its
//! protocol (SMTP `454`/`421`, IMAP `NO [UNAVAILABLE]`, POP3 `-ERR [SYS/TEMP]`) or a closed
//! connection, promptly, and never a false success:
//!
//! - Entra ID: 5xx, `temporarily_unavailable` with `Retry-After`, a response held past the
//!   token timeout, a connection that is never answered, reset or closed, malformed
//!   answers; nothing is stored from a failed refresh. A hang for one mailbox does not
//!   delay another, and a valid cached token never waits for the token endpoint.
//! - Upstream: refused, never completed and silent connections, a certificate from an
//!   unknown CA or for another name, a server that does not offer STARTTLS, a server that
//!   drops the connection during the login, right after it, or in the middle of DATA.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use m365_relay::oauth::health::State;
use m365_relay::state::files::read_status;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::harness::{World, path_str, python};
use crate::support::certs::TestPki;
use crate::support::line_client::LineClient;

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "correct horse battery staple";
const BOB: &str = "bob@contoso.com";
const BOB_PW: &str = "bobs own password";

// === logins as a client makes them ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Smtp,
    Imap,
    Pop3,
}

const PROTOCOLS: [Proto; 3] = [Proto::Smtp, Proto::Imap, Proto::Pop3];

impl Proto {
    /// The start of the reply that says "temporary failure, try again later" to a login.
    fn temporary(self) -> &'static str {
        match self {
            Proto::Smtp => "454 4.7.0 ",
            Proto::Imap => "a NO [UNAVAILABLE] ",
            Proto::Pop3 => "-ERR [SYS/TEMP] ",
        }
    }

    /// The start of a successful login's reply.
    fn success(self) -> &'static str {
        match self {
            Proto::Smtp => "235 ",
            Proto::Imap => "a OK ",
            Proto::Pop3 => "+OK",
        }
    }

    fn tls_port(self, world: &World) -> u16 {
        world.port(match self {
            Proto::Smtp => "smtps",
            Proto::Imap => "imaps",
            Proto::Pop3 => "pop3s",
        })
    }
}

/// What a login got: the reply (`<closed>` if the relay closed instead), how long the
/// relay took to give it, and the connection for what follows.
struct Login {
    reply: String,
    took: Duration,
    client: LineClient,
}

/// Logs in over implicit TLS as a mail client would: SMTP AUTH PLAIN, IMAP LOGIN, POP3
/// USER/PASS.
async fn login(world: &World, proto: Proto, user: &str, password: &str) -> Login {
    let addr = SocketAddr::from(([127, 0, 0, 1], proto.tls_port(world)));
    let mut client = LineClient::connect_tls(addr, world.pki.client_config(), "127.0.0.1").await;
    let greeting = client.read_line().await.expect("greeting");
    let (command, started) = match proto {
        Proto::Smtp => {
            assert!(greeting.starts_with("220 "), "{greeting}");
            client.smtp("EHLO legacy-app").await;
            let plain = STANDARD.encode(format!("\0{user}\0{password}"));
            (format!("AUTH PLAIN {plain}"), Instant::now())
        }
        Proto::Imap => (format!("a LOGIN {user} \"{password}\""), Instant::now()),
        Proto::Pop3 => {
            client.send(&format!("USER {user}")).await;
            assert_eq!(client.read_line().await.as_deref(), Some("+OK"));
            (format!("PASS {password}"), Instant::now())
        }
    };
    client.send(&command).await;
    let reply = loop {
        match client.read_line().await {
            // IMAP: untagged lines before the tagged reply.
            Some(line) if proto == Proto::Imap && line.starts_with("* ") => {}
            Some(line) => break line,
            None => break "<closed>".to_owned(),
        }
    };
    Login {
        reply,
        took: started.elapsed(),
        client,
    }
}

/// A login that must get the temporary reply within `within`.
async fn expect_temporary(world: &World, proto: Proto, within: Duration, what: &str) -> Login {
    let login = login(world, proto, ALICE, ALICE_PW).await;
    expect_reply(&login, proto, proto.temporary(), within, what);
    login
}

/// A login that must succeed within `within`.
async fn expect_success(world: &World, proto: Proto, user: &str, pw: &str, within: Duration) {
    let login = login(world, proto, user, pw).await;
    expect_reply(&login, proto, proto.success(), within, user);
}

/// Asserts that `login`'s reply starts with `want` and came within `within`.
fn expect_reply(login: &Login, proto: Proto, want: &str, within: Duration, what: &str) {
    assert!(
        login.reply.starts_with(want),
        "{what}, {proto:?}: {}",
        login.reply
    );
    assert!(
        login.took < within,
        "{what}, {proto:?}: the reply took {:?}",
        login.took
    );
}

// === the world's config ===

/// Replaces every `from` with `to` in the world's config file.
fn edit_config(world: &World, from: &str, to: &str) {
    let text = std::fs::read_to_string(&world.config_path).expect("read config");
    assert!(text.contains(from), "`{from}` not in the config:\n{text}");
    std::fs::write(&world.config_path, text.replace(from, to)).expect("write config");
}

/// Sets `[limits] key = secs` (the key must be in the config already).
fn set_limit(world: &World, key: &str, secs: u64) {
    let text = std::fs::read_to_string(&world.config_path).expect("read config");
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key} =")))
        .unwrap_or_else(|| panic!("no `{key}` in the config"))
        .to_owned();
    edit_config(world, &line, &format!("{key} = {secs}"));
}

/// Points the relay's `proto` upstream at `addr` (the relay reads it at its next start
/// or reload).
fn set_upstream(world: &World, proto: Proto, addr: SocketAddr) {
    let text = std::fs::read_to_string(&world.config_path).expect("read config");
    let section = match proto {
        Proto::Smtp => "[smtp]",
        Proto::Imap => "[imap]",
        Proto::Pop3 => "[pop3]",
    };
    let mut in_section = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with('[') {
                in_section = line == section;
            }
            if in_section && line.starts_with("upstream =") {
                format!("upstream = \"{addr}\"")
            } else {
                line.to_owned()
            }
        })
        .collect();
    std::fs::write(&world.config_path, lines.join("\n") + "\n").expect("write config");
}

fn token_file(world: &World, mailbox: &str) -> PathBuf {
    world
        .state_dir()
        .join("tokens")
        .join(format!("{mailbox}.json"))
}

/// The names in `state/tokens`.
fn token_dir_listing(world: &World) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(world.state_dir().join("tokens"))
        .expect("tokens folder")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A task that is stopped when this is dropped.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// === a fault injector in front of the fake Entra ===

/// What the proxy in front of the fake Entra does with the requests that follow.
#[derive(Clone, Debug)]
enum Fault {
    /// Passes the request on to the fake Entra (one request per connection).
    None,
    /// Answers itself with this status, extra header lines and JSON body.
    Answer {
        status: u16,
        headers: &'static str,
        body: &'static str,
    },
    /// Takes the request and never answers.
    Hang,
    /// Resets the connection (RST) once the request is in.
    Reset,
    /// Closes the connection once the request is in, without a word.
    Close,
}

/// An HTTP proxy on 127.0.0.1 that the relay takes for Entra ID, and that fails as told.
struct EntraProxy {
    addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    _task: Task,
}

impl EntraProxy {
    async fn start(entra: SocketAddr) -> EntraProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let fault = Arc::new(Mutex::new(Fault::None));
        let shared = fault.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let fault = shared.clone();
                tokio::spawn(async move { proxy_connection(stream, entra, fault).await });
            }
        });
        EntraProxy {
            addr,
            fault,
            _task: Task(task),
        }
    }

    fn authority(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner) = fault;
    }
}

async fn proxy_connection(mut client: TcpStream, entra: SocketAddr, fault: Arc<Mutex<Fault>>) {
    let Some(request) = read_http_request(&mut client).await else {
        return;
    };
    let fault = fault.lock().unwrap_or_else(PoisonError::into_inner).clone();
    match fault {
        Fault::None => {
            let Ok(mut upstream) = TcpStream::connect(entra).await else {
                return;
            };
            let _ = upstream.write_all(&one_shot(&request)).await;
            let mut response = Vec::new();
            let _ = upstream.read_to_end(&mut response).await;
            let _ = client.write_all(&response).await;
        }
        Fault::Answer {
            status,
            headers,
            body,
        } => {
            let response = format!(
                "HTTP/1.1 {status} Fault\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
                body.len()
            );
            let _ = client.write_all(response.as_bytes()).await;
        }
        Fault::Hang => std::future::pending::<()>().await,
        Fault::Reset => {
            let _ = client.set_zero_linger();
        }
        Fault::Close => {}
    }
}

/// One HTTP/1.1 request: the head and a body of `content-length` bytes.
async fn read_http_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Some(buf);
            }
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The request with `connection: close`, so the fake answers it and closes.
fn one_shot(request: &[u8]) -> Vec<u8> {
    let end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole request");
    let head = String::from_utf8_lossy(&request[..end]);
    let mut lines: Vec<&str> = head
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("connection: close");
    let mut out = lines.join("\r\n").into_bytes();
    out.extend_from_slice(&request[end..]);
    out
}

// === identity-platform faults ===

/// A world whose relay reaches Entra through an [`EntraProxy`], with a one-second token
/// timeout, and Alice registered.
async fn world_behind_proxy() -> (World, EntraProxy) {
    let world = World::new().await;
    let entra_addr: SocketAddr = world
        .entra
        .authority()
        .trim_start_matches("http://")
        .parse()
        .expect("fake Entra address");
    let proxy = EntraProxy::start(entra_addr).await;
    edit_config(&world, &world.entra.authority(), &proxy.authority());
    set_limit(&world, "token_timeout_secs", 1);
    world.add_mailbox(ALICE, ALICE_PW);
    (world, proxy)
}

#[tokio::test]
async fn token_endpoint_faults_get_the_temporary_reply_at_once_and_store_nothing() {
    let (mut world, proxy) = world_behind_proxy().await;
    let stored = std::fs::read(token_file(&world, ALICE)).expect("token file");
    let json = |status, body| Fault::Answer {
        status,
        headers: "",
        body,
    };
    let faults = [
        ("HTTP 500", json(500, "{}")),
        (
            "HTTP 503 with Retry-After",
            Fault::Answer {
                status: 503,
                headers: "retry-after: 1\r\n",
                body: r#"{"error":"temporarily_unavailable","error_description":"AADSTS90033: A transient error has occurred.","error_codes":[90033]}"#,
            },
        ),
        (
            "HTTP 400 temporarily_unavailable with Retry-After",
            Fault::Answer {
                status: 400,
                headers: "retry-after: 2\r\n",
                body: r#"{"error":"temporarily_unavailable","error_description":"AADSTS50196: loop detected","error_codes":[50196]}"#,
            },
        ),
        ("HTTP 429", json(429, r#"{"error":"throttled"}"#)),
        (
            "truncated JSON",
            json(200, r#"{"token_type":"Bearer","access_tok"#),
        ),
        (
            "JSON without a token",
            json(200, r#"{"token_type":"Bearer"}"#),
        ),
        ("not JSON", json(200, "<html>Sign in</html>")),
        (
            "a rotated refresh token that cannot be stored",
            json(
                200,
                r#"{"token_type":"Bearer","expires_in":3599,"access_token":"eyJ0eXAiOiJKV1QifQ","refresh_token":"two words"}"#,
            ),
        ),
        ("a request never answered", Fault::Hang),
        ("a connection reset", Fault::Reset),
        ("a connection closed", Fault::Close),
        // Last: the fake rotates the refresh token, but the answer comes too late.
        ("an answer held past the token timeout", Fault::None),
    ];
    // Entra is failing from the start, so the background refresher fails too.
    proxy.set(faults[0].1.clone());
    world.start().await;
    // The token timeout (1 s) and a margin: never Retry-After, never a retry loop.
    let promptly = Duration::from_secs(3);
    for (what, fault) in faults {
        if what.starts_with("an answer held") {
            world.entra.set_delay(Duration::from_secs(10));
        }
        // Entra's pause: logins meanwhile get its answer without asking again (so the
        // next fault would not be reached before it is over).
        let pause = match &fault {
            Fault::Answer { headers, .. } => headers
                .strip_prefix("retry-after: ")
                .and_then(|v| v.trim().parse().ok())
                .map(Duration::from_secs),
            _ => None,
        };
        proxy.set(fault);
        for proto in PROTOCOLS {
            expect_temporary(&world, proto, promptly, what).await;
        }
        if let Some(pause) = pause {
            tokio::time::sleep(pause + Duration::from_millis(200)).await;
        }
    }
    assert_eq!(
        std::fs::read(token_file(&world, ALICE)).expect("token file"),
        stored,
        "a failed refresh stores nothing"
    );
    assert_eq!(token_dir_listing(&world), [format!("{ALICE}.json")]);
    let status = read_status(&world.state_dir(), ALICE).expect("status file");
    assert_eq!(status.state, State::Failing, "temporary, not needs-reauth");

    // Entra is back: the stored refresh token still works.
    world.entra.set_delay(Duration::ZERO);
    proxy.set(Fault::None);
    for proto in PROTOCOLS {
        expect_success(&world, proto, ALICE, ALICE_PW, promptly).await;
    }
    assert_ne!(std::fs::read(token_file(&world, ALICE)).unwrap(), stored);
    assert_eq!(
        read_status(&world.state_dir(), ALICE).unwrap().state,
        State::Ok
    );
    world.stop().await;
    world.entra.check();
}

#[tokio::test]
async fn a_hung_refresh_for_one_mailbox_never_delays_another() {
    let mut world = World::new().await;
    set_limit(&world, "token_timeout_secs", 3);
    world.add_mailbox(ALICE, ALICE_PW);
    world.add_mailbox(BOB, BOB_PW);
    // Entra hangs on Alice's refresh tokens only.
    world.entra.set_delay_for(ALICE, Duration::from_secs(30));
    world.start().await;

    let alice = {
        let world = &world;
        async move {
            let login = login(world, Proto::Smtp, ALICE, ALICE_PW).await;
            (login.reply, login.took)
        }
    };
    let bob = async {
        // Alice's refresh is in flight (the refresher's, or her login's) meanwhile.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for proto in PROTOCOLS {
            expect_success(&world, proto, BOB, BOB_PW, Duration::from_secs(2)).await;
        }
    };
    let ((reply, took), ()) = tokio::join!(alice, bob);
    assert!(reply.starts_with("454 4.7.0 "), "{reply}");
    assert!(
        took < Duration::from_secs(5),
        "Alice waits for her token request's timeout (3 s), no longer: {took:?}"
    );
    world.stop().await;
    world.check_fakes();
}

#[tokio::test]
async fn a_valid_cached_token_never_waits_for_the_token_endpoint() {
    let mut world = World::new().await;
    set_limit(&world, "token_timeout_secs", 4);
    // Tokens of 20 s: the refresher refreshes them at half their life.
    world.entra.set_expires_in(20);
    world.add_mailbox(ALICE, ALICE_PW);
    world.start().await;
    expect_success(&world, Proto::Smtp, ALICE, ALICE_PW, Duration::from_secs(3)).await;
    let obtained = world.entra.requests().last().expect("a refresh").at;

    // Entra hangs from now on.
    world.entra.set_delay(Duration::from_secs(60));
    // Waiting for the token endpoint would take its timeout (4 s).
    let fast = Duration::from_secs(2);
    let requests = world.entra.token_requests();
    for proto in PROTOCOLS {
        expect_success(&world, proto, ALICE, ALICE_PW, fast).await;
    }
    assert_eq!(world.entra.token_requests(), requests, "fresh: no request");

    // The refresher's refresh at half-life hangs; the token is past half its life.
    let deadline = Instant::now() + Duration::from_secs(15);
    while world.entra.token_requests() == requests {
        assert!(Instant::now() < deadline, "the refresher did not refresh");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(
        (obtained + Duration::from_millis(10_500)).saturating_duration_since(Instant::now()),
    )
    .await;
    for proto in PROTOCOLS {
        expect_success(&world, proto, ALICE, ALICE_PW, fast).await;
    }

    // The refresh timed out: the token still has a few seconds, and serves at once.
    let state_dir = world.state_dir();
    let deadline = Instant::now() + Duration::from_secs(5);
    while read_status(&state_dir, ALICE).is_none_or(|s| s.state != State::Failing) {
        assert!(Instant::now() < deadline, "the refresh did not fail");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        obtained.elapsed() < Duration::from_secs(16),
        "too late to test: the token expires at 20 s"
    );
    for proto in PROTOCOLS {
        expect_success(&world, proto, ALICE, ALICE_PW, fast).await;
    }
    world.stop().await;
}

// === upstream faults ===

/// A world with Alice and a one-second upstream timeout, started.
async fn world_for_upstream_faults() -> World {
    let mut world = World::new().await;
    set_limit(&world, "upstream_timeout_secs", 1);
    world.add_mailbox(ALICE, ALICE_PW);
    world.imap.set_primary_mailbox(ALICE);
    world.start().await;
    world
}

/// Points every upstream at `addr` and reloads.
async fn all_upstreams_at(world: &World, addrs: [SocketAddr; 3]) {
    for (proto, addr) in PROTOCOLS.into_iter().zip(addrs) {
        set_upstream(world, proto, addr);
    }
    world.reload().await.expect("reload");
}

/// The reply an upstream failure gets: SMTP `421 4.4.x` and a close, IMAP
/// `NO [UNAVAILABLE]`, POP3 `-ERR [SYS/TEMP]`.
async fn expect_upstream_failure(world: &World, smtp_code: &str, what: &str) {
    let within = Duration::from_secs(3);
    for proto in PROTOCOLS {
        let mut login = login(world, proto, ALICE, ALICE_PW).await;
        let expected = match proto {
            Proto::Smtp => smtp_code,
            other => other.temporary(),
        };
        assert!(
            login.reply.starts_with(expected),
            "{what}, {proto:?}: {}",
            login.reply
        );
        assert!(login.took < within, "{what}, {proto:?}: {:?}", login.took);
        if proto == Proto::Smtp {
            login.client.expect_closed().await;
        }
    }
}

/// An address where nothing listens.
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

/// A listener that accepts connections and never says a word.
async fn silent_listener() -> (SocketAddr, Task) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, Task(task))
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so a connect
/// never completes (a blackhole on loopback). The connections that filled the queue come
/// with it, to keep it full.
async fn blackhole() -> (SocketAddr, TcpListener, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(([127, 0, 0, 1], 0).into()).expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("address");
    let mut queued = Vec::new();
    while let Ok(Ok(stream)) =
        tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await
    {
        queued.push(stream);
        assert!(queued.len() < 64, "the accept queue does not fill");
    }
    (addr, listener, queued)
}

#[tokio::test]
async fn refused_and_silent_upstreams_get_the_temporary_reply_promptly() {
    let world = world_for_upstream_faults().await;
    let closed = closed_port();
    all_upstreams_at(&world, [closed; 3]).await;
    expect_upstream_failure(&world, "421 4.4.1 ", "connection refused").await;

    let silent = [
        silent_listener().await,
        silent_listener().await,
        silent_listener().await,
    ];
    all_upstreams_at(&world, silent.each_ref().map(|(addr, _)| *addr)).await;
    expect_upstream_failure(&world, "421 4.4.1 ", "a server that never speaks").await;

    let holes = [blackhole().await, blackhole().await, blackhole().await];
    all_upstreams_at(&world, holes.each_ref().map(|(addr, ..)| *addr)).await;
    expect_upstream_failure(&world, "421 4.4.1 ", "a connect that never completes").await;
    assert_eq!(world.entra.token_requests(), 1, "one token served all");
}

/// What a [`Trap`] upstream does.
#[derive(Clone)]
enum Trick {
    /// Offers TLS with this certificate (SMTP after STARTTLS, else at once).
    Certificate(Arc<rustls::ServerConfig>),
    /// SMTP without STARTTLS, offering AUTH in plaintext.
    NoStartTls,
    /// A proper server (trusted certificate) that closes the connection when the login
    /// arrives.
    DropAtLogin(Arc<rustls::ServerConfig>),
}

/// What a [`Trap`] saw.
#[derive(Default, Debug)]
struct Seen {
    connections: usize,
    handshakes: usize,
    /// Lines the relay sent in plaintext (SMTP before STARTTLS).
    plaintext: Vec<String>,
    /// Lines the relay sent inside TLS.
    encrypted: Vec<String>,
}

impl Seen {
    /// Whether the relay sent an AUTH command in plaintext.
    fn auth_in_plaintext(&self) -> bool {
        self.plaintext
            .iter()
            .any(|l| l.to_ascii_uppercase().starts_with("AUTH"))
    }
}

/// One [`Trap`] playing `trick` for each protocol, and the world's upstreams pointed at them.
async fn traps_for_all_upstreams(world: &World, trick: Trick) -> Vec<Trap> {
    let mut traps = Vec::new();
    for proto in PROTOCOLS {
        traps.push(Trap::start(proto, trick.clone()).await);
    }
    all_upstreams_at(world, [traps[0].addr, traps[1].addr, traps[2].addr]).await;
    traps
}

/// A scripted upstream server that plays one [`Trick`] on the relay.
struct Trap {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    _task: Task,
}

impl Trap {
    async fn start(proto: Proto, trick: Trick) -> Trap {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind trap");
        let addr = listener.local_addr().expect("trap address");
        let seen = Arc::new(Mutex::new(Seen::default()));
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (seen, trick) = (shared.clone(), trick.clone());
                tokio::spawn(async move { trap_connection(proto, trick, tcp, seen).await });
            }
        });
        Trap {
            addr,
            seen,
            _task: Task(task),
        }
    }

    fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

async fn trap_connection(proto: Proto, trick: Trick, tcp: TcpStream, seen: Arc<Mutex<Seen>>) {
    let record =
        |f: &dyn Fn(&mut Seen)| f(&mut seen.lock().unwrap_or_else(PoisonError::into_inner));
    record(&|s| s.connections += 1);
    let mut plain = BufReader::new(tcp);
    if proto == Proto::Smtp {
        let _ = plain.get_mut().write_all(b"220 trap.test ESMTP\r\n").await;
        loop {
            let Some(line) = read_trap_line(&mut plain).await else {
                return;
            };
            record(&|s| s.plaintext.push(line.clone()));
            let answer: &[u8] = match line.get(..4).map(str::to_ascii_uppercase).as_deref() {
                Some("EHLO") if matches!(trick, Trick::NoStartTls) => {
                    b"250-trap.test\r\n250 AUTH PLAIN LOGIN XOAUTH2\r\n"
                }
                Some("EHLO") => b"250-trap.test\r\n250 STARTTLS\r\n",
                Some("STAR") => b"220 2.0.0 Ready to start TLS\r\n",
                _ => b"535 5.7.0 No\r\n",
            };
            let _ = plain.get_mut().write_all(answer).await;
            if answer.starts_with(b"220") {
                break;
            }
        }
    }
    let config = match trick {
        Trick::Certificate(config) | Trick::DropAtLogin(config) => config,
        Trick::NoStartTls => return,
    };
    let Ok(tls) = TlsAcceptor::from(config).accept(plain.into_inner()).await else {
        return;
    };
    record(&|s| s.handshakes += 1);
    let mut tls = BufReader::new(tls);
    let greeting: &[u8] = match proto {
        Proto::Smtp => b"",
        Proto::Imap => b"* OK trap.test ready\r\n",
        Proto::Pop3 => b"+OK trap.test ready\r\n",
    };
    let _ = tls.get_mut().write_all(greeting).await;
    while let Some(line) = read_trap_line(&mut tls).await {
        record(&|s| s.encrypted.push(line.clone()));
        let upper = line.to_ascii_uppercase();
        let answer: &[u8] = if upper.starts_with("EHLO") {
            b"250-trap.test\r\n250 AUTH XOAUTH2\r\n"
        } else if upper == "AUTH XOAUTH2" {
            b"+ \r\n"
        } else {
            // The login itself (SMTP AUTH, IMAP AUTHENTICATE, the POP3 response): hang up.
            return;
        };
        let _ = tls.get_mut().write_all(answer).await;
    }
}

async fn read_trap_line<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
) -> Option<String> {
    let mut line = Vec::new();
    match io.read_until(b'\n', &mut line).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(String::from_utf8_lossy(&line).trim_end().to_owned()),
    }
}

#[tokio::test]
async fn an_upstream_certificate_that_is_not_trusted_is_refused_never_bypassed() {
    let world = world_for_upstream_faults().await;
    let stranger = TestPki::new();
    let cases = [
        (
            "a certificate from an unknown CA",
            stranger.server_config(&["127.0.0.1", "localhost"]),
        ),
        (
            "a certificate for another name",
            world.pki.server_config(&["mail.example.net"]),
        ),
    ];
    for (what, config) in cases {
        let traps = traps_for_all_upstreams(&world, Trick::Certificate(config)).await;
        expect_upstream_failure(&world, "421 4.4.2 ", what).await;
        for (proto, trap) in PROTOCOLS.into_iter().zip(&traps) {
            trap.seen(|seen| {
                assert!(seen.connections >= 1, "{what}, {proto:?}: {seen:?}");
                assert_eq!(seen.handshakes, 0, "{what}, {proto:?}: {seen:?}");
                assert!(seen.encrypted.is_empty(), "{what}, {proto:?}: {seen:?}");
                assert!(!seen.auth_in_plaintext(), "{what}, {proto:?}: {seen:?}");
            });
        }
    }

    // STARTTLS stripped: the relay never logs in in plaintext.
    let trap = Trap::start(Proto::Smtp, Trick::NoStartTls).await;
    set_upstream(&world, Proto::Smtp, trap.addr);
    world.reload().await.expect("reload");
    let mut login = login(&world, Proto::Smtp, ALICE, ALICE_PW).await;
    assert!(login.reply.starts_with("421 4.4.2 "), "{}", login.reply);
    login.client.expect_closed().await;
    trap.seen(|seen| {
        assert!(seen.connections >= 1, "{seen:?}");
        assert!(!seen.auth_in_plaintext(), "{seen:?}");
    });
}

#[tokio::test]
async fn an_upstream_that_drops_during_the_login_gets_the_temporary_reply() {
    let world = world_for_upstream_faults().await;
    let config = world.pki.server_config(&["127.0.0.1", "localhost"]);
    let traps = traps_for_all_upstreams(&world, Trick::DropAtLogin(config)).await;
    expect_upstream_failure(&world, "421 4.4.2 ", "dropped at the login").await;
    for (proto, trap) in PROTOCOLS.into_iter().zip(&traps) {
        trap.seen(|seen| {
            assert!(seen.handshakes >= 1, "{proto:?}: {seen:?}");
            let login = seen.encrypted.last().expect("the login arrived");
            assert!(
                login.contains("AUTH") || login.len() > 100,
                "{proto:?}: {seen:?}"
            );
        });
    }
}

/// Logs in with a real client, then does the first thing after login; prints what
/// happened at each step.
const AFTER_LOGIN: &str = r#"
import imaplib, poplib, smtplib, ssl, sys
proto, port, ca, user, password = sys.argv[1:]
ctx = ssl.create_default_context(cafile=ca)
port = int(port)
def step(name, f):
    try:
        print(name, "OK", f())
        return True
    except smtplib.SMTPResponseException as e:
        print(name, "REFUSED", e.smtp_code)
    except (smtplib.SMTPException, imaplib.IMAP4.abort, imaplib.IMAP4.error, poplib.error_proto, OSError, EOFError) as e:
        print(name, "FAILED", type(e).__name__)
    return False
if proto == "smtp":
    s = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=20)
    message = b"Subject: report\r\n\r\n" + b"a line of the report\r\n" * 2000
    if step("login", lambda: s.login(user, password)):
        step("send", lambda: s.sendmail(user, ["bob@example.com"], message))
elif proto == "imap":
    m = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=20)
    if step("login", lambda: m.login(user, password)[0]):
        step("select", lambda: m.select("INBOX")[0])
else:
    p = poplib.POP3_SSL("127.0.0.1", port, context=ctx, timeout=20)
    if step("login", lambda: (p.user(user), p.pass_(password))[1]):
        step("stat", lambda: p.stat())
"#;

async fn after_login(world: &World, proto: Proto) -> String {
    let (name, port) = match proto {
        Proto::Smtp => ("smtp", world.port("smtps")),
        Proto::Imap => ("imap", world.port("imaps")),
        Proto::Pop3 => ("pop3", world.port("pop3s")),
    };
    let args = [
        name.to_owned(),
        port.to_string(),
        path_str(&world.ca_path),
        ALICE.into(),
        ALICE_PW.into(),
    ];
    python(AFTER_LOGIN, &args).await
}

#[tokio::test]
async fn an_upstream_that_drops_right_after_the_login_gives_no_false_success() {
    let world = world_for_upstream_faults().await;
    world.imap.deliver("INBOX", b"Subject: hi\r\n\r\nhello\r\n");
    world.smtp.set_drop_after_auth(true);
    world.imap.set_drop_after_auth(true);
    world.pop3.set_drop_after_auth(true);
    for (proto, next) in [
        (Proto::Smtp, "send"),
        (Proto::Imap, "select"),
        (Proto::Pop3, "stat"),
    ] {
        let out = after_login(&world, proto).await;
        // Upstream did accept the login; what comes after must fail, never succeed.
        assert!(!out.contains(&format!("{next} OK")), "{proto:?}:\n{out}");
        let login_ok = out.starts_with("login OK");
        let login_temp = out.starts_with("login REFUSED 4") || out.starts_with("login FAILED");
        assert!(login_ok || login_temp, "{proto:?}:\n{out}");
        if login_ok {
            let failed = out.contains(&format!("{next} FAILED"))
                || out.contains(&format!("{next} REFUSED 4"));
            assert!(failed, "{proto:?}:\n{out}");
        }
    }
    // An IMAP OK without capabilities made the relay ask for them, and that failed: the
    // client got `NO [UNAVAILABLE]`. With them in the OK, the login completes before the
    // drop: the client's OK is true, and its SELECT fails.
    world.imap.set_capability_in_ok(true);
    let out = after_login(&world, Proto::Imap).await;
    assert!(
        out.starts_with("login OK") && out.contains("select FAILED"),
        "{out}"
    );
    assert!(world.smtp.messages().is_empty());
    world.smtp.check_no_panics();
    world.imap.check_no_panics();
    world.pop3.check_no_panics();
}

#[tokio::test]
async fn an_upstream_that_drops_mid_data_never_gets_the_client_a_250() {
    let world = world_for_upstream_faults().await;
    world.smtp.set_drop_in_data(true);
    let out = after_login(&world, Proto::Smtp).await;
    assert!(out.starts_with("login OK"), "{out}");
    // smtplib's sendmail raised: the application keeps the message and tries again.
    let sent = out.lines().nth(1).unwrap_or_default();
    assert!(
        sent == "send FAILED SMTPServerDisconnected" || sent.starts_with("send REFUSED 4"),
        "{out}"
    );
    assert!(
        world.smtp.messages().is_empty(),
        "the fake stored no message"
    );

    world.smtp.check_no_panics();
}
