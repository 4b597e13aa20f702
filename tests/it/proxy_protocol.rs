//! The PROXY protocol (`proxy_protocol_from`), through real sockets: a "load balancer" at
//! 127.0.0.1 sends v1 and v2 headers naming clients, a "stranger" at 127.0.0.2 may not; the
//! relay must see the named client in the per-source blocking, the trusted-network
//! listener and the plaintext-on-loopback rule. Both are on loopback: the client socket
//! binds its source address (Linux routes all of 127/8 to the loopback interface). Last, the
//! real HAProxy (Debian's `haproxy`, which `tests/run.sh` installs) with `send-proxy-v2` in
//! front of the relay, driven by Python's smtplib.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::harness::{World, python};
use crate::limits::{ALICE, ALICE_PW, Client, login_guard, metric, plain_auth};

/// The load balancer, and an address that is not one.
const BALANCER: [u8; 4] = [127, 0, 0, 1];
const STRANGER: [u8; 4] = [127, 0, 0, 2];
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// A v1 header naming `client` (IPv4).
fn v1(client: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client} 10.0.0.5 40001 587\r\n").into_bytes()
}

/// A v2 header: PROXY (`local` false) naming `client`, or LOCAL.
fn v2(client: [u8; 4], local: bool) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend([if local { 0x20 } else { 0x21 }, 0x11, 0, 12]);
    out.extend(client);
    out.extend([10, 0, 0, 5]);
    out.extend(40002u16.to_be_bytes());
    out.extend(587u16.to_be_bytes());
    out
}

/// A plaintext connection from `source` to the listener `name`, which first sends `first`.
struct Conn {
    io: BufReader<TcpStream>,
}

impl Conn {
    async fn open(world: &World, source: [u8; 4], name: &str, first: &[u8]) -> Conn {
        let mut tcp = Client::tcp_from(source, world.port(name)).await;
        tcp.write_all(first).await.expect("write");
        Conn {
            io: BufReader::new(tcp),
        }
    }

    async fn send(&mut self, line: &str) {
        let io = self.io.get_mut();
        io.write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("write");
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(READ_TIMEOUT, self.io.read_line(&mut line))
            .await
            .expect("a line in time")
            .expect("read");
        assert!(!line.is_empty(), "the relay closed instead of replying");
        line.trim_end().to_owned()
    }

    /// A whole SMTP reply, lines joined with `\n`.
    async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await;
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    async fn smtp(&mut self, line: &str) -> String {
        self.send(line).await;
        self.reply().await
    }

    /// Asserts that the relay closes without another byte, and returns how long it took.
    async fn closes_silently(&mut self) -> Duration {
        let started = Instant::now();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(READ_TIMEOUT, self.io.read_to_end(&mut rest))
            .await
            .expect("the relay closes in time");
        if read.is_ok() {
            assert_eq!(
                String::from_utf8_lossy(&rest),
                "",
                "nothing before the close"
            );
        }
        started.elapsed()
    }
}

/// Puts `proxy_protocol_from = [networks]` at the top of the world's config.
fn proxy_from(world: &World, networks: &str) {
    let config = std::fs::read_to_string(&world.config_path).expect("read config");
    let line = format!("proxy_protocol_from = [{networks}]\n");
    std::fs::write(&world.config_path, line + &config).expect("write config");
}

/// A relay with alice, headers accepted from [`BALANCER`] only, `limits` in `[limits]`.
async fn world(limits: &str) -> World {
    World::started_after(ALICE, ALICE_PW, |world| {
        world.imap.set_primary_mailbox(ALICE);
        proxy_from(world, "\"127.0.0.1/32\"");
        world.limits(limits);
    })
    .await
}

/// Refusals counted for a PROXY header on `protocol`'s listeners.
fn header_refusals(world: &World, protocol: &str) -> u64 {
    let series = format!(
        "m365_relay_connections_refused_total{{protocol=\"{protocol}\",reason=\"proxy_header\"}}"
    );
    metric(world, &series)
}

#[tokio::test]
async fn behind_the_balancer_v1_and_v2_sessions_work_as_the_client_the_header_names() {
    let world = world("").await;
    // v1, a client on loopback: AUTH on plaintext is allowed it, and it logs in. The EHLO
    // rides in the header's segment: the relay reads the header and not a byte more.
    let mut first = v1("127.0.0.9");
    first.extend(b"EHLO legacy\r\n");
    let mut c = Conn::open(&world, BALANCER, "smtp", &first).await;
    assert!(c.reply().await.starts_with("220 "));
    let ehlo = c.reply().await;
    assert!(ehlo.contains("AUTH"), "{ehlo}");
    assert!(
        c.smtp(&plain_auth(ALICE, ALICE_PW))
            .await
            .starts_with("235 ")
    );
    // v2, a client on the internet: the plaintext-on-loopback rule sees it, not the
    // balancer (which is on loopback), so AUTH needs STARTTLS first.
    let mut c = Conn::open(&world, BALANCER, "smtp", &v2([192, 0, 2, 10], false)).await;
    assert!(c.reply().await.starts_with("220 "));
    let ehlo = c.smtp("EHLO legacy").await;
    assert!(
        !ehlo.contains("AUTH") && ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    let reply = c.smtp(&plain_auth(ALICE, ALICE_PW)).await;
    assert!(reply.starts_with("538 5.7.11"), "{reply}");
    // IMAP and POP3, v2 and v1.
    let mut c = Conn::open(&world, BALANCER, "imap", &v2([127, 0, 0, 9], false)).await;
    assert!(c.line().await.starts_with("* OK"));
    c.send(&format!("a LOGIN {ALICE} \"{ALICE_PW}\"")).await;
    let mut reply = c.line().await;
    while reply.starts_with('*') {
        reply = c.line().await;
    }
    assert!(reply.starts_with("a OK"), "{reply}");
    let mut c = Conn::open(&world, BALANCER, "pop3", &v1("127.0.0.9")).await;
    assert!(c.line().await.starts_with("+OK"));
    c.send(&format!("USER {ALICE}")).await;
    assert!(c.line().await.starts_with("+OK"));
    c.send(&format!("PASS {ALICE_PW}")).await;
    assert!(c.line().await.starts_with("+OK"));
    assert_eq!(header_refusals(&world, "smtp"), 0);
    world.check_fakes();
}

#[tokio::test]
async fn implicit_tls_behind_the_balancer_keeps_the_client_hello_behind_the_header() {
    let world = world("").await;
    let mut tcp = Client::tcp_from(BALANCER, world.port("imaps")).await;
    tcp.write_all(&v2([127, 0, 0, 9], false)).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let connector = tokio_rustls::TlsConnector::from(world.pki.client_config());
    let tls = tokio::time::timeout(READ_TIMEOUT, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let mut greeting = String::new();
    let mut tls = BufReader::new(tls);
    tls.read_line(&mut greeting).await.unwrap();
    assert!(greeting.starts_with("* OK"), "{greeting}");
}

#[tokio::test]
async fn per_source_blocking_applies_to_the_client_behind_the_balancer() {
    let world = world(&login_guard(1, 2, 1)).await;
    // The attacker behind the balancer fails twice and is refused...
    let attacker = v2([127, 0, 0, 66], false);
    let mut c = Conn::open(&world, BALANCER, "smtp", &attacker).await;
    assert!(c.reply().await.starts_with("220 "));
    c.smtp("EHLO x").await;
    for _ in 0..2 {
        let reply = c.smtp(&plain_auth(ALICE, "wrong")).await;
        assert!(reply.starts_with("535 "), "{reply}");
    }
    let reply = c.smtp(&plain_auth(ALICE, ALICE_PW)).await;
    assert!(
        reply.starts_with("421 4.7.0 Too many failed logins"),
        "{reply}"
    );
    // ...and so are its next connections through the same balancer, v1 or v2, on every
    // protocol, with the protocol's refusal.
    let mut c = Conn::open(&world, BALANCER, "smtp", &v1("127.0.0.66")).await;
    assert!(
        c.line()
            .await
            .starts_with("421 4.7.0 Too many failed logins")
    );
    let mut c = Conn::open(&world, BALANCER, "imap", &attacker).await;
    assert!(
        c.line()
            .await
            .starts_with("* BYE [UNAVAILABLE] Too many failed logins")
    );
    // Another client through the same balancer logs in, as does the balancer's own check.
    let mut c = Conn::open(&world, BALANCER, "smtp", &v1("127.0.0.77")).await;
    assert!(c.reply().await.starts_with("220 "));
    c.smtp("EHLO x").await;
    assert!(
        c.smtp(&plain_auth(ALICE, ALICE_PW))
            .await
            .starts_with("235 ")
    );
    let mut c = Conn::open(&world, BALANCER, "smtp", &v2([127, 0, 0, 66], true)).await;
    assert!(c.reply().await.starts_with("220 "));
    let blocked =
        "m365_relay_connections_refused_total{protocol=\"smtp\",reason=\"source_blocked\"}";
    assert_eq!(metric(&world, blocked), 1);
    world.check_fakes();
}

#[tokio::test]
async fn the_trusted_listener_trusts_the_client_the_header_names() {
    let scanner = "scanner@contoso.com";
    let mut world = World::new().await;
    world.add_mailbox(scanner, "unused-scanner-password");
    proxy_from(&world, "\"127.0.0.1/32\"");
    world.config_table(&format!(
        "[smtp.trusted]\nlisten = \"127.0.0.1:0\"\nnetworks = [\"127.0.0.3/32\"]\nmailbox = \"{scanner}\""
    ));
    world.start().await;
    let mut c = Conn::open(&world, BALANCER, "smtp-trusted", &v1("127.0.0.3")).await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.smtp("EHLO scanner").await.starts_with("250"));
    let from = format!("MAIL FROM:<{scanner}>");
    assert!(c.smtp(&from).await.starts_with("250"));
    // The balancer itself (127.0.0.1) is not on the trusted network, nor is another client.
    let mut c = Conn::open(&world, BALANCER, "smtp-trusted", &v2([127, 0, 0, 4], false)).await;
    assert!(c.reply().await.starts_with("554 5.7.1"));
    let mut c = Conn::open(&world, BALANCER, "smtp-trusted", &v2([127, 0, 0, 1], true)).await;
    assert!(c.reply().await.starts_with("554 5.7.1"));
    world.check_fakes();
}

#[tokio::test]
async fn a_header_from_an_address_not_listed_closes_the_connection() {
    let world = world("").await;
    for header in [v1("127.0.0.9"), v2([127, 0, 0, 9], false)] {
        // Plaintext: the relay greets first; the header is the client's first bytes.
        for (name, greeting) in [("smtp", "220 "), ("imap", "* OK"), ("pop3", "+OK")] {
            let mut c = Conn::open(&world, STRANGER, name, &header).await;
            assert!(c.line().await.starts_with(greeting), "{name}");
            c.closes_silently().await;
        }
        // Implicit TLS: the header comes where the ClientHello should.
        let mut c = Conn::open(&world, STRANGER, "smtps", &header).await;
        c.closes_silently().await;
    }
    // A second header behind the balancer's is refused the same way.
    let mut twice = v1("127.0.0.9");
    twice.extend(v1("127.0.0.10"));
    let mut c = Conn::open(&world, BALANCER, "smtp", &twice).await;
    assert!(c.reply().await.starts_with("220 "));
    c.closes_silently().await;
    // The stranger without a header is served as always.
    let mut c = Conn::open(&world, STRANGER, "smtp", b"").await;
    assert!(c.reply().await.starts_with("220 "));
    assert!(c.smtp("EHLO x").await.starts_with("250"));
    assert_eq!(
        header_refusals(&world, "smtp"),
        0,
        "closed in the session, after admission"
    );
}

#[tokio::test]
async fn the_balancer_without_a_valid_header_is_closed_without_a_word_or_a_hang() {
    let world = world("preauth_timeout_secs = 2").await;
    // No header: the client's first command, garbage, an over-long or malformed header,
    // a header for a datagram connection: closed at once.
    let mut udp = v2([127, 0, 0, 9], false);
    udp[13] = 0x12;
    let long = [b"PROXY UNKNOWN ".as_slice(), &[b'1'; 120], b"\r\n"].concat();
    for first in [
        b"EHLO legacy\r\n".to_vec(),
        vec![0u8; 64],
        b"PROXY TCP4 127.0.0.300 10.0.0.5 1 2\r\n".to_vec(),
        b"PROXY TCP4 127.0.0.9 10.0.0.5 1 2\n".to_vec(),
        long,
        udp,
    ] {
        let mut c = Conn::open(&world, BALANCER, "smtp", &first).await;
        let took = c.closes_silently().await;
        assert!(took < Duration::from_secs(1), "{first:?} took {took:?}");
    }
    // Nothing, or a header cut off: closed when the time for the header is up.
    let cut = v2([127, 0, 0, 9], false);
    for first in [&b""[..], b"PROXY TCP4 127.0.0.9 10.0.", &cut[..20]] {
        let mut c = Conn::open(&world, BALANCER, "imap", first).await;
        let took = c.closes_silently().await;
        assert!(
            took > Duration::from_millis(1500),
            "{first:?} took {took:?}"
        );
    }
    assert_eq!(header_refusals(&world, "smtp"), 6);
    assert_eq!(header_refusals(&world, "imap"), 3);
}

// === the real HAProxy ===

/// smtplib through HAProxy from `source`: logs in as alice if a password is given (on the
/// plaintext port: the relay allows it only to a client on loopback), then sends.
const SEND_THROUGH: &str = r#"
import smtplib, sys
port, source, sender, password = sys.argv[1:5]
try:
    with smtplib.SMTP("127.0.0.1", int(port), timeout=20, source_address=(source, 0)) as s:
        s.ehlo("client")
        if password:
            s.login(sender, password)
        message = "From: <%s>\r\nTo: <bob@example.com>\r\nSubject: hi\r\n\r\nHello\r\n" % sender
        s.sendmail(sender, ["bob@example.com"], message.encode())
        print("sent")
except smtplib.SMTPConnectError as e:
    print("refused", e.smtp_code)
except smtplib.SMTPResponseException as e:
    print("failed", e.smtp_code)
except smtplib.SMTPServerDisconnected:
    print("disconnected")
"#;

/// HAProxy in the foreground with `config`, stopped (killed) on drop.
struct Haproxy(std::process::Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Starts HAProxy: `127.0.0.1:<front>` → `backend` with `send-proxy-v2`, for each pair.
async fn haproxy(world: &World, routes: &[(u16, u16)]) -> Haproxy {
    let binary = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("HAProxy is not installed: run the tests with tests/run.sh, which installs it (Debian package `haproxy`)");
    let mut config = String::from(
        "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n",
    );
    for (i, (front, back)) in routes.iter().enumerate() {
        config.push_str(&format!(
            "listen relay{i}\n  bind 127.0.0.1:{front}\n  server relay1 127.0.0.1:{back} send-proxy-v2\n"
        ));
    }
    let path = world.file("haproxy.cfg", config.as_bytes());
    let child = std::process::Command::new(binary)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start haproxy");
    let proxy = Haproxy(child);
    for (front, _) in routes {
        let addr = SocketAddr::from(([127, 0, 0, 1], *front));
        let started = Instant::now();
        while TcpStream::connect(addr).await.is_err() {
            assert!(started.elapsed() < READ_TIMEOUT, "HAProxy does not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    proxy
}

#[tokio::test]
async fn behind_a_real_haproxy_with_send_proxy_v2_the_relay_sees_the_client() {
    let scanner = "scanner@contoso.com";
    let mut world = World::new().await;
    world.add_mailbox(ALICE, ALICE_PW);
    world.add_mailbox(scanner, "unused-scanner-password");
    proxy_from(&world, "\"127.0.0.1/32\"");
    world.config_table(&format!(
        "[smtp.trusted]\nlisten = \"127.0.0.1:0\"\nnetworks = [\"127.0.0.7/32\"]\nmailbox = \"{scanner}\""
    ));
    world.limits(&login_guard(0, 1, 1));
    world.start().await;
    let (smtp, trusted) = (free_port(), free_port());
    let _haproxy = haproxy(
        &world,
        &[
            (smtp, world.port("smtp")),
            (trusted, world.port("smtp-trusted")),
        ],
    )
    .await;
    let send = |port: u16, source: &str, sender: &str, password: &str| {
        let args = [
            port.to_string(),
            source.into(),
            sender.into(),
            password.into(),
        ];
        async move { python(SEND_THROUGH, &args).await.trim().to_owned() }
    };
    // The trusted listener trusts 127.0.0.7, not HAProxy's 127.0.0.1 nor 127.0.0.8.
    assert_eq!(send(trusted, "127.0.0.7", scanner, "").await, "sent");
    assert_eq!(send(trusted, "127.0.0.8", scanner, "").await, "refused 554");
    // Through the queue (devices cannot retry): see queue_accept.rs.
    crate::queue_accept::wait_queued(&world, scanner, 1).await;
    // One wrong password blocks 127.0.0.9 (login_failures_before_block = 1); 127.0.0.10
    // through the same HAProxy still logs in (plaintext: the relay sees a loopback client).
    // (smtplib tries AUTH PLAIN, then LOGIN, which meets the block.)
    assert_eq!(send(smtp, "127.0.0.9", ALICE, "wrong").await, "failed 421");
    assert_eq!(
        send(smtp, "127.0.0.9", ALICE, ALICE_PW).await,
        "refused 421"
    );
    assert_eq!(send(smtp, "127.0.0.10", ALICE, ALICE_PW).await, "sent");
    let alices = world.smtp.messages();
    assert_eq!(
        alices
            .iter()
            .filter(|m| m.authenticated_as == ALICE)
            .count(),
        1
    );
    world.check_fakes();
}
