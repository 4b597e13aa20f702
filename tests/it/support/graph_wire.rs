//! What the fake Graph records and answers (sent messages, the request log, Graph's
//! error bodies) and how it reads requests: base64 MIME, Graph's JSON `message` and
//! `fileAttachment` resources (with Graph's checks on recipients and custom headers),
//! `Content-Range`, percent-encoded path segments.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

/// Graph's limit on custom (`x-`) headers per message.
const MAX_CUSTOM_HEADERS: usize = 5;

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct GraphRequest {
    pub method: String,
    /// The path, without the query (an upload URL's token stays out of logs).
    pub path: String,
    pub status: u16,
    /// Graph's error code of the answer, if it was an error.
    pub code: Option<String>,
    pub authorization: bool,
    pub content_type: Option<String>,
    pub content_range: Option<String>,
    pub bytes: usize,
}

/// An attachment of a JSON or draft send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentAttachment {
    pub name: String,
    pub content_type: String,
    pub content_id: Option<String>,
    pub is_inline: bool,
    pub bytes: Vec<u8>,
    /// Whether it came through an upload session.
    pub uploaded: bool,
}

/// A message sent as Graph JSON (JSON `sendMail` or a draft).
#[derive(Clone, Debug, Default)]
pub struct JsonMessage {
    pub subject: String,
    /// `text` or `html`.
    pub body_type: String,
    pub body: String,
    pub from: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub headers: Vec<(String, String)>,
    pub attachments: Vec<SentAttachment>,
}

/// What was sent: the decoded MIME, or the JSON message.
#[derive(Clone, Debug)]
pub enum SentContent {
    Mime(Vec<u8>),
    Json(JsonMessage),
}

/// A message Graph accepted.
#[derive(Clone, Debug)]
pub struct SentMail {
    /// The `{id}` of the request (the mailbox it was sent as).
    pub mailbox: String,
    pub content: SentContent,
    /// From the MIME headers (incl. Bcc) or the JSON recipients, lower case.
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    /// `sendMail-mime`, `sendMail-json` or `draft`.
    pub via: &'static str,
    pub save_to_sent_items: bool,
}

impl SentMail {
    pub fn mime(&self) -> Option<&[u8]> {
        match &self.content {
            SentContent::Mime(m) => Some(m),
            SentContent::Json(_) => None,
        }
    }

    pub fn json(&self) -> Option<&JsonMessage> {
        match &self.content {
            SentContent::Json(j) => Some(j),
            SentContent::Mime(_) => None,
        }
    }

    /// Everyone who receives it, sorted.
    pub fn recipients(&self) -> Vec<String> {
        let mut all: Vec<String> = [&self.to, &self.cc, &self.bcc]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// The fake's answer to one request.
pub(super) struct Answer {
    pub status: u16,
    pub body: String,
    pub json: bool,
    pub retry_after: Option<u64>,
}

impl Answer {
    pub(super) fn error(status: u16, code: &str, message: &str) -> Answer {
        Answer {
            status,
            body: json!({"error": {"code": code, "message": message}}).to_string(),
            json: true,
            retry_after: None,
        }
    }

    pub(super) fn ok(status: u16, body: Value) -> Answer {
        Answer {
            status,
            body: body.to_string(),
            json: true,
            retry_after: None,
        }
    }

    pub(super) fn empty(status: u16) -> Answer {
        Answer {
            status,
            body: String::new(),
            json: false,
            retry_after: None,
        }
    }
}

pub(super) type Result<T> = std::result::Result<T, Answer>;

/// The addresses of an address header, lower case.
pub(super) fn list(field: Option<&mail_parser::Address<'_>>) -> Vec<String> {
    field
        .map(|a| {
            a.iter()
                .filter_map(|x| x.address())
                .map(str::to_ascii_lowercase)
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn scripted_message(status: u16) -> String {
    match status {
        429 => "Application is over its MailboxConcurrency limit.".into(),
        503 => "Service Unavailable".into(),
        _ => format!("Scripted failure {status}."),
    }
}

pub(super) fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `bytes a-b/total`.
pub(super) fn parse_range(value: &str) -> Option<(usize, usize, usize)> {
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?, total.parse().ok()?))
}

pub(super) fn decode_mime(body: &[u8]) -> Result<Vec<u8>> {
    let text: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    STANDARD.decode(&text).map_err(|_| {
        Answer::error(
            400,
            "ErrorMimeContentInvalidBase64String",
            "Invalid base64 string for MIME content.",
        )
    })
}

pub(super) fn parse_mime(mime: &[u8]) -> Result<mail_parser::Message<'_>> {
    mail_parser::MessageParser::default()
        .parse(mime)
        .ok_or_else(|| {
            Answer::error(
                400,
                "ErrorMimeContentInvalid",
                "The MIME content is not valid.",
            )
        })
}

pub(super) fn parse_json(body: &[u8]) -> Result<Value> {
    serde_json::from_slice(body)
        .map_err(|_| Answer::error(400, "BadRequest", "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format."))
}

/// A `message` resource as the fake records it; checks the recipients and custom headers.
pub(super) fn json_message(m: &Value) -> Result<JsonMessage> {
    let bad = |code: &str, m: &str| Answer::error(400, code, m);
    let list = |field: &str| -> Result<Vec<String>> {
        let Some(items) = m[field].as_array() else {
            return Ok(Vec::new());
        };
        items
            .iter()
            .map(|r| {
                r["emailAddress"]["address"]
                    .as_str()
                    .filter(|a| a.contains('@'))
                    .map(str::to_ascii_lowercase)
                    .ok_or_else(|| {
                        bad(
                            "ErrorInvalidRecipients",
                            "At least one recipient is not valid.",
                        )
                    })
            })
            .collect()
    };
    let mut headers = Vec::new();
    for h in m["internetMessageHeaders"].as_array().into_iter().flatten() {
        let name = h["name"].as_str().unwrap_or_default();
        if !name.to_ascii_lowercase().starts_with("x-") {
            return Err(bad(
                "InvalidInternetMessageHeader",
                &format!(
                    "The internet message header name '{name}' should start with 'x-' or 'X-'."
                ),
            ));
        }
        headers.push((
            name.to_string(),
            h["value"].as_str().unwrap_or_default().to_string(),
        ));
    }
    if headers.len() > MAX_CUSTOM_HEADERS {
        return Err(bad(
            "InvalidInternetMessageHeaderCollection",
            "Maximum number of headers in one message should be less than or equal to 5.",
        ));
    }
    let attachments = m["attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(file_attachment)
        .collect::<Result<_>>()?;
    Ok(JsonMessage {
        subject: m["subject"].as_str().unwrap_or_default().to_string(),
        body_type: m["body"]["contentType"]
            .as_str()
            .unwrap_or("text")
            .to_ascii_lowercase(),
        body: m["body"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        from: m["from"]["emailAddress"]["address"]
            .as_str()
            .map(str::to_owned),
        to: list("toRecipients")?,
        cc: list("ccRecipients")?,
        bcc: list("bccRecipients")?,
        headers,
        attachments,
    })
}

pub(super) fn file_attachment(a: &Value) -> Result<SentAttachment> {
    let bad = |m: &str| Answer::error(400, "ErrorInvalidRequest", m);
    if a["@odata.type"] != "#microsoft.graph.fileAttachment" {
        return Err(bad("Only file attachments are supported here."));
    }
    let bytes = STANDARD
        .decode(a["contentBytes"].as_str().unwrap_or_default())
        .map_err(|_| bad("contentBytes is not valid base64."))?;
    let name = a["name"].as_str().ok_or_else(|| bad("name is required."))?;
    Ok(SentAttachment::described(a, name, bytes, false))
}

impl SentAttachment {
    /// The attachment named `name` that the JSON `item` describes (content type, content id,
    /// inline flag), with its bytes so far.
    pub(super) fn described(item: &Value, name: &str, bytes: Vec<u8>, uploaded: bool) -> Self {
        SentAttachment {
            name: name.to_string(),
            content_type: item["contentType"]
                .as_str()
                .unwrap_or("application/octet-stream")
                .to_string(),
            content_id: item["contentId"].as_str().map(str::to_owned),
            is_inline: item["isInline"].as_bool().unwrap_or(false),
            bytes,
            uploaded,
        }
    }
}
