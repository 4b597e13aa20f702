//! The mailbox commands end to end, against a temporary state folder.

use std::ffi::OsString;
use std::path::Path;

use clap::{CommandFactory, Parser};

use super::console::Console;
use super::input::{validate_guid, validate_tenant};
use super::{MailboxCommand, execute};
use crate::mailbox::{Credential, Registration};
use crate::secret::Password;
use crate::state::State;

const GUID: &str = "11111111-2222-3333-4444-555555555555";

/// The state folder `dir`, sealed with the tests' key.
fn state(dir: &Path) -> State {
    crate::state::files::with_key(dir, crate::state::StateKey::from_bytes(&[3; 32]))
}

#[derive(Parser)]
struct TestCli {
    #[command(subcommand)]
    command: MailboxCommand,
}

/// Runs `mailbox {args}` (split at spaces; `GUID` stands for [`GUID`]); returns
/// (stdout, stderr).
fn exec_env(
    dir: &Path,
    args: &str,
    stdin: &str,
    env: Option<&str>,
) -> anyhow::Result<(String, String)> {
    let args = args.replace("GUID", GUID);
    let cli = TestCli::try_parse_from(std::iter::once("mailbox").chain(args.split(' ')))?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut console = Console {
        input: &mut stdin.as_bytes(),
        out: &mut out,
        err: &mut err,
        env_secret: env.map(OsString::from),
    };
    execute(cli.command, &state(dir), &mut console)?;
    Ok((String::from_utf8(out)?, String::from_utf8(err)?))
}

fn exec(dir: &Path, args: &str, stdin: &str) -> anyhow::Result<String> {
    exec_env(dir, args, stdin, None).map(|(out, _)| out)
}

fn fails(dir: &Path, args: &str, stdin: &str) -> String {
    format!("{:#}", exec(dir, args, stdin).err().unwrap())
}

/// A state folder with alice@contoso.com registered (a public client, no token yet).
fn with_alice() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let args = "add alice@contoso.com --tenant common --client-id GUID";
    exec(dir.path(), args, "").unwrap();
    dir
}

#[test]
fn the_command_definition_is_consistent() {
    TestCli::command().debug_assert();
}

#[test]
fn add_and_list_never_show_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("secret");
    std::fs::write(&file, "Abc~secret.value\n").unwrap();
    let args = format!(
        "add Alice@Contoso.com --tenant GUID --client-id GUID --client-secret-file {}",
        file.display()
    );
    let out = exec(d, &args, "").unwrap();
    assert!(
        out.starts_with("added alice@contoso.com (confidential client)"),
        "{out}"
    );
    let args = "add bob@contoso.com --tenant common --client-id GUID";
    exec_env(d, args, "", Some("env~secret")).unwrap();
    exec(
        d,
        "add carol@contoso.com --tenant contoso.com --client-id GUID",
        "",
    )
    .unwrap();

    let registry = state(d).registry().load().unwrap();
    let secret = |a: &str| match &registry.get(a).unwrap().registration {
        Registration::App {
            credential: Credential::Secret { secret, .. },
            ..
        } => Some(secret.expose().to_owned()),
        Registration::App { .. } => None,
        Registration::TokenFrom { .. } => panic!("{a} has no app registration"),
    };
    assert_eq!(
        secret("alice@contoso.com").as_deref(),
        Some("Abc~secret.value")
    );
    assert_eq!(secret("bob@contoso.com").as_deref(), Some("env~secret"));
    assert_eq!(secret("carol@contoso.com"), None);

    let text = exec(d, "list", "").unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    let alice = format!(
        "alice@contoso.com  tenant={GUID}  client_id={GUID}  confidential  password=no  token=no  state=no-token  smtp=auto  access-token=-  last-refresh=-\n"
    );
    assert!(text.starts_with(&alice), "{text}");
    let json = exec(d, "list --json", "").unwrap();
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (&rows[2]["address"], &rows[2]["client_type"]),
        (&"carol@contoso.com".into(), &"public".into())
    );
    assert_eq!(rows[0]["password_set"], false);
    assert!(
        !text.contains("secret") && !json.contains("secret"),
        "{text}{json}"
    );
}

#[test]
fn add_refuses_bad_input() {
    let dir = with_alice();
    let d = dir.path();
    for (args, expected) in [
        (
            "add ALICE@contoso.com --tenant common --client-id GUID",
            "already registered",
        ),
        (
            "add x@contoso.com --tenant contoso --client-id GUID",
            "--tenant",
        ),
        (
            "add x@contoso.com --tenant common --client-id app",
            "--client-id",
        ),
        (
            "add x@ --tenant common --client-id GUID",
            "not a valid mailbox",
        ),
        (
            "add x@contoso.com --tenant common --client-id GUID --client-secret-file /no/file",
            "/no/file",
        ),
        (
            "add x@contoso.com --tenant common --client-id GUID --client-secret oops",
            "--client-secret",
        ),
    ] {
        let e = fails(d, args, "");
        assert!(e.contains(expected), "{args}: {e}");
    }
    let e = exec_env(
        d,
        "add x@contoso.com --tenant common --client-id GUID",
        "",
        Some("a b"),
    );
    assert!(e.err().unwrap().to_string().contains("white space"));
    assert_eq!(state(d).registry().load().unwrap().len(), 1);
}

#[tokio::test]
async fn generated_and_chosen_passwords() {
    let dir = with_alice();
    let d = dir.path();
    let (out, err) = exec_env(d, "password alice@contoso.com --generate", "", None).unwrap();
    assert_eq!(out.lines().count(), 1);
    assert!(err.contains("will not be shown again"), "{err}");
    let generated = Password::new(out.trim_end());
    let auth = crate::auth::LocalAuth::open(state(d).registry()).unwrap();
    assert!(auth.check("alice@contoso.com", &generated).await.is_some());

    assert!(fails(d, "password alice@contoso.com --stdin", "\n").contains("empty"));
    exec(d, "password alice@contoso.com --stdin", "correct horse\r\n").unwrap();
    assert!(auth.check("alice@contoso.com", &generated).await.is_none());
    let chosen = Password::new("correct horse");
    assert!(auth.check("ALICE@contoso.com", &chosen).await.is_some());

    for args in [
        "password alice@contoso.com",
        "password alice@contoso.com --stdin --generate",
    ] {
        assert!(exec(d, args, "x\n").is_err(), "{args}");
    }
    assert!(fails(d, "password nobody@contoso.com --generate", "").contains("not registered"));
}

#[test]
fn import_token_then_remove() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(fails(d, "import-token alice@contoso.com", "rt").contains("not registered"));
    exec(
        d,
        "add alice@contoso.com --tenant common --client-id GUID",
        "",
    )
    .unwrap();
    for bad in ["", " \n", "two tokens\n"] {
        assert!(
            exec(d, "import-token alice@contoso.com", bad).is_err(),
            "{bad:?}"
        );
    }
    exec(d, "import-token Alice@contoso.com", "  0.AAAA-rt\n").unwrap();
    let store = state(d).tokens();
    assert_eq!(
        store.load("alice@contoso.com").unwrap().unwrap().expose(),
        "0.AAAA-rt"
    );
    assert!(exec(d, "list", "").unwrap().contains("token=yes"));

    let out = exec(d, "remove alice@contoso.com", "").unwrap();
    assert!(out.contains("removed alice@contoso.com"), "{out}");
    assert!(store.load("alice@contoso.com").unwrap().is_none());
    assert!(state(d).registry().load().unwrap().is_empty());
    assert!(fails(d, "remove alice@contoso.com", "").contains("not registered"));
    let listed = exec_env(d, "list", "", None).unwrap();
    assert_eq!(
        listed,
        (String::new(), "no mailboxes registered\n".to_owned())
    );
}

#[test]
fn a_shared_mailbox_borrows_its_delegates_token() {
    let dir = with_alice();
    let d = dir.path();
    let (out, err) = exec_env(
        d,
        "add Help@Contoso.com --token-from ALICE@contoso.com",
        "",
        Some("env~secret"),
    )
    .unwrap();
    assert!(
        out.starts_with("added help@contoso.com (token from alice@contoso.com)\n"),
        "{out}"
    );
    assert!(out.contains("import-token alice@contoso.com"), "{out}");
    assert!(err.contains("M365_RELAY_CLIENT_SECRET is ignored"), "{err}");
    let registry = state(d).registry().load().unwrap();
    let help = registry.get("help@contoso.com").unwrap();
    assert!(matches!(
        &help.registration,
        Registration::TokenFrom { delegate } if delegate == "alice@contoso.com"
    ));
    assert_eq!(
        registry.token_owner(help).unwrap().address,
        "alice@contoso.com"
    );

    let e = fails(d, "import-token help@contoso.com", "rt\n");
    assert!(e.contains("import alice@contoso.com's token"), "{e}");
    exec(d, "import-token alice@contoso.com", "rt\n").unwrap();
    let list = exec(d, "list", "").unwrap();
    assert!(
        list.contains(
            "help@contoso.com  token-from=alice@contoso.com  password=no  token=yes  state=unknown  smtp=auto  access-token=-  last-refresh=-\n"
        ),
        "{list}"
    );
    let out = exec(
        d,
        "add sales@contoso.com --token-from alice@contoso.com",
        "",
    )
    .unwrap();
    assert!(
        !out.contains("import-token"),
        "alice has a token now: {out}"
    );

    for (args, expected) in [
        (
            "add self@contoso.com --token-from self@contoso.com",
            "cannot take its token from itself",
        ),
        (
            "add x@contoso.com --token-from nobody@contoso.com",
            "nobody@contoso.com, which is not registered",
        ),
        (
            "add x@contoso.com --token-from help@contoso.com",
            "which takes its own from alice@contoso.com",
        ),
        ("add x@contoso.com --token-from alice", "--token-from"),
        (
            "add help@contoso.com --token-from alice@contoso.com",
            "already registered",
        ),
    ] {
        let e = fails(d, args, "");
        assert!(e.contains(expected), "{args}: {e}");
    }
    for args in [
        "add x@contoso.com --token-from alice@contoso.com --tenant common",
        "add x@contoso.com --token-from alice@contoso.com --client-id GUID",
        "add x@contoso.com --token-from alice@contoso.com --client-secret-file /f",
        "add x@contoso.com --tenant common",
        "add x@contoso.com --client-id GUID",
        "add x@contoso.com",
    ] {
        let e = exec(d, args, "").unwrap_err();
        assert!(e.downcast_ref::<clap::Error>().is_some(), "{args}: {e}");
    }
    assert_eq!(state(d).registry().load().unwrap().len(), 3);

    let e = fails(d, "remove alice@contoso.com", "");
    assert!(
        e.contains("lends its token to help@contoso.com, sales@contoso.com"),
        "{e}"
    );
    let out = exec(d, "remove help@contoso.com", "").unwrap();
    assert!(
        out.contains("the token of alice@contoso.com is kept"),
        "{out}"
    );
    exec(d, "remove sales@contoso.com", "").unwrap();
    assert!(
        state(d)
            .tokens()
            .load("alice@contoso.com")
            .unwrap()
            .is_some()
    );
    exec(d, "remove alice@contoso.com", "").unwrap();
    assert!(state(d).registry().load().unwrap().is_empty());
}

#[test]
fn tenants_and_guids() {
    for ok in ["common", "Organizations", "contoso.onmicrosoft.com", GUID] {
        assert!(validate_tenant(ok).is_ok(), "{ok}");
    }
    for bad in ["", "contoso", "consumers", "a_b.com", "x/y.com", "-a.com"] {
        assert!(validate_tenant(bad).is_err(), "{bad}");
    }
    assert_eq!(validate_guid(&GUID.to_uppercase()).unwrap(), GUID);
    assert!(validate_guid("11111111222233334444555555555555").is_err());
}
