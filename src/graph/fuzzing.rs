//! The Graph conversion without HTTP, for the `graph_conversion` fuzz target: what
//! [`Graph::send`](super::Graph::send) does to a received message before its first request
//! (parse, sort the envelope against To/Cc, rewrite Bcc, build the JSON message, its
//! attachments and upload items), returned for the target to check.

use mail_parser::MessageParser;
use serde_json::Value;

use super::draft::{UPLOAD_CHUNK, upload_ranges};
use super::json;
use super::mime::{self, Recipients};

/// Everything the conversion makes of one message.
pub struct Conversion {
    /// Envelope recipients named in To, Cc, neither (addresses).
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub headers_in_envelope: bool,
    /// The MIME `sendMail` body before base64: the message with its one new Bcc field.
    pub mime_with_bcc: Vec<u8>,
    /// The JSON message with its attachments inline, serialized.
    pub json: String,
    /// What the relay estimates [`json`](Self::json)'s length to be at most.
    pub estimated_len: usize,
    /// Per attachment: its size, its `fileAttachment` and its upload item, serialized.
    pub attachments: Vec<(usize, String, String)>,
}

/// Converts `mime` for `envelope`; `None` where `Graph::send` refuses it as having no
/// headers.
pub fn convert(mime: &[u8], envelope: &[String]) -> Option<Conversion> {
    let parsed = MessageParser::default().parse(mime)?;
    let recipients = Recipients::classify(&parsed, envelope);
    let addresses = |list: &[mime::Mailbox]| list.iter().map(|m| m.address.clone()).collect();
    let bcc: Vec<String> = addresses(&recipients.bcc);
    let message = json::build(&parsed, &recipients);
    Some(Conversion {
        to: addresses(&recipients.to),
        cc: addresses(&recipients.cc),
        headers_in_envelope: recipients.headers_in_envelope,
        mime_with_bcc: mime::with_bcc(mime, &bcc),
        bcc,
        json: message.with_attachments().to_string(),
        estimated_len: message.estimated_len_with_attachments(),
        attachments: message
            .attachments
            .iter()
            .map(|a| {
                let file: Value = a.file_attachment();
                (a.bytes.len(), file.to_string(), a.upload_item().to_string())
            })
            .collect(),
    })
}

/// The upload ranges for `total` bytes, and the chunk size they are cut at.
pub fn upload_plan(total: usize) -> (Vec<(usize, usize)>, usize) {
    (upload_ranges(total), UPLOAD_CHUNK)
}

/// The folded `Name: a, b` field the Bcc rewrite writes.
pub fn fold_field(name: &str, items: &[String]) -> String {
    mime::fold_field(name, items)
}
