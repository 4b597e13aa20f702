//! The relay's bounds, through real sockets against the relay: pre-auth limits (line
//! length, commands, bytes, IMAP literals, time, connections per source), login abuse
//! (growing delays, refusal of a source, a mailbox attacked from many sources), idle
//! timeouts after login, the local side of the TLS policy (upstream certificates are
//! tested in faults.rs), and a small load test of the real binary. Clients connect from
//! several loopback addresses (127.0.0.1, 127.0.0.2, ...: Linux routes all of 127/8 to
//! the loopback interface), so that "another source" is real.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::{RelayProcess, World};
use crate::util::files_under;

pub(crate) const ALICE: &str = "alice@contoso.com";
pub(crate) const ALICE_PW: &str = "correct horse battery staple";

/// The address most tests attack from, and others.
pub(crate) const LOCAL: [u8; 4] = [127, 0, 0, 1];
const OTHER: [u8; 4] = [127, 0, 0, 2];

/// How long a read may wait; generous, since some replies are delayed on purpose.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A line client that connects from a chosen loopback address.
pub(crate) struct Client {
    io: BufReader<Box<dyn Io>>,
}

impl Client {
    pub(crate) async fn tcp_from(source: [u8; 4], port: u16) -> TcpStream {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from((source, 0)))
            .expect("bind a loopback source address");
        socket
            .connect(SocketAddr::from((LOCAL, port)))
            .await
            .expect("connect")
    }

    /// Plaintext, from `source`.
    pub(crate) async fn plain(source: [u8; 4], port: u16) -> Client {
        Client {
            io: BufReader::new(Box::new(Self::tcp_from(source, port).await)),
        }
    }

    /// Implicit TLS, from `source`; `None` if the handshake fails.
    pub(crate) async fn tls(world: &World, source: [u8; 4], port: u16) -> Option<Client> {
        Self::tls_with(world.pki.client_config(), source, port).await
    }

    async fn tls_with(
        config: Arc<rustls::ClientConfig>,
        source: [u8; 4],
        port: u16,
    ) -> Option<Client> {
        let tcp = Self::tcp_from(source, port).await;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let connect = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
        let tls = tokio::time::timeout(READ_TIMEOUT, connect)
            .await
            .expect("handshake in time")
            .ok()?;
        Some(Client {
            io: BufReader::new(Box::new(tls)),
        })
    }

    pub(crate) async fn send(&mut self, line: &str) {
        self.send_raw(format!("{line}\r\n").as_bytes()).await;
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        let io = self.io.get_mut();
        io.write_all(bytes).await.expect("write");
        io.flush().await.expect("flush");
    }

    /// The next line without its line end; `None` once the server closed.
    pub(crate) async fn line(&mut self) -> Option<String> {
        let mut line = Vec::new();
        let read = tokio::time::timeout(READ_TIMEOUT, self.io.read_until(b'\n', &mut line))
            .await
            .expect("a line from the server in time");
        match read {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(
                String::from_utf8_lossy(&line)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
        }
    }

    pub(crate) async fn expect_line(&mut self) -> String {
        self.line()
            .await
            .expect("the server closed instead of replying")
    }

    /// A whole SMTP reply, lines joined with `\n`.
    pub(crate) async fn smtp_reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let line = self.expect_line().await;
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    pub(crate) async fn smtp(&mut self, line: &str) -> String {
        self.send(line).await;
        self.smtp_reply().await
    }

    /// Lines up to and including the one tagged `tag`.
    pub(crate) async fn imap(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.send(&format!("{tag} {command}")).await;
        let mut lines = Vec::new();
        loop {
            let line = self.expect_line().await;
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// Whether the server closes the connection (with nothing more to say) in time.
    /// Whether the peer closes, after at most `farewell` (a last reply line).
    async fn closes_after(&mut self, farewell: &str) -> bool {
        let mut rest = Vec::new();
        match tokio::time::timeout(READ_TIMEOUT, self.io.read_to_end(&mut rest)).await {
            Err(_) => false,
            Ok(Err(_)) => true,
            Ok(Ok(_)) => rest.is_empty() || String::from_utf8_lossy(&rest).starts_with(farewell),
        }
    }

    pub(crate) async fn closes(&mut self) -> bool {
        let mut rest = Vec::new();
        match tokio::time::timeout(READ_TIMEOUT, self.io.read_to_end(&mut rest)).await {
            Err(_) => false,
            // A TLS peer that closes without close_notify, or a reset: still closed.
            Ok(Err(_)) => true,
            Ok(Ok(_)) => rest.is_empty(),
        }
    }
}

/// Connects to each plaintext listener from [`LOCAL`]; asserts that the relay refuses the
/// connection with its protocol's reply saying `why` ("Too many ...") and closes it.
async fn assert_every_protocol_refuses(world: &World, why: &str) {
    let until = format!("{why} from your address, try again later");
    for (listener, reply) in [
        ("smtp", format!("421 4.7.0 {until}")),
        ("imap", format!("* BYE [UNAVAILABLE] {until}")),
        ("pop3", format!("-ERR [SYS/TEMP] {until}")),
    ] {
        let mut c = Client::plain(LOCAL, world.port(listener)).await;
        assert_eq!(c.expect_line().await, reply);
        assert!(c.closes().await, "{listener}");
    }
}

/// Asserts that the time since `since` is at least `at_least` and below `below`.
fn assert_took_between(since: Instant, at_least: Duration, below: Duration) {
    let took = since.elapsed();
    assert!(took >= at_least && took < below, "{took:?}");
}

/// The `[limits]` lines of the login guard: a delay after `delay_after` failed logins, a block
/// after `block_after`, delays of at most `max_delay_secs`.
pub(crate) fn login_guard(delay_after: u32, block_after: u32, max_delay_secs: u64) -> String {
    format!(
        "login_failures_before_delay = {delay_after}\nlogin_failures_before_block = {block_after}\nlogin_delay_max_secs = {max_delay_secs}"
    )
}

pub(crate) fn plain_auth(user: &str, password: &str) -> String {
    format!(
        "AUTH PLAIN {}",
        STANDARD.encode(format!("\0{user}\0{password}"))
    )
}

/// A relay with alice registered, started with `limits` added to its `[limits]`.
async fn world(limits: &str) -> World {
    World::started_after(ALICE, ALICE_PW, |world| {
        world.imap.set_primary_mailbox(ALICE);
        world.limits(limits);
    })
    .await
}

/// An SMTP client from `source` on the plaintext port, past its greeting and EHLO.
pub(crate) async fn smtp_client(world: &World, source: [u8; 4]) -> Client {
    let mut c = Client::plain(source, world.port("smtp")).await;
    assert!(c.smtp_reply().await.starts_with("220 "));
    assert!(c.smtp("EHLO legacy").await.starts_with("250-"));
    c
}

/// An SMTP client from `source` logged in as alice (`235`).
async fn smtp_logged_in(world: &World, source: [u8; 4]) -> Client {
    let mut c = smtp_client(world, source).await;
    assert!(
        c.smtp(&plain_auth(ALICE, ALICE_PW))
            .await
            .starts_with("235 ")
    );
    c
}

/// One metric's value in the relay's Prometheus text; 0 when absent.
pub(crate) fn metric(world: &World, series: &str) -> u64 {
    world
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

// === pre-auth limits ===

#[tokio::test]
async fn an_over_long_smtp_line_gets_500_and_the_session_goes_on() {
    let world = world("").await;
    let mut c = smtp_client(&world, LOCAL).await;
    // Over RFC 5321's 512 octets, but read whole: refused by the state machine.
    let reply = c.smtp(&format!("NOOP {}", "x".repeat(600))).await;
    assert_eq!(reply, "500 5.5.2 Line too long");
    assert_eq!(c.smtp("NOOP").await, "250 2.0.0 OK");
    // Over even AUTH's 12288: discarded through its end, without desynchronising.
    let reply = c.smtp(&"y".repeat(40_000)).await;
    assert_eq!(reply, "500 5.5.2 Line too long");
    assert_eq!(c.smtp("NOOP").await, "250 2.0.0 OK");
    // An AUTH line may be long (RFC 4954 §4).
    let long_password = "p".repeat(3000);
    let reply = c.smtp(&plain_auth(ALICE, &long_password)).await;
    assert!(reply.starts_with("535 5.7.8"), "{reply}");
    assert!(c.smtp("QUIT").await.starts_with("221 "));
}

#[tokio::test]
async fn too_many_commands_before_login_close_with_each_protocols_reply() {
    let world = world("preauth_max_commands = 5").await;
    let mut smtp = Client::plain(LOCAL, world.port("smtp")).await;
    smtp.smtp_reply().await;
    for _ in 0..5 {
        assert_eq!(smtp.smtp("NOOP").await, "250 2.0.0 OK");
    }
    let reply = smtp.smtp("NOOP").await;
    assert!(
        reply.starts_with("421 4.7.0 Too many commands before authentication"),
        "{reply}"
    );
    assert!(smtp.closes().await);

    let mut imap = Client::plain(LOCAL, world.port("imap")).await;
    imap.expect_line().await;
    for i in 0..5 {
        imap.imap(&format!("a{i}"), "NOOP").await;
    }
    imap.send("a5 NOOP").await;
    assert_eq!(
        imap.expect_line().await,
        "* BYE Too many commands before login"
    );
    assert!(imap.closes().await);

    let mut pop3 = Client::plain(LOCAL, world.port("pop3")).await;
    pop3.expect_line().await;
    for _ in 0..5 {
        pop3.send("NOOP").await;
        assert_eq!(pop3.expect_line().await, "+OK");
    }
    pop3.send("NOOP").await;
    assert!(
        pop3.expect_line()
            .await
            .starts_with("-ERR Too many commands before login")
    );
    assert!(pop3.closes().await);
}

#[tokio::test]
async fn bytes_before_login_are_bounded_over_long_lines_included() {
    const BUDGET: usize = 16_384;
    let world = world(&format!("preauth_max_bytes = {BUDGET}")).await;
    // One endless line: the reader discards it, but every byte counts. Exactly one byte
    // over, so that the relay has read everything when it closes (no reset).
    let mut smtp = Client::plain(LOCAL, world.port("smtp")).await;
    smtp.smtp_reply().await;
    smtp.send_raw(&vec![b'x'; BUDGET + 1]).await;
    assert_eq!(
        smtp.expect_line().await,
        "421 4.7.0 Too much input before authentication, closing connection"
    );
    assert!(smtp.closes().await);

    // IMAP lines within the line limit, many of them.
    let mut imap = Client::plain(LOCAL, world.port("imap")).await;
    imap.expect_line().await;
    let line = format!("{}\r\n", "z".repeat(4998));
    let mut input = line.repeat(3).into_bytes();
    input.resize(BUDGET + 1, b'z');
    imap.send_raw(&input).await;
    for _ in 0..3 {
        assert_eq!(imap.expect_line().await, "* BAD Syntax error");
    }
    assert_eq!(
        imap.expect_line().await,
        "* BYE Too much input before login"
    );
    assert!(imap.closes().await);
}

#[tokio::test]
async fn an_imap_literal_over_the_limit_is_refused_or_closes() {
    let world = world("max_literal_imap = 64").await;
    let mut c = Client::plain(LOCAL, world.port("imap")).await;
    c.expect_line().await;
    c.send("a LOGIN {65}").await;
    assert_eq!(
        c.expect_line().await,
        "a BAD [TOOBIG] Literal too large before login"
    );
    assert_eq!(c.imap("b", "NOOP").await, ["b OK NOOP completed"]);
    // Within the limit: fine.
    c.send(&format!("c LOGIN {{{}}}", ALICE.len())).await;
    assert!(c.expect_line().await.starts_with("+ "));
    c.send(&format!("{ALICE} \"wrong\"")).await;
    assert_eq!(
        c.expect_line().await,
        "c NO [AUTHENTICATIONFAILED] Authentication failed"
    );
    // A non-synchronizing literal over the limit is on its way regardless: close.
    c.send("d LOGIN {65+}").await;
    assert_eq!(
        c.expect_line().await,
        "* BYE [TOOBIG] Literal too large before login"
    );
    assert!(c.closes().await);
}

#[tokio::test]
async fn a_client_that_does_not_log_in_in_time_is_told_and_dropped() {
    let world = world("preauth_timeout_secs = 1").await;
    let started = Instant::now();
    let mut smtp = Client::plain(LOCAL, world.port("smtp")).await;
    let mut imap = Client::plain(LOCAL, world.port("imap")).await;
    let mut pop3 = Client::plain(LOCAL, world.port("pop3")).await;
    // Connected and silent: not even a TLS handshake.
    let mut silent_tls = Client::plain(LOCAL, world.port("imaps")).await;
    smtp.smtp_reply().await;
    assert_eq!(
        smtp.expect_line().await,
        "421 4.4.2 Timeout waiting for login, closing connection"
    );
    imap.expect_line().await;
    assert_eq!(
        imap.expect_line().await,
        "* BYE Autologout; time limit for login reached"
    );
    pop3.expect_line().await;
    assert_eq!(
        pop3.expect_line().await,
        "-ERR [SYS/TEMP] Time limit for login reached"
    );
    for c in [&mut smtp, &mut imap, &mut pop3, &mut silent_tls] {
        assert!(c.closes().await);
    }
    assert_took_between(started, Duration::from_millis(900), Duration::from_secs(5));
}

#[tokio::test]
async fn connections_per_source_are_bounded_and_other_sources_are_not() {
    // Loopback stands in for remote addresses here: it gets the ordinary limit.
    let world = world("max_connections_per_source = 3\nlocal_networks = []").await;
    // Three from one address, over all listeners together.
    let mut held = vec![
        Client::plain(LOCAL, world.port("smtp")).await,
        Client::plain(LOCAL, world.port("imap")).await,
        Client::tls(&world, LOCAL, world.port("pop3s"))
            .await
            .unwrap(),
    ];
    for c in &mut held {
        c.expect_line().await;
    }
    assert_every_protocol_refuses(&world, "Too many connections").await;
    // A TLS port just closes.
    assert!(
        Client::tls(&world, LOCAL, world.port("smtps"))
            .await
            .is_none()
    );

    // Another address is not affected.
    let _other = smtp_logged_in(&world, OTHER).await;

    // One closes: room for one more.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = Client::plain(LOCAL, world.port("pop3")).await;
        let line = c.expect_line().await;
        if line.starts_with("+OK") {
            break;
        }
        assert!(Instant::now() < deadline, "no room after a close: {line}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = |protocol: &str| {
        metric(
            &world,
            &format!(
                "m365_relay_connections_refused_total{{protocol=\"{protocol}\",reason=\"max_connections_per_source\"}}"
            ),
        )
    };
    assert_eq!((refused("imap"), refused("smtp")), (1, 2));
    world.check_fakes();
}

// === login abuse ===

/// Every file in the token store, with its bytes and modification time.
fn token_files(world: &World) -> Vec<(String, Vec<u8>, std::time::SystemTime)> {
    let mut files: Vec<_> = files_under(&world.state_dir())
        .into_iter()
        .filter(|path| !path.to_string_lossy().contains("/status/"))
        .map(|path| {
            let modified = path.metadata().and_then(|m| m.modified()).expect("mtime");
            let bytes = std::fs::read(&path).expect("read");
            (path.display().to_string(), bytes, modified)
        })
        .collect();
    files.sort();
    files
}

/// Sends AUTH PLAIN with `password`; the reply and how long it took.
async fn timed_auth(c: &mut Client, password: &str) -> (String, Duration) {
    timed_plain_auth(c, ALICE, password).await
}

/// Sends AUTH PLAIN for `user` with `password`; the reply and how long it took.
pub(crate) async fn timed_plain_auth(
    c: &mut Client,
    user: &str,
    password: &str,
) -> (String, Duration) {
    let started = Instant::now();
    let reply = c.smtp(&plain_auth(user, password)).await;
    (reply, started.elapsed())
}

#[tokio::test]
async fn failed_logins_slow_down_then_refuse_the_source_and_never_touch_tokens() {
    let world = world(&login_guard(3, 5, 2)).await;
    // A good login first, so that whatever token work there is has been done.
    let good = smtp_logged_in(&world, LOCAL).await;
    drop(good);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (requests, files) = (world.entra.token_requests(), token_files(&world));
    assert!(files.iter().any(|(p, ..)| p.contains("token")), "{files:?}");

    // Three failures without delay; the third closes the connection (3 per connection).
    let delayed = || metric(&world, "m365_relay_logins_delayed_total{protocol=\"smtp\"}");
    let mut c = smtp_client(&world, LOCAL).await;
    for i in 1..=3 {
        let (reply, _) = timed_auth(&mut c, "wrong").await;
        let expected = if i < 3 { "535 5.7.8" } else { "421 4.7.0" };
        assert!(reply.starts_with(expected), "failure {i}: {reply}");
    }
    assert_eq!(delayed(), 0);
    assert!(c.closes().await);
    // The source goes on from a new connection: now each failure waits, 1 s then 2 s.
    let mut c = smtp_client(&world, LOCAL).await;
    let (reply, took) = timed_auth(&mut c, "wrong").await;
    assert!(reply.starts_with("535 5.7.8"), "{reply}");
    assert!(
        took >= Duration::from_secs(1),
        "the 4th failure took {took:?}"
    );
    let (reply, took) = timed_auth(&mut c, "wrong again").await;
    assert!(reply.starts_with("535 5.7.8"), "{reply}");
    assert!(
        took >= Duration::from_secs(2),
        "the 5th failure took {took:?}"
    );
    // That was the 5th: the source is refused, even with the right password.
    let (reply, _) = timed_auth(&mut c, ALICE_PW).await;
    assert_eq!(
        reply,
        "421 4.7.0 Too many failed logins from your address, try again later"
    );
    assert!(c.closes().await);

    // Wrong passwords never touched a token.
    assert_eq!(world.entra.token_requests(), requests);
    assert_eq!(token_files(&world), files, "the token store is unchanged");

    // New connections from the source are refused, each with its protocol's reply.
    assert_every_protocol_refuses(&world, "Too many failed logins").await;
    assert!(
        Client::tls(&world, LOCAL, world.port("imaps"))
            .await
            .is_none()
    );

    // A legitimate client from another address logs in at once (without a delay).
    let _other = smtp_logged_in(&world, OTHER).await;
    assert_eq!(delayed(), 2, "only the 4th and 5th failure waited");
    assert_eq!(
        metric(
            &world,
            "m365_relay_connections_refused_total{protocol=\"imap\",reason=\"source_blocked\"}"
        ),
        2,
        "imap and imaps"
    );
    world.check_fakes();
}

#[tokio::test]
async fn a_success_clears_the_sources_count() {
    let world = world("login_failures_before_delay = 2").await;
    let mut c = smtp_client(&world, LOCAL).await;
    for _ in 0..2 {
        assert!(timed_auth(&mut c, "wrong").await.0.starts_with("535 "));
    }
    let (reply, took) = timed_auth(&mut c, ALICE_PW).await;
    assert!(reply.starts_with("235 "), "{reply}");
    assert!(
        took >= Duration::from_secs(1),
        "delayed before the check: {took:?}"
    );
    let mut c = smtp_client(&world, LOCAL).await;
    let (reply, _) = timed_auth(&mut c, "wrong").await;
    assert!(reply.starts_with("535 "), "{reply}");
    let delayed = metric(&world, "m365_relay_logins_delayed_total{protocol=\"smtp\"}");
    assert_eq!(
        delayed, 1,
        "the count was cleared: no wait after the success"
    );
}

#[tokio::test]
async fn a_mailbox_attacked_from_many_sources_makes_its_logins_wait() {
    // A source is refused at 4 failures; a mailbox waits past 4 (from all sources).
    let world = world(&login_guard(3, 4, 2)).await;
    for (source, guesses) in [
        ([127, 0, 0, 3], 2),
        ([127, 0, 0, 4], 2),
        ([127, 0, 0, 5], 1),
    ] {
        let mut c = smtp_client(&world, source).await;
        for _ in 0..guesses {
            let (reply, _) = timed_auth(&mut c, "guess").await;
            assert!(reply.starts_with("535 "), "{reply}");
        }
    }
    let delayed = || metric(&world, "m365_relay_logins_delayed_total{protocol=\"smtp\"}");
    assert_eq!(delayed(), 0);
    // Five failures for alice, none of the sources delayed on its own: alice's next
    // login waits, wherever it comes from.
    let mut c = smtp_client(&world, [127, 0, 0, 6]).await;
    let (reply, took) = timed_auth(&mut c, ALICE_PW).await;
    assert!(reply.starts_with("235 "), "{reply}");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert_eq!(delayed(), 1);
}

// === after login ===

#[tokio::test]
async fn logged_in_sessions_close_after_their_protocols_idle_time() {
    let world = world("idle_timeout_smtp_secs = 1\nidle_timeout_imap_secs = 3").await;
    let mut smtp = smtp_logged_in(&world, LOCAL).await;
    let mut imap = Client::plain(LOCAL, world.port("imap")).await;
    imap.expect_line().await;
    let ok = imap
        .imap("a", &format!("LOGIN {ALICE} \"{ALICE_PW}\""))
        .await;
    assert!(ok.last().unwrap().starts_with("a OK "), "{ok:?}");
    let logged_in = Instant::now();

    assert!(
        smtp.closes_after("421 4.4.2 ").await,
        "SMTP idle for its 1 s"
    );
    assert_took_between(
        logged_in,
        Duration::from_millis(900),
        Duration::from_secs(3),
    );
    // IMAP is still there (traffic resets its clock)...
    let noop = imap.imap("b", "NOOP").await;
    assert!(noop.last().unwrap().starts_with("b OK"), "{noop:?}");
    let active = Instant::now();
    // ...until it is silent for its own 3 s.
    assert!(imap.closes().await, "IMAP idle for its 3 s");
    assert_took_between(active, Duration::from_millis(2900), Duration::from_secs(6));
}

// === TLS policy ===

#[tokio::test]
async fn a_tls_1_2_client_is_served() {
    let world = world("").await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(world.pki.ca_der()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(m365_relay::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut c = Client::tls_with(Arc::new(config), LOCAL, world.port("smtps"))
        .await
        .expect("TLS 1.2 handshake");
    assert!(c.smtp_reply().await.starts_with("220 "));
}

#[tokio::test]
async fn an_expired_local_certificate_refuses_to_start() {
    let world = World::new().await;
    let now = std::time::SystemTime::now();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.not_before = (now - Duration::from_secs(400 * 86_400)).into();
    params.not_after = (now - Duration::from_secs(86_400)).into();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let certs = world.dir.path().join("certs");
    std::fs::write(certs.join("relay.crt"), cert.pem()).unwrap();
    std::fs::write(certs.join("relay.key"), key.serialize_pem()).unwrap();
    let config = m365_relay::config::Config::load(Some(&world.config_path)).unwrap();
    let e = m365_relay::server::start(config, tokio_util::sync::CancellationToken::new())
        .await
        .err()
        .expect("the relay refuses to start");
    let e = e.to_string();
    assert!(
        e.contains("relay.crt: the certificate expired on "),
        "a clear message naming the file and the date: {e}"
    );
}

// === load ===

/// `VmRSS` of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// Makes sure this process (and the relay it starts) may open `n` files.
pub(crate) fn ensure_open_files(n: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let soft: u64 = fields[3].parse().unwrap_or(u64::MAX);
    if soft >= n {
        return;
    }
    // Raise the soft limit to the hard one (no privilege needed).
    let pid = std::process::id().to_string();
    let hard = fields[4];
    let ok = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "open files limited to {soft}; the load test needs {n}");
}

/// An IMAP client from `source`, logged in (over implicit TLS with `tls`); how long the
/// login took.
pub(crate) async fn imap_login(
    port: u16,
    source: [u8; 4],
    tls: Option<Arc<rustls::ClientConfig>>,
) -> (Client, Duration) {
    let started = Instant::now();
    let mut c = match tls {
        Some(config) => Client::tls_with(config, source, port)
            .await
            .expect("handshake"),
        None => Client::plain(source, port).await,
    };
    c.expect_line().await;
    let ok = c.imap("a", &format!("LOGIN {ALICE} \"{ALICE_PW}\"")).await;
    assert!(ok.last().unwrap().starts_with("a OK "), "{ok:?}");
    (c, started.elapsed())
}

/// Opens `n` connections from `source` with `open`, 100 at a time, each past its greeting.
async fn open_many<F, Fut>(n: usize, open: F) -> Vec<Client>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Client>,
{
    let mut all = Vec::with_capacity(n);
    while all.len() < n {
        let batch = (n - all.len()).min(100);
        all.extend(futures::future::join_all((0..batch).map(|_| open())).await);
    }
    all
}

/// The relay's resident memory once it has settled.
async fn settled_rss(pid: u32) -> u64 {
    tokio::time::sleep(Duration::from_millis(300)).await;
    rss_kib(pid)
}

#[tokio::test]
async fn a_thousand_idle_connections_from_one_address_leave_memory_bounded_and_a_client_served() {
    const IDLE: usize = 1000;
    const LOGGED_IN: usize = 100;
    ensure_open_files(4 * IDLE as u64);
    let world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    world.imap.set_primary_mailbox(ALICE);
    // The attacker's connections are all accepted (per-source limit raised), up to the
    // global limit, which leaves a little room for the others.
    world.limits(&format!(
        "max_connections = {}\nmax_connections_per_local_source = {IDLE}",
        IDLE + LOGGED_IN + 10
    ));
    let relay = RelayProcess::start(&world);
    let pid = relay.child.id();
    let (imap, smtp, imaps) = (relay.port("imap"), relay.port("smtp"), relay.port("imaps"));
    let tls = world.pki.client_config();

    // Warm-up: the first login loads the registry, runs argon2id, gets a token, and the
    // first TLS handshakes set up their state.
    let (warm, _) = imap_login(imaps, OTHER, Some(tls.clone())).await;
    drop(warm);
    let before = settled_rss(pid).await;

    // 1000 connections that never log in, all held open: half plaintext SMTP, half
    // implicit-TLS IMAP with the handshake done.
    let opened = Instant::now();
    let mut idle = open_many(IDLE / 2, || async {
        let mut c = Client::plain(LOCAL, smtp).await;
        assert!(c.expect_line().await.starts_with("220 "));
        c
    })
    .await;
    let with_plain = settled_rss(pid).await;
    idle.extend(
        open_many(IDLE / 2, || async {
            let mut c = Client::tls_with(tls.clone(), LOCAL, imaps)
                .await
                .expect("handshake");
            assert!(c.expect_line().await.starts_with("* OK "));
            c
        })
        .await,
    );
    let open_took = opened.elapsed();
    let with_idle = settled_rss(pid).await;
    // One more from that address is over its limit.
    let mut extra = Client::plain(LOCAL, smtp).await;
    assert!(
        extra
            .expect_line()
            .await
            .starts_with("421 4.7.0 Too many connections from your address")
    );

    // Meanwhile a legitimate client logs in within normal time.
    let (mut legit, login_took) = imap_login(imap, OTHER, None).await;
    let noop = legit.imap("b", "NOOP").await;
    assert!(noop.last().unwrap().starts_with("b OK"));
    drop(legit);

    // Logged-in sessions over implicit TLS: client TLS, upstream TLS, two relay buffers.
    let mut sessions = Vec::with_capacity(LOGGED_IN);
    while sessions.len() < LOGGED_IN {
        let logins = (0..20).map(|_| imap_login(imaps, OTHER, Some(tls.clone())));
        sessions.extend(futures::future::join_all(logins).await);
    }
    let with_sessions = settled_rss(pid).await;
    drop(idle);
    drop(sessions);

    let each = |from: u64, to: u64, n: usize| to.saturating_sub(from) as f64 / n as f64;
    let per_plain = each(before, with_plain, IDLE / 2);
    let per_tls = each(with_plain, with_idle, IDLE / 2);
    let per_session = each(with_idle, with_sessions, LOGGED_IN);
    eprintln!(
        "load: {IDLE} pre-auth connections from one address opened in {open_took:?}; relay RSS \
         {before} KiB before, {with_idle} KiB with them ({per_plain:.1} KiB per plaintext \
         SMTP connection, {per_tls:.1} KiB per implicit-TLS IMAP connection); a legitimate \
         IMAP login meanwhile took {login_took:?}; {LOGGED_IN} logged-in IMAP sessions over \
         TLS on top: {with_sessions} KiB ({per_session:.1} KiB each)"
    );
    assert!(
        login_took < Duration::from_secs(2),
        "the legitimate login took {login_took:?}"
    );
    assert!(
        per_plain < 32.0,
        "a plaintext pre-auth connection: {per_plain:.1} KiB"
    );
    assert!(
        per_tls < 64.0,
        "a TLS pre-auth connection: {per_tls:.1} KiB"
    );
    assert!(
        per_session < 256.0,
        "a logged-in session: {per_session:.1} KiB"
    );
}
