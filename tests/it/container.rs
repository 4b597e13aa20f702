//! The container image as an operator runs it (issue 13): read-only, without capabilities,
//! as uid 10001; healthy; managed with the CLI inside it; relaying a STARTTLS login from the
//! host to the fakes of Entra and Exchange on the host's loopback (`--network host`);
//! making its admin token in the `certs` volume; stopping after the grace period with exit
//! code 0; keeping mailbox, tokens and certificate in its volumes for the next container.
//!
//! It needs podman and a built image, so it is `#[ignore]`d: `deploy/test-container.sh`
//! builds the image and runs `cargo test --test it container -- --ignored` with
//! `M365_RELAY_IMAGE` set. Without that variable it fails; it never skips.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::harness::{self, CLIENT_ID, SMTPLIB_SEND, TENANT, World, path_str, python};

const MAILBOX: &str = "alice@contoso.com";
/// The image's user and group (Dockerfile `USER`).
const UID: u32 = 10001;
/// `limits.shutdown_grace_secs` of the test config (the image's is 30 s).
const GRACE: Duration = Duration::from_secs(5);
/// The SMTP STARTTLS port of config/docker.toml.
const SMTP_PORT: u16 = 1587;
/// Longest any one podman command may take.
const PODMAN_TIMEOUT_SECS: &str = "120";

/// Containers and volumes of one test run, named after the process; removed on drop.
struct Podman {
    image: String,
    prefix: String,
    dir: PathBuf,
}

impl Podman {
    fn new(dir: &Path) -> Podman {
        let image = std::env::var("M365_RELAY_IMAGE").unwrap_or_else(|_| {
            panic!(
                "M365_RELAY_IMAGE is not set: run deploy/test-container.sh, which builds the image"
            )
        });
        Podman {
            image,
            prefix: format!("m365-relay-it-{}", std::process::id()),
            dir: dir.to_owned(),
        }
    }

    fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    /// Runs `podman args...` (bounded in time) with `stdin`.
    async fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut all = vec![PODMAN_TIMEOUT_SECS.to_owned(), "podman".to_owned()];
        all.extend(args.iter().map(|a| a.to_string()));
        harness::run("timeout", all, Some(stdin.as_bytes().to_vec())).await
    }

    /// Like [`Podman::run`], and it must succeed; its standard output.
    async fn ok(&self, args: &[&str], stdin: &str) -> String {
        let out = self.run(args, stdin).await;
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `m365-relay args...` inside the running container `name`.
    async fn relay_cli(&self, name: &str, args: &[&str], stdin: &str) -> String {
        let mut all = vec!["exec", "-i", name, "m365-relay"];
        all.extend_from_slice(args);
        self.ok(&all, stdin).await
    }

    /// Starts the relay as the README's `podman run` does, on the host's network, with the
    /// test config, the key as a secret file, and the two volumes.
    async fn start_relay(&self, what: &str) -> String {
        let name = self.name(what);
        let mounts = [
            format!(
                "{}:/etc/m365-relay/m365-relay.toml:ro",
                self.file("relay.toml")
            ),
            format!("{}:/etc/m365-relay/test-ca.crt:ro", self.file("ca.crt")),
            format!(
                "{}:/run/secrets/m365_relay_key:ro",
                self.file("m365-relay.key")
            ),
            format!("{}:/var/lib/m365-relay/state", self.name("state")),
            format!("{}:/var/lib/m365-relay/certs", self.name("certs")),
        ];
        let mut args = vec!["run", "--detach", "--name", &name, "--network", "host"];
        args.extend(["--hostname", "relay", "--read-only", "--cap-drop", "ALL"]);
        args.extend(["--security-opt", "no-new-privileges"]);
        for mount in &mounts {
            args.extend(["--volume", mount]);
        }
        args.push(&self.image);
        self.ok(&args, "").await;
        self.wait_healthy(&name).await;
        name
    }

    fn file(&self, name: &str) -> String {
        path_str(&self.dir.join(name))
    }

    /// Runs the image's HEALTHCHECK (no systemd timer runs it here) until it passes.
    async fn wait_healthy(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.run(&["healthcheck", "run", name], "").await;
            if out.status.success() {
                let status = self.inspect(name, "{{.State.Health.Status}}").await;
                assert_eq!(status, "healthy", "podman inspect after a passed check");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not healthy within 30 s: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                self.logs(name).await
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn inspect(&self, name: &str, format: &str) -> String {
        let out = self.ok(&["inspect", "--format", format, name], "").await;
        out.trim().to_owned()
    }

    async fn logs(&self, name: &str) -> String {
        let out = self.run(&["logs", name], "").await;
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        use std::process::Command;
        for what in ["first", "second"] {
            let _ = Command::new("podman")
                .args(["rm", "--force", "--time", "0", &self.name(what)])
                .output();
        }
        for what in ["state", "certs"] {
            let _ = Command::new("podman")
                .args(["volume", "rm", "--force", &self.name(what)])
                .output();
        }
    }
}

/// config/docker.toml, as shipped, pointed at the fakes: listeners on the host's loopback
/// instead of every address, Exchange's SMTP, Entra and Graph on loopback, the test CA,
/// and a short grace period.
fn test_config(world: &World) -> String {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/docker.toml"))
            .expect("config/docker.toml");
    assert!(shipped.contains("\n[smtp]\n") && shipped.contains("\n[admin]\n"));
    let upstreams = format!("\n[smtp]\nupstream = \"{}\"\n", world.smtp.addr());
    let imap = format!("\n[imap]\nupstream = \"{}\"\n", world.imap.addr());
    let pop3 = format!("\n[pop3]\nupstream = \"{}\"\n", world.pop3.addr());
    let mut config = shipped
        .replace("\"0.0.0.0:", "\"127.0.0.1:")
        .replacen("\n[smtp]\n", &upstreams, 1)
        .replacen("\n[imap]\n", &imap, 1)
        .replacen("\n[pop3]\n", &pop3, 1);
    config.push_str(&format!(
        "\n[upstream]\nca_file = \"/etc/m365-relay/test-ca.crt\"\n\
         [entra]\nauthority = \"{}\"\n\
         [graph]\nendpoint = \"{}\"\n\
         [limits]\nshutdown_grace_secs = {}\n",
        world.entra.authority(),
        world.graph.endpoint(),
        GRACE.as_secs()
    ));
    config
}

/// The files the container mounts: config and CA readable by its user, the key private to
/// it (uid 10001, mode 0600), as the README asks of the compose secret.
fn write_mounted_files(world: &World) {
    use std::os::unix::fs::PermissionsExt;
    let dir = world.dir.path();
    let readable = std::fs::Permissions::from_mode(0o644);
    std::fs::write(dir.join("relay.toml"), test_config(world)).expect("write config");
    std::fs::set_permissions(dir.join("relay.toml"), readable.clone()).expect("chmod");
    std::fs::copy(&world.ca_path, dir.join("ca.crt")).expect("copy CA");
    std::fs::set_permissions(dir.join("ca.crt"), readable).expect("chmod");
    let key = dir.join("m365-relay.key");
    std::fs::write(&key, "c3RhdGUta2V5LW9mLXRoZS1jb250YWluZXItdGVzdCE=\n").expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::chown(&key, Some(UID), Some(UID)).expect("chown the key (run as root)");
}

/// From outside, as an operator checks it: read-only root, no capabilities, uid 10001.
async fn check_hardening(podman: &Podman, name: &str) {
    assert_eq!(
        podman.inspect(name, "{{.HostConfig.ReadonlyRootfs}}").await,
        "true"
    );
    let status = podman
        .ok(&["exec", name, "cat", "/proc/1/status"], "")
        .await;
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(field("Uid:"), ["10001"; 4], "the relay runs as uid 10001");
    assert_eq!(field("Gid:"), ["10001"; 4]);
    for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(caps), ["0000000000000000"], "{caps} of the relay");
    }
    let write = podman
        .run(&["exec", name, "touch", "/usr/local/bin/x"], "")
        .await;
    assert!(!write.status.success(), "the root file system is writable");
    assert!(String::from_utf8_lossy(&write.stderr).contains("Read-only file system"));
}

/// Registers the mailbox with the CLI inside the container; its new local password.
async fn register_mailbox(podman: &Podman, world: &World, name: &str) -> String {
    let add = [
        "mailbox",
        "add",
        MAILBOX,
        "--tenant",
        TENANT,
        "--client-id",
        CLIENT_ID,
    ];
    podman.relay_cli(name, &add, "").await;
    let refresh_token = world.entra.add_user(TENANT, CLIENT_ID, MAILBOX);
    let import = ["mailbox", "import-token", MAILBOX];
    podman
        .relay_cli(name, &import, &format!("{refresh_token}\n"))
        .await;
    let generate = ["mailbox", "password", MAILBOX, "--generate"];
    let password = podman.relay_cli(name, &generate, "").await;
    assert_mailbox_listed(podman, name).await;
    password.trim().to_owned()
}

/// `mailbox list --json` inside the container shows the mailbox with its token stored.
async fn assert_mailbox_listed(podman: &Podman, name: &str) {
    let list = podman
        .relay_cli(name, &["mailbox", "list", "--json"], "")
        .await;
    let rows: serde_json::Value = serde_json::from_str(&list).expect("list --json");
    let row = rows
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["address"] == MAILBOX))
        .unwrap_or_else(|| panic!("{MAILBOX} not listed: {list}"));
    assert_eq!(row["token_stored"], true, "{list}");
}

/// The admin endpoint's bearer token, which the relay made in its `certs` volume on the
/// first start (`/run/secrets`, the key's folder, is read-only); `m365-relay status` inside
/// finds it. Its content, for the next container.
async fn admin_token(podman: &Podman, name: &str) -> String {
    podman.relay_cli(name, &["status"], "").await;
    let token = podman
        .ok(
            &["exec", name, "cat", "/var/lib/m365-relay/certs/admin.token"],
            "",
        )
        .await;
    assert!(
        token.trim().len() >= 32,
        "no admin token in the certs volume"
    );
    token
}

/// A client on the host logs in over STARTTLS, verifying the certificate the relay made
/// (copied out of its volume), and sends; the message must reach the fake Exchange. The
/// certificate's bytes.
async fn send_through(
    podman: &Podman,
    world: &World,
    name: &str,
    password: &str,
    tag: &str,
) -> Vec<u8> {
    let cert = world.dir.path().join(format!("{tag}.crt"));
    let source = format!("{name}:/var/lib/m365-relay/certs/relay.crt");
    podman.ok(&["cp", &source, &path_str(&cert)], "").await;
    let mut message = format!("Subject: {tag}\r\n").into_bytes();
    message.extend(harness::sample_message(MAILBOX, "bob@fabrikam.com"));
    let message_path = world.file(&format!("{tag}.eml"), &message);
    let args = [
        SMTP_PORT.to_string(),
        path_str(&cert),
        MAILBOX.into(),
        password.into(),
    ];
    let rest = [
        MAILBOX.into(),
        "bob@fabrikam.com".into(),
        path_str(&message_path),
    ];
    let out = python(SMTPLIB_SEND, &[&args[..], &rest[..]].concat()).await;
    assert_eq!(out.trim(), "sent []", "{}", podman.logs(name).await);
    let arrived = world.smtp.messages();
    let arrived = arrived
        .iter()
        .find(|m| m.data.windows(tag.len()).any(|w| w == tag.as_bytes()))
        .unwrap_or_else(|| panic!("{tag} did not arrive upstream"));
    assert_eq!(arrived.authenticated_as, MAILBOX);
    assert_eq!(arrived.rcpt_to, ["bob@fabrikam.com"]);
    std::fs::read(&cert).expect("read the certificate")
}

/// `podman stop` with a session open: the relay waits the grace period, then exits 0.
async fn stop_with_open_session(podman: &Podman, name: &str) {
    let mut session = TcpStream::connect(("127.0.0.1", SMTP_PORT)).expect("connect");
    session
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut greeting = [0u8; 512];
    let n = session.read(&mut greeting).expect("greeting");
    assert!(greeting[..n].starts_with(b"220 "), "{:?}", &greeting[..n]);
    session.write_all(b"EHLO app.example\r\n").expect("EHLO");

    let started = Instant::now();
    podman.ok(&["stop", "--time", "30", name], "").await;
    let took = started.elapsed();
    assert_eq!(podman.inspect(name, "{{.State.ExitCode}}").await, "0");
    assert!(
        took >= GRACE - Duration::from_millis(200) && took < GRACE + Duration::from_secs(10),
        "stopped after {took:?}, grace {GRACE:?}"
    );
    let logs = podman.logs(name).await;
    assert!(logs.contains("grace period over"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs podman and the image: deploy/test-container.sh"]
async fn container_runs_hardened_relays_and_keeps_its_state() {
    let world = World::new().await;
    let podman = Podman::new(world.dir.path());
    write_mounted_files(&world);

    let first = podman.start_relay("first").await;
    check_hardening(&podman, &first).await;
    let password = register_mailbox(&podman, &world, &first).await;
    let token = admin_token(&podman, &first).await;
    let cert = send_through(&podman, &world, &first, &password, "container-first").await;
    stop_with_open_session(&podman, &first).await;
    podman.ok(&["rm", &first], "").await;

    // A new container on the same volumes: the mailbox, its token and the certificate.
    let second = podman.start_relay("second").await;
    assert_mailbox_listed(&podman, &second).await;
    let kept = send_through(&podman, &world, &second, &password, "container-second").await;
    assert_eq!(cert, kept, "the certificate is kept in its volume");
    let kept = admin_token(&podman, &second).await;
    assert!(token == kept, "the admin token is kept in its volume");
    podman.ok(&["stop", "--time", "30", &second], "").await;
    world.check_fakes();
}

#[tokio::test]
#[ignore = "needs podman and the image: deploy/test-container.sh"]
async fn container_without_a_key_says_how_to_give_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let podman = Podman::new(dir.path());
    let args = [
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--cap-drop",
        "ALL",
    ];
    let mut args = args.to_vec();
    args.extend([podman.image.as_str(), "mailbox", "list"]);
    let out = podman.run(&args, "").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no state key: mount the secret or set M365_RELAY_KEY"),
        "{stderr}"
    );
}
