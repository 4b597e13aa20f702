//! The header section of a submitted message, read strictly (RFC 5322 §2.2, §3.6): where
//! it ends, whether it is well formed, and who the message says it is from.
//!
//! This reading decides the sender check, so it fails closed. A header section that a
//! lenient reader could split differently (a bare CR or LF, a line that is no field, a
//! continuation with no field before it) is refused, and so is a message with more than
//! one From or Sender (§3.6 allows one of each), or one whose From or Sender does not
//! read as a list of addresses. The addresses are read twice, by the strict grammar of
//! [`super::address`] and by mail-parser (which the Graph path sends with), and must
//! agree.

use mail_parser::{Address, HeaderName, MessageParser};

use super::address::mailbox_list;

/// Why a header section cannot be trusted for the sender check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SenderFault {
    #[error("the header section is not well formed")]
    Malformed,
    #[error("the message has more than one {0} field")]
    Repeated(&'static str),
    #[error("the {0} field does not name a sender address")]
    Unreadable(&'static str),
    #[error("the {0} field reads differently to different parsers")]
    Ambiguous(&'static str),
}

/// Where the header section of `message` ends, just past the empty line that ends it:
/// the first CRLF CRLF, or CRLF at the very start (no header fields).
pub fn header_end(message: &[u8]) -> Option<usize> {
    if message.starts_with(b"\r\n") {
        return Some(2);
    }
    memchr::memmem::find(message, b"\r\n\r\n").map(|at| at + 4)
}

/// Whether `bytes` hold a CR not followed by LF or an LF not preceded by CR: a line end
/// that readers disagree about (the SMTP smuggling class, CVE-2023-51764).
pub fn bare_line_end(bytes: &[u8]) -> bool {
    let mut ends = LineEnds::default();
    ends.scan(bytes);
    ends.finish()
}

/// Finds bare CR and LF across reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineEnds {
    /// The last byte read was a CR.
    pending_cr: bool,
    bare: bool,
}

impl LineEnds {
    pub fn scan(&mut self, chunk: &[u8]) {
        if self.pending_cr && chunk.first().is_some_and(|&b| b != b'\n') {
            self.bare = true;
        }
        for at in memchr::memchr2_iter(b'\r', b'\n', chunk) {
            self.bare |= match chunk[at] {
                b'\n' if at == 0 => !self.pending_cr,
                b'\n' => chunk[at - 1] != b'\r',
                _ => chunk.get(at + 1).is_some_and(|&b| b != b'\n'),
            };
        }
        if let Some(&last) = chunk.last() {
            self.pending_cr = last == b'\r';
        }
    }

    /// Whether any bare line end was seen, counting a CR at the very end.
    pub fn finish(&self) -> bool {
        self.bare || self.pending_cr
    }

    /// Whether a bare line end was seen so far (a trailing CR may still be followed).
    pub fn seen(&self) -> bool {
        self.bare
    }
}

/// The addresses of the header From and Sender fields, lower case, in that order
/// (`header`: the header section, with or without its empty line; or a whole message
/// that ended inside it). Fails closed, see [`SenderFault`].
pub fn header_senders(header: &[u8]) -> Result<Vec<String>, SenderFault> {
    let header = match header_end(header) {
        Some(end) => &header[..end],
        None => header,
    };
    if bare_line_end(header) || header.contains(&0) {
        return Err(SenderFault::Malformed);
    }
    let mut from: Option<&[u8]> = None;
    let mut sender: Option<&[u8]> = None;
    for field in fields(header)? {
        let slot = match field.name {
            n if n.eq_ignore_ascii_case(b"From") => (&mut from, "From"),
            n if n.eq_ignore_ascii_case(b"Sender") => (&mut sender, "Sender"),
            _ => continue,
        };
        if slot.0.replace(field.value).is_some() {
            return Err(SenderFault::Repeated(slot.1));
        }
    }
    let mut senders = Vec::new();
    for (value, name) in [(from, "From"), (sender, "Sender")] {
        if let Some(value) = value {
            senders.extend(field_addresses(value, name)?);
        }
    }
    Ok(senders)
}

/// The Message-ID of a message's header section (or of a whole message), unfolded and
/// trimmed, at most [`MAX_MESSAGE_ID`] characters; `None` when there is none, or the
/// header section cannot be read.
pub fn header_message_id(message: &[u8]) -> Option<String> {
    let header = match header_end(message) {
        Some(end) => &message[..end],
        None => message,
    };
    let field = fields(header)
        .ok()?
        .into_iter()
        .find(|field| field.name.eq_ignore_ascii_case(b"Message-ID"))?;
    let value: String = String::from_utf8_lossy(field.value)
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_MESSAGE_ID)
        .collect();
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

/// The longest Message-ID kept for the delivery log (RFC 5322's line limit).
pub const MAX_MESSAGE_ID: usize = 998;

/// One header field: its name (without white space before the colon) and its raw value
/// (folds included, final CRLF excluded).
struct Field<'a> {
    name: &'a [u8],
    value: &'a [u8],
}

/// The fields of a header section in which every line end is CRLF, up to its empty line.
fn fields(header: &[u8]) -> Result<Vec<Field<'_>>, SenderFault> {
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut start = 0;
    while start < header.len() {
        let end =
            memchr::memmem::find(&header[start..], b"\r\n").map_or(header.len(), |at| start + at);
        let line = &header[start..end];
        match line.first() {
            None => break,
            Some(b' ' | b'\t') => {
                // A continuation extends the field before it; there must be one.
                let last = fields.last_mut().ok_or(SenderFault::Malformed)?;
                // Its value ends just before the CRLF that precedes this line.
                let value_start = start - 2 - last.value.len();
                last.value = &header[value_start..end];
            }
            Some(_) => {
                let colon = line
                    .iter()
                    .position(|&b| b == b':')
                    .ok_or(SenderFault::Malformed)?;
                let name = trim_wsp_end(&line[..colon]);
                if name.is_empty() || !name.iter().all(|b| (33..=126).contains(b)) {
                    return Err(SenderFault::Malformed);
                }
                fields.push(Field {
                    name,
                    value: &line[colon + 1..],
                });
            }
        }
        start = end + 2;
    }
    Ok(fields)
}

fn trim_wsp_end(s: &[u8]) -> &[u8] {
    let keep = s
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(0, |at| at + 1);
    &s[..keep]
}

/// The addresses of one From or Sender value, which the strict grammar and mail-parser
/// must read alike.
fn field_addresses(value: &[u8], name: &'static str) -> Result<Vec<String>, SenderFault> {
    let strict = mailbox_list(value).ok_or(SenderFault::Unreadable(name))?;
    // RFC 5322 §3.6.2: Sender names exactly one mailbox.
    if name == "Sender" && strict.len() != 1 {
        return Err(SenderFault::Unreadable(name));
    }
    let field = [b"From:", value, b"\r\n\r\n"].concat();
    let parsed = MessageParser::default()
        .parse_headers(&field[..])
        .ok_or(SenderFault::Ambiguous(name))?;
    let lenient: Option<Vec<String>> = match parsed.header_values(HeaderName::From).next() {
        Some(mail_parser::HeaderValue::Address(address)) => addresses_of(address),
        _ => None,
    };
    match lenient {
        Some(lenient) if lenient == strict => Ok(strict),
        _ => Err(SenderFault::Ambiguous(name)),
    }
}

/// Every address of a parsed list, lower case; `None` if an entry has none.
fn addresses_of(address: &Address<'_>) -> Option<Vec<String>> {
    let entries: Vec<_> = match address {
        Address::List(list) => list.iter().collect(),
        Address::Group(_) => return None,
    };
    entries
        .into_iter()
        .map(|addr| addr.address().map(str::to_lowercase))
        .collect()
}

#[cfg(test)]
mod tests;
