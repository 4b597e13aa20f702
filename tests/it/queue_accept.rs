//! Accepting mail into the queue: a mailbox with `delivery = queue` (and every device of the
//! trusted-network listener) hears `250 2.0.0 Ok: queued as ID` only once the message is
//! stored sealed in the state folder; a queue that cannot store it (over `queue.max_bytes`,
//! or the disk full) answers `452 4.3.1` and keeps nothing; the sender rules still hold; a
//! queued mailbox logs in with Microsoft away; and the delivery log says what happened.
//! Driven with Python's smtplib. The relay's SMTP upstream is a closed port unless a test
//! needs Exchange, so that queued messages stay in the queue to be looked at.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{World, path_str, python};

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "alice-local-password";
const BOB: &str = "bob@contoso.com";
const BOB_PW: &str = "bob-local-password";
const SCANNER: &str = "scanner@contoso.com";
/// In every test body: it must never appear in the state folder in plain text.
const MARKER: &str = "plaintext-marker-6c1f0e2a9b";

/// One transaction with smtplib, each step's reply printed: `login CODE TEXT` when the
/// login fails, `mail CODE TEXT`, `rcpt CODE TEXT`, `data CODE TEXT`, then `ehlo` and the
/// EHLO keywords after login. No user: no STARTTLS and no login (the trusted listener),
/// from `source`.
const TRANSACTION: &str = r#"
import smtplib, ssl, sys
port, cafile, user, password, sender, to, path, source = sys.argv[1:9]
message = open(path, "rb").read()
s = smtplib.SMTP("127.0.0.1", int(port), timeout=60, source_address=(source, 0))
s.ehlo("app")
if user:
    s.starttls(context=ssl.create_default_context(cafile=cafile))
    s.ehlo("app")
    try:
        s.login(user, password)
    except smtplib.SMTPAuthenticationError as e:
        print("login", e.smtp_code, e.smtp_error.decode())
        sys.exit(0)
    s.ehlo("app")
features = " ".join(sorted(s.esmtp_features))
steps = (("mail", lambda: s.mail(sender)), ("rcpt", lambda: s.rcpt(to)),
         ("data", lambda: s.data(message)))
for step, call in steps:
    code, text = call()
    print(step, code, text.decode())
    if code >= 300:
        break
s.quit()
print("ehlo", features)
"#;

/// A message from `from` with [`MARKER`] and `filler` bytes in its body.
fn message(from: &str, filler: usize) -> String {
    format!(
        "From: <{from}>\r\nTo: <carol@example.com>\r\nSubject: invoice\r\nMessage-ID: <inv-1@contoso.com>\r\n\r\n{MARKER}\r\n{}\r\n",
        "x".repeat(filler)
    )
}

/// Sends `message` as `user` on the STARTTLS port (`user` empty: to the trusted listener
/// from `127.0.0.2`); the replies, one line per step.
async fn send(world: &World, user: (&str, &str), sender: &str, message: &str) -> String {
    let path = world.file("outgoing.eml", message.as_bytes());
    let (port, source) = match user.0 {
        "" => (world.port("smtp-trusted"), "127.0.0.2"),
        _ => (world.smtp_port(), "127.0.0.1"),
    };
    let args = [
        port.to_string(),
        path_str(&world.ca_path),
        user.0.into(),
        user.1.into(),
        sender.into(),
        "carol@example.com".into(),
        path_str(&path),
        source.into(),
    ];
    python(TRANSACTION, &args).await
}

/// The queue id in the reply to the message, if it was queued.
fn queued_id(replies: &str) -> Option<String> {
    let line = replies.lines().find(|l| l.starts_with("data "))?;
    let id = line.strip_prefix("data 250 2.0.0 Ok: queued as ")?;
    Some(id.trim().to_owned())
}

/// A port nothing listens on.
fn closed_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A world whose SMTP upstream is closed, with alice (`delivery = queue`) and bob
/// (direct); `setup` runs before the relay starts.
async fn world_with(setup: impl FnOnce(&World)) -> World {
    world_upstream(Some(closed_port()), setup).await
}

/// [`world_with`] with Exchange at `upstream` (`None`: the fake).
async fn world_upstream(
    upstream: Option<std::net::SocketAddr>,
    setup: impl FnOnce(&World),
) -> World {
    let mut world = World::with_upstream(upstream).await;
    world.add_mailbox(ALICE, ALICE_PW);
    world.add_mailbox(BOB, BOB_PW);
    world.admin(&["mailbox", "sending", ALICE, "--delivery", "queue"], "");
    setup(&world);
    world.start().await;
    world
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The names of the files in the queue folder (but its change stamp, `.changed`).
fn queue_files(world: &World) -> Vec<String> {
    let mut names: Vec<String> = files_under(&world.state_dir().join("queue"))
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
        .filter(|name| name != ".changed")
        .collect();
    names.sort();
    names
}

/// The entry of `id` as accepted: the first line of its message file (`{id}.msg`: a line of
/// JSON, then the sealed body).
fn accepted_entry(world: &World, id: &str) -> serde_json::Value {
    let file = std::fs::read(world.state_dir().join(format!("queue/{id}.msg"))).unwrap();
    let line = file.split(|&b| b == b'\n').next().unwrap();
    let header: serde_json::Value = serde_json::from_slice(line).unwrap();
    header["entry"].clone()
}

/// The delivery log's lines so far.
fn log_lines(world: &World) -> Vec<serde_json::Value> {
    let path = world.state_dir().join("delivery-log/current.jsonl");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// The delivery log's lines once `n` satisfy `wanted` (its writer is a thread of its own).
async fn log_lines_until(
    world: &World,
    n: usize,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    for _ in 0..400 {
        let lines = log_lines(world);
        if lines.iter().filter(|l| wanted(l)).count() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("fewer than {n} such lines: {:?}", log_lines(world));
}

/// Waits until the delivery log has `n` `queued` lines of `mailbox` (the trusted listener's
/// messages go through the queue).
pub(crate) async fn wait_queued(world: &World, mailbox: &str, n: usize) {
    log_lines_until(world, n, |l| {
        l["event"] == "queued" && l["mailbox"] == mailbox
    })
    .await;
}

#[tokio::test]
async fn a_queued_mailbox_hears_its_queue_id_once_the_message_is_stored_sealed() {
    let world = world_with(|_| {}).await;
    let mailbox = world.admin(&["mailbox", "sending", ALICE], "");
    assert!(mailbox.contains("delivery: queue"), "{mailbox}");
    let list = world.admin(&["mailbox", "list"], "");
    assert!(list.contains("smtp=auto  delivery=queue"), "{list}");

    let replies = send(&world, (ALICE, ALICE_PW), ALICE, &message(ALICE, 10_000)).await;
    let id = queued_id(&replies).unwrap_or_else(|| panic!("{replies}"));
    // The relay is the server here, as on the Graph way.
    let ehlo = replies.lines().last().unwrap_or_default();
    assert_eq!(
        ehlo, "ehlo 8bitmime chunking enhancedstatuscodes pipelining size smtputf8",
        "{replies}"
    );
    let files = queue_files(&world);
    assert!(files.contains(&format!("{id}.msg")), "{files:?}");
    let entry = accepted_entry(&world, &id);
    assert_eq!(entry["id"], id.as_str());
    let envelope = &entry["envelope"];
    assert_eq!(envelope["mailbox"], ALICE);
    assert_eq!(envelope["sender"], ALICE);
    assert_eq!(
        envelope["recipients"],
        serde_json::json!(["carol@example.com"])
    );
    assert_eq!(envelope["client"], "127.0.0.1");
    assert_eq!(envelope["message_id"], "<inv-1@contoso.com>");
    // The body is sealed: the marker is nowhere in the state folder.
    for file in files_under(&world.state_dir()) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(
            memchr::memmem::find(&bytes, MARKER.as_bytes()).is_none(),
            "{} holds the body in plain text",
            file.display()
        );
    }
    let lines = log_lines_until(&world, 1, |l| l["event"] == "queued").await;
    let queued = lines.iter().find(|l| l["event"] == "queued").unwrap();
    assert_eq!(queued["queue_id"], id.as_str());
    assert_eq!(queued["mailbox"], ALICE);
    assert_eq!(queued["client"], "127.0.0.1");
    assert_eq!(queued["route"], "queue");
    assert!(world.smtp.messages().is_empty());
}

#[tokio::test]
async fn a_queue_over_its_max_bytes_answers_452_and_keeps_nothing() {
    let world = world_with(|world| world.config_table("[queue]\nmax_bytes = 4096")).await;
    let replies = send(&world, (ALICE, ALICE_PW), ALICE, &message(ALICE, 8_000)).await;
    assert!(
        replies.contains("data 452 4.3.1 Insufficient system storage"),
        "{replies}"
    );
    assert_eq!(queue_files(&world), Vec::<String>::new(), "nothing is kept");
    // A message that fits is taken: the refused one took no room.
    let replies = send(&world, (ALICE, ALICE_PW), ALICE, &message(ALICE, 100)).await;
    assert!(queued_id(&replies).is_some(), "{replies}");
    let lines = log_lines_until(&world, 1, |l| l["event"] == "queued").await;
    assert!(
        lines.iter().any(|l| l["event"] == "refused"
            && l["reply"]
                .as_str()
                .unwrap_or_default()
                .starts_with("452 4.3.1")),
        "{lines:?}"
    );
}

/// A tmpfs of `size` mounted on `dir` (created) for a test; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (the tests run as root)"
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Writes a file into `dir` until the file system is full.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test]
async fn a_full_disk_answers_452_leaves_no_partial_file_and_recovers() {
    let mut world = World::with_upstream(Some(closed_port())).await;
    let _tmpfs = Tmpfs::mount(&world.state_dir(), "8m");
    world.add_mailbox(ALICE, ALICE_PW);
    world.admin(&["mailbox", "sending", ALICE, "--delivery", "queue"], "");
    world.start().await;
    let filler = fill(&world.state_dir());
    let replies = send(&world, (ALICE, ALICE_PW), ALICE, &message(ALICE, 200_000)).await;
    assert!(
        replies.contains("data 452 4.3.1 Insufficient system storage"),
        "{replies}"
    );
    assert_eq!(queue_files(&world), Vec::<String>::new(), "no partial file");
    std::fs::remove_file(filler).unwrap();
    let replies = send(&world, (ALICE, ALICE_PW), ALICE, &message(ALICE, 200_000)).await;
    let id = queued_id(&replies).unwrap_or_else(|| panic!("{replies}"));
    let files = queue_files(&world);
    assert!(files.contains(&format!("{id}.msg")), "{files:?}");
    assert!(files.iter().all(|f| f.starts_with(&id)), "{files:?}");
    world.stop().await;
}

#[tokio::test]
async fn the_sender_rules_refuse_on_the_queue_way_as_on_the_direct_way() {
    // Exchange is up: bob (direct) logs in upstream.
    let world = world_upstream(None, |_| {}).await;
    let refused =
        "mail 550 5.7.1 Sender <ceo@contoso.com> is not allowed for this mailbox; allowed senders:";
    let header = "data 550 5.7.1 Header sender <ceo@contoso.com> is not allowed for this mailbox; allowed senders:";
    for (user, password) in [(ALICE, ALICE_PW), (BOB, BOB_PW)] {
        let out = send(
            &world,
            (user, password),
            "ceo@contoso.com",
            &message(user, 10),
        )
        .await;
        let first = out.lines().next().unwrap_or_default();
        assert_eq!(first, format!("{refused} {user}"), "{user}");
        let out = send(
            &world,
            (user, password),
            user,
            &message("ceo@contoso.com", 10),
        )
        .await;
        assert!(out.contains(&format!("{header} {user}")), "{user}: {out}");
    }
    assert_eq!(queue_files(&world), Vec::<String>::new());
    let lines = log_lines_until(&world, 1, |l| {
        l["event"] == "refused" && l["mailbox"] == ALICE && l["sender"] == ALICE
    })
    .await;
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "refused" && l["sender"] == "ceo@contoso.com"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn the_trusted_listener_queues_whatever_the_mailbox_says() {
    let world = world_with(|world| {
        world.add_mailbox(SCANNER, "unused-scanner-password");
        world.config_table(&format!(
            "[smtp.trusted]\nlisten = \"127.0.0.1:0\"\nnetworks = [\"127.0.0.2/32\"]\nmailbox = \"{SCANNER}\""
        ));
    })
    .await;
    let replies = send(&world, ("", ""), SCANNER, &message(SCANNER, 10)).await;
    let id = queued_id(&replies).unwrap_or_else(|| panic!("{replies}"));
    let entry = accepted_entry(&world, &id);
    assert_eq!(entry["envelope"]["mailbox"], SCANNER);
    assert_eq!(entry["envelope"]["client"], "127.0.0.2");
    // The sender rules hold there too.
    let out = send(&world, ("", ""), "ceo@contoso.com", &message(SCANNER, 10)).await;
    assert!(out.starts_with("mail 550 5.7.1"), "{out}");
}

#[tokio::test]
async fn a_queued_mailbox_logs_in_and_queues_while_microsoft_is_away() {
    let world = world_with(|world| {
        // Entra ID unreachable too, and alice's refresh token revoked (needs reauth).
        let config = std::fs::read_to_string(&world.config_path).unwrap();
        let authority = world.entra.authority();
        let away = format!("http://{}", closed_port());
        std::fs::write(&world.config_path, config.replace(&authority, &away)).unwrap();
        world.entra.revoke_refresh_tokens_of(ALICE);
    })
    .await;
    let replies = send(&world, (ALICE, ALICE_PW), ALICE, &message(ALICE, 10)).await;
    assert!(queued_id(&replies).is_some(), "{replies}");
    // A direct mailbox cannot log in upstream now.
    let replies = send(&world, (BOB, BOB_PW), BOB, &message(BOB, 10)).await;
    assert!(replies.starts_with("login 454 4.7.0"), "{replies}");
    // The local password still decides.
    let replies = send(&world, (ALICE, "wrong"), ALICE, &message(ALICE, 10)).await;
    assert!(replies.starts_with("login 535"), "{replies}");
}

#[tokio::test]
async fn the_delivery_log_says_accepted_refused_and_queued() {
    let world = world_upstream(None, |_| {}).await;
    let sent = send(&world, (BOB, BOB_PW), BOB, &message(BOB, 10)).await;
    assert!(sent.contains("data 250"), "{sent}");
    let refused = send(&world, (BOB, BOB_PW), BOB, &message("ceo@contoso.com", 10)).await;
    assert!(refused.contains("data 550 5.7.1"), "{refused}");
    let queued = send(&world, (ALICE, ALICE_PW), ALICE, &message(ALICE, 10)).await;
    let id = queued_id(&queued).unwrap_or_else(|| panic!("{queued}"));
    let lines = log_lines_until(&world, 1, |l| l["event"] == "queued").await;
    let accepted = lines
        .iter()
        .find(|l| l["event"] == "accepted")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert_eq!(accepted["mailbox"], BOB);
    assert_eq!(accepted["route"], "smtp");
    assert_eq!(accepted["sender"], BOB);
    assert_eq!(
        accepted["recipients"],
        serde_json::json!(["carol@example.com"])
    );
    assert_eq!(accepted["message_id"], "<inv-1@contoso.com>");
    assert_eq!(accepted["client"], "127.0.0.1");
    let microsoft = accepted["reply"].as_str().unwrap();
    assert!(microsoft.starts_with("250 2.0.0 OK"), "{microsoft}");
    assert!(accepted["size"].as_u64().unwrap() > 10);
    let refusal = lines
        .iter()
        .find(|l| l["event"] == "refused")
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(
        refusal["reply"]
            .as_str()
            .unwrap()
            .starts_with("550 5.7.1 Header sender <ceo@contoso.com>")
    );
    let queued = lines.iter().find(|l| l["event"] == "queued").unwrap();
    assert_eq!(queued["queue_id"], id.as_str());
    let text =
        std::fs::read_to_string(world.state_dir().join("delivery-log/current.jsonl")).unwrap();
    assert!(!text.contains(MARKER), "no body in the log");
    world.check_fakes();
}
