//! `m365-relay mailbox authorize`: the real binary signs in against the fake Entra ID by
//! device code, by browser (loopback redirect) and by pasted address, stores only the right
//! user's refresh token, and the relay then logs in with it.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::harness::{CLIENT_ID, TENANT, World};
use crate::support::fake_entra::DevicePoll;

const ALICE: &str = "alice@contoso.com";
const ALICE_PW: &str = "alice's local password";
const SHARED: &str = "helpdesk@contoso.com";
const MALLORY: &str = "mallory@contoso.com";

/// What every sign-in asks for: the mail scopes, a refresh token, and an id_token.
const SCOPE: &str = "https://outlook.office.com/IMAP.AccessAsUser.All \
                     https://outlook.office.com/POP.AccessAsUser.All \
                     https://outlook.office.com/SMTP.Send offline_access openid profile";

/// How long a test waits for one line of the command's output.
const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `m365-relay mailbox authorize`, its output read line by line as it comes.
struct Authorize {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<(Stream, String)>,
    seen: Vec<(Stream, String)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stream {
    Out,
    Err,
}

/// How the command ended, with everything it printed.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\n--- stdout:\n{}--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl Authorize {
    /// Starts `m365-relay --config <world's> mailbox authorize args...`.
    fn start(world: &World, args: &[&str]) -> Self {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("m365-relay"))
            .env_remove("M365_RELAY_CONFIG")
            .env_remove("M365_RELAY_LOG")
            .arg("--config")
            .arg(&world.config_path)
            .args(["mailbox", "authorize"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start m365-relay");
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        for (stream, pipe) in [(Stream::Out, stdout), (Stream::Err, stderr)] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((stream, line)).is_err() {
                        break;
                    }
                }
            });
        }
        Authorize {
            stdin: child.stdin.take(),
            child: Some(child),
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for the first line (of either stream) for which `find` finds something.
    async fn wait_for<T>(&mut self, what: &str, find: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((stream, line))) => {
                    let found = find(&line);
                    self.seen.push((stream, line));
                    if let Some(found) = found {
                        return found;
                    }
                }
                Ok(None) => panic!("the command ended before printing {what}:\n{}", self.log()),
                Err(_) => panic!("no {what} within {LINE_TIMEOUT:?}:\n{}", self.log()),
            }
        }
    }

    /// The user code in Entra's message ("... enter the code ABCD12345 to authenticate.").
    async fn user_code(&mut self) -> String {
        self.wait_for("the user code", |line| {
            let after = line.split("enter the code ").nth(1)?;
            after.split_whitespace().next().map(str::to_owned)
        })
        .await
    }

    /// The sign-in address the command printed, on a line of its own.
    async fn sign_in_url(&mut self, world: &World) -> String {
        let prefix = world.entra.authorize_url(TENANT) + "?";
        self.wait_for("the sign-in address", |line| {
            let line = line.trim();
            line.starts_with(&prefix).then(|| line.to_owned())
        })
        .await
    }

    /// Types `line` and Enter on the command's standard input.
    fn paste(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the command to exit (20 s at most) and collects all it printed.
    async fn finish(mut self) -> Finished {
        drop(self.stdin.take());
        let mut child = self.child.take().expect("not finished yet");
        let waited = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::task::spawn_blocking(move || {
                let status = child.wait();
                (child, status)
            }),
        )
        .await;
        let status = match waited {
            Ok(joined) => joined.expect("wait task").1.expect("wait for m365-relay"),
            Err(_) => panic!("the command did not exit within 20 s:\n{}", self.log()),
        };
        while let Some(line) = self.lines.recv().await {
            self.seen.push(line);
        }
        let text = |which: Stream| -> String {
            let lines = self.seen.iter().filter(|(s, _)| *s == which);
            lines.map(|(_, l)| format!("{l}\n")).collect()
        };
        Finished {
            status,
            stdout: text(Stream::Out),
            stderr: text(Stream::Err),
        }
    }

    fn log(&self) -> String {
        let lines = self.seen.iter().map(|(s, l)| format!("{s:?}: {l}\n"));
        lines.collect()
    }
}

impl Drop for Authorize {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Registers `address` with the world's public app and a local password, but no token.
fn add_without_token(world: &World, address: &str) {
    world.add_without_token(address, ALICE_PW);
}

/// `token=yes` or `token=no` from `mailbox list` for `address`.
fn token_stored(world: &World, address: &str) -> bool {
    let list = world.admin(&["mailbox", "list"], "");
    let line = list
        .lines()
        .find(|l| l.starts_with(&format!("{address} ")))
        .unwrap_or_else(|| panic!("{address} not listed:\n{list}"));
    line.contains("  token=yes  ")
}

/// The token files in the state folder.
fn token_files(world: &World) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(world.state_dir().join("tokens")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// An HTTP/1.1 answer: status, headers (lower-case names) and body.
struct HttpAnswer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// One plain-HTTP request (`GET`, or `POST` of a form), as a browser would send it; never
/// follows redirects.
async fn http(method: &str, url: &str, form: Option<&BTreeMap<String, String>>) -> HttpAnswer {
    let url = url::Url::parse(url).expect("an http URL");
    assert_eq!(url.scheme(), "http");
    let host = url.host_str().expect("host").to_owned();
    let port = url.port().expect("port");
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let body = form.map_or(String::new(), |f| {
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(f)
            .finish()
    });
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: test-browser\r\n\
         Connection: close\r\n"
    );
    if form.is_some() {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .unwrap_or_else(|e| panic!("connect to {host}:{port}: {e}"));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpAnswer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Opens `url` (the sign-in address) like a browser: the fake Entra signs in at once and
/// answers `302 Found`; returns where it redirects to.
async fn open_sign_in(url: &str) -> String {
    let answer = http("GET", url, None).await;
    assert_eq!(answer.status, 302, "{}", answer.body);
    answer.headers["location"].clone()
}

/// `url` with the value of its query parameter `name` replaced.
fn with_param(url: &str, name: &str, value: &str) -> String {
    let mut url = url::Url::parse(url).unwrap();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == name {
                value.into()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url.to_string()
}

// === device code ===

#[tokio::test]
async fn device_code_sign_in_stores_the_token_and_the_relay_logs_in_with_it() {
    let mut world = World::new().await;
    add_without_token(&world, ALICE);
    assert!(!token_stored(&world, ALICE));

    let mut run = Authorize::start(&world, &[ALICE]);
    let code = run.user_code().await;
    assert_eq!(code.len(), 9, "{code}");
    world.entra.approve_device_code(&code, ALICE);
    let done = run.finish().await;
    assert!(done.status.success(), "{done}");

    assert!(
        done.stderr.contains(&format!(
            "To sign in, use a web browser to open the page https://microsoft.com/devicelogin \
             and enter the code {code} to authenticate."
        )),
        "{done}"
    );
    let printed: Vec<&str> = done.stdout.lines().collect();
    assert_eq!(printed.len(), 1, "{done}");
    assert!(
        printed[0].starts_with(&format!(
            "authorized {ALICE} for https://outlook.office.com/"
        )),
        "{done}"
    );
    assert!(printed[0].contains("SMTP.Send"), "{done}");
    assert!(
        printed[0].contains("the access token expires at 20"),
        "{done}"
    );
    assert!(printed[0].contains("(in 60 minutes)"), "{done}");

    // Entra saw a public client: no secret anywhere, the sign-in scopes, polls of the code.
    let started = world.entra.device_code_requests();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0]["client_id"], CLIENT_ID);
    assert_eq!(started[0]["scope"], SCOPE);
    assert_eq!(started[0].len(), 2, "{:?}", started[0]);
    let polls = world.entra.device_code_polls();
    let last = polls.last().expect("a poll");
    assert_eq!(last.status, 200);
    assert_eq!(last.form["client_id"], CLIENT_ID);
    assert!(!last.form.contains_key("client_secret"), "{:?}", last.form);

    // The command printed no token.
    let rt = world
        .entra
        .latest_refresh_token(TENANT, CLIENT_ID, ALICE)
        .expect("a refresh token was issued");
    let everything = format!("{}{}", done.stdout, done.stderr);
    assert!(!everything.contains(&rt));
    for at in world.entra.issued_access_tokens() {
        assert!(!everything.contains(&at));
    }

    assert!(token_stored(&world, ALICE));
    world.imap.set_primary_mailbox(ALICE);
    world.start().await;
    let ok = world.imap_login(ALICE, ALICE_PW).await;
    assert!(ok.starts_with("a OK "), "{ok}");
    world.check_fakes();
}

#[tokio::test]
async fn slow_down_adds_five_seconds_to_the_poll_interval() {
    let world = World::new().await;
    add_without_token(&world, ALICE);
    world.entra.push_device_poll(DevicePoll::SlowDown);
    world.entra.auto_approve_device_codes(2, ALICE);

    let done = Authorize::start(&world, &[ALICE]).finish().await;
    assert!(done.status.success(), "{done}");
    let polls = world.entra.device_code_polls();
    assert_eq!(polls.len(), 2, "{polls:?}");
    let gap = polls[1].at - polls[0].at;
    // interval 1 s + 5 s (RFC 8628 §3.5)
    assert!(
        gap >= Duration::from_millis(5900) && gap < Duration::from_secs(8),
        "{gap:?}"
    );
    assert!(token_stored(&world, ALICE));
    world.check_fakes();
}

#[tokio::test]
async fn an_expired_code_fails_with_a_clear_message_and_stores_nothing() {
    let world = World::new().await;
    add_without_token(&world, ALICE);
    world.entra.push_device_poll(DevicePoll::Pending);
    world.entra.push_device_poll(DevicePoll::Expired);

    let done = Authorize::start(&world, &[ALICE]).finish().await;
    assert!(!done.status.success(), "{done}");
    assert!(done.stdout.is_empty(), "{done}");
    assert!(
        done.stderr
            .contains("the sign-in code expired before the sign-in was finished"),
        "{done}"
    );
    assert!(done.stderr.contains("run the command again"), "{done}");
    assert_eq!(world.entra.device_code_polls().len(), 2);
    assert!(!token_stored(&world, ALICE));
    assert!(token_files(&world).is_empty());
    world.check_fakes();
}

#[tokio::test]
async fn refused_device_code_sign_ins_say_what_to_do() {
    let world = World::new().await;
    add_without_token(&world, ALICE);

    let cases = [
        (Some(DevicePoll::Declined), "the sign-in was declined"),
        (
            Some(DevicePoll::BadCode),
            "Entra did not recognise the device code (bad_verification_code)",
        ),
        (None, "\"Allow public client flows\""),
    ];
    for (answer, expected) in cases {
        match answer {
            Some(answer) => world.entra.push_device_poll(answer),
            // What Entra answers when public client flows are off for the app.
            None => world.entra.push_error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' \
                 or 'client_secret'.",
            ),
        }
        let done = Authorize::start(&world, &[ALICE]).finish().await;
        assert!(!done.status.success(), "{done}");
        assert!(done.stderr.contains(expected), "{expected}: {done}");
    }
    assert!(!token_stored(&world, ALICE));
    world.check_fakes();
}

// === browser, with the loopback redirect ===

#[tokio::test]
async fn browser_sign_in_comes_back_to_the_loopback_listener() {
    let world = World::new().await;
    add_without_token(&world, ALICE);

    let mut run = Authorize::start(&world, &[ALICE, "--browser"]);
    let url = run.sign_in_url(&world).await;
    let location = open_sign_in(&url).await;

    let sent = &world.entra.authorize_requests()[0];
    assert_eq!(sent["client_id"], CLIENT_ID);
    assert_eq!(sent["response_type"], "code");
    assert_eq!(sent["scope"], SCOPE);
    assert_eq!(sent["code_challenge_method"], "S256");
    assert_eq!(sent["code_challenge"].len(), 43);
    assert_eq!(sent["login_hint"], ALICE);
    assert_eq!(sent["prompt"], "select_account");
    assert!(sent["state"].len() >= 16, "{sent:?}");
    let redirect_uri = &sent["redirect_uri"];
    assert!(
        redirect_uri.starts_with("http://localhost:") && redirect_uri.ends_with('/'),
        "{redirect_uri}"
    );
    assert!(
        location.starts_with(&format!("{redirect_uri}?code=")),
        "{location}"
    );

    // A browser asks for its icon too; that does not end the wait.
    let icon = http("GET", &format!("{redirect_uri}favicon.ico"), None).await;
    assert_eq!(icon.status, 404);
    let page = http("GET", &location, None).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body
            .contains("Signed in; you can close this window and return to the terminal."),
        "{}",
        page.body
    );
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");

    let done = run.finish().await;
    assert!(done.status.success(), "{done}");
    assert!(
        done.stdout.starts_with(&format!("authorized {ALICE} for ")),
        "{done}"
    );
    let redeemed = world.entra.code_redemptions();
    assert_eq!(redeemed.len(), 1);
    assert_eq!(redeemed[0].status, 200);
    assert_eq!(&redeemed[0].form["redirect_uri"], redirect_uri);
    assert!(redeemed[0].form["code_verifier"].len() >= 43);
    assert!(!redeemed[0].form.contains_key("client_secret"));
    assert!(token_stored(&world, ALICE));
    world.check_fakes();
}

#[tokio::test]
async fn the_wrong_user_is_refused_and_nothing_is_stored() {
    let world = World::new().await;
    add_without_token(&world, ALICE);
    world.entra.sign_in_as(MALLORY);

    let mut run = Authorize::start(&world, &[ALICE, "--browser"]);
    let url = run.sign_in_url(&world).await;
    let location = open_sign_in(&url).await;
    let page = http("GET", &location, None).await;
    assert_eq!(page.status, 200);
    let done = run.finish().await;

    assert!(!done.status.success(), "{done}");
    assert!(done.stdout.is_empty(), "{done}");
    assert!(
        done.stderr.contains(&format!(
            "{MALLORY} signed in, but {ALICE} was expected; nothing was stored"
        )),
        "{done}"
    );
    assert!(done.stderr.contains("private window"), "{done}");
    assert!(done.stderr.contains("login_hint"), "{done}");
    assert!(!token_stored(&world, ALICE));
    assert!(token_files(&world).is_empty(), "{:?}", token_files(&world));
    world.check_fakes();
}

// === pasted address ===

#[tokio::test]
async fn paste_sign_in_of_a_confidential_client_and_the_code_is_single_use() {
    const CONFIDENTIAL: &str = "0b7e1d2c-3f4a-4b5c-8d6e-7f8091a2b3c4";
    const SECRET: &str = "Qx8~confidential.client~secret";
    let world = World::new().await;
    world.entra.add_app(TENANT, CONFIDENTIAL, Some(SECRET));
    let secret_file = world.file("secret.txt", SECRET.as_bytes());
    let secret = secret_file.display().to_string();
    world.register_with(ALICE, CONFIDENTIAL, &["--client-secret-file", &secret]);

    let mut run = Authorize::start(&world, &[ALICE, "--paste"]);
    let url = run.sign_in_url(&world).await;
    let location = open_sign_in(&url).await;
    let native = world.entra.native_client_redirect_uri();
    assert!(
        location.starts_with(&format!("{native}?code=")),
        "{location}"
    );
    assert_eq!(world.entra.authorize_requests()[0]["redirect_uri"], native);
    run.paste(&location);
    let done = run.finish().await;
    assert!(done.status.success(), "{done}");
    assert!(done.stderr.contains("paste it here"), "{done}");
    assert!(!done.stderr.contains(SECRET) && !done.stdout.contains(SECRET));

    let redeemed = world.entra.code_redemptions();
    assert_eq!(redeemed.len(), 1);
    let form = &redeemed[0].form;
    assert_eq!(form["client_secret"], SECRET);
    assert_eq!(form["redirect_uri"], native);
    assert_eq!(form["grant_type"], "authorization_code");
    assert!(token_stored(&world, ALICE));

    // The same code again, verifier and all: Entra refuses it (AADSTS54005).
    let again = http("POST", &world.entra.token_url(TENANT), Some(form)).await;
    assert_eq!(again.status, 400);
    assert!(again.body.contains("AADSTS54005"), "{}", again.body);
    world.check_fakes();
}

#[tokio::test]
async fn a_redirect_with_another_state_is_refused() {
    let world = World::new().await;
    add_without_token(&world, ALICE);

    // Pasted.
    let mut run = Authorize::start(&world, &[ALICE, "--paste"]);
    let location = open_sign_in(&run.sign_in_url(&world).await).await;
    run.paste(&with_param(&location, "state", "forged-state"));
    let done = run.finish().await;
    assert!(!done.status.success(), "{done}");
    assert!(
        done.stderr
            .contains("does not carry the `state` of this sign-in"),
        "{done}"
    );

    // Through the loopback listener: the browser is told too.
    let mut run = Authorize::start(&world, &[ALICE, "--browser"]);
    let location = open_sign_in(&run.sign_in_url(&world).await).await;
    let page = http("GET", &with_param(&location, "state", "forged-state"), None).await;
    assert_eq!(page.status, 400);
    assert!(page.body.contains("Sign-in failed"), "{}", page.body);
    let done = run.finish().await;
    assert!(!done.status.success(), "{done}");
    assert!(done.stderr.contains("`state`"), "{done}");

    assert!(world.entra.code_redemptions().is_empty());
    assert!(!token_stored(&world, ALICE));
    world.check_fakes();
}

#[tokio::test]
async fn an_error_redirect_shows_entras_description() {
    let world = World::new().await;
    add_without_token(&world, ALICE);

    let mut run = Authorize::start(&world, &[ALICE, "--paste"]);
    let url = run.sign_in_url(&world).await;
    let state = url::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    let mut denied = url::Url::parse(&world.entra.native_client_redirect_uri()).unwrap();
    denied.query_pairs_mut().extend_pairs([
        ("error", "access_denied"),
        (
            "error_description",
            "AADSTS65004: User declined to consent to access the app.",
        ),
        ("state", &state),
    ]);
    run.paste(denied.as_str());
    let done = run.finish().await;
    assert!(!done.status.success(), "{done}");
    assert!(
        done.stderr.contains(
            "the sign-in failed: access_denied: AADSTS65004: User declined to consent to \
             access the app."
        ),
        "{done}"
    );
    assert!(world.entra.code_redemptions().is_empty());
    world.check_fakes();
}

// === shared mailboxes ===

#[tokio::test]
async fn authorizing_a_token_from_mailbox_authorizes_its_delegate() {
    let world = World::new().await;
    add_without_token(&world, ALICE);
    world.admin(&["mailbox", "add", SHARED, "--token-from", ALICE], "");

    // Signing in as the shared mailbox itself is the wrong user.
    let mut run = Authorize::start(&world, &[SHARED]);
    let code = run.user_code().await;
    world.entra.approve_device_code(&code, SHARED);
    let done = run.finish().await;
    assert!(!done.status.success(), "{done}");
    assert!(
        done.stderr.contains(&format!(
            "{SHARED} takes its token from {ALICE}: sign in as {ALICE}"
        )),
        "{done}"
    );
    assert!(
        done.stderr
            .contains(&format!("{SHARED} signed in, but {ALICE} was expected")),
        "{done}"
    );
    assert!(token_files(&world).is_empty());

    let mut run = Authorize::start(&world, &[SHARED]);
    let code = run.user_code().await;
    world.entra.approve_device_code(&code, "Alice@Contoso.com");
    let done = run.finish().await;
    assert!(done.status.success(), "{done}");
    assert!(
        done.stdout.starts_with(&format!(
            "authorized Alice@Contoso.com (also for {SHARED}) for "
        )),
        "{done}"
    );
    assert!(token_stored(&world, ALICE));
    assert!(token_stored(&world, SHARED));
    assert_eq!(token_files(&world).len(), 1, "{:?}", token_files(&world));
    world.check_fakes();
}

// === the command line ===

#[tokio::test]
async fn bad_arguments_and_unknown_mailboxes_are_refused() {
    let world = World::new().await;
    add_without_token(&world, ALICE);
    for (args, expected) in [
        (vec![ALICE, "--browser", "--paste"], "cannot be used with"),
        (vec![ALICE, "--port", "8400"], "--browser"),
        (
            vec![ALICE, "--paste", "--timeout", "5"],
            "cannot be used with",
        ),
        (vec![ALICE, "--browser", "--timeout", "0"], "--timeout"),
        (
            vec!["nobody@contoso.com"],
            "mailbox nobody@contoso.com is not registered",
        ),
    ] {
        let mut all = vec!["mailbox", "authorize"];
        all.extend(args.iter());
        let out = world.cli(&all, "");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(world.entra.device_code_requests().is_empty());
    world.check_fakes();
}
