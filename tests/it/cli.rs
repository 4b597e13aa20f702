//! The `m365-relay mailbox ...` commands, run as the real binary against a temp state
//! folder: what they print, what they refuse, and the files they leave behind.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use m365_relay::auth::LocalAuth;
use m365_relay::cloud::Cloud;
use m365_relay::mailbox::{Credential, Registration};
use m365_relay::oauth::assertion::AssertionAlg;
use m365_relay::secret::Password;
use m365_relay::state::StateKey;
use m365_relay::state::files::with_key;

const GUID: &str = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";

/// A config file in a temp folder, with the state folder `state` next to it.
struct Admin {
    dir: tempfile::TempDir,
}

impl Admin {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("relay.toml"), "state_dir = \"state\"\n")
            .expect("write config");
        Self { dir }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The key file the CLI creates on first use (the default `key_file`, next to the config).
    fn key_file(&self) -> PathBuf {
        self.dir.path().join("certs/state.key")
    }

    /// The key the CLI sealed the state with.
    fn key(&self) -> StateKey {
        StateKey::load_with(None, &self.key_file()).expect("the key file")
    }

    /// Runs `m365-relay --config relay.toml mailbox {args}` (split at spaces; `GUID` stands
    /// for [`GUID`], `DIR` for the temp folder) with `stdin` and optional env secret.
    fn run_env(&self, args: &str, stdin: &str, secret: Option<&str>) -> Output {
        let config = self.dir.path().join("relay.toml");
        let args = args
            .replace("GUID", GUID)
            .replace("DIR", &self.dir.path().display().to_string());
        let mut cmd = assert_cmd::cargo::cargo_bin_cmd!("m365-relay");
        cmd.env_remove("M365_RELAY_CONFIG")
            .env_remove("M365_RELAY_CLIENT_SECRET")
            .env_remove("M365_RELAY_KEY")
            .arg("--config")
            .arg(&config)
            .arg("mailbox")
            .args(args.split(' '))
            .write_stdin(stdin);
        if let Some(secret) = secret {
            cmd.env("M365_RELAY_CLIENT_SECRET", secret);
        }
        cmd.output().expect("run m365-relay")
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &str, stdin: &str) -> String {
        let out = self.run_env(args, stdin, None);
        assert!(
            out.status.success(),
            "`{args}` failed: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs a command that must fail; returns its stderr.
    fn fails(&self, args: &str, stdin: &str) -> String {
        let out = self.run_env(args, stdin, None);
        assert!(
            !out.status.success(),
            "`{args}` succeeded: {}",
            text(&out.stdout)
        );
        text(&out.stderr)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn a_mailbox_from_add_to_remove() {
    let admin = Admin::new();
    std::fs::write(admin.dir.path().join("secret"), "Xy7~client.secret\n").expect("secret");
    let out = admin.ok(
        "add Alice@Contoso.com --tenant contoso.onmicrosoft.com --client-id GUID \
         --client-secret-file DIR/secret",
        "",
    );
    assert!(
        out.contains("added alice@contoso.com (confidential client)"),
        "{out}"
    );
    assert_eq!(mode(&admin.state()), 0o700);
    assert_eq!(mode(&admin.state().join("mailboxes.json")), 0o600);
    assert_eq!(
        mode(&admin.key_file()),
        0o600,
        "the key file, made on first use"
    );

    let generated = admin.run_env("password alice@contoso.com --generate", "", None);
    assert!(generated.status.success());
    let password = text(&generated.stdout);
    assert_eq!(password.lines().count(), 1, "{password}");
    assert!(password.trim_end().len() >= 26, "{password}");
    assert!(text(&generated.stderr).contains("will not be shown again"));

    admin.ok("import-token alice@contoso.com", "0.AXEA-refresh.token_1\n");
    let token_file = admin.state().join("tokens/alice@contoso.com.json");
    assert_eq!(mode(&token_file), 0o600);
    for file in [&token_file, &admin.state().join("mailboxes.json")] {
        let stored = std::fs::read_to_string(file).expect("state file");
        assert!(
            !stored.contains("client.secret") && !stored.contains("refresh.token"),
            "sealed: {stored}"
        );
    }

    let list = admin.ok("list", "");
    assert_eq!(
        list,
        format!(
            "alice@contoso.com  tenant=contoso.onmicrosoft.com  client_id={GUID}  \
             confidential  password=yes  token=yes  state=unknown  smtp=auto  access-token=-  last-refresh=-\n"
        )
    );
    let json: serde_json::Value =
        serde_json::from_str(&admin.ok("list --json", "")).expect("list --json is JSON");
    assert_eq!(json[0]["address"], "alice@contoso.com");
    assert_eq!(json[0]["client_type"], "confidential");
    assert_eq!(json[0]["password_set"], true);
    assert_eq!(json[0]["token_stored"], true);
    let everything = format!("{list}{json}{}", text(&generated.stderr));
    assert!(!everything.contains("client.secret") && !everything.contains("refresh.token"));

    admin.ok("remove alice@contoso.com", "");
    assert!(!token_file.exists());
    assert_eq!(admin.ok("list --json", "").trim(), "[]");
}

#[tokio::test]
async fn passwords_set_by_the_cli_work_for_logins() {
    let admin = Admin::new();
    let out = admin.run_env(
        "add bob@contoso.com --tenant organizations --client-id GUID",
        "",
        Some("env~secret"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let auth = LocalAuth::open(with_key(&admin.state(), admin.key()).registry()).expect("registry");
    let secret = match auth
        .registry()
        .get("bob@contoso.com")
        .map(|m| &m.registration)
    {
        Some(Registration::App {
            credential: Credential::Secret { secret, .. },
            ..
        }) => secret.clone(),
        other => panic!("bob has no client secret: {other:?}"),
    };
    assert_eq!(secret.expose(), "env~secret");

    admin.ok("password bob@contoso.com --stdin", "tr0ub4dor &3\n");
    let right = Password::new("tr0ub4dor &3");
    assert!(
        auth.check("BOB@contoso.com", &right).await.is_some(),
        "no restart needed"
    );
    assert!(
        auth.check("bob@contoso.com", &Password::new("tr0ub4dor"))
            .await
            .is_none()
    );

    let generated = admin.ok("password bob@contoso.com --generate", "");
    let generated = Password::new(generated.trim_end());
    assert!(auth.check("bob@contoso.com", &generated).await.is_some());
    assert!(
        auth.check("bob@contoso.com", &right).await.is_none(),
        "replaced"
    );
}

#[test]
fn refusals_exit_non_zero_with_a_reason() {
    let admin = Admin::new();
    admin.ok("add carol@contoso.com --tenant common --client-id GUID", "");
    for (args, stdin, reason) in [
        (
            "add carol@contoso.com --tenant common --client-id GUID",
            "",
            "already registered",
        ),
        (
            "add dave@contoso.com --tenant contoso --client-id GUID",
            "",
            "not a tenant",
        ),
        (
            "add dave@contoso.com --tenant common --client-id 1234",
            "",
            "not a GUID",
        ),
        (
            "add dave --tenant common --client-id GUID",
            "",
            "not a valid mailbox address",
        ),
        ("password dave@contoso.com --generate", "", "not registered"),
        ("password carol@contoso.com --stdin", "\n", "empty"),
        ("import-token carol@contoso.com", "  \n", "no refresh token"),
        ("import-token carol@contoso.com", "one two\n", "white space"),
        ("import-token dave@contoso.com", "rt\n", "not registered"),
        ("remove dave@contoso.com", "", "not registered"),
    ] {
        let err = admin.fails(args, stdin);
        assert!(err.contains(reason), "`{args}`: {err}");
        assert_eq!(err.lines().count(), 1, "`{args}`: {err}");
    }
    // Usage errors, from clap: a secret on the command line is not even an option.
    for args in [
        "add dave@contoso.com --tenant common --client-id GUID --client-secret abc",
        "password carol@contoso.com",
        "password carol@contoso.com --generate --stdin",
    ] {
        admin.fails(args, "");
    }
    let list = admin.ok("list", "");
    assert!(
        list.starts_with("carol@contoso.com ") && list.contains("password=no"),
        "{list}"
    );
}

#[test]
fn help_explains_each_command() {
    let admin = Admin::new();
    let help = admin.ok("--help", "");
    for command in ["add", "password", "import-token", "list", "remove"] {
        assert!(help.contains(command), "{help}");
    }
    let add = admin.ok("add --help", "");
    assert!(add.contains("M365_RELAY_CLIENT_SECRET") && add.contains("--client-secret-file"));
    assert!(add.contains("--token-from <DELEGATE>"), "{add}");
}

#[tokio::test]
async fn a_shared_mailbox_takes_its_token_from_a_delegate() {
    let admin = Admin::new();
    admin.ok("add alice@contoso.com --tenant common --client-id GUID", "");
    let out = admin.ok("add Help@Contoso.com --token-from Alice@Contoso.com", "");
    assert!(
        out.starts_with("added help@contoso.com (token from alice@contoso.com)\n"),
        "{out}"
    );
    assert!(out.contains("Full Access"), "{out}");
    admin.ok("password help@contoso.com --stdin", "help desk pw\n");

    let err = admin.fails("import-token help@contoso.com", "0.AXEA-rt\n");
    assert_eq!(
        err,
        "error: help@contoso.com takes its token from alice@contoso.com; \
         import alice@contoso.com's token instead\n"
    );
    assert!(!admin.state().join("tokens/help@contoso.com.json").exists());
    assert_eq!(
        admin.ok("list", ""),
        format!(
            "alice@contoso.com  tenant=common  client_id={GUID}  public  password=no  token=no  state=no-token  smtp=auto  access-token=-  last-refresh=-\n\
             help@contoso.com  token-from=alice@contoso.com  password=yes  token=no  state=no-token  smtp=auto  access-token=-  last-refresh=-\n"
        )
    );
    admin.ok("import-token alice@contoso.com", "0.AXEA-rt\n");
    let json: serde_json::Value =
        serde_json::from_str(&admin.ok("list --json", "")).expect("list --json is JSON");
    assert_eq!(json[0]["token_from"], serde_json::Value::Null);
    assert_eq!(json[0]["client_type"], "public");
    let help = &json[1];
    assert_eq!(help["address"], "help@contoso.com");
    assert_eq!(help["client_type"], "token-from");
    assert_eq!(help["token_from"], "alice@contoso.com");
    assert_eq!(help["tenant"], serde_json::Value::Null);
    assert_eq!(help["client_id"], serde_json::Value::Null);
    assert_eq!(help["password_set"], true);
    assert_eq!(help["token_stored"], true, "the delegate's token");

    // Clients log in with the shared mailbox's own password; the token is alice's.
    let auth = LocalAuth::open(with_key(&admin.state(), admin.key()).registry()).expect("registry");
    let shared = auth
        .check("help@contoso.com", &Password::new("help desk pw"))
        .await
        .expect("the shared mailbox's password works");
    let owner = auth.registry().token_owner(&shared).expect("token owner");
    assert_eq!(owner.address, "alice@contoso.com");

    let err = admin.fails("remove alice@contoso.com", "");
    assert!(
        err.contains("alice@contoso.com lends its token to help@contoso.com;"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(admin.state().join("tokens/alice@contoso.com.json").exists());
    let out = admin.ok("remove help@contoso.com", "");
    assert!(
        out.contains("the token of alice@contoso.com is kept"),
        "{out}"
    );
    admin.ok("remove alice@contoso.com", "");
    assert_eq!(admin.ok("list --json", "").trim(), "[]");
}

#[test]
fn token_from_refusals() {
    let admin = Admin::new();
    admin.ok("add alice@contoso.com --tenant common --client-id GUID", "");
    admin.ok("add help@contoso.com --token-from alice@contoso.com", "");
    for (args, reason) in [
        (
            "add sales@contoso.com --token-from bob@contoso.com",
            "takes its token from bob@contoso.com, which is not registered",
        ),
        (
            "add sales@contoso.com --token-from help@contoso.com",
            "which takes its own from alice@contoso.com",
        ),
        (
            "add sales@contoso.com --token-from sales@contoso.com",
            "cannot take its token from itself",
        ),
        (
            "add sales@contoso.com --token-from bob",
            "not a valid mailbox address",
        ),
    ] {
        let err = admin.fails(args, "");
        assert!(err.contains(reason), "`{args}`: {err}");
        assert_eq!(err.lines().count(), 1, "`{args}`: {err}");
    }
    // Usage errors from clap: an app registration and --token-from exclude each other.
    for (args, reason) in [
        (
            "add sales@contoso.com --token-from alice@contoso.com --tenant common --client-id GUID",
            "cannot be used with",
        ),
        (
            "add sales@contoso.com --token-from alice@contoso.com --client-secret-file DIR/s",
            "cannot be used with",
        ),
        ("add sales@contoso.com --tenant common", "--client-id"),
        ("add sales@contoso.com --client-id GUID", "--tenant"),
        ("add sales@contoso.com", "required"),
    ] {
        let out = admin.run_env(args, "", None);
        assert_eq!(out.status.code(), Some(2), "`{args}`");
        let err = text(&out.stderr);
        assert!(err.contains(reason), "`{args}`: {err}");
    }
    let list = admin.ok("list", "");
    assert_eq!(list.lines().count(), 2, "{list}");
}

#[test]
fn a_version_1_registry_is_read_and_then_written_as_version_5_with_the_secret_sealed() {
    let admin = Admin::new();
    std::fs::create_dir(admin.state()).expect("state dir");
    std::fs::set_permissions(admin.state(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let file = admin.state().join("mailboxes.json");
    std::fs::write(
        &file,
        format!(
            r#"{{"version": 1, "mailboxes": [{{"address": "alice@contoso.com",
                "tenant": "common", "client_id": "{GUID}", "client_secret": "Xy7~client.secret",
                "password": null, "created": 1700000000}}]}}"#
        ),
    )
    .expect("write v1 registry");
    assert_eq!(
        admin.ok("list", ""),
        format!(
            "alice@contoso.com  tenant=common  client_id={GUID}  confidential  password=no  token=no  state=no-token  smtp=auto  access-token=-  last-refresh=-\n"
        )
    );
    // Even `list` rewrites a legacy file: the plain-text secret does not linger.
    let text = std::fs::read_to_string(&file).expect("registry");
    assert!(!text.contains("client.secret"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(json["version"], 5);

    admin.ok("add help@contoso.com --token-from alice@contoso.com", "");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("registry")).expect("JSON");
    assert_eq!(json["version"], 5);
    let alice = &json["mailboxes"][0]["registration"];
    assert_eq!(alice["kind"], "app");
    assert!(alice.get("client_secret").is_none(), "{alice}");
    let sealed = alice["client_secret_sealed"]
        .as_str()
        .expect("sealed secret");
    assert!(sealed.starts_with("xc20p1:"), "{sealed}");
    let help = &json["mailboxes"][1]["registration"];
    assert_eq!(help["kind"], "token_from");
    assert_eq!(help["delegate"], "alice@contoso.com");

    let auth = LocalAuth::open(with_key(&admin.state(), admin.key()).registry()).expect("registry");
    match auth
        .registry()
        .get("alice@contoso.com")
        .map(|m| &m.registration)
    {
        Some(Registration::App {
            credential: Credential::Secret { secret, .. },
            ..
        }) => assert_eq!(secret.expose(), "Xy7~client.secret"),
        other => panic!("alice lost her secret: {other:?}"),
    }
}

#[test]
fn a_bad_key_is_refused_before_anything_is_touched() {
    let admin = Admin::new();
    std::fs::create_dir(admin.dir.path().join("certs")).expect("certs");
    std::fs::write(admin.key_file(), "not a key\n").expect("key file");
    std::fs::set_permissions(admin.key_file(), std::fs::Permissions::from_mode(0o600))
        .expect("chmod");
    let err = admin.fails("add carol@contoso.com --tenant common --client-id GUID", "");
    assert!(
        err.contains("state.key") && err.contains("base64 encoding of exactly 32 bytes"),
        "{err}"
    );
    assert!(!admin.state().join("mailboxes.json").exists());

    std::fs::write(admin.key_file(), format!("{}\n", "A".repeat(43) + "=")).expect("key file");
    std::fs::set_permissions(admin.key_file(), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let err = admin.fails("list", "");
    assert!(err.contains("chmod 600"), "{err}");
}

/// Writes a self-signed RSA 2048 certificate valid until `not_after` (and its key) to
/// `DIR/{stem}.crt` and `DIR/{stem}.key`.
fn write_certificate(admin: &Admin, stem: &str, not_after: (i32, u8, u8)) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, stem);
    params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
    let cert = params.self_signed(&key).expect("certificate");
    let dir = admin.dir.path();
    std::fs::write(dir.join(format!("{stem}.crt")), cert.pem()).expect("write certificate");
    std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).expect("write key");
}

#[test]
fn credentials_clouds_and_expiry_are_stored() {
    let admin = Admin::new();
    std::fs::write(admin.dir.path().join("secret"), "Xy7~client.secret\n").expect("secret");
    let out = admin.ok(
        "add alice@contoso.com --tenant contoso.com --client-id GUID \
         --client-secret-file DIR/secret --secret-expires 2031-01-31",
        "",
    );
    assert!(
        out.starts_with(
            "added alice@contoso.com (confidential client)\n\
             credential: client secret, expires 2031-01-31 00:00:00 UTC\n"
        ),
        "{out}"
    );
    write_certificate(&admin, "app", (2031, 1, 31));
    let out = admin.ok(
        "add robot@contoso.com --tenant contoso.com --client-id GUID --app-only \
         --certificate DIR/app.crt --private-key DIR/app.key --assertion-alg rs256",
        "",
    );
    assert!(
        out.starts_with("added robot@contoso.com (app-only, confidential client)\n"),
        "{out}"
    );
    assert!(
        out.contains("(RS256, x5t), expires 2031-01-31 00:00:00 UTC"),
        "{out}"
    );
    assert!(
        out.contains("under Certificates & secrets > Certificates"),
        "{out}"
    );
    assert!(out.contains("New-ServicePrincipal -AppId"), "{out}");

    let registry = with_key(&admin.state(), admin.key())
        .registry()
        .load()
        .expect("registry");
    let alice = registry.get("alice@contoso.com").expect("alice");
    assert_eq!(alice.credential_expires(), Some(1_927_584_000));
    let robot = registry.get("robot@contoso.com").expect("robot");
    assert_eq!(robot.credential_expires(), Some(1_927_584_000));
    match &robot.registration {
        Registration::App {
            credential: Credential::Certificate(c),
            cloud: Cloud::Global,
            app_only: true,
            ..
        } => assert_eq!(c.alg(), AssertionAlg::Rs256),
        other => panic!("{other:?}"),
    }
    let stored = std::fs::read_to_string(admin.state().join("mailboxes.json")).expect("registry");
    assert!(!stored.contains("PRIVATE KEY"), "{stored}");
    assert!(
        stored.contains("\"credential_expires\": 1927584000"),
        "{stored}"
    );

    // A cloud whose mail servers are not the configured upstreams is refused...
    let e = admin.fails(
        "add carol@contoso.cn --tenant contoso.cn --client-id GUID --cloud china",
        "",
    );
    assert!(
        e.contains(
            "a mailbox in cloud china needs that cloud's mail servers, but \
                    smtp.upstream = \"smtp.office365.com:587\" (cloud global)"
        ),
        "{e}"
    );
    assert!(
        e.contains("Set smtp.upstream = \"smtp.partner.outlook.cn:587\""),
        "{e}"
    );
    // ... and accepted once they are.
    std::fs::write(
        admin.dir.path().join("relay.toml"),
        "state_dir = \"state\"\n[smtp]\nupstream = \"smtp.office365.us:587\"\n\
         [imap]\nupstream = \"outlook.office365.us:993\"\n\
         [pop3]\nupstream = \"outlook.office365.us:995\"\n",
    )
    .expect("config");
    let out = admin.ok(
        "add dave@contoso.us --tenant contoso.us --client-id GUID --cloud usgov",
        "",
    );
    assert!(
        out.contains("cloud: usgov (sign-in at https://login.microsoftonline.us"),
        "{out}"
    );
    let e = admin.fails(
        "add erin@contoso.com --tenant contoso.com --client-id GUID",
        "",
    );
    assert!(e.contains("a mailbox in cloud global needs"), "{e}");
    let registry = with_key(&admin.state(), admin.key())
        .registry()
        .load()
        .expect("registry");
    assert!(matches!(
        registry.get("dave@contoso.us").map(|m| &m.registration),
        Some(Registration::App {
            cloud: Cloud::UsGov,
            ..
        })
    ));
}

#[test]
fn registration_options_refuse_what_cannot_work() {
    let admin = Admin::new();
    std::fs::write(admin.dir.path().join("secret"), "Xy7~client.secret\n").expect("secret");
    write_certificate(&admin, "app", (2031, 1, 31));
    write_certificate(&admin, "other", (2031, 1, 31));
    write_certificate(&admin, "old", (2020, 1, 1));
    admin.ok("list", ""); // makes the key file, which logs a line once
    let base = "add x@contoso.com --tenant contoso.com --client-id GUID";
    for (extra, reason) in [
        (
            "--secret-expires 2031-01-31",
            "--secret-expires needs a client secret",
        ),
        (
            "--client-secret-file DIR/secret --secret-expires 2001-01-01",
            "--secret-expires is in the past",
        ),
        ("--app-only", "--app-only needs the app's client secret"),
        (
            "--certificate DIR/app.crt --private-key DIR/other.key",
            "does not belong to the certificate",
        ),
        (
            "--certificate DIR/old.crt --private-key DIR/old.key",
            "expired on 2020-01-01",
        ),
        (
            "--certificate DIR/none.crt --private-key DIR/app.key",
            "reading the certificate",
        ),
        (
            "--certificate DIR/app.key --private-key DIR/app.key",
            "no CERTIFICATE",
        ),
    ] {
        let err = admin.fails(&format!("{base} {extra}"), "");
        assert!(err.contains(reason), "`{extra}`: {err}");
        assert_eq!(err.lines().count(), 1, "`{extra}`: {err}");
        assert!(!err.contains("PRIVATE KEY"), "{err}");
    }
    let err = admin.fails(
        "add x@contoso.com --tenant common --client-id GUID --client-secret-file DIR/secret \
         --app-only",
        "",
    );
    assert!(err.contains("not `common`"), "{err}");
    // Usage errors, from clap.
    for (extra, reason) in [
        ("--secret-expires 2031-02-30", "YYYY-MM-DD"),
        ("--secret-expires tomorrow", "YYYY-MM-DD"),
        ("--certificate DIR/app.crt", "--private-key"),
        ("--assertion-alg rs256", "--certificate"),
        ("--assertion-alg es256", "es256"),
        (
            "--certificate DIR/app.crt --private-key DIR/app.key --client-secret-file DIR/secret",
            "cannot be used with",
        ),
        (
            "--certificate DIR/app.crt --private-key DIR/app.key --secret-expires 2031-01-31",
            "cannot be used with",
        ),
        ("--cloud mars", "mars"),
    ] {
        let err = admin.fails(&format!("{base} {extra}"), "");
        assert!(err.contains(reason), "`{extra}`: {err}");
    }
    for extra in ["--cloud usgov", "--app-only", "--certificate DIR/app.crt"] {
        let err = admin.fails(
            &format!("add x@contoso.com --token-from a@contoso.com {extra}"),
            "",
        );
        assert!(err.contains("cannot be used with"), "`{extra}`: {err}");
    }
    assert!(!admin.state().join("mailboxes.json").exists());

    let help = admin.ok("add --help", "");
    for option in [
        "--certificate <CERT.pem>",
        "--private-key <KEY.pem>",
        "--assertion-alg <ALG>",
        "--secret-expires <YYYY-MM-DD>",
        "--cloud <CLOUD>",
        "--app-only",
        "usgovdod",
    ] {
        assert!(help.contains(option), "{option}: {help}");
    }
}
