//! Starts the real relay in-process against the fakes of Entra ID and Exchange Online, with
//! mailboxes registered through the real `m365-relay mailbox ...` commands, and drives it
//! with real clients (curl, Python's smtplib, lettre).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

use m365_relay::config::Config;
use m365_relay::server::{self, Running};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use crate::support::certs::TestPki;
use crate::support::fake_entra::FakeEntra;
use crate::support::fake_graph::FakeGraph;
use crate::support::fake_imap::FakeImap;
use crate::support::fake_pop3::FakePop3;
use crate::support::fake_smtp::FakeSmtp;
use crate::support::line_client::LineClient;
use crate::support::relay_launch::{ALL_LISTENERS, config_toml, launch};

pub const TENANT: &str = "contoso.onmicrosoft.com";
pub const CLIENT_ID: &str = "6731de76-14a6-49ae-97bc-6eba6914391e";
/// An app-only mailbox (a scanner's), see [`World::register_robot`].
pub const ROBOT: &str = "robot@contoso.com";
/// The confidential app of [`ROBOT`], and its client secret.
pub const ROBOT_APP: &str = "2c7e5d41-8a9b-4f3c-a1d2-e3f4a5b6c7d8";
pub const ROBOT_APP_SECRET: &str = "Qx8~app.secret-value";

/// One test's world: a test CA, the fakes, a state folder, a config, and the relay.
pub struct World {
    pub pki: TestPki,
    pub entra: FakeEntra,
    pub smtp: FakeSmtp,
    pub imap: FakeImap,
    pub pop3: FakePop3,
    pub graph: FakeGraph,
    pub dir: TempDir,
    pub config_path: PathBuf,
    pub ca_path: PathBuf,
    relay: Option<Running>,
}

impl World {
    /// Fakes up, config written, relay not started yet.
    pub async fn new() -> World {
        Self::with_upstream(None).await
    }

    /// A started relay with one mailbox, `address`, whose local password is `password`.
    pub async fn started_with(address: &str, password: &str) -> World {
        Self::started_after(address, password, |_| {}).await
    }

    /// Like [`World::started_with`], but `setup` (more mailboxes, limits, fake behaviour) runs
    /// after the mailbox is added and before the relay starts.
    pub async fn started_after(address: &str, password: &str, setup: impl FnOnce(&World)) -> World {
        let mut world = Self::new().await;
        world.add_mailbox(address, password);
        setup(&world);
        world.start().await;
        world
    }

    /// Fakes up with `address`'s mailbox (see [`World::add_mailbox`]) as the fake IMAP
    /// server's primary mailbox, `messages` in its INBOX; the relay is not started yet.
    pub async fn with_inbox(address: &str, password: &str, messages: &[&[u8]]) -> World {
        let world = Self::new().await;
        world.add_mailbox(address, password);
        world.imap.set_primary_mailbox(address);
        for message in messages {
            world.imap.deliver("INBOX", message);
        }
        world
    }

    /// Like [`World::new`], but the SMTP upstream is `upstream` (e.g. a closed port).
    pub async fn with_upstream(upstream: Option<SocketAddr>) -> World {
        let pki = TestPki::new();
        let entra = FakeEntra::start().await;
        entra.add_app(TENANT, CLIENT_ID, None);
        let smtp = FakeSmtp::start(&pki, entra.clone()).await;
        let imap = FakeImap::start(&pki, entra.clone()).await;
        let pop3 = FakePop3::start(&pki, entra.clone()).await;
        let graph = FakeGraph::start(entra.checker()).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_path = pki.write_ca(dir.path());
        // The relay's own certificate, from the test CA, so that clients can verify it.
        pki.issue(&["127.0.0.1", "localhost"])
            .write_to(&dir.path().join("certs"), "relay");
        let upstream = upstream.unwrap_or(smtp.addr());
        let tail = format!(
            "[graph]\nendpoint = \"{}\"\n[limits]\nupstream_timeout_secs = 5\ntoken_timeout_secs = 5\n",
            graph.endpoint()
        );
        let config = config_toml(
            upstream,
            imap.addr(),
            pop3.addr(),
            &ca_path,
            &entra.authority(),
            &tail,
        );
        let config_path = dir.path().join("relay.toml");
        std::fs::write(&config_path, config).expect("write config");
        World {
            pki,
            entra,
            smtp,
            imap,
            pop3,
            graph,
            dir,
            config_path,
            ca_path,
            relay: None,
        }
    }

    /// Adds `key = value` lines to the config's `[limits]` (its last table); call before
    /// [`World::start`] (or reload after).
    pub fn limits(&self, lines: &str) {
        let mut config = std::fs::read_to_string(&self.config_path).expect("read config");
        let last_table = config.rfind("\n[").expect("a table");
        assert!(
            config[last_table..].starts_with("\n[limits]"),
            "[limits] is the last table of the test config"
        );
        config.push_str(lines.trim());
        config.push('\n');
        std::fs::write(&self.config_path, config).expect("write config");
    }

    /// Adds a table (e.g. `[smtp.trusted]` with its keys) to the config, before
    /// `[limits]`; call before [`World::start`] (or reload after).
    pub fn config_table(&self, table: &str) {
        let config = std::fs::read_to_string(&self.config_path).expect("read config");
        let at = config
            .rfind("\n[limits]")
            .expect("[limits] in the test config");
        let config = format!("{}\n{}\n{}", &config[..at], table.trim(), &config[at..]);
        std::fs::write(&self.config_path, config).expect("write config");
    }

    /// The running relay's metrics, in Prometheus text.
    pub fn metrics(&self) -> String {
        self.running().services.metrics.render()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Runs `m365-relay --config <ours> args...` with `stdin`, as an admin would.
    pub fn cli(&self, args: &[&str], stdin: &str) -> Output {
        assert_cmd::Command::cargo_bin("m365-relay")
            .expect("the binary is built")
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .write_stdin(stdin)
            .output()
            .expect("run m365-relay")
    }

    /// Like [`World::cli`], and the command must succeed.
    pub fn admin(&self, args: &[&str], stdin: &str) -> String {
        let out = self.cli(args, stdin);
        assert!(
            out.status.success(),
            "m365-relay {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Registers `address` with the world's public app (`mailbox add`): no password, no token.
    pub fn register(&self, address: &str) {
        self.register_with(address, CLIENT_ID, &[]);
    }

    /// `mailbox add address --tenant <ours> --client-id client_id extra...`; its output.
    pub fn register_with(&self, address: &str, client_id: &str, extra: &[&str]) -> String {
        let app = ["--tenant", TENANT, "--client-id", client_id];
        let args = [&["mailbox", "add", address][..], &app, extra].concat();
        self.admin(&args, "")
    }

    /// Registers [`ROBOT`] as an app-only mailbox of [`ROBOT_APP`] (which the fake Entra learns,
    /// with its client secret), with `extra` options of `mailbox add`; the CLI's output.
    pub fn register_robot(&self, extra: &[&str]) -> String {
        self.entra
            .add_app(TENANT, ROBOT_APP, Some(ROBOT_APP_SECRET));
        let secret_file = self.file("secret", format!("{ROBOT_APP_SECRET}\n").as_bytes());
        let secret_file = path_str(&secret_file);
        let app_only = ["--client-secret-file", &secret_file, "--app-only"];
        self.register_with(ROBOT, ROBOT_APP, &[&app_only[..], extra].concat())
    }

    /// Registers `address` with the world's public app and a local `password`, but no token.
    pub fn add_without_token(&self, address: &str, password: &str) {
        self.register(address);
        self.set_password(address, password);
    }

    /// Sets `address`'s local password (`mailbox password --stdin`).
    pub fn set_password(&self, address: &str, password: &str) {
        let set = ["mailbox", "password", address, "--stdin"];
        self.admin(&set, &format!("{password}\n"));
    }

    /// Registers `address` with the CLI, sets its local `password`, and imports a refresh
    /// token that the fake Entra knows for it.
    pub fn add_mailbox(&self, address: &str, password: &str) {
        self.add_without_token(address, password);
        self.graph.add_user(address);
        let refresh_token = self.entra.add_user(TENANT, CLIENT_ID, address);
        self.admin(
            &["mailbox", "import-token", address],
            &format!("{refresh_token}\n"),
        );
    }

    pub async fn start(&mut self) {
        let config = Config::load(Some(&self.config_path)).expect("valid config");
        let running = server::start(config, CancellationToken::new())
            .await
            .expect("relay starts");
        self.relay = Some(running);
    }

    pub async fn stop(&mut self) {
        if let Some(relay) = self.relay.take() {
            relay.shutdown().await;
        }
    }

    /// What SIGHUP does, on the in-process relay.
    pub async fn reload(&self) -> Result<String, String> {
        self.running().reload().await
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.start().await;
    }

    /// What the running relay's sessions share (e.g. its upstream SMTP connections).
    pub fn services(&self) -> &m365_relay::server::Services {
        &self.running().services
    }

    fn running(&self) -> &Running {
        self.relay.as_ref().expect("relay started")
    }

    /// Upstream connections the relay opened before a login and still holds.
    pub fn preconnects_in_flight(&self) -> usize {
        self.running().services.preconnects.in_flight()
    }

    /// The port of the listener named `name`: `smtp`, `smtps`, `imap`, `imaps`, `pop3`,
    /// `pop3s`.
    pub fn port(&self, name: &str) -> u16 {
        let addr = self.running().addr(name);
        addr.unwrap_or_else(|| panic!("no {name} listener")).port()
    }

    /// The admin endpoint's base URL, `http://127.0.0.1:<port>`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port("admin"))
    }

    /// The admin endpoint's bearer token, from the file the relay created next to the
    /// state key (`certs/admin.token`).
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("certs/admin.token"))
            .expect("the relay created its admin token")
            .trim()
            .to_owned()
    }

    /// The SMTP plaintext + STARTTLS port.
    pub fn smtp_port(&self) -> u16 {
        self.port("smtp")
    }

    /// The SMTP implicit-TLS port.
    pub fn smtps_port(&self) -> u16 {
        self.port("smtps")
    }

    /// Writes `contents` to a file in the test folder and returns its path.
    pub fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write file");
        path
    }

    /// Logs in to the relay's IMAPS listener with LOGIN; returns the tagged reply.
    pub async fn imap_login(&self, user: &str, password: &str) -> String {
        let addr = ([127, 0, 0, 1], self.port("imaps")).into();
        let mut c = LineClient::connect_tls(addr, self.pki.client_config(), "127.0.0.1").await;
        c.read_line().await.expect("greeting");
        c.send(&format!("a LOGIN {user} \"{password}\"")).await;
        loop {
            let line = c.read_line().await.expect("reply");
            if line.starts_with("a ") {
                return line;
            }
        }
    }

    /// Runs a Python client `script` with the arguments `port ca user password`, `port` being
    /// the relay's `listener`; its output (the test fails with its stderr if it fails).
    pub async fn python_login(
        &self,
        script: &str,
        listener: &str,
        user: &str,
        password: &str,
    ) -> String {
        let port = self.port(listener).to_string();
        let args = [port, path_str(&self.ca_path), user.into(), password.into()];
        python(script, &args).await
    }

    /// A TLS connection to the relay on `port` (127.0.0.1), the relay's certificate verified.
    pub async fn tls_connect(
        &self,
        port: u16,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name =
            rustls_pki_types::ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?;
        let connector = tokio_rustls::TlsConnector::from(self.pki.client_config());
        connector.connect(name, tcp).await
    }

    /// Sends the message in `file` with smtplib ([`SMTPLIB_SEND`]) on the STARTTLS port,
    /// logged in as `user`; its trimmed output (`sent [...]`, or what was refused).
    pub async fn smtplib_send(
        &self,
        (user, password): (&str, &str),
        sender: &str,
        to: &str,
        file: &Path,
    ) -> String {
        let args = [
            self.smtp_port().to_string(),
            path_str(&self.ca_path),
            user.into(),
            password.into(),
            sender.into(),
            to.into(),
            path_str(file),
        ];
        python(SMTPLIB_SEND, &args).await.trim().to_owned()
    }

    /// Every fake must have seen only well-formed traffic, and none may have panicked.
    pub fn check_fakes(&self) {
        self.graph.check();
        self.entra.check();
        self.smtp.check();
        self.imap.check();
        self.pop3.check();
    }
}

/// Runs a blocking client program (curl, python3) off the async threads.
pub async fn run(program: &str, args: Vec<String>, stdin: Option<Vec<u8>>) -> Output {
    let program = program.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new(&program)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(&stdin.unwrap_or_default())
                .expect("write stdin");
        }
        child.wait_with_output().expect("wait for client")
    })
    .await
    .expect("client task")
}

/// A message as a legacy application would submit it: CRLF line ends, a line that needs
/// dot-stuffing, non-ASCII in 8-bit, and a body longer than one buffer.
/// Asserts that `tool` exited successfully; its stderr is the failure message.
pub fn assert_succeeded(tool: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{tool}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn sample_message(from: &str, to: &str) -> Vec<u8> {
    let mut m = format!(
        "From: Helpdesk <{from}>\r\nTo: <{to}>\r\nSubject: Ticket #4711 =?utf-8?q?=C3=BCber?=\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nHello,\r\n.a line that starts with a dot\r\nGrüße aus dem Helpdesk\r\n"
    )
    .into_bytes();
    for i in 0..2000 {
        m.extend(
            format!("line {i:05} of the ticket history, padding to make it long\r\n").as_bytes(),
        );
    }
    m
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Sends one message file with smtplib (STARTTLS, AUTH LOGIN). Arguments: port, CA file,
/// user, password, envelope sender, recipients (comma-separated), message file. Prints
/// `sent [refused recipients]`, or `sender-refused`/`data-refused`/`recipients-refused` with
/// the reply.
pub const SMTPLIB_SEND: &str = r#"
import smtplib, ssl, sys
port, cafile, user, password, sender, to, path = sys.argv[1:8]
message = open(path, "rb").read()
ctx = ssl.create_default_context(cafile=cafile)
with smtplib.SMTP("127.0.0.1", int(port), timeout=60) as s:
    s.starttls(context=ctx)
    s.login(user, password)
    try:
        refused = s.sendmail(sender, to.split(","), message)
        print("sent", sorted(refused))
    except smtplib.SMTPSenderRefused as e:
        print("sender-refused", e.smtp_code, e.smtp_error.decode())
    except smtplib.SMTPDataError as e:
        print("data-refused", e.smtp_code, e.smtp_error.decode())
    except smtplib.SMTPRecipientsRefused as e:
        print("recipients-refused", {k: v[0] for k, v in e.recipients.items()})
"#;

/// Runs a Python script with `args`; the test fails with its stderr if it fails.
pub async fn python(script: &str, args: &[String]) -> String {
    let mut all = vec!["-c".to_owned(), script.to_owned()];
    all.extend_from_slice(args);
    let out = run("python3", all, None).await;
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs curl with `args` (a CA to trust is added); returns its output.
pub async fn curl(world: &World, args: &[&str]) -> Output {
    let mut all = vec![
        "--silent".to_owned(),
        "--show-error".into(),
        "--max-time".into(),
        "30".into(),
        "--cacert".into(),
        path_str(&world.ca_path),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    run("curl", all, None).await
}

/// A message of about `size` bytes: headers, then numbered lines (some starting with a
/// dot), CRLF throughout.
pub fn big_message(size: usize) -> Vec<u8> {
    let mut m = b"From: Reporting <reports@contoso.com>\r\nTo: <alice@contoso.com>\r\nSubject: Monthly export\r\n\r\n".to_vec();
    let mut i = 0u64;
    while m.len() < size {
        let dot = if i.is_multiple_of(1000) { "." } else { "" };
        m.extend(
            format!("{dot}{i:010} the quick brown fox jumps over the lazy dog 0123456789\r\n")
                .as_bytes(),
        );
        i += 1;
    }
    m
}

/// The real `m365-relay serve` as its own process, with the ports it logged.
pub struct RelayProcess {
    pub child: std::process::Child,
    ports: Vec<(String, u16)>,
    /// Every log line it wrote, as it comes.
    pub log: std::sync::mpsc::Receiver<String>,
}

impl RelayProcess {
    /// Starts `m365-relay --config <world's> serve` and waits until every listener is up.
    pub fn start(world: &World) -> RelayProcess {
        Self::start_with_env(world, &[])
    }

    /// Like [`RelayProcess::start`], with extra environment variables.
    pub fn start_with_env(world: &World, env: &[(&str, &str)]) -> RelayProcess {
        Self::start_config(&world.config_path, env)
    }

    /// `m365-relay --config config serve` with `env` added, once every listener is up.
    pub fn start_config(config: &Path, env: &[(&str, &str)]) -> RelayProcess {
        let binary = assert_cmd::cargo::cargo_bin("m365-relay");
        let launched = launch(binary.as_os_str(), config, env, &ALL_LISTENERS)
            .unwrap_or_else(|e| panic!("start the relay ({}): {e}", config.display()));
        let (tx, log) = std::sync::mpsc::channel();
        let lines = launched.log;
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let ports = launched.ports.iter().map(|(n, a)| (n.clone(), a.port()));
        RelayProcess {
            child: launched.child,
            ports: ports.collect(),
            log,
        }
    }

    pub fn port(&self, name: &str) -> u16 {
        self.ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| panic!("no {name} listener"))
    }

    /// Sends a signal (`HUP`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        let ok = std::process::Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{name}");
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, within: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with `{needle}` within {within:?}"),
            }
        }
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait_exit(&mut self, within: std::time::Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the relay did not exit within {within:?}");
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The base64 XOAUTH2 string for `user` and `token`, as the relay sends it upstream.
pub fn xoauth2_b64(user: &str, token: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}
