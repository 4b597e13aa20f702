//! Secrets at rest (issue 4 item 3): after a confidential mailbox is registered, a refresh
//! token imported, and the relay has rotated it at a login, no refresh token and no client
//! secret is anywhere under the state folder in plain text (nor in base64); and another
//! key is refused with a clear message, never taken for an empty store.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use m365_relay::config::Config;
use m365_relay::state::files::with_key;
use m365_relay::state::{StateKey, StoreError};

use crate::harness::{TENANT, World};
use crate::util::files_under;

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "alice's local password";
/// A confidential app registration, next to the harness's public one.
const CONFIDENTIAL_APP: &str = "3f2b8c1e-6d4a-4f0e-9a7b-5c1d2e3f4a5b";
const CLIENT_SECRET: &str = "Qx8~conf.Secret-value_0123456789abcdef";

/// A key that is not the one in the key file.
fn other_key() -> String {
    STANDARD.encode([0x5a; 32])
}

/// Alice registered with a confidential client through the CLI, with a local password
/// and an imported refresh token (returned).
fn register_alice(world: &World) -> String {
    world
        .entra
        .add_app(TENANT, CONFIDENTIAL_APP, Some(CLIENT_SECRET));
    let secret_file = world.file("client-secret.txt", format!("{CLIENT_SECRET}\n").as_bytes());
    let secret = secret_file.to_str().expect("UTF-8 path");
    let out = world.register_with(ALICE, CONFIDENTIAL_APP, &["--client-secret-file", secret]);
    assert!(out.contains("(confidential client)"), "{out}");
    world.set_password(ALICE, ALICE_PW);
    let imported = world.entra.add_user(TENANT, CONFIDENTIAL_APP, ALICE);
    world.admin(
        &["mailbox", "import-token", ALICE],
        &format!("{imported}\n"),
    );
    imported
}

/// The forms in which `secret` could be found: itself, and its base64 (both alphabets) at
/// each of the three alignments it can have inside a longer encoded text.
fn findable_forms(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_owned()];
    for alphabet in [STANDARD, URL_SAFE] {
        for skip in 0..3 {
            let mut bytes = vec![0u8; skip];
            bytes.extend_from_slice(secret.as_bytes());
            let encoded = alphabet.encode(&bytes);
            // Drop the characters that also encode the prefix, and the last group.
            let start = (skip * 8).div_ceil(6);
            let core = &encoded[start..encoded.len() - 4];
            forms.push(core.to_owned());
        }
    }
    forms
}

/// Fails if any file under `state_dir` holds one of `secrets` in a findable form.
fn assert_nowhere_in_plain_text(state_dir: &Path, secrets: &[(&str, &str)]) {
    let files = files_under(state_dir);
    assert!(
        files.iter().any(|f| f.ends_with("mailboxes.json"))
            && files.iter().any(|f| f.ends_with("alice@contoso.com.json")),
        "the state folder holds the registry and the token: {files:?}"
    );
    for file in &files {
        let content = std::fs::read(file).expect("read state file");
        let content = String::from_utf8_lossy(&content);
        for (what, secret) in secrets {
            assert!(secret.len() >= 16, "{what} is long enough to search for");
            for form in findable_forms(secret) {
                assert!(
                    !content.contains(&form) && !file.to_string_lossy().contains(&form),
                    "{what} found in {}",
                    file.display()
                );
            }
        }
    }
}

/// Runs the real binary with our config and `M365_RELAY_KEY` set to `key`.
fn run_with_key(world: &World, key: &str, args: &[&str]) -> Output {
    assert_cmd::cargo::cargo_bin_cmd!("m365-relay")
        .env("M365_RELAY_KEY", key)
        .env("M365_RELAY_LOG", "warn")
        .arg("--config")
        .arg(&world.config_path)
        .args(args)
        .timeout(Duration::from_secs(60))
        .output()
        .expect("run m365-relay")
}

#[tokio::test]
async fn no_refresh_token_or_client_secret_is_stored_in_plain_text() {
    let mut world = World::new().await;
    let imported = register_alice(&world);

    // The CLI made the key file on first use, next to the config, outside the state folder.
    let config = Config::load(Some(&world.config_path)).expect("valid config");
    assert_eq!(config.key_file, world.dir.path().join("certs/state.key"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&config.key_file)
            .expect("the key file exists")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(!config.key_file.starts_with(world.state_dir()));

    world.start().await;
    let ok = world.imap_login(ALICE, ALICE_PW).await;
    assert!(ok.starts_with("a OK "), "{ok}");
    let rotated = world
        .entra
        .latest_refresh_token(TENANT, CONFIDENTIAL_APP, ALICE)
        .expect("Entra issued a new refresh token");
    assert_ne!(rotated, imported, "Entra rotated the refresh token");
    let confidential = world
        .entra
        .requests()
        .iter()
        .any(|r| r.form.get("client_secret").map(String::as_str) == Some(CLIENT_SECRET));
    assert!(confidential, "the relay used the sealed client secret");
    world.stop().await;

    // The rotated token is what the store holds, sealed.
    let key = StateKey::load(&config.key_file).expect("key");
    let stored = with_key(&world.state_dir(), key)
        .tokens()
        .load(ALICE)
        .expect("readable")
        .expect("stored");
    assert_eq!(stored.expose(), rotated);

    assert_nowhere_in_plain_text(
        &world.state_dir(),
        &[
            ("the imported refresh token", &imported),
            ("the rotated refresh token", &rotated),
            ("the client secret", CLIENT_SECRET),
        ],
    );
    world.check_fakes();
}

#[tokio::test]
async fn another_key_is_refused_with_a_clear_message_and_nothing_is_reset() {
    let world = World::new().await;
    register_alice(&world);
    let before: Vec<(PathBuf, Vec<u8>)> = files_under(&world.state_dir())
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(&f).expect("read");
            (f, bytes)
        })
        .collect();

    // The CLI: the registry's MAC does not verify under another key.
    let out = run_with_key(&world, &other_key(), &["mailbox", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mailboxes.json is refused: the key from M365_RELAY_KEY does not verify it")
            && err.contains("or the key changed (M365_RELAY_KEY or key_file)"),
        "{err}"
    );
    assert!(!err.contains(&other_key()), "the key is never shown: {err}");
    // Sealing it as it is does not help: the client secret does not open.
    let out = run_with_key(
        &world,
        &other_key(),
        &["state", "reseal", "--trust-current-file"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot decrypt the client secret of alice@contoso.com in ")
            && err.contains("mailboxes.json")
            && err.contains("the key from M365_RELAY_KEY does not open it")
            && err.contains("wrong key (M365_RELAY_KEY or key_file changed?)"),
        "{err}"
    );
    assert!(!err.contains(&other_key()), "the key is never shown: {err}");

    // The relay refuses to start.
    let out = run_with_key(&world, &other_key(), &["serve"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mailbox registry: ") && err.contains("mailboxes.json is refused"),
        "{err}"
    );

    // A key that is not a key at all.
    let out = run_with_key(&world, "hunter2", &["mailbox", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("M365_RELAY_KEY must be the base64 encoding of exactly 32 bytes")
            && !err.contains("hunter2"),
        "{err}"
    );

    // The token store: an error naming the file, never "no token".
    let other = StateKey::from_env_value(other_key().into()).expect("a valid key");
    let e = with_key(&world.state_dir(), other)
        .tokens()
        .load(ALICE)
        .expect_err("another key does not open the token");
    assert!(matches!(e, StoreError::Undecryptable { .. }), "{e}");
    assert!(e.to_string().contains("alice@contoso.com.json"), "{e}");

    // Nothing was rewritten, and the right key still opens everything.
    for (file, bytes) in &before {
        assert_eq!(
            &std::fs::read(file).expect("read"),
            bytes,
            "{}",
            file.display()
        );
    }
    let list = world.admin(&["mailbox", "list"], "");
    assert!(
        list.contains("confidential  password=yes  token=yes"),
        "{list}"
    );
}

#[test]
fn a_legacy_plain_text_token_file_is_sealed_when_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state");
    let tokens = state.join("tokens");
    std::fs::create_dir_all(&tokens).expect("tokens folder");
    let file = tokens.join("alice@contoso.com.json");
    std::fs::write(
        &file,
        "{\"version\": 1, \"refresh_token\": \"0.AXEA-legacy.plain.token\", \"updated\": 1}\n",
    )
    .expect("write a version 1 token file");
    let key = StateKey::load_with(None, &dir.path().join("state.key")).expect("key");
    let token = with_key(&state, key)
        .tokens()
        .load(ALICE)
        .expect("readable");
    assert_eq!(token.expect("stored").expose(), "0.AXEA-legacy.plain.token");
    let text = std::fs::read_to_string(&file).expect("token file");
    assert!(text.contains("refresh_token_sealed"), "{text}");
    assert!(!text.contains("legacy.plain"), "{text}");
}
