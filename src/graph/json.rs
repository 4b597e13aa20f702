//! A received message as Graph's JSON `message` resource, for the paths that set the
//! recipients explicitly (JSON `sendMail`, and the draft path): subject, body (the HTML
//! body if there is one, else the text), To/Cc/Bcc from [`Recipients`], From, Reply-To,
//! importance, Message-ID, the `X-` headers, and the attachments as `fileAttachment`s
//! (inline ones with their `contentId`).
//!
//! What Graph's JSON cannot carry is lost on these paths: other headers (Graph accepts
//! only `x-` headers in `internetMessageHeaders`, at most [`MAX_CUSTOM_HEADERS`]),
//! `In-Reply-To` and `References`, alternative bodies beyond the first, and the MIME
//! structure itself.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mail_parser::{Message, MessagePart, MimeHeaders};
use serde_json::{Map, Value, json};

use super::mime::{Mailbox, Recipients, addresses, base64_len};

/// Graph refuses more custom headers than this on one message
/// (`InvalidInternetMessageHeaderCollection`).
pub(crate) const MAX_CUSTOM_HEADERS: usize = 5;

/// An upper bound on what one attachment adds to the JSON besides its base64 content.
const ATTACHMENT_OVERHEAD: usize = 1024;

/// One attachment of the received message, borrowed from its parse.
#[derive(Debug, Clone)]
pub(crate) struct Attachment<'a> {
    pub name: String,
    pub content_type: String,
    pub content_id: Option<String>,
    pub is_inline: bool,
    pub bytes: &'a [u8],
}

impl Attachment<'_> {
    /// The `fileAttachment` resource with the content inline (`contentBytes`).
    pub(crate) fn file_attachment(&self) -> Value {
        let mut value = json!({
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": self.name,
            "contentType": self.content_type,
            "isInline": self.is_inline,
            "contentBytes": STANDARD.encode(self.bytes),
        });
        if let Some(id) = &self.content_id {
            value["contentId"] = json!(id);
        }
        value
    }

    /// The `attachmentItem` of an upload session for it.
    pub(crate) fn upload_item(&self) -> Value {
        let mut item = json!({
            "attachmentType": "file",
            "name": self.name,
            "size": self.bytes.len(),
            "contentType": self.content_type,
            "isInline": self.is_inline,
        });
        if let Some(id) = &self.content_id {
            item["contentId"] = json!(id);
        }
        json!({ "AttachmentItem": item })
    }
}

/// The message resource without attachments, and the attachments.
pub(crate) struct GraphMessage<'a> {
    pub message: Map<String, Value>,
    pub attachments: Vec<Attachment<'a>>,
}

impl GraphMessage<'_> {
    /// The size of [`with_attachments`](Self::with_attachments) serialized, or a little
    /// more.
    pub(crate) fn estimated_len_with_attachments(&self) -> usize {
        let base = Value::Object(self.message.clone()).to_string().len();
        self.attachments.iter().fold(base, |n, a| {
            // JSON escapes a byte to at most 6 (`\u00XX`): an upper bound for every string.
            let strings =
                a.name.len() + a.content_type.len() + a.content_id.as_ref().map_or(0, String::len);
            n + base64_len(a.bytes.len()) + strings * 6 + ATTACHMENT_OVERHEAD
        })
    }

    /// The message resource with every attachment inline.
    pub(crate) fn with_attachments(&self) -> Value {
        let mut message = self.message.clone();
        if !self.attachments.is_empty() {
            let list = self.attachments.iter().map(Attachment::file_attachment);
            message.insert("attachments".into(), Value::Array(list.collect()));
        }
        Value::Object(message)
    }
}

/// Builds the Graph message for `message`, addressed to `recipients`.
pub(crate) fn build<'a>(message: &'a Message<'a>, recipients: &Recipients) -> GraphMessage<'a> {
    let mut out = Map::new();
    out.insert("subject".into(), json!(message.subject().unwrap_or("")));
    let html = message.html_part(0).is_some_and(MessagePart::is_text_html);
    let (content_type, content) = if html {
        ("html", message.body_html(0))
    } else {
        ("text", message.body_text(0))
    };
    out.insert(
        "body".into(),
        json!({ "contentType": content_type, "content": content.unwrap_or_default() }),
    );
    for (field, list) in [
        ("toRecipients", &recipients.to),
        ("ccRecipients", &recipients.cc),
        ("bccRecipients", &recipients.bcc),
    ] {
        out.insert(field.into(), recipient_list(list));
    }
    if let Some(from) = message.from().and_then(|f| addresses(f).into_iter().next()) {
        out.insert("from".into(), recipient(&from));
    }
    if let Some(reply_to) = message.reply_to().map(addresses)
        && !reply_to.is_empty()
    {
        out.insert("replyTo".into(), recipient_list(&reply_to));
    }
    if let Some(importance) = importance(message) {
        out.insert("importance".into(), json!(importance));
    }
    if let Some(id) = message.message_id().filter(|id| !id.is_empty()) {
        out.insert("internetMessageId".into(), json!(format!("<{id}>")));
    }
    let headers = custom_headers(message);
    if !headers.is_empty() {
        out.insert("internetMessageHeaders".into(), Value::Array(headers));
    }
    GraphMessage {
        message: out,
        attachments: message.attachments().map(attachment).collect(),
    }
}

fn recipient(mailbox: &Mailbox) -> Value {
    let mut address = json!({ "address": mailbox.address });
    if let Some(name) = &mailbox.name {
        address["name"] = json!(name);
    }
    json!({ "emailAddress": address })
}

fn recipient_list(list: &[Mailbox]) -> Value {
    Value::Array(list.iter().map(recipient).collect())
}

/// Graph's `importance` from `Importance:` or `X-Priority:` (1-2 high, 3 normal, 4-5 low).
fn importance(message: &Message<'_>) -> Option<&'static str> {
    if let Some(value) = message.header_raw("Importance") {
        let value = value.trim();
        for level in ["high", "normal", "low"] {
            if value.eq_ignore_ascii_case(level) {
                return Some(level);
            }
        }
    }
    let priority = message.header_raw("X-Priority")?.trim().chars().next()?;
    match priority {
        '1' | '2' => Some("high"),
        '3' => Some("normal"),
        '4' | '5' => Some("low"),
        _ => None,
    }
}

/// The `X-` headers (but not `X-Priority`, carried as importance), unfolded, at most
/// [`MAX_CUSTOM_HEADERS`].
fn custom_headers(message: &Message<'_>) -> Vec<Value> {
    let mut headers: Vec<Value> = message
        .headers_raw()
        .filter(|(name, _)| {
            name.len() > 2
                && name.as_bytes()[..2].eq_ignore_ascii_case(b"x-")
                && !name.eq_ignore_ascii_case("X-Priority")
        })
        .map(|(name, value)| {
            let value: String = value
                .split(['\r', '\n'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            json!({ "name": name, "value": value })
        })
        .collect();
    if headers.len() > MAX_CUSTOM_HEADERS {
        tracing::debug!(
            count = headers.len(),
            kept = MAX_CUSTOM_HEADERS,
            "Graph takes only a few custom headers; the rest are dropped"
        );
        headers.truncate(MAX_CUSTOM_HEADERS);
    }
    headers
}

/// One attachment: its name (a nested message is `message.eml`), type, and whether it is
/// inline (disposition `inline`, or a `Content-ID` without a disposition).
fn attachment<'a>(part: &'a MessagePart<'a>) -> Attachment<'a> {
    let nested = part.is_message();
    let name = part
        .attachment_name()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(Into::into)
        .unwrap_or_else(|| if nested { "message.eml" } else { "attachment" }.to_string());
    let content_type = match part.content_type() {
        Some(ct) => match &ct.c_subtype {
            Some(sub) => format!("{}/{}", ct.c_type, sub),
            None => ct.c_type.to_string(),
        },
        None if nested => "message/rfc822".into(),
        None => "application/octet-stream".into(),
    }
    .to_ascii_lowercase();
    let content_id = part
        .content_id()
        .map(|id| id.trim().trim_start_matches('<').trim_end_matches('>'))
        .filter(|id| !id.is_empty())
        .map(str::to_owned);
    let is_inline = match part.content_disposition() {
        Some(d) => d.c_type.eq_ignore_ascii_case("inline"),
        None => content_id.is_some(),
    };
    Attachment {
        name,
        content_type,
        content_id,
        is_inline,
        bytes: part.contents(),
    }
}
