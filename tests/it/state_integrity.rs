//! State integrity (issue 12 item 4): concurrent CLI changes are never lost, and a
//! `mailboxes.json` edited without the key is refused, never taken for a login.

use std::process::{Command, Stdio};

use m365_relay::auth::LocalAuth;
use m365_relay::config::Config;
use m365_relay::secret::Password;
use m365_relay::state::StateKey;

use crate::harness::World;

/// How many CLI processes change the registry at once.
const CONCURRENT: usize = 20;

/// The password every mailbox has before the change (as if it had leaked).
const LEAKED: &str = "a password that leaked";

fn address(i: usize) -> String {
    format!("user{i:02}@contoso.com")
}

/// The relay's view of the registry (as `serve` would load it), with the config's key.
fn local_auth(world: &World) -> Result<LocalAuth, String> {
    let config = Config::load(Some(&world.config_path)).expect("valid config");
    let key = StateKey::load(&config.key_file).expect("key");
    let state = m365_relay::state::files::with_key(&config.state_dir, key);
    LocalAuth::open(state.registry()).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_password_changes_all_take_effect() {
    let world = World::new().await;
    for i in 0..CONCURRENT {
        world.add_mailbox(&address(i), LEAKED);
    }
    // 20 real processes, started together, each giving one mailbox a new password.
    let program = assert_cmd::cargo::cargo_bin("m365-relay");
    let children: Vec<_> = (0..CONCURRENT)
        .map(|i| {
            Command::new(&program)
                .arg("--config")
                .arg(&world.config_path)
                .args(["mailbox", "password", &address(i), "--generate"])
                .env("M365_RELAY_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start m365-relay")
        })
        .collect();
    let mut passwords = Vec::new();
    for child in children {
        let out = child.wait_with_output().expect("m365-relay ran");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let password = String::from_utf8(out.stdout).expect("UTF-8");
        passwords.push(password.trim().to_owned());
    }
    let auth = local_auth(&world).expect("the registry loads");
    let mut lost = Vec::new();
    for (i, password) in passwords.iter().enumerate() {
        let password = Password::new(password.clone());
        let leaked = Password::new(LEAKED);
        if auth.check(&address(i), &password).await.is_none()
            || auth.check(&address(i), &leaked).await.is_some()
        {
            lost.push(address(i));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {CONCURRENT} password changes were lost: {lost:?}",
        lost.len()
    );
}

#[tokio::test]
async fn a_verifier_copied_onto_another_mailbox_gives_no_login() {
    let mut world = World::new().await;
    world.add_mailbox("alice@contoso.com", "alice's password");
    world.add_mailbox("mallory@contoso.com", "mallory's password");
    let file = world.state_dir().join("mailboxes.json");
    let text = std::fs::read_to_string(&file).expect("registry");
    assert!(text.contains("\"mac\": \"hs256:"), "{text}");
    world.start().await;

    // Someone who can write the state folder, but not read the key, gives alice
    // mallory's verifier.
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let mailboxes = json["mailboxes"].as_array_mut().expect("mailboxes");
    let mallory = mailboxes
        .iter()
        .find(|m| m["address"] == "mallory@contoso.com")
        .expect("mallory")["password"]
        .clone();
    for m in mailboxes.iter_mut() {
        if m["address"] == "alice@contoso.com" {
            m["password"] = mallory.clone();
        }
    }
    std::fs::write(&file, serde_json::to_vec_pretty(&json).expect("JSON")).expect("write");

    // The running relay does not take the file: alice's own password still works,
    // mallory's does not open alice.
    let alice = "alice@contoso.com";
    let reply = world.imap_login(alice, "mallory's password").await;
    assert!(reply.starts_with("a NO"), "{reply}");
    let reply = world.imap_login(alice, "alice's password").await;
    assert!(reply.starts_with("a OK"), "{reply}");
    let reload = world.reload().await.expect_err("the reload is refused");
    assert!(reload.contains("mailboxes.json is refused"), "{reload}");

    // A fresh start refuses the file, as does every CLI command, naming it and the way out.
    let Err(fresh) = local_auth(&world) else {
        panic!("a fresh start takes the edited registry");
    };
    assert!(fresh.contains("mailboxes.json is refused"), "{fresh}");
    let out = world.cli(&["mailbox", "list"], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mailboxes.json is refused"), "{err}");
    assert!(err.contains("changed without the key"), "{err}");
    assert!(err.contains("restore it from a backup"), "{err}");
    assert!(err.contains("state reseal --trust-current-file"), "{err}");
    assert!(!err.contains("$argon2"), "{err}");
    // The way out needs the explicit flag.
    let out = world.cli(&["state", "reseal"], "");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--trust-current-file"));
    world.admin(&["state", "reseal", "--trust-current-file"], "");
    let auth = local_auth(&world).expect("sealed on the administrator's word");
    assert!(
        auth.check(alice, &Password::new("mallory's password"))
            .await
            .is_some()
    );
}

#[tokio::test]
async fn a_legacy_registry_is_migrated_once_by_the_first_start_then_refused() {
    let world = World::new().await;
    world.add_mailbox("alice@contoso.com", "alice's password");
    let file = world.state_dir().join("mailboxes.json");
    let config = Config::load(Some(&world.config_path)).expect("valid config");
    let marker = config.key_file.with_file_name("state.key.sealed");
    assert!(marker.exists(), "the first save left the seal marker");
    // As the release before wrote it: version 4, no MAC, and no marker yet.
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("registry")).expect("JSON");
    json["version"] = 4.into();
    json.as_object_mut().expect("object").remove("mac");
    let v4 = serde_json::to_vec_pretty(&json).expect("JSON");
    std::fs::write(&file, &v4).expect("write");
    std::fs::remove_file(&marker).expect("marker");

    let auth = local_auth(&world).expect("the first start after the upgrade migrates");
    assert!(
        auth.check("alice@contoso.com", &Password::new("alice's password"))
            .await
            .is_some()
    );
    let text = std::fs::read_to_string(&file).expect("registry");
    assert!(
        text.contains("\"version\": 5") && text.contains("\"mac\""),
        "{text}"
    );
    assert!(marker.exists());

    // The old file put back: refused from now on.
    std::fs::write(&file, &v4).expect("write");
    let Err(e) = local_auth(&world) else {
        panic!("the legacy file put back is taken");
    };
    assert!(e.contains("it has no MAC (format version 4)"), "{e}");
    let out = world.cli(
        &["mailbox", "password", "alice@contoso.com", "--generate"],
        "",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("state.key.sealed exists"));
    assert_eq!(
        std::fs::read(&file).expect("registry"),
        v4,
        "never rewritten"
    );
}
