//! The registry file: round trips, versions 1 to 5 and their migration, the MAC and the
//! seal marker, secrets that do not open, corrupt files.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::integrity::{self, seal_marker};
use super::migrate::{load_and_migrate, locked, reseal};
use super::registry::{REGISTRY_FILE, load, save};
use crate::cloud::Cloud;
use crate::mailbox::tests::{CLIENT_ID, mailbox, shared};
use crate::mailbox::{Credential, Mailbox, PasswordVerifier, Registration, Registry};
use crate::oauth::assertion::AssertionAlg;
use crate::state::RegistryStoreError;
use crate::state::seal::StateKey;

/// The key the tests seal the registry with.
fn key() -> StateKey {
    StateKey::from_bytes(&[5; 32])
}

/// A key from a key file under `dir`, so that the registry has a seal marker.
fn file_key(dir: &Path) -> StateKey {
    StateKey::load_with(None, &dir.join("keys/state.key")).unwrap()
}

/// Writes `json` as the registry file, as if changed with [`key`] (see
/// [`integrity::seal_value`]).
fn write_json(file: &Path, json: &serde_json::Value) {
    std::fs::write(file, integrity::seal_value(json.clone(), &key())).unwrap();
}

fn secret_of(m: &Mailbox) -> Option<&str> {
    match &m.registration {
        Registration::App {
            credential: Credential::Secret { secret, .. },
            ..
        } => Some(secret.expose()),
        Registration::App { .. } => None,
        Registration::TokenFrom { .. } => panic!("{} has no app registration", m.address),
    }
}

#[test]
fn save_and_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    assert!(load(dir.path(), &key()).unwrap().is_empty());
    let mut r = Registry::default();
    r.insert(mailbox("Alice@Contoso.com")).unwrap();
    let mut public = mailbox("bob@contoso.com");
    if let Registration::App { credential, .. } = &mut public.registration {
        *credential = Credential::None;
    }
    public.password = Some(PasswordVerifier::Argon2 {
        phc: "$argon2id$v=19$m=19456,t=2,p=1$+xnx0ZGIT/+csoED+8Dv9w$PZLTMDklR0KtnxmvMT81wrOTTPtJMA10EnLaW9D/MlE".into(),
    });
    r.insert(public).unwrap();
    r.insert(shared("Help@Contoso.com", "ALICE@contoso.com"))
        .unwrap();
    save(&r, dir.path(), &key()).unwrap();

    let text = std::fs::read_to_string(dir.path().join(REGISTRY_FILE)).unwrap();
    assert!(text.contains("\"version\": 5"), "{text}");
    assert!(text.contains("\"mac\": \"hs256:"), "{text}");
    assert!(!text.contains("s3cr3t"), "the secret is sealed: {text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sealed = json["mailboxes"][0]["registration"]["client_secret_sealed"]
        .as_str()
        .unwrap();
    assert!(sealed.starts_with("xc20p1:"), "{sealed}");
    assert!(json["mailboxes"][0]["registration"]["client_secret"].is_null());
    assert!(json["mailboxes"][1]["registration"]["client_secret_sealed"].is_null());
    assert!(text.contains("\"kind\": \"generated\""), "{text}");
    assert!(text.contains("\"kind\": \"app\""), "{text}");
    assert!(text.contains("\"kind\": \"token_from\""), "{text}");
    let back = load(dir.path(), &key()).unwrap();
    assert_eq!(back.len(), 3);
    let alice = back.get("ALICE@contoso.com").unwrap();
    assert_eq!(alice.address, "alice@contoso.com");
    assert_eq!(secret_of(alice), Some("s3cr3t~value"));
    assert!(matches!(
        &alice.registration,
        Registration::App { tenant, client_id, .. }
            if tenant == "contoso.onmicrosoft.com" && client_id == CLIENT_ID
    ));
    assert_eq!(alice.password, mailbox("x@y.z").password);
    let bob = back.get("bob@contoso.com").unwrap();
    assert_eq!(secret_of(bob), None);
    assert!(matches!(
        bob.password,
        Some(PasswordVerifier::Argon2 { .. })
    ));
    let help = back.get("help@contoso.com").unwrap();
    assert!(matches!(
        &help.registration,
        Registration::TokenFrom { delegate } if delegate == "alice@contoso.com"
    ));
    assert!(help.password.is_none());
}

/// A version 1 registry file: `alice` confidential, `bob` public.
const VERSION_1: &str = r#"{
  "version": 1,
  "mailboxes": [
{
  "address": "alice@contoso.com",
  "tenant": "contoso.onmicrosoft.com",
  "client_id": "00000000-0000-0000-0000-000000000001",
  "client_secret": "s3cr3t~value",
  "password": { "kind": "generated", "salt": "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=",
                "hmac": "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=" },
  "created": 1700000000
},
{
  "address": "bob@contoso.com",
  "tenant": "common",
  "client_id": "00000000-0000-0000-0000-000000000002",
  "client_secret": null,
  "password": null,
  "created": 1700000001
}
  ]
}
"#;

/// A version 2 registry file: `alice` confidential, `help` takes her token.
const VERSION_2: &str = r#"{
  "version": 2,
  "mailboxes": [
{ "address": "alice@contoso.com",
  "registration": { "kind": "app", "tenant": "contoso.onmicrosoft.com",
                    "client_id": "00000000-0000-0000-0000-000000000001",
                    "client_secret": "s3cr3t~value" },
  "password": null, "created": 1700000000 },
{ "address": "help@contoso.com",
  "registration": { "kind": "token_from", "delegate": "alice@contoso.com" },
  "password": null, "created": 1700000001 }
  ]
}
"#;

#[test]
fn a_version_1_file_is_read_and_migrated_to_version_5() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(REGISTRY_FILE);
    let key = file_key(dir.path());
    std::fs::write(&file, VERSION_1).unwrap();
    let e = load(dir.path(), &key).unwrap_err();
    assert!(matches!(e, RegistryStoreError::CannotMigrate { .. }), "{e}");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        VERSION_1,
        "load does not rewrite the file"
    );
    let r = load_and_migrate(dir.path(), &key).unwrap();
    assert_eq!(r.len(), 2);
    let alice = r.get("alice@contoso.com").unwrap();
    assert_eq!(secret_of(alice), Some("s3cr3t~value"));
    assert_eq!(alice.password, mailbox("x@y.z").password);
    assert_eq!(alice.created, 1_700_000_000);
    let bob = r.get("bob@contoso.com").unwrap();
    assert!(matches!(
        &bob.registration,
        Registration::App { tenant, client_id, credential: Credential::None, cloud: Cloud::Global, app_only: false }
            if tenant == "common" && client_id.ends_with("0002")
    ));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("s3cr3t"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["version"], 5);
    assert_eq!(json["mailboxes"][0]["registration"]["kind"], "app");
    assert!(json["mailboxes"][0].get("tenant").is_none());
    let again = load(dir.path(), &key).unwrap();
    assert_eq!(
        secret_of(again.get("alice@contoso.com").unwrap()),
        Some("s3cr3t~value")
    );
    assert!(again.get("bob@contoso.com").is_some());
}

/// The registry of [`mailbox`] as format version 4 wrote it (no `mac`).
fn version_4() -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Registry::default();
    r.insert(mailbox("alice@contoso.com")).unwrap();
    r.insert(mailbox("bob@contoso.com")).unwrap();
    save(&r, dir.path(), &key()).unwrap();
    let text = std::fs::read_to_string(dir.path().join(REGISTRY_FILE)).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["version"] = 4.into();
    json.as_object_mut().unwrap().remove("mac").unwrap();
    serde_json::to_string_pretty(&json).unwrap()
}

#[test]
fn a_legacy_file_is_migrated_once_then_refused() {
    let v4 = version_4();
    for legacy in [VERSION_1, VERSION_2, v4.as_str()] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(REGISTRY_FILE);
        // The same key bytes as key(), from a file: a seal marker has a place.
        let key_file = dir.path().join("keys/state.key");
        crate::state::private::create_private(
            &key_file,
            format!("{}\n", BASE64.encode([5u8; 32])).as_bytes(),
        )
        .unwrap();
        let key = file_key(dir.path());
        let marker = seal_marker(&key).unwrap();
        assert_eq!(marker, dir.path().join("keys/state.key.sealed"));
        std::fs::write(&file, legacy).unwrap();
        let r = load_and_migrate(dir.path(), &key).unwrap();
        assert_eq!(
            secret_of(r.get("alice@contoso.com").unwrap()),
            Some("s3cr3t~value")
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("\"version\": 5"), "{text}");
        assert!(!text.contains("s3cr3t"), "no plain text left: {text}");
        assert!(marker.exists(), "the marker says the registry was sealed");
        assert_eq!(load(dir.path(), &key).unwrap().len(), 2);

        // A current file is not rewritten.
        let before = std::fs::metadata(&file).unwrap().modified().unwrap();
        std::fs::File::open(&file)
            .unwrap()
            .set_modified(before - std::time::Duration::from_secs(60))
            .unwrap();
        let stamp = std::fs::metadata(&file).unwrap().modified().unwrap();
        load_and_migrate(dir.path(), &key).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), stamp);

        // The legacy file put back (by anyone who can write the state folder) is refused,
        // by every way in, and left as it is.
        std::fs::write(&file, legacy).unwrap();
        for e in [
            load(dir.path(), &key).unwrap_err(),
            load_and_migrate(dir.path(), &key).unwrap_err(),
            locked(dir.path(), &key).unwrap_err(),
        ] {
            assert!(
                matches!(e, RegistryStoreError::ReplacedAfterSealing { .. }),
                "{e}"
            );
            let shown = e.to_string();
            assert!(shown.contains("it has no MAC"), "{shown}");
            assert!(shown.contains("state.key.sealed exists"), "{shown}");
            assert!(
                shown.contains("state reseal --trust-current-file"),
                "{shown}"
            );
            assert!(!shown.contains("s3cr3t"), "{shown}");
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap(), legacy);
        // The administrator's way out.
        assert_eq!(reseal(dir.path(), &key).unwrap().len(), 2);
        assert_eq!(load(dir.path(), &key).unwrap().len(), 2);
    }
}

#[test]
fn without_a_place_for_the_marker_a_legacy_file_waits_for_the_administrator() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(REGISTRY_FILE);
    let v4 = version_4();
    std::fs::write(&file, &v4).unwrap();
    // key() is like M365_RELAY_KEY: no key file, so no marker.
    let e = load_and_migrate(dir.path(), &key()).unwrap_err();
    assert!(matches!(e, RegistryStoreError::CannotMigrate { .. }), "{e}");
    assert!(e.to_string().contains("M365_RELAY_KEY"), "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), v4, "untouched");
    reseal(dir.path(), &key()).unwrap();
    assert_eq!(load(dir.path(), &key()).unwrap().len(), 2);
}

#[test]
fn any_change_without_the_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(REGISTRY_FILE);
    let mut r = Registry::default();
    r.insert(mailbox("alice@contoso.com")).unwrap();
    let mut bob = mailbox("bob@contoso.com");
    bob.password = Some(PasswordVerifier::Generated {
        salt: [1; 32],
        tag: [2; 32],
    });
    r.insert(bob).unwrap();
    r.insert(shared("help@contoso.com", "alice@contoso.com"))
        .unwrap();
    save(&r, dir.path(), &key()).unwrap();
    let good: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit); 6] = [
        ("bob's verifier onto alice", |j| {
            j["mailboxes"][0]["password"] = j["mailboxes"][1]["password"].clone();
        }),
        ("another delegate", |j| {
            j["mailboxes"][2]["registration"]["delegate"] = "bob@contoso.com".into();
        }),
        ("app_only", |j| {
            j["mailboxes"][0]["registration"]["app_only"] = true.into()
        }),
        ("allowed senders", |j| {
            j["mailboxes"][1]["sending"] = serde_json::json!({"allowed_from": ["ceo@contoso.com"]});
        }),
        ("a mailbox removed", |j| {
            j["mailboxes"].as_array_mut().unwrap().remove(0);
        }),
        ("the MAC removed", |j| {
            j.as_object_mut().unwrap().remove("mac");
        }),
    ];
    for (what, edit) in edits {
        let mut json = good.clone();
        edit(&mut json);
        std::fs::write(&file, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
        let e = load(dir.path(), &key()).unwrap_err();
        assert!(
            matches!(e, RegistryStoreError::Unauthentic { .. }),
            "{what}: {e}"
        );
        let shown = e.to_string();
        assert!(
            shown.contains("mailboxes.json is refused"),
            "{what}: {shown}"
        );
        assert!(
            shown.contains("restore it from a backup"),
            "{what}: {shown}"
        );
        assert!(load_and_migrate(dir.path(), &key()).is_err(), "{what}");
    }
    // White space and the order of members are not content.
    let mut json = good.clone();
    let mac = json.as_object_mut().unwrap().remove("mac").unwrap();
    let reordered = format!(
        "{{\"mac\":{mac},\"mailboxes\":{},\"version\":5}}",
        json["mailboxes"]
    );
    std::fs::write(&file, reordered).unwrap();
    assert_eq!(load(dir.path(), &key()).unwrap().len(), 3);
}

#[test]
fn a_secret_that_does_not_open_is_an_error_never_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(REGISTRY_FILE);
    let mut r = Registry::default();
    r.insert(mailbox("alice@contoso.com")).unwrap();
    r.insert(mailbox("bob@contoso.com")).unwrap();
    save(&r, dir.path(), &key()).unwrap();
    let saved = std::fs::read_to_string(&file).unwrap();

    // Another key: the MAC says so first.
    let other = StateKey::from_bytes(&[6; 32]);
    for e in [
        load(dir.path(), &other).unwrap_err(),
        load_and_migrate(dir.path(), &other).unwrap_err(),
    ] {
        assert!(
            matches!(&e, RegistryStoreError::Unauthentic { .. }),
            "{e:?}"
        );
        let shown = e.to_string();
        assert!(shown.contains("mailboxes.json is refused"), "{shown}");
        assert!(
            shown.contains("or the key changed (M365_RELAY_KEY"),
            "{shown}"
        );
    }
    // Sealed again as it is, by an administrator with the other key: the secrets still
    // do not open.
    let e = reseal(dir.path(), &other).unwrap_err();
    assert!(
        matches!(&e, RegistryStoreError::Undecryptable { address, .. }
        if address == "alice@contoso.com"),
        "{e:?}"
    );
    let shown = e.to_string();
    assert!(
        shown.starts_with("cannot decrypt the client secret of alice@contoso.com in "),
        "{shown}"
    );
    assert!(
        shown.contains("wrong key (M365_RELAY_KEY or key_file changed?)"),
        "{shown}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), saved, "untouched");

    // A sealed secret moved to another mailbox does not open either.
    let mut json: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let alice = json["mailboxes"][0]["registration"]["client_secret_sealed"].clone();
    json["mailboxes"][1]["registration"]["client_secret_sealed"] = alice;
    write_json(&file, &json);
    let e = load(dir.path(), &key()).unwrap_err();
    assert!(
        matches!(&e, RegistryStoreError::Undecryptable { address, .. }
        if address == "bob@contoso.com"),
        "{e:?}"
    );
}

#[test]
fn a_corrupt_file_is_an_error_that_names_it_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(REGISTRY_FILE);
    let cases = [
        "{not json",
        r#"{"version": 6, "mailboxes": []}"#,
        r#"{"mailboxes": []}"#,
        r#"{"version": 3, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "app", "tenant": "t", "client_id": "c", "client_secret": "hunter2"}, "password": null, "created": 0}]}"#,
        r#"{"version": 3, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "app", "tenant": "t", "client_id": "c", "client_secret_sealed": "hunter2"}, "password": null, "created": 0}]}"#,
        r#"{"version": 3, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "app", "tenant": "", "client_id": "c", "client_secret_sealed": null}, "password": null, "created": 0}]}"#,
        r#"{"version": 3, "mailboxes": [{"address": "A@b.cd", "registration": {"kind": "token_from", "delegate": "x@b.cd"}, "password": null, "created": 0}]}"#,
        r#"{"version": 2, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "app", "tenant": "t", "client_id": "c", "client_secret_sealed": "hunter2"}, "password": null, "created": 0}]}"#,
        r#"{"version": 2, "mailboxes": [{"address": "a@b.cd", "tenant": "t", "client_id": "c", "client_secret": "hunter2", "password": null, "created": 0}]}"#,
        r#"{"version": 2, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "app", "tenant": "t", "client_id": "c", "client_secret": "hunter2", "cloud": "x"}, "password": null, "created": 0}]}"#,
        r#"{"version": 2, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "app", "tenant": "", "client_id": "c", "client_secret": "hunter2"}, "password": null, "created": 0}]}"#,
        r#"{"version": 2, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "token_from", "delegate": "A@b.cd"}, "password": null, "created": 0}]}"#,
        r#"{"version": 2, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "token_from", "delegate": "a@b.cd"}, "password": null, "created": 0}]}"#,
        r#"{"version": 2, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "token_from"}, "password": null, "created": 0}]}"#,
        r#"{"version": 2, "mailboxes": [{"address": "a@b.cd", "registration": {"kind": "hunter2"}, "password": null, "created": 0}]}"#,
        r#"{"version": 1, "mailboxes": [{"address": "a@b.c", "tenant": "t", "client_id": "c", "client_secret": null, "password": "hunter2", "created": 0}]}"#,
        r#"{"version": 1, "mailboxes": [{"address": "A@b.c", "tenant": "t", "client_id": "c", "client_secret": "hunter2", "password": null, "created": 0}]}"#,
    ];
    for text in cases {
        std::fs::write(&file, text).unwrap();
        let e = load(dir.path(), &key()).unwrap_err().to_string();
        assert!(e.contains("mailboxes.json is corrupt"), "{text}: {e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
    std::fs::write(&file, r#"{"version": 6, "mailboxes": []}"#).unwrap();
    let e = load(dir.path(), &key()).unwrap_err().to_string();
    assert!(e.contains("format version 6 is not supported"), "{e}");
    std::fs::write(&file, r#"{"version": 5, "mailboxes": []}"#).unwrap();
    let e = load(dir.path(), &key()).unwrap_err().to_string();
    assert!(
        e.contains("is refused: not a sealed value (it has no `mac`)"),
        "{e}"
    );
}

/// An app-only mailbox in `cloud` with the test certificate.
fn with_certificate(address: &str, cloud: Cloud) -> Mailbox {
    Mailbox {
        registration: Registration::App {
            tenant: "contoso.onmicrosoft.us".into(),
            client_id: CLIENT_ID.into(),
            credential: Credential::Certificate(crate::oauth::testing::certificate_credential(
                AssertionAlg::Rs256,
            )),
            cloud,
            app_only: true,
        },
        ..mailbox(address)
    }
}

#[test]
fn certificates_clouds_and_expiry_round_trip_with_the_key_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Registry::default();
    r.insert(with_certificate("robot@contoso.com", Cloud::UsGov))
        .unwrap();
    let mut alice = mailbox("alice@contoso.com");
    if let Registration::App {
        credential: Credential::Secret { expires, .. },
        cloud,
        ..
    } = &mut alice.registration
    {
        *expires = Some(1_790_000_000);
        *cloud = Cloud::China;
    }
    r.insert(alice).unwrap();
    save(&r, dir.path(), &key()).unwrap();

    let text = std::fs::read_to_string(dir.path().join(REGISTRY_FILE)).unwrap();
    assert!(!text.contains("PRIVATE KEY"), "the key is sealed: {text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let alice = &json["mailboxes"][0]["registration"];
    assert_eq!(alice["cloud"], "china");
    assert_eq!(alice["app_only"], false);
    assert_eq!(alice["credential_expires"], 1_790_000_000);
    assert!(alice["certificate"].is_null());
    let robot = &json["mailboxes"][1]["registration"];
    assert_eq!(robot["cloud"], "usgov");
    assert_eq!(robot["app_only"], true);
    assert!(robot["client_secret_sealed"].is_null());
    assert_eq!(
        robot["credential_expires"],
        crate::oauth::testing::TEST_CERT_NOT_AFTER
    );
    let cert = robot["certificate"].clone();
    assert_eq!(cert["alg"], "rs256");
    assert!(
        cert["pem"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----\n")
    );
    assert!(
        cert["private_key_sealed"]
            .as_str()
            .unwrap()
            .starts_with("xc20p1:")
    );

    let back = load(dir.path(), &key()).unwrap();
    let alice = back.get("alice@contoso.com").unwrap();
    assert_eq!(alice.credential_expires(), Some(1_790_000_000));
    assert_eq!(secret_of(alice), Some("s3cr3t~value"));
    let robot = back.get("robot@contoso.com").unwrap();
    assert_eq!(
        robot.credential_expires(),
        Some(crate::oauth::testing::TEST_CERT_NOT_AFTER)
    );
    match &robot.registration {
        Registration::App {
            credential: Credential::Certificate(c),
            cloud: Cloud::UsGov,
            app_only: true,
            ..
        } => {
            let original = crate::oauth::testing::certificate_credential(AssertionAlg::Rs256);
            assert_eq!(c.thumbprint_hex(), original.thumbprint_hex());
            assert_eq!(c.alg(), AssertionAlg::Rs256);
            assert_eq!(
                *c.private_key_pkcs8().unwrap(),
                *original.private_key_pkcs8().unwrap()
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(mailbox("x@y.z").credential_expires().is_none());
    assert!(
        shared("s@y.z", "alice@contoso.com")
            .credential_expires()
            .is_none()
    );
    let shown = format!("{robot:?}");
    assert!(shown.contains("key: \"[redacted]\""), "{shown}");

    // The key is sealed for its mailbox: moved to another one, it does not open.
    let mut json = json;
    json["mailboxes"][0]["registration"]["certificate"] = cert;
    json["mailboxes"][0]["registration"]["client_secret_sealed"] = serde_json::Value::Null;
    write_json(&dir.path().join(REGISTRY_FILE), &json);
    let e = load(dir.path(), &key()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot decrypt the private key of alice@contoso.com in "),
        "{e}"
    );
}

#[test]
fn a_version_3_file_is_read_as_global_and_delegated_and_sealed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(REGISTRY_FILE);
    let key = file_key(dir.path());
    let mut r = Registry::default();
    r.insert(mailbox("alice@contoso.com")).unwrap();
    save(&r, dir.path(), &key).unwrap();
    // The same file as version 3 wrote it: without the fields version 4 added.
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    json["version"] = 3.into();
    json.as_object_mut().unwrap().remove("mac").unwrap();
    let registration = json["mailboxes"][0]["registration"]
        .as_object_mut()
        .unwrap();
    for field in ["cloud", "app_only", "certificate", "credential_expires"] {
        registration.remove(field).unwrap();
    }
    let v3 = serde_json::to_string_pretty(&json).unwrap();
    std::fs::write(&file, &v3).unwrap();

    // Saved before with this key: the marker is there, and the file is refused.
    std::fs::remove_file(seal_marker(&key).unwrap()).unwrap();
    let back = load_and_migrate(dir.path(), &key).unwrap();
    let alice = back.get("alice@contoso.com").unwrap();
    assert!(matches!(
        &alice.registration,
        Registration::App {
            cloud: Cloud::Global,
            app_only: false,
            credential: Credential::Secret { expires: None, .. },
            ..
        }
    ));
    assert_eq!(secret_of(alice), Some("s3cr3t~value"));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\"version\": 5"), "sealed: {text}");
}

#[test]
fn inconsistent_credentials_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(REGISTRY_FILE);
    let mut r = Registry::default();
    r.insert(with_certificate("robot@contoso.com", Cloud::Global))
        .unwrap();
    save(&r, dir.path(), &key()).unwrap();
    let good: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let edits: [(&str, serde_json::Value, &str); 6] = [
        (
            "client_secret_sealed",
            "xc20p1:AAAA".into(),
            "both a client secret and a certificate",
        ),
        (
            "certificate",
            serde_json::Value::Null,
            "credential_expires without a credential",
        ),
        ("cloud", "mars".into(), "unexpected structure"),
        ("alg", "es256".into(), "unexpected structure"),
        (
            "pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            "certificate",
        ),
        ("version", 3.into(), "format version 3 has no cloud"),
    ];
    for (field, value, expected) in edits {
        let mut json = good.clone();
        match field {
            "version" => json["version"] = value,
            "alg" | "pem" => json["mailboxes"][0]["registration"]["certificate"][field] = value,
            _ => json["mailboxes"][0]["registration"][field] = value,
        }
        write_json(&file, &json);
        let e = load(dir.path(), &key()).unwrap_err().to_string();
        assert!(e.contains("mailboxes.json is corrupt"), "{field}: {e}");
        assert!(e.contains(expected), "{field}: {e}");
    }
    let mut json = good.clone();
    let registration = &mut json["mailboxes"][0]["registration"];
    registration["certificate"] = serde_json::Value::Null;
    registration["credential_expires"] = serde_json::Value::Null;
    write_json(&file, &json);
    let e = load(dir.path(), &key()).unwrap_err().to_string();
    assert!(e.contains("mailboxes.json is corrupt"), "{e}");
    assert!(
        e.contains("robot@contoso.com is app-only (client credentials) but its app has no"),
        "{e}"
    );
}
