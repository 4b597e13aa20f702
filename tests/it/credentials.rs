//! Registration options of `mailbox add`, end to end through the real binary and the
//! in-process relay against the fake Entra ID: certificate credentials (a client assertion
//! on every grant), app-only mailboxes (client credentials, no sign-in), a wrong certificate,
//! and a mailbox in the US Government cloud.

use std::process::Output;

use base64::Engine as _;
use m365_relay::mailbox::{Credential, Registration, Registry};
use m365_relay::oauth::assertion::ClientAssertion;
use m365_relay::state::StateKey;
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_RSA_SHA256};

// The app that authenticates with a client secret, and its secret.
use crate::harness::{ROBOT, TENANT, World, path_str, run};
use crate::harness::{ROBOT_APP as SECRET_APP, ROBOT_APP_SECRET as APP_SECRET};
use crate::support::fake_entra::TokenRequest;
use crate::support::fake_server::AuthAttempt;
use crate::support::line_client::LineClient;

const ALICE: &str = "alice@contoso.com";
const SCANNER: &str = "scanner@contoso.com";
const PASSWORD: &str = "local password 1";

/// An app that authenticates with a certificate.
const CERT_APP: &str = "9b1f4a63-0d2c-4e8a-b5f7-3c6d8e9a0b12";

/// When the test certificates expire: 2031-01-31 00:00:00 UTC.
const NOT_AFTER: u64 = 1_927_584_000;

/// A self-signed RSA 2048 certificate as an admin would make it for an app registration:
/// (certificate PEM, private key PEM, certificate DER).
fn app_certificate(name: &str) -> (String, String, Vec<u8>) {
    let key = KeyPair::generate_for(&PKCS_RSA_SHA256).expect("RSA key");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.not_after = rcgen::date_time_ymd(2031, 1, 31);
    let cert = params.self_signed(&key).expect("self-signed certificate");
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

/// Runs `m365-relay --config <world's> args...` off the async threads (the fakes run on
/// them), with `stdin`.
async fn cli(world: &World, args: &[&str], stdin: &str) -> Output {
    let mut all = vec!["--config".to_owned(), path_str(&world.config_path)];
    all.extend(args.iter().map(|a| a.to_string()));
    let program = path_str(&assert_cmd::cargo::cargo_bin("m365-relay"));
    run(&program, all, Some(stdin.as_bytes().to_vec())).await
}

/// Like [`cli`], and the command must succeed; its standard output.
async fn admin(world: &World, args: &[&str], stdin: &str) -> String {
    let out = cli(world, args, stdin).await;
    assert!(
        out.status.success(),
        "m365-relay {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The registry as the CLI wrote it.
fn registry(world: &World) -> Registry {
    let key = StateKey::load_with(None, &world.dir.path().join("certs/state.key")).expect("key");
    m365_relay::state::files::with_key(&world.state_dir(), key)
        .registry()
        .load()
        .expect("registry")
}

/// Writes the certificate and key files, registers `address` with them (and `extra`
/// options), sets its password, and deletes the files: the relay keeps what it needs.
async fn add_with_certificate(
    world: &World,
    address: &str,
    pem: &(String, String),
    extra: &[&str],
) -> String {
    let cert = world.file("app.crt", pem.0.as_bytes());
    let key = world.file("app.key", pem.1.as_bytes());
    let (cert, key) = (path_str(&cert), path_str(&key));
    let files = ["--certificate", &cert, "--private-key", &key];
    let out = add(world, address, CERT_APP, &[&files[..], extra].concat()).await;
    std::fs::remove_file(&cert).expect("remove certificate file");
    std::fs::remove_file(&key).expect("remove key file");
    set_password(world, address).await;
    out
}

/// `mailbox add address --tenant <ours> --client-id client_id extra...`; its output.
async fn add(world: &World, address: &str, client_id: &str, extra: &[&str]) -> String {
    let app = ["--tenant", TENANT, "--client-id", client_id];
    admin(
        world,
        &[&["mailbox", "add", address][..], &app, extra].concat(),
        "",
    )
    .await
}

async fn set_password(world: &World, address: &str) {
    admin(
        world,
        &["mailbox", "password", address, "--stdin"],
        &format!("{PASSWORD}\n"),
    )
    .await;
}

/// Logs in to the relay's SMTPS listener with AUTH PLAIN; the reply.
async fn smtp_login(world: &World, user: &str, password: &str) -> String {
    let addr = ([127, 0, 0, 1], world.port("smtps")).into();
    let mut c = LineClient::connect_tls(addr, world.pki.client_config(), "127.0.0.1").await;
    c.read_smtp_reply().await;
    c.smtp("EHLO printer").await;
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    c.smtp(&format!("AUTH PLAIN {plain}")).await
}

/// The claims of the client assertion in a token request.
fn assertion_claims(request: &TokenRequest) -> serde_json::Value {
    assert_eq!(
        request
            .form
            .get("client_assertion_type")
            .map(String::as_str),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        "{:?}",
        request.form
    );
    assert!(
        !request.form.contains_key("client_secret"),
        "{:?}",
        request.form
    );
    let jwt = &request.form["client_assertion"];
    let claims = jwt.split('.').nth(1).expect("a JWT");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .expect("base64url");
    serde_json::from_slice(&json).expect("JSON claims")
}

/// Adds [`ROBOT`] as an app-only mailbox of [`SECRET_APP`] whose secret file holds `secret`,
/// with `extra` options; the CLI's output.
async fn add_robot_with_secret(world: &World, secret: &str, extra: &[&str]) -> String {
    let secret_file = path_str(&world.file("secret", secret.as_bytes()));
    let app_only = ["--client-secret-file", &secret_file, "--app-only"];
    add(world, ROBOT, SECRET_APP, &[&app_only[..], extra].concat()).await
}

/// Asserts that `out` says each of `expected`.
fn assert_says(out: &str, expected: &[&str]) {
    for expected in expected {
        assert!(out.contains(expected), "{expected:?} in:\n{out}");
    }
}

fn grant_type(request: &TokenRequest) -> &str {
    request.form.get("grant_type").map_or("", String::as_str)
}

#[tokio::test]
async fn a_certificate_mailbox_signs_in_and_logs_in_with_assertions() {
    let mut world = World::new().await;
    let (cert, key, der) = app_certificate("m365-relay alice");
    world.entra.add_app_with_certificate(TENANT, CERT_APP, &der);
    let out = add_with_certificate(&world, ALICE, &(cert, key), &[]).await;
    assert!(
        out.starts_with(&format!("added {ALICE} (confidential client)\n")),
        "{out}"
    );
    assert_says(
        &out,
        &[
            "credential: certificate with thumbprint ",
            "(PS256, x5t#S256), expires 2031-01-31 00:00:00 UTC",
        ],
    );
    let registry = registry(&world);
    let alice = registry.get(ALICE).expect("alice");
    assert_eq!(alice.credential_expires(), Some(NOT_AFTER));
    assert!(matches!(
        &alice.registration,
        Registration::App {
            credential: Credential::Certificate(_),
            app_only: false,
            ..
        }
    ));
    let stored = std::fs::read_to_string(world.state_dir().join("mailboxes.json")).unwrap();
    assert!(
        !stored.contains("PRIVATE KEY"),
        "the key is sealed: {stored}"
    );

    // The device code sign-in: the poll that redeems it carries an assertion.
    world.entra.auto_approve_device_codes(1, ALICE);
    let out = admin(&world, &["mailbox", "authorize", ALICE], "").await;
    assert!(
        out.starts_with(&format!("authorized {ALICE} for ")),
        "{out}"
    );
    let polls = world.entra.device_code_polls();
    let last = polls.last().expect("a poll");
    assert_eq!(last.status, 200);
    let claims = assertion_claims(last);
    assert_eq!(claims["aud"], world.entra.token_url(TENANT));
    assert_eq!(claims["iss"], CERT_APP);
    assert_eq!(claims["sub"], CERT_APP);

    // The relay refreshes with an assertion too, and logs in.
    world.start().await;
    let reply = world.imap_login(ALICE, PASSWORD).await;
    assert!(reply.starts_with("a OK "), "{reply}");
    let requests = world.entra.requests();
    let refreshes: Vec<&TokenRequest> = requests
        .iter()
        .filter(|r| grant_type(r) == "refresh_token")
        .collect();
    assert_eq!(refreshes.len(), 1, "{requests:?}");
    assert_eq!(refreshes[0].status, 200);
    let claims = assertion_claims(refreshes[0]);
    assert_ne!(
        claims["jti"],
        assertion_claims(last)["jti"],
        "a fresh jti per assertion"
    );
    world.check_fakes();
}

#[tokio::test]
async fn app_only_mailboxes_log_in_without_any_sign_in() {
    let mut world = World::new().await;
    world.entra.add_app(TENANT, SECRET_APP, Some(APP_SECRET));
    let (cert, key, der) = app_certificate("m365-relay scanner");
    world.entra.add_app_with_certificate(TENANT, CERT_APP, &der);

    // With a client secret...
    let secret = format!("{APP_SECRET}\n");
    let out = add_robot_with_secret(&world, &secret, &["--secret-expires", "2030-06-30"]).await;
    assert!(
        out.starts_with(&format!("added {ROBOT} (app-only, confidential client)\n")),
        "{out}"
    );
    assert_says(
        &out,
        &[
            "credential: client secret, expires 2030-06-30 00:00:00 UTC",
            "IMAP.AccessAsApp, POP.AccessAsApp and SMTP.SendAsApp",
            "\n  Connect-ExchangeOnline\n",
            &format!("\n  New-ServicePrincipal -AppId {SECRET_APP} -ObjectId <OBJECT_ID>\n"),
            &format!(
                "\n  Add-MailboxPermission -Identity {ROBOT} -User <OBJECT_ID> -AccessRights FullAccess\n"
            ),
            "Object ID of the Enterprise Application",
            "NOT the Object ID shown under App registrations",
            "there is no sign-in: the relay gets its tokens with the app's secret",
        ],
    );
    set_password(&world, ROBOT).await;
    // ... and with a certificate, signing RS256.
    let out = add_with_certificate(
        &world,
        SCANNER,
        &(cert, key),
        &["--app-only", "--assertion-alg", "rs256"],
    )
    .await;
    assert!(out.contains("(RS256, x5t)"), "{out}");
    assert!(out.contains("the app's certificate"), "{out}");

    // No sign-in, no refresh token.
    for (args, expected) in [
        (
            vec!["mailbox", "authorize", ROBOT],
            "is app-only (client credentials): there is no user to sign in",
        ),
        (
            vec!["mailbox", "import-token", ROBOT],
            "app-only: it has no refresh token",
        ),
    ] {
        let out = cli(&world, &args, "rt\n").await;
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }

    world.imap.grant_app_access(ROBOT, SECRET_APP);
    world.smtp.grant_app_access(SCANNER, CERT_APP);
    world.start().await;
    // The local password is still demanded.
    let reply = world.imap_login(ROBOT, "not the password").await;
    assert_eq!(reply, "a NO [AUTHENTICATIONFAILED] Authentication failed");
    assert_eq!(world.entra.token_requests(), 0);

    let reply = world.imap_login(ROBOT, PASSWORD).await;
    assert!(reply.starts_with("a OK "), "{reply}");
    let reply = smtp_login(&world, SCANNER, PASSWORD).await;
    assert!(reply.starts_with("235 "), "{reply}");

    let requests = world.entra.requests();
    assert!(
        requests
            .iter()
            .all(|r| grant_type(r) == "client_credentials" && r.status == 200),
        "{requests:?}"
    );
    let by_client = |client: &str| {
        requests
            .iter()
            .find(|r| r.form.get("client_id").map(String::as_str) == Some(client))
            .unwrap_or_else(|| panic!("no token request of {client}"))
    };
    let secret = by_client(SECRET_APP);
    assert_eq!(
        secret.form["scope"],
        "https://outlook.office365.com/.default"
    );
    assert_eq!(secret.form["client_secret"], APP_SECRET);
    let certificate = by_client(CERT_APP);
    assert_eq!(
        certificate.form["scope"],
        "https://outlook.office365.com/.default"
    );
    assert_eq!(
        assertion_claims(certificate)["aud"],
        world.entra.token_url(TENANT)
    );

    // Upstream, each mailbox logged in as itself with an app-only token.
    let accepted = |attempts: Vec<AuthAttempt>| -> Vec<(String, String)> {
        let accepted = attempts.into_iter().filter(|a| a.accepted);
        accepted.map(|a| (a.user, a.token)).collect()
    };
    let imap = accepted(world.imap.auth_attempts());
    let smtp = accepted(world.smtp.auth_attempts());
    for (logins, user) in [(imap, ROBOT), (smtp, SCANNER)] {
        assert_eq!(logins.len(), 1, "{user}");
        assert_eq!(logins[0].0, user);
        let info = world.entra.access_token_info(&logins[0].1).expect("issued");
        assert!(info.is_app_only(), "{info:?}");
    }
    world.check_fakes();
}

#[tokio::test]
async fn a_wrong_certificate_is_refused_and_the_mailbox_needs_the_admin() {
    let mut world = World::new().await;
    let (_, _, registered) = app_certificate("the certificate Entra knows");
    world
        .entra
        .add_app_with_certificate(TENANT, CERT_APP, &registered);
    let (cert, key, _) = app_certificate("another certificate");
    add_with_certificate(&world, ROBOT, &(cert, key), &["--app-only"]).await;
    world.smtp.grant_app_access(ROBOT, CERT_APP);
    world.start().await;

    let reply = smtp_login(&world, ROBOT, PASSWORD).await;
    assert!(
        reply.starts_with(&format!(
            "454 4.7.0 Mailbox {ROBOT} needs the relay admin: "
        )),
        "{reply}"
    );
    assert!(
        reply.contains("refused the app's client credentials"),
        "{reply}"
    );
    let requests = world.entra.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].status, 401);

    let status = std::fs::read_to_string(world.state_dir().join(format!("status/{ROBOT}.json")))
        .expect("status file");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["state"], "needs-reauth", "{status}");
    assert_eq!(status["error"], "invalid_client", "{status}");
    assert_eq!(
        status["error_codes"],
        serde_json::json!([700027]),
        "{status}"
    );

    // Another login shares the verdict without asking Entra again.
    let reply = smtp_login(&world, ROBOT, PASSWORD).await;
    assert!(reply.starts_with("454 4.7.0 "), "{reply}");
    assert_eq!(world.entra.token_requests(), 1);
    assert!(
        world.smtp.auth_attempts().is_empty(),
        "nothing reached the mail server"
    );
    world.check_fakes();
}

#[tokio::test]
async fn a_replayed_or_misaddressed_assertion_is_refused_by_the_fake() {
    let world = World::new().await;
    let (cert, key, der) = app_certificate("m365-relay replay");
    world.entra.add_app_with_certificate(TENANT, CERT_APP, &der);
    add_with_certificate(&world, ROBOT, &(cert, key), &["--app-only"]).await;
    // One real assertion, as the relay makes it; then sent twice by hand.
    let m = registry(&world).get(ROBOT).cloned().expect("robot");
    let Registration::App {
        credential: Credential::Certificate(c),
        ..
    } = &m.registration
    else {
        panic!("no certificate");
    };
    let token_url = world.entra.token_url(TENANT);
    let post = |assertion: String| {
        let token_url = token_url.clone();
        async move {
            let form = [
                ("grant_type", "client_credentials"),
                ("client_id", CERT_APP),
                ("scope", "https://outlook.office365.com/.default"),
                (
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                ),
                ("client_assertion", &assertion),
            ];
            let body: String = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form)
                .finish();
            run(
                "curl",
                vec!["--silent".into(), "--data".into(), body, token_url],
                None,
            )
            .await
        }
    };
    let assertion = c.assertion(CERT_APP, &token_url).unwrap();
    let first = post(assertion.clone()).await;
    assert!(String::from_utf8_lossy(&first.stdout).contains("\"access_token\""));
    let again = String::from_utf8_lossy(&post(assertion).await.stdout).into_owned();
    assert!(
        again.contains("AADSTS50013") && again.contains("jti replay"),
        "{again}"
    );
    let elsewhere = c
        .assertion(
            CERT_APP,
            "https://login.microsoftonline.com/x/oauth2/v2.0/token",
        )
        .unwrap();
    let wrong = String::from_utf8_lossy(&post(elsewhere).await.stdout).into_owned();
    assert!(wrong.contains("AADSTS700023"), "{wrong}");
    world.entra.check();
}

#[tokio::test]
async fn a_us_government_mailbox_asks_for_that_clouds_scopes() {
    let mut world = World::new().await;
    world
        .entra
        .set_scope_hosts(&["https://outlook.office365.us/"]);
    // A delegated mailbox (its refresh token imported) and an app-only one.
    add(
        &world,
        ALICE,
        crate::harness::CLIENT_ID,
        &["--cloud", "usgov"],
    )
    .await;
    set_password(&world, ALICE).await;
    let refresh_token = world
        .entra
        .add_user(TENANT, crate::harness::CLIENT_ID, ALICE);
    admin(
        &world,
        &["mailbox", "import-token", ALICE],
        &format!("{refresh_token}\n"),
    )
    .await;
    world.entra.add_app(TENANT, SECRET_APP, Some(APP_SECRET));
    let out = add_robot_with_secret(&world, APP_SECRET, &["--cloud", "usgov"]).await;
    assert_says(
        &out,
        &[
            "cloud: usgov (sign-in at https://login.microsoftonline.us, scopes of https://outlook.office365.us)",
            "\n  Connect-ExchangeOnline -ExchangeEnvironmentName O365USGovGCCHigh\n",
        ],
    );
    set_password(&world, ROBOT).await;
    world.imap.grant_app_access(ROBOT, SECRET_APP);
    world.start().await;

    assert!(world.imap_login(ALICE, PASSWORD).await.starts_with("a OK "));
    assert!(world.imap_login(ROBOT, PASSWORD).await.starts_with("a OK "));
    let requests = world.entra.requests();
    let scope_of = |grant: &str| {
        let r = requests
            .iter()
            .find(|r| grant_type(r) == grant)
            .expect(grant);
        assert_eq!(r.status, 200, "{r:?}");
        r.form["scope"].clone()
    };
    assert_eq!(
        scope_of("refresh_token"),
        "https://outlook.office365.us/IMAP.AccessAsUser.All \
         https://outlook.office365.us/POP.AccessAsUser.All \
         https://outlook.office365.us/SMTP.Send offline_access"
    );
    assert_eq!(
        scope_of("client_credentials"),
        "https://outlook.office365.us/.default"
    );
    world.check_fakes();
}

#[tokio::test]
async fn a_replaced_client_secret_is_used_without_a_new_sign_in() {
    const ALICE: &str = "alice@contoso.com";
    let mut world = World::new().await;
    world.entra.add_app(TENANT, SECRET_APP, Some(APP_SECRET));
    // Registered with a secret Entra no longer accepts (expired, say).
    let old = path_str(&world.file("old-secret", b"Old~expired.secret\n"));
    add(&world, ALICE, SECRET_APP, &["--client-secret-file", &old]).await;
    set_password(&world, ALICE).await;
    let refresh_token = world.entra.add_user(TENANT, SECRET_APP, ALICE);
    admin(
        &world,
        &["mailbox", "import-token", ALICE],
        &format!("{refresh_token}\n"),
    )
    .await;
    world.start().await;

    let reply = world.imap_login(ALICE, PASSWORD).await;
    assert!(
        reply.contains("NO [UNAVAILABLE]") && reply.contains("needs the relay admin"),
        "{reply}"
    );
    assert_eq!(world.entra.token_requests(), 1);
    let reply = world.imap_login(ALICE, PASSWORD).await;
    assert!(reply.contains("NO [UNAVAILABLE]"), "{reply}");
    assert_eq!(
        world.entra.token_requests(),
        1,
        "the same refusal is not asked again"
    );

    // Without a credential the command refuses rather than make a public client.
    let out = cli(&world, &["mailbox", "credential", ALICE], "").await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--public for none"));

    let new = path_str(&world.file("new-secret", format!("{APP_SECRET}\n").as_bytes()));
    let out = admin(
        &world,
        &[
            "mailbox",
            "credential",
            ALICE,
            "--client-secret-file",
            &new,
            "--secret-expires",
            "2030-01-31",
        ],
        "",
    )
    .await;
    assert!(
        out.starts_with(&format!(
            "credential of {ALICE} replaced; its refresh token is kept\n"
        )),
        "{out}"
    );
    assert!(out.contains("expires 2030-01-31"), "{out}");
    // The running relay picks it up at the next login, with the stored refresh token.
    let reply = world.imap_login(ALICE, PASSWORD).await;
    assert!(reply.contains("OK"), "{reply}");
    assert_eq!(world.entra.token_requests(), 2);
    let last = world.entra.requests().pop().unwrap();
    assert_eq!(last.status, 200);
    assert_eq!(
        last.form.get("client_secret").map(String::as_str),
        Some(APP_SECRET)
    );
    assert_eq!(
        last.form.get("grant_type").map(String::as_str),
        Some("refresh_token")
    );
    world.check_fakes();
}
