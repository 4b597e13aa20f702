//! What the relay does to a received message before Graph sees it: sorting the SMTP
//! envelope recipients against the To/Cc headers ([`Recipients`]), and rewriting the
//! header block so that its one `Bcc:` field lists exactly the envelope recipients that
//! To and Cc do not name ([`with_bcc`]).
//!
//! SMTP's rule is that the envelope decides who receives a message; Exchange, given MIME
//! through `sendMail`, takes the recipients from the headers instead (PROTOCOL.md A11).
//! The `Bcc:` field closes that gap for envelope-only recipients; a header recipient that
//! is not in the envelope cannot be expressed in MIME at all, and sends the message down
//! the JSON path with explicit recipients.

use mail_parser::{Address, Message};

/// Longest header line [`with_bcc`] writes before folding (RFC 5322 §2.1.1: 78).
const FOLD_AT: usize = 78;

/// An address with the display name a header gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mailbox {
    pub address: String,
    pub name: Option<String>,
}

/// The envelope recipients, sorted by where the headers name them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Recipients {
    /// Envelope recipients named in To, in header order, with their header names.
    pub to: Vec<Mailbox>,
    /// Envelope recipients named in Cc (and not in To).
    pub cc: Vec<Mailbox>,
    /// Envelope recipients named in neither: blind copies, in envelope order.
    pub bcc: Vec<Mailbox>,
    /// Whether every address in To and Cc is an envelope recipient.
    pub headers_in_envelope: bool,
}

impl Recipients {
    /// Sorts `envelope` against the To and Cc headers of `message` (addresses compared
    /// without regard to case; duplicates dropped).
    pub(crate) fn classify(message: &Message<'_>, envelope: &[String]) -> Self {
        let envelope: Vec<&str> = envelope.iter().map(|a| bare(a)).collect();
        let in_envelope = |a: &str| envelope.iter().any(|e| e.eq_ignore_ascii_case(a));
        let mut out = Recipients {
            headers_in_envelope: true,
            ..Recipients::default()
        };
        let mut seen: Vec<String> = Vec::new();
        for (list, field) in [
            (&mut out.to, message.all_to().collect::<Vec<_>>()),
            (&mut out.cc, message.all_cc().collect::<Vec<_>>()),
        ] {
            for mailbox in field.into_iter().flat_map(addresses) {
                if !in_envelope(&mailbox.address) {
                    out.headers_in_envelope = false;
                    continue;
                }
                let key = mailbox.address.to_ascii_lowercase();
                if !seen.contains(&key) {
                    seen.push(key);
                    list.push(mailbox);
                }
            }
        }
        for address in envelope {
            let key = address.to_ascii_lowercase();
            if !address.is_empty() && !seen.contains(&key) {
                seen.push(key);
                out.bcc.push(Mailbox {
                    address: address.to_owned(),
                    name: None,
                });
            }
        }
        out
    }
}

/// The mailboxes of an address header (groups flattened); entries without an address
/// (`undisclosed-recipients:;`) are skipped.
pub(crate) fn addresses(field: &Address<'_>) -> Vec<Mailbox> {
    field
        .iter()
        .filter_map(|a| {
            let address = bare(a.address()?);
            (!address.is_empty()).then(|| Mailbox {
                address: address.to_owned(),
                name: a
                    .name()
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(Into::into),
            })
        })
        .collect()
}

/// An address without surrounding blanks and angle brackets.
fn bare(address: &str) -> &str {
    let address = address.trim();
    address
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(address)
}

/// `mime` with every `Bcc:` field removed and, when `bcc` is not empty, one new `Bcc:`
/// field listing it (folded at [`FOLD_AT`]) at the end of the header block. The body is
/// left as it is, byte for byte.
pub(crate) fn with_bcc(mime: &[u8], bcc: &[String]) -> Vec<u8> {
    let body_start = header_end(mime);
    let (header, body) = mime.split_at(body_start);
    let mut out = Vec::with_capacity(mime.len() + 64 * bcc.len() + 16);
    let mut dropping = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            dropping = is_field(line, b"bcc");
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    if !bcc.is_empty() {
        out.extend_from_slice(fold_field("Bcc", bcc).as_bytes());
    }
    out.extend_from_slice(body);
    out
}

/// The offset of the line that ends the header block (the empty line), or the length
/// of `mime` if there is none.
fn header_end(mime: &[u8]) -> usize {
    let mut offset = 0;
    for line in mime.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            return offset;
        }
        offset += line.len();
    }
    mime.len()
}

/// Whether `line` starts the header field `name` (case-insensitive).
fn is_field(line: &[u8], name: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    line[..colon].trim_ascii_end().eq_ignore_ascii_case(name)
}

/// `Name: a, b, ...` with CRLF, folded before an item that would pass [`FOLD_AT`].
pub(crate) fn fold_field(name: &str, items: &[String]) -> String {
    let mut out = format!("{name}:");
    let mut line_len = out.len();
    for (i, item) in items.iter().enumerate() {
        let last = i + 1 == items.len();
        let piece_len = 1 + item.len() + usize::from(!last);
        if i > 0 && line_len + piece_len > FOLD_AT {
            out.push_str("\r\n");
            line_len = 0;
        }
        out.push(' ');
        out.push_str(item);
        if !last {
            out.push(',');
        }
        line_len += piece_len;
    }
    out.push_str("\r\n");
    out
}

/// The length of the standard base64 encoding of `n` bytes.
pub(crate) fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}
