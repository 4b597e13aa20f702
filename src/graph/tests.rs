//! Unit tests of the Graph sender: the `Bcc:` rewrite, recipient sorting, the JSON
//! message, upload ranges, the error mapping, and endpoint checks.

use std::time::Duration;

use http::HeaderMap;
use mail_parser::MessageParser;
use serde_json::Value;

use super::draft::{SMALL_ATTACHMENT_BYTES, UPLOAD_CHUNK, upload_ranges};
use super::error::{GraphError, TIMEOUT};
use super::mime::{Mailbox, Recipients, base64_len, fold_field, with_bcc};
use super::{Graph, MAX_REQUEST_BYTES, json};

/// The JSON message's body: its `contentType` and its `content`.
fn body(v: &Value) -> (&str, &str) {
    let body = &v["body"];
    (
        body["contentType"].as_str().unwrap(),
        body["content"].as_str().unwrap(),
    )
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

const SIMPLE: &str = "From: Alice <alice@contoso.com>\r\n\
To: Bob <bob@fabrikam.com>, carol@fabrikam.com\r\n\
Cc: Dave <DAVE@fabrikam.com>\r\n\
Bcc: old@fabrikam.com,\r\n  older@fabrikam.com\r\n\
Subject: Hello\r\n\
\r\n\
Body line\r\n\
Bcc: not a header\r\n";

// === Bcc ===

#[test]
fn an_existing_bcc_is_replaced_and_the_body_left_alone() {
    let out = with_bcc(SIMPLE.as_bytes(), &strings(&["eve@x.org", "frank@y.org"]));
    let out = String::from_utf8(out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert_eq!(body, "Body line\r\nBcc: not a header\r\n");
    assert!(!head.contains("old@"), "{head}");
    assert_eq!(head.matches("Bcc:").count(), 1, "{head}");
    assert!(
        head.ends_with("Subject: Hello\r\nBcc: eve@x.org, frank@y.org"),
        "{head}"
    );
}

#[test]
fn without_blind_copies_the_bcc_field_is_removed() {
    let out = String::from_utf8(with_bcc(SIMPLE.as_bytes(), &[])).unwrap();
    assert!(!out.to_ascii_lowercase().contains("bcc: old"), "{out}");
    assert!(out.contains("Subject: Hello\r\n\r\nBody line"), "{out}");
}

#[test]
fn a_message_without_a_body_gets_the_field_at_its_end() {
    let out = with_bcc(b"Subject: x", &strings(&["a@b.c"]));
    assert_eq!(out, b"Subject: x\r\nBcc: a@b.c\r\n");
}

#[test]
fn long_bcc_lists_are_folded_at_78() {
    let many: Vec<String> = (0..20)
        .map(|i| format!("user{i:02}@fabrikam.com"))
        .collect();
    let field = fold_field("Bcc", &many);
    assert!(field.ends_with("\r\n"));
    let lines: Vec<&str> = field.trim_end().split("\r\n").collect();
    assert!(lines.len() > 3, "{field}");
    for (i, line) in lines.iter().enumerate() {
        assert!(line.len() <= 78, "line too long: {line:?}");
        if i > 0 {
            assert!(
                line.starts_with(' '),
                "continuation must start with a blank"
            );
        }
    }
    // Unfolded, it parses back to the same list.
    let mime = format!("{field}Subject: s\r\n\r\nbody");
    let parsed = MessageParser::default().parse(mime.as_bytes()).unwrap();
    let got: Vec<String> = parsed
        .bcc()
        .unwrap()
        .iter()
        .map(|a| a.address().unwrap().to_string())
        .collect();
    assert_eq!(got, many);
}

// === recipients ===

#[test]
fn envelope_recipients_are_sorted_by_the_headers() {
    let parsed = MessageParser::default().parse(SIMPLE.as_bytes()).unwrap();
    let envelope = strings(&[
        "bob@fabrikam.com",
        "<Carol@Fabrikam.com>",
        "dave@fabrikam.com",
        "eve@x.org",
        "EVE@x.org",
    ]);
    let r = Recipients::classify(&parsed, &envelope);
    assert!(r.headers_in_envelope);
    let addrs = |l: &[Mailbox]| l.iter().map(|m| m.address.clone()).collect::<Vec<_>>();
    assert_eq!(addrs(&r.to), ["bob@fabrikam.com", "carol@fabrikam.com"]);
    assert_eq!(r.to[0].name.as_deref(), Some("Bob"));
    assert_eq!(addrs(&r.cc), ["DAVE@fabrikam.com"]);
    assert_eq!(r.cc[0].name.as_deref(), Some("Dave"));
    assert_eq!(
        addrs(&r.bcc),
        ["eve@x.org"],
        "Bcc header is not the envelope"
    );

    let r = Recipients::classify(&parsed, &strings(&["bob@fabrikam.com"]));
    assert!(
        !r.headers_in_envelope,
        "carol and dave are not in the envelope"
    );
    assert_eq!(addrs(&r.to), ["bob@fabrikam.com"]);
    assert!(r.cc.is_empty() && r.bcc.is_empty());
}

// === JSON ===

fn related_message(attachment: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(attachment);
    format!(
        "From: =?UTF-8?B?SsO8cmdlbg==?= <juergen@contoso.com>\r\n\
To: bob@fabrikam.com\r\n\
Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe_=E2=9C=93?=\r\n\
Message-ID: <abc@contoso.com>\r\n\
X-Priority: 1\r\n\
X-Mailer: Legacy 1.0\r\n\
Reply-To: replies@contoso.com\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
\r\n\
--outer\r\n\
Content-Type: multipart/related; boundary=\"inner\"\r\n\
\r\n\
--inner\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>Hi <img src=\"cid:logo@x\"></p>\r\n\
--inner\r\n\
Content-Type: image/png\r\n\
Content-ID: <logo@x>\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
iVBORw0KGgo=\r\n\
--inner--\r\n\
--outer\r\n\
Content-Type: application/pdf; name=\"report.pdf\"\r\n\
Content-Disposition: attachment; filename=\"report.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
{b64}\r\n\
--outer--\r\n"
    )
}

#[test]
fn the_json_message_carries_body_recipients_and_attachments() {
    let pdf: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let mime = related_message(&pdf);
    let parsed = MessageParser::default().parse(mime.as_bytes()).unwrap();
    let r = Recipients::classify(&parsed, &strings(&["bob@fabrikam.com", "eve@x.org"]));
    let m = json::build(&parsed, &r);
    let v = m.with_attachments();
    assert_eq!(v["subject"], "Grüße ✓");
    let (kind, content) = body(&v);
    assert_eq!(kind, "html");
    assert!(content.contains("cid:logo@x"));
    assert_eq!(
        v["toRecipients"][0]["emailAddress"]["address"],
        "bob@fabrikam.com"
    );
    assert_eq!(v["ccRecipients"], Value::Array(vec![]));
    assert_eq!(
        v["bccRecipients"][0]["emailAddress"]["address"],
        "eve@x.org"
    );
    assert_eq!(v["from"]["emailAddress"]["name"], "Jürgen");
    assert_eq!(
        v["replyTo"][0]["emailAddress"]["address"],
        "replies@contoso.com"
    );
    assert_eq!(v["importance"], "high");
    assert_eq!(v["internetMessageId"], "<abc@contoso.com>");
    assert_eq!(
        v["internetMessageHeaders"],
        serde_json::json!([{"name": "X-Mailer", "value": "Legacy 1.0"}])
    );
    let atts = v["attachments"].as_array().unwrap();
    assert_eq!(atts.len(), 2, "{atts:?}");
    let logo = atts.iter().find(|a| a["contentId"] == "logo@x").unwrap();
    assert_eq!(logo["isInline"], true);
    assert_eq!(logo["contentType"], "image/png");
    assert_eq!(logo["@odata.type"], "#microsoft.graph.fileAttachment");
    let report = atts.iter().find(|a| a["name"] == "report.pdf").unwrap();
    assert_eq!(report["isInline"], false);
    assert_eq!(report["contentType"], "application/pdf");
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(report["contentBytes"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, pdf);
    // The estimate never undershoots.
    assert!(m.estimated_len_with_attachments() >= v.to_string().len());
    // Without attachments for a draft.
    assert!(!m.message.contains_key("attachments"));
    let item = m.attachments[1].upload_item();
    assert_eq!(item["AttachmentItem"]["attachmentType"], "file");
    assert_eq!(item["AttachmentItem"]["size"], 5000);
}

/// A header name that is not ASCII (found by the `graph_conversion` fuzz target: slicing
/// it by bytes panicked).
#[test]
fn header_names_that_are_not_ascii_do_not_panic() {
    let raw = "From: alice@contoso.com\r\nX\u{fc}: odd\r\nX-\u{e9}: ok\r\n\r\nbody\r\n";
    let parsed = MessageParser::default().parse(raw.as_bytes()).unwrap();
    let r = Recipients::classify(&parsed, &strings(&["bob@example.com"]));
    let v = json::build(&parsed, &r).with_attachments();
    assert_eq!(
        v["internetMessageHeaders"],
        serde_json::json!([{"name": "X-\u{e9}", "value": "ok"}])
    );
}

#[test]
fn a_text_only_message_has_a_text_body() {
    let parsed = MessageParser::default().parse(SIMPLE.as_bytes()).unwrap();
    let r = Recipients::classify(&parsed, &strings(&["bob@fabrikam.com"]));
    let v = json::build(&parsed, &r).with_attachments();
    let (kind, content) = body(&v);
    assert_eq!(kind, "text");
    assert!(content.starts_with("Body line"));
    assert!(v.get("attachments").is_none());
    assert!(v.get("importance").is_none());
}

// === sizes and upload ranges ===

#[test]
fn upload_ranges_are_multiples_of_320_kib_up_to_4_mb() {
    let total = 10 * 1024 * 1024;
    let ranges = upload_ranges(total);
    assert_eq!(ranges.first(), Some(&(0, UPLOAD_CHUNK - 1)));
    assert_eq!(ranges.last().unwrap().1, total - 1);
    let mut next = 0;
    for (i, &(first, last)) in ranges.iter().enumerate() {
        assert_eq!(first, next, "ranges are contiguous");
        let len = last - first + 1;
        assert!(len <= 4 * 1024 * 1024);
        if i + 1 < ranges.len() {
            assert_eq!(len % (320 * 1024), 0);
        }
        next = last + 1;
    }
    assert_eq!(upload_ranges(UPLOAD_CHUNK), vec![(0, UPLOAD_CHUNK - 1)]);
    assert_eq!(upload_ranges(1), vec![(0, 0)]);
    assert!(upload_ranges(0).is_empty());
}

#[test]
fn size_limits_fit_the_request_limit() {
    assert_eq!(base64_len(0), 0);
    assert_eq!(base64_len(1), 4);
    assert_eq!(base64_len(3), 4);
    assert_eq!(base64_len(4), 8);
    assert!(base64_len(SMALL_ATTACHMENT_BYTES) + 1024 < MAX_REQUEST_BYTES);
}

// === errors ===

fn answered(status: u16, retry_after: Option<&str>, body: &str) -> GraphError {
    let mut headers = HeaderMap::new();
    if let Some(after) = retry_after {
        headers.insert("retry-after", after.parse().unwrap());
    }
    GraphError::from_response(status, &headers, body.as_bytes())
}

fn graph_error(code: &str) -> String {
    format!(r#"{{"error":{{"code":"{code}","message":"Something\r\nhappened."}}}}"#)
}

#[test]
fn errors_map_to_smtp_replies() {
    let cases: [(u16, Option<&str>, &str, &str, bool); 13] = [
        (429, Some("120"), "ApplicationThrottled", "451 4.7.0", true),
        (503, Some("30"), "ServiceUnavailable", "451 4.7.0", true),
        (429, None, "ApplicationThrottled", "451 4.4.0", true),
        (504, None, "GatewayTimeout", "451 4.4.0", true),
        (500, None, "InternalServerError", "451 4.4.0", true),
        (401, None, "InvalidAuthenticationToken", "454 4.7.0", false),
        (403, None, "ErrorAccessDenied", "550 5.7.1", false),
        (403, None, "ErrorSendAsDenied", "550 5.7.1", false),
        (404, None, "ErrorInvalidUser", "550 5.1.1", false),
        (413, None, "RequestEntityTooLarge", "552 5.3.4", false),
        (400, None, "ErrorInvalidRecipients", "550 5.1.3", false),
        (
            400,
            None,
            "ErrorMimeContentInvalidBase64String",
            "554 5.6.0",
            false,
        ),
        (405, None, "BadRequest", "554 5.0.0", false),
    ];
    for (status, after, code, reply, transient) in cases {
        let e = answered(status, after, &graph_error(code));
        let text = e.smtp_reply();
        let (reply_code, enhanced) = reply.split_once(' ').unwrap();
        assert!(
            text.starts_with(&format!("{reply_code}-{enhanced} Microsoft Graph ")),
            "{status} {code}: {text:?}"
        );
        assert!(text.contains(code), "{text}");
        assert!(
            text.ends_with(&format!("\r\n{reply} Something  happened.\r\n")),
            "{text:?}"
        );
        assert_eq!(
            text.matches("\r\n").count(),
            2,
            "no bare line breaks: {text:?}"
        );
        assert_eq!(e.is_transient(), transient, "{status} {code}");
    }
}

#[test]
fn retry_after_is_parsed_and_named_in_the_reply() {
    let e = answered(429, Some("120"), &graph_error("ApplicationThrottled"));
    assert_eq!(e.retry_after, Some(Duration::from_secs(120)));
    assert!(
        e.smtp_reply().contains("try again in 120 seconds"),
        "{}",
        e.smtp_reply()
    );
    assert!(e.to_string().contains("retry after 120 s"));
    assert_eq!(answered(429, Some("soon"), "").retry_after, None);
    assert_eq!(
        answered(429, Some(" 7 "), "").retry_after,
        Some(Duration::from_secs(7))
    );
    // A body that is not Graph's error shape still yields a reply.
    let e = answered(502, None, "<html>bad gateway</html>");
    assert_eq!(e.code, "HTTP502");
    assert_eq!(
        e.smtp_reply(),
        "451 4.4.0 Microsoft Graph failed (HTTP502)\r\n"
    );
    let e = GraphError::local(TIMEOUT, "operation timed out");
    assert!(e.is_transient());
    assert!(
        e.smtp_reply().starts_with("451-4.4.0 Microsoft Graph"),
        "{}",
        e.smtp_reply()
    );
}

// === endpoint ===

#[test]
fn debug_shows_no_message_content() {
    let recipients = strings(&["bob@fabrikam.com"]);
    let outgoing = super::Outgoing {
        mime: b"Subject: secret plans\r\n\r\nbody",
        recipients: &recipients,
        save_to_sent_items: true,
    };
    let shown = format!("{outgoing:?}");
    assert!(
        !shown.contains("secret") && !shown.contains("bob@"),
        "{shown}"
    );
    assert!(shown.contains("mime_bytes: 29"), "{shown}");
}

#[test]
fn the_endpoint_must_be_https_or_loopback_http() {
    let t = Duration::from_secs(5);
    let g = Graph::new("https://graph.microsoft.com/v1.0/", t).unwrap();
    assert_eq!(g.endpoint(), "https://graph.microsoft.com/v1.0");
    assert!(Graph::new("http://127.0.0.1:8080/v1.0", t).is_ok());
    assert!(Graph::new("http://[::1]:8080/v1.0", t).is_ok());
    for bad in [
        "http://graph.microsoft.com/v1.0",
        "http://localhost:8080/v1.0",
        "ftp://127.0.0.1/v1.0",
        "not a url",
        "https://graph.microsoft.com/v1.0?x=1",
    ] {
        assert!(Graph::new(bad, t).is_err(), "{bad}");
    }
    let url = g.url("Jane Doe/x@contoso.com", &["sendMail"]).unwrap();
    assert_eq!(
        url.as_str(),
        "https://graph.microsoft.com/v1.0/users/Jane%20Doe%2Fx@contoso.com/sendMail"
    );
}
