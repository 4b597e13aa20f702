//! `m365_relay::graph::Graph` against the fake Graph, with tokens the fake Entra issued
//! through the refresh-token grant for `https://graph.microsoft.com/Mail.Send` (and the
//! client-credentials grant for Graph's `.default`): the three send paths, large
//! attachments through upload sessions, throttling, and the SMTP replies of refusals.

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use m365_relay::graph::{Graph, GraphError, Outgoing};
use m365_relay::secret::AccessToken;

use crate::support::fake_entra::{FakeEntra, GRAPH_DEFAULT, GRAPH_MAIL_SEND};
use crate::support::fake_graph::FakeGraph;
use crate::support::fixture::{CLIENT, TENANT, UPN};

const CONFIDENTIAL: &str = "99999999-2222-3333-4444-555555555555";
const SECRET: &str = "app-secret";
const SHARED: &str = "sales@contoso.com";

struct World {
    entra: FakeEntra,
    fake: FakeGraph,
    graph: Graph,
}

async fn world() -> World {
    let entra = FakeEntra::start().await;
    entra.add_app(TENANT, CLIENT, None);
    entra.add_app(TENANT, CONFIDENTIAL, Some(SECRET));
    let fake = FakeGraph::start(entra.checker()).await;
    fake.add_user(UPN);
    fake.add_user("bob@contoso.com");
    let graph = Graph::new(&fake.endpoint(), Duration::from_secs(20)).unwrap();
    World { entra, fake, graph }
}

/// POSTs a form to the fake Entra's token endpoint; the JSON answer.
async fn token_request(entra: &FakeEntra, form: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(entra.token_url(TENANT))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A delegated token for `upn` with `scope`, through the refresh-token grant.
async fn delegated_token(entra: &FakeEntra, upn: &str, scope: &str) -> AccessToken {
    let rt = entra.add_user(TENANT, CLIENT, upn);
    let (status, body) = token_request(
        entra,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT),
            ("refresh_token", &rt),
            ("scope", scope),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    AccessToken::new(body["access_token"].as_str().unwrap())
}

async fn graph_token(entra: &FakeEntra) -> AccessToken {
    delegated_token(entra, UPN, &format!("{GRAPH_MAIL_SEND} offline_access")).await
}

fn envelope(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn simple_mime(to: &str, cc: Option<&str>) -> String {
    let cc = cc.map(|c| format!("Cc: {c}\r\n")).unwrap_or_default();
    format!(
        "From: Alice <alice@contoso.com>\r\nTo: {to}\r\n{cc}Subject: Quarterly numbers\r\n\
         Message-ID: <q1@contoso.com>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nSee attached.\r\n"
    )
}

async fn send(
    w: &World,
    token: &AccessToken,
    mime: &str,
    rcpt: &[&str],
    save: bool,
) -> Result<(), GraphError> {
    let recipients = envelope(rcpt);
    let message = Outgoing {
        mime: mime.as_bytes(),
        recipients: &recipients,
        save_to_sent_items: save,
    };
    w.graph.send(token, UPN, &message).await
}

#[tokio::test]
async fn a_bcc_only_envelope_recipient_is_added_to_the_mime() {
    let w = world().await;
    let token = graph_token(&w.entra).await;
    let mime = simple_mime("Bob <bob@fabrikam.com>", None);
    send(
        &w,
        &token,
        &mime,
        &["bob@fabrikam.com", "eve@fabrikam.com"],
        true,
    )
    .await
    .unwrap();
    let sent = w.fake.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].via, "sendMail-mime");
    assert!(sent[0].save_to_sent_items);
    assert_eq!(sent[0].to, ["bob@fabrikam.com"]);
    assert_eq!(sent[0].bcc, ["eve@fabrikam.com"]);
    let text = String::from_utf8(sent[0].mime().unwrap().to_vec()).unwrap();
    assert!(text.contains("\r\nBcc: eve@fabrikam.com\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nSee attached.\r\n"), "{text}");
    let requests = w.fake.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, format!("/v1.0/users/{UPN}/sendMail"));
    assert_eq!(requests[0].content_type.as_deref(), Some("text/plain"));
    assert!(requests[0].authorization);
    w.fake.check();
}

#[tokio::test]
async fn a_header_recipient_outside_the_envelope_goes_by_draft_with_explicit_recipients() {
    let w = world().await;
    let token = graph_token(&w.entra).await;
    let mime = simple_mime("bob@fabrikam.com", Some("carol@fabrikam.com"));
    send(
        &w,
        &token,
        &mime,
        &["Bob@Fabrikam.com", "eve@fabrikam.com"],
        true,
    )
    .await
    .unwrap();
    let sent = w.fake.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].via, "draft");
    assert_eq!(sent[0].to, ["bob@fabrikam.com"]);
    assert!(sent[0].cc.is_empty(), "carol is not in the envelope");
    assert_eq!(sent[0].bcc, ["eve@fabrikam.com"]);
    let json = sent[0].json().unwrap();
    assert_eq!(json.subject, "Quarterly numbers");
    assert_eq!(json.body_type, "text");
    assert!(json.body.contains("See attached."));
    let paths: Vec<String> = w.fake.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(
        paths[0].ends_with("/messages") && paths[1].ends_with("/send"),
        "{paths:?}"
    );
    assert!(w.fake.open_drafts().is_empty());
    w.fake.check();
}

#[tokio::test]
async fn save_to_sent_items_false_sends_json_with_the_switch_off() {
    let w = world().await;
    let token = graph_token(&w.entra).await;
    let mime = simple_mime("bob@fabrikam.com", Some("Carol <carol@fabrikam.com>"));
    send(
        &w,
        &token,
        &mime,
        &["bob@fabrikam.com", "carol@fabrikam.com", "eve@fabrikam.com"],
        false,
    )
    .await
    .unwrap();
    let sent = w.fake.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].via, "sendMail-json");
    assert!(!sent[0].save_to_sent_items);
    assert_eq!(sent[0].cc, ["carol@fabrikam.com"]);
    assert_eq!(
        sent[0].recipients(),
        ["bob@fabrikam.com", "carol@fabrikam.com", "eve@fabrikam.com"]
    );
    w.fake.check();
}

fn mime_with_attachment(bytes: &[u8]) -> String {
    let encoded = STANDARD.encode(bytes);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "From: alice@contoso.com\r\nTo: bob@fabrikam.com\r\nSubject: Big\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\n\
         Content-Type: text/html; charset=utf-8\r\n\r\n<p>Here</p>\r\n--b1\r\n\
         Content-Type: application/octet-stream; name=\"big.bin\"\r\n\
         Content-Disposition: attachment; filename=\"big.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--b1--\r\n",
        lines.join("\r\n")
    )
}

#[tokio::test]
async fn a_10_mb_attachment_goes_through_an_upload_session() {
    let w = world().await;
    let token = graph_token(&w.entra).await;
    let big: Vec<u8> = (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mime = mime_with_attachment(&big);
    send(&w, &token, &mime, &["bob@fabrikam.com"], true)
        .await
        .unwrap();

    let sent = w.fake.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].via, "draft");
    let json = sent[0].json().unwrap();
    assert_eq!(json.body_type, "html");
    assert_eq!(json.attachments.len(), 1);
    let attachment = &json.attachments[0];
    assert!(attachment.uploaded);
    assert_eq!(attachment.name, "big.bin");
    assert!(attachment.bytes == big, "reassembled bytes differ");
    let requests = w.fake.requests();
    let puts: Vec<_> = requests.iter().filter(|r| r.method == "PUT").collect();
    assert_eq!(puts.len(), 4, "{requests:#?}");
    assert!(
        puts.iter().all(|r| !r.authorization),
        "an upload carries no token"
    );
    assert!(puts.iter().all(|r| r.bytes <= 4 * 1024 * 1024));
    assert!(requests.iter().all(|r| r.status < 300), "{requests:#?}");
    assert!(requests.last().unwrap().path.ends_with("/send"));
    w.fake.check();
}

#[tokio::test]
async fn a_short_throttle_is_waited_out_and_retried_once() {
    let w = world().await;
    let token = graph_token(&w.entra).await;
    w.fake.fail_next(429, "ApplicationThrottled", Some(1));
    let started = Instant::now();
    send(
        &w,
        &token,
        &simple_mime("bob@fabrikam.com", None),
        &["bob@fabrikam.com"],
        true,
    )
    .await
    .unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    let statuses: Vec<u16> = w.fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 202]);
    assert_eq!(w.fake.sent().len(), 1);
}

#[tokio::test]
async fn a_long_throttle_is_returned_with_its_retry_after() {
    let w = world().await;
    let token = graph_token(&w.entra).await;
    w.fake.fail_next(429, "ApplicationThrottled", Some(120));
    let e = send(
        &w,
        &token,
        &simple_mime("bob@fabrikam.com", None),
        &["bob@fabrikam.com"],
        true,
    )
    .await
    .unwrap_err();
    assert_eq!(e.status, Some(429));
    assert_eq!(e.retry_after, Some(Duration::from_secs(120)));
    assert!(e.is_transient());
    let reply = e.smtp_reply();
    assert!(reply.starts_with("451-4.7.0 Microsoft Graph"), "{reply}");
    assert!(
        reply.contains("ApplicationThrottled") && reply.contains("120 seconds"),
        "{reply}"
    );
    assert_eq!(w.fake.requests().len(), 1, "no retry inside send");
    assert!(w.fake.sent().is_empty());
}

#[tokio::test]
async fn refusals_map_to_permanent_and_temporary_smtp_replies() {
    let w = world().await;
    let mime = simple_mime("bob@fabrikam.com", None);
    let rcpt = ["bob@fabrikam.com"];

    // An Outlook token is not for Graph: 401, and the relay will refresh.
    let outlook = delegated_token(
        &w.entra,
        UPN,
        "https://outlook.office.com/SMTP.Send offline_access",
    )
    .await;
    let e = send(&w, &outlook, &mime, &rcpt, true).await.unwrap_err();
    assert_eq!(
        (e.status, e.code.as_str()),
        (Some(401), "InvalidAuthenticationToken")
    );
    assert!(
        e.smtp_reply().starts_with("454-4.7.0 "),
        "{}",
        e.smtp_reply()
    );
    assert!(!e.is_transient());

    // An app without the Mail.Send role.
    let no_role = AccessToken::new(w.entra.mint_graph_app_token(TENANT, CONFIDENTIAL, &[]));
    let e = send(&w, &no_role, &mime, &rcpt, true).await.unwrap_err();
    assert_eq!(
        (e.status, e.code.as_str()),
        (Some(403), "ErrorAccessDenied")
    );
    assert!(
        e.smtp_reply().starts_with("550-5.7.1 "),
        "{}",
        e.smtp_reply()
    );

    // Alice may not send as Bob.
    let token = graph_token(&w.entra).await;
    let as_bob = Outgoing {
        mime: mime.as_bytes(),
        recipients: &envelope(&rcpt),
        save_to_sent_items: true,
    };
    let e = w
        .graph
        .send(&token, "bob@contoso.com", &as_bob)
        .await
        .unwrap_err();
    assert_eq!(
        (e.status, e.code.as_str()),
        (Some(403), "ErrorSendAsDenied")
    );
    assert!(
        e.smtp_reply().starts_with("550-5.7.1 "),
        "{}",
        e.smtp_reply()
    );

    // An unknown mailbox.
    let e = w
        .graph
        .send(&token, "nobody@contoso.com", &as_bob)
        .await
        .unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (Some(404), "ErrorInvalidUser"));
    assert!(
        e.smtp_reply().starts_with("550-5.1.1 "),
        "{}",
        e.smtp_reply()
    );

    // A scripted 403 too.
    w.fake.fail_next(403, "ErrorAccessDenied", None);
    let e = send(&w, &token, &mime, &rcpt, true).await.unwrap_err();
    assert!(
        e.smtp_reply().starts_with("550-5.7.1 "),
        "{}",
        e.smtp_reply()
    );
    assert!(w.fake.sent().is_empty());
}

#[tokio::test]
async fn a_draft_that_fails_is_deleted() {
    let w = world().await;
    let token = graph_token(&w.entra).await;
    // From someone Alice may not send as, and a header recipient outside the envelope:
    // the draft is created, then /send is refused.
    let mime = simple_mime("bob@fabrikam.com", Some("carol@fabrikam.com"))
        .replace("From: Alice <alice@contoso.com>", "From: ceo@contoso.com");
    let e = send(&w, &token, &mime, &["bob@fabrikam.com"], true)
        .await
        .unwrap_err();
    assert_eq!(e.code, "ErrorSendAsDenied");
    assert_eq!(w.fake.deleted_drafts().len(), 1);
    assert!(w.fake.open_drafts().is_empty());
}

#[tokio::test]
async fn shared_mailboxes_and_app_tokens_can_send() {
    let w = world().await;
    w.fake.add_shared_mailbox(SHARED, &[UPN]);
    let mime = "From: sales@contoso.com\r\nTo: bob@fabrikam.com\r\nSubject: s\r\n\r\nhi\r\n";
    let recipients = envelope(&["bob@fabrikam.com"]);
    let message = Outgoing {
        mime: mime.as_bytes(),
        recipients: &recipients,
        save_to_sent_items: true,
    };

    let plain = graph_token(&w.entra).await;
    let e = w.graph.send(&plain, SHARED, &message).await.unwrap_err();
    assert_eq!(
        e.code, "ErrorSendAsDenied",
        "Mail.Send alone does not reach a shared mailbox"
    );
    let shared = delegated_token(
        &w.entra,
        UPN,
        &format!("{GRAPH_MAIL_SEND} {GRAPH_MAIL_SEND}.Shared"),
    )
    .await;
    w.graph.send(&shared, SHARED, &message).await.unwrap();

    let (status, body) = token_request(
        &w.entra,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", CONFIDENTIAL),
            ("client_secret", SECRET),
            ("scope", GRAPH_DEFAULT),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let app = AccessToken::new(body["access_token"].as_str().unwrap());
    let info = w.entra.access_token_info(app.expose()).unwrap();
    assert_eq!(info.audience, "https://graph.microsoft.com");
    assert_eq!(info.roles, ["Mail.Send"]);
    w.graph.send(&app, SHARED, &message).await.unwrap();
    assert_eq!(w.fake.sent().len(), 2);
    w.fake.check();
}

#[tokio::test]
async fn entra_grants_graph_scopes_one_resource_at_a_time() {
    let w = world().await;
    let token = graph_token(&w.entra).await;
    let info = w.entra.access_token_info(token.expose()).unwrap();
    assert_eq!(info.audience, "https://graph.microsoft.com");
    assert!(info.has_graph_permission("Mail.Send"));
    assert!(
        !info.has_scope("SMTP.Send"),
        "a Graph token does not open SMTP"
    );

    let rt = w.entra.add_user(TENANT, CLIENT, UPN);
    let mixed = format!("https://outlook.office.com/SMTP.Send {GRAPH_MAIL_SEND} offline_access");
    let (status, body) = token_request(
        &w.entra,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT),
            ("refresh_token", &rt),
            ("scope", &mixed),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_scope");
    assert_eq!(body["error_codes"][0], 28000);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("contains more than one resource"),
        "{body}"
    );
}

#[tokio::test]
async fn the_fake_refuses_bad_base64_and_oversized_bodies() {
    let w = world().await;
    let token = graph_token(&w.entra).await;
    let url = format!("{}/users/{UPN}/sendMail", w.fake.endpoint());
    let client = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        client
            .post(&url)
            .bearer_auth(token.expose())
            .header("content-type", "text/plain")
            .body(body)
            .send()
    };
    let response = post(b"%%% not base64 %%%".to_vec()).await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ErrorMimeContentInvalidBase64String");
    assert_eq!(
        body["error"]["message"],
        "Invalid base64 string for MIME content."
    );
    let response = post(vec![b'A'; 4 * 1024 * 1024 + 4]).await.unwrap();
    assert_eq!(response.status().as_u16(), 413);
}

#[tokio::test]
async fn timeouts_and_connection_failures_are_temporary() {
    let w = world().await;
    let token = graph_token(&w.entra).await;
    let recipients = envelope(&["bob@fabrikam.com"]);
    let mime = simple_mime("bob@fabrikam.com", None);
    let message = Outgoing {
        mime: mime.as_bytes(),
        recipients: &recipients,
        save_to_sent_items: true,
    };

    w.fake.set_delay(Duration::from_secs(3));
    let impatient = Graph::new(&w.fake.endpoint(), Duration::from_millis(300)).unwrap();
    let e = impatient.send(&token, UPN, &message).await.unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (None, "Timeout"), "{e}");
    assert!(e.is_transient());
    assert!(
        e.smtp_reply().starts_with("451-4.4.0 Microsoft Graph"),
        "{}",
        e.smtp_reply()
    );

    // A port nobody listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let nowhere = Graph::new(&format!("http://{closed}/v1.0"), Duration::from_secs(5)).unwrap();
    let e = nowhere.send(&token, UPN, &message).await.unwrap_err();
    assert_eq!(
        (e.status, e.code.as_str()),
        (None, "ConnectionFailed"),
        "{e}"
    );
    assert!(e.is_transient());
    assert!(
        e.smtp_reply().starts_with("451-4.4.0 "),
        "{}",
        e.smtp_reply()
    );
    assert!(!e.to_string().contains(token.expose()));
}
