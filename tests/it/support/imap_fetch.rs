//! FETCH for the fake Exchange Online IMAP server: the data items (with the ALL/FAST/FULL
//! macros and `BODY[...]<o.n>` sections), and the response for one message as pieces, so that
//! message bytes go out as literals straight from the store.

use std::ops::Range;
use std::sync::Arc;

use super::imap_store::{Message, format_date_time};
use super::imap_wire::{Token, nstring};

/// Which part of the message a body item returns.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Section {
    Full,
    Header,
    Text,
    /// `HEADER.FIELDS (..)`, or `HEADER.FIELDS.NOT (..)` when `not`.
    Fields {
        names: Vec<String>,
        not: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Item {
    Flags,
    Uid,
    Size,
    InternalDate,
    Envelope,
    /// BODYSTRUCTURE, or BODY without a section when not `extensible`.
    Structure {
        extensible: bool,
    },
    Body {
        /// The name in the response, e.g. `BODY[HEADER]<0>` or `RFC822`.
        label: String,
        section: Section,
        peek: bool,
        /// `<origin.count>`.
        partial: Option<(usize, Option<usize>)>,
    },
}

impl Item {
    /// Fetching this item sets `\Seen` (RFC 3501 §6.4.5).
    pub(super) fn sets_seen(&self) -> bool {
        matches!(self, Item::Body { peek: false, .. })
    }
}

/// A piece of a response: protocol text, or a literal's bytes (written after `{n}\r\n`).
pub(super) enum Piece {
    Text(Vec<u8>),
    Literal(Arc<[u8]>, Range<usize>),
}

/// The items after the sequence set: one atom (an item or a macro) or a parenthesized list.
pub(super) fn parse_items(args: &[Token]) -> Option<Vec<Item>> {
    let words: Vec<&str> = match args {
        [Token::Atom(word)] => vec![word],
        [Token::List(list)] if !list.is_empty() => {
            list.iter().map(Token::atom).collect::<Option<_>>()?
        }
        _ => return None,
    };
    let mut items = Vec::new();
    for word in words {
        items.extend(parse_item(word)?);
    }
    Some(items)
}

fn parse_item(word: &str) -> Option<Vec<Item>> {
    let body = |label: &str, section, peek| Item::Body {
        label: label.to_string(),
        section,
        peek,
        partial: None,
    };
    let fast = [Item::Flags, Item::InternalDate, Item::Size];
    let item = match word.to_ascii_uppercase().as_str() {
        "ALL" => return Some([fast.to_vec(), vec![Item::Envelope]].concat()),
        "FAST" => return Some(fast.to_vec()),
        "FULL" => {
            let rest = [Item::Envelope, Item::Structure { extensible: false }];
            return Some([fast.to_vec(), rest.to_vec()].concat());
        }
        "FLAGS" => Item::Flags,
        "UID" => Item::Uid,
        "RFC822.SIZE" => Item::Size,
        "INTERNALDATE" => Item::InternalDate,
        "ENVELOPE" => Item::Envelope,
        "BODYSTRUCTURE" => Item::Structure { extensible: true },
        "BODY" => Item::Structure { extensible: false },
        "RFC822" => body("RFC822", Section::Full, false),
        "RFC822.HEADER" => body("RFC822.HEADER", Section::Header, true),
        "RFC822.TEXT" => body("RFC822.TEXT", Section::Text, false),
        upper if upper.starts_with("BODY[") || upper.starts_with("BODY.PEEK[") => parse_body(word)?,
        _ => return None,
    };
    Some(vec![item])
}

/// `BODY[section]<o.n>` or `BODY.PEEK[section]<o.n>`.
fn parse_body(word: &str) -> Option<Item> {
    let peek = word.to_ascii_uppercase().starts_with("BODY.PEEK[");
    let open = word.find('[')?;
    let close = word.rfind(']')?;
    let inner = word.get(open + 1..close)?;
    let partial = match &word[close + 1..] {
        "" => None,
        rest => {
            let range = rest.strip_prefix('<')?.strip_suffix('>')?;
            Some(match range.split_once('.') {
                Some((origin, count)) => (origin.parse().ok()?, Some(count.parse().ok()?)),
                None => (range.parse().ok()?, None),
            })
        }
    };
    let mut label = format!("BODY[{inner}]");
    if let Some((origin, _)) = partial {
        label.push_str(&format!("<{origin}>"));
    }
    Some(Item::Body {
        label,
        section: parse_section(inner)?,
        peek,
        partial,
    })
}

fn parse_section(inner: &str) -> Option<Section> {
    let upper = inner.to_ascii_uppercase();
    let fields = |rest: &str, not: bool| {
        let list = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
        let names = list
            .split_whitespace()
            .map(|n| n.trim_matches('"').to_string())
            .collect();
        Some(Section::Fields { names, not })
    };
    match upper.as_str() {
        "" => Some(Section::Full),
        "HEADER" => Some(Section::Header),
        // The fake's messages are single-part as far as sections go: part 1 is the body.
        "TEXT" | "1" => Some(Section::Text),
        _ => match upper.strip_prefix("HEADER.FIELDS.NOT") {
            Some(_) => fields(&inner["HEADER.FIELDS.NOT".len()..], true),
            None if upper.starts_with("HEADER.FIELDS") => {
                fields(&inner["HEADER.FIELDS".len()..], false)
            }
            None => None,
        },
    }
}

/// `* <seq> FETCH (...)` for one message. When the fetch set `\Seen` and FLAGS was not asked
/// for, FLAGS goes in before the first body literal (as Dovecot does), so that clients which
/// expect `)` right after the literal are happy.
pub(super) fn respond(seq: u32, msg: &Message, items: &[Item], flags_changed: bool) -> Vec<Piece> {
    let mut out = Pieces(vec![Piece::Text(format!("* {seq} FETCH (").into_bytes())]);
    let mut implicit_flags = flags_changed && !items.contains(&Item::Flags);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.text(b" ");
        }
        match item {
            Item::Flags => out.text(flags(msg).as_bytes()),
            Item::Uid => out.text(format!("UID {}", msg.uid).as_bytes()),
            Item::Size => out.text(format!("RFC822.SIZE {}", msg.data.len()).as_bytes()),
            Item::InternalDate => {
                let date = format_date_time(msg.internal_date);
                out.text(format!("INTERNALDATE \"{date}\"").as_bytes());
            }
            Item::Envelope => {
                out.text(b"ENVELOPE ");
                out.text(&envelope(msg));
            }
            Item::Structure { extensible } => {
                let name = if *extensible { "BODYSTRUCTURE" } else { "BODY" };
                out.text(format!("{name} {}", structure(msg)).as_bytes());
            }
            Item::Body {
                label,
                section,
                partial,
                ..
            } => {
                if std::mem::take(&mut implicit_flags) {
                    out.text(format!("{} ", flags(msg)).as_bytes());
                }
                out.text(format!("{label} ").as_bytes());
                let (data, range) = section_bytes(msg, section);
                let range = match partial {
                    None => range,
                    Some((origin, count)) => {
                        let start = (range.start + origin).min(range.end);
                        let end = count.map_or(range.end, |n| (start + n).min(range.end));
                        start..end
                    }
                };
                out.0.push(Piece::Literal(data, range));
            }
        }
    }
    out.text(b")\r\n");
    out.0
}

struct Pieces(Vec<Piece>);

impl Pieces {
    fn text(&mut self, bytes: &[u8]) {
        match self.0.last_mut() {
            Some(Piece::Text(text)) => text.extend_from_slice(bytes),
            _ => self.0.push(Piece::Text(bytes.to_vec())),
        }
    }
}

pub(super) fn flags(msg: &Message) -> String {
    format!("FLAGS ({})", msg.flags.join(" "))
}

/// The bytes of a section: a range of the stored message, or (header fields) new bytes.
fn section_bytes(msg: &Message, section: &Section) -> (Arc<[u8]>, Range<usize>) {
    let header = msg.header_len();
    match section {
        Section::Full => (msg.data.clone(), 0..msg.data.len()),
        Section::Header => (msg.data.clone(), 0..header),
        Section::Text => (msg.data.clone(), header..msg.data.len()),
        Section::Fields { names, not } => {
            let mut out = Vec::new();
            for (name, raw) in msg.fields() {
                let listed = names.iter().any(|n| n.eq_ignore_ascii_case(&name));
                if listed != *not {
                    out.extend_from_slice(raw);
                }
            }
            out.extend_from_slice(b"\r\n");
            let len = out.len();
            (Arc::from(out), 0..len)
        }
    }
}

/// RFC 3501 §7.4.2 ENVELOPE from the header fields (addresses parsed simply).
fn envelope(msg: &Message) -> Vec<u8> {
    let field = |name: &str| nstring(msg.header(name).as_deref());
    let from = msg.header("From");
    let addresses = |name: &str| match msg.header(name) {
        Some(value) => address_list(&value),
        // Sender and Reply-To default to From.
        None if matches!(name, "Sender" | "Reply-To") => {
            from.as_deref().map_or(b"NIL".to_vec(), address_list)
        }
        None => b"NIL".to_vec(),
    };
    let parts = [
        field("Date"),
        field("Subject"),
        addresses("From"),
        addresses("Sender"),
        addresses("Reply-To"),
        addresses("To"),
        addresses("Cc"),
        addresses("Bcc"),
        field("In-Reply-To"),
        field("Message-ID"),
    ];
    let mut out = b"(".to_vec();
    out.extend(parts.join(&b' '));
    out.push(b')');
    out
}

/// `Name <a@b>, c@d` → `(("Name" NIL "a" "b")(NIL NIL "c" "d"))`.
fn address_list(value: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(value);
    let (mut parts, mut current, mut quoted, mut angle) = (Vec::new(), String::new(), false, false);
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    let mut out = b"(".to_vec();
    for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let (name, address) = match (part.find('<'), part.rfind('>')) {
            (Some(open), Some(close)) if open < close => (
                part[..open].trim().trim_matches('"'),
                &part[open + 1..close],
            ),
            _ => ("", part),
        };
        let (mailbox, host) = address.rsplit_once('@').unwrap_or((address, ""));
        let name = (!name.is_empty()).then_some(name.as_bytes());
        out.push(b'(');
        out.extend(nstring(name));
        out.extend(b" NIL ");
        out.extend(nstring(Some(mailbox.trim().as_bytes())));
        out.push(b' ');
        out.extend(nstring(Some(host.trim().as_bytes())));
        out.push(b')');
    }
    out.push(b')');
    match out.len() {
        2 => b"NIL".to_vec(),
        _ => out,
    }
}

/// A simplified BODYSTRUCTURE: the message as one part (a multipart one as a multipart with a
/// single text part), with type, charset and encoding from the header.
fn structure(msg: &Message) -> String {
    let token = |bytes: Option<Vec<u8>>, default: &str| {
        let text = bytes.map(|b| String::from_utf8_lossy(&b).into_owned());
        let clean: String = text
            .as_deref()
            .unwrap_or(default)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "!#$&^_.+-/;= ".contains(*c))
            .collect();
        clean.to_ascii_uppercase()
    };
    let content_type = token(msg.header("Content-Type"), "text/plain; charset=us-ascii");
    let (mime, params) = content_type.split_once(';').unwrap_or((&content_type, ""));
    let (kind, subtype) = mime.trim().split_once('/').unwrap_or(("TEXT", "PLAIN"));
    let charset = params
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("CHARSET="))
        .map(|c| c.trim().to_string())
        .next()
        .unwrap_or_else(|| "US-ASCII".to_string());
    let encoding = token(msg.header("Content-Transfer-Encoding"), "7BIT");
    let encoding = encoding.trim();
    let body = &msg.data[msg.header_len()..];
    let lines = body.iter().filter(|&&b| b == b'\n').count();
    let (size, subtype) = (body.len(), subtype.trim());
    match kind.trim() {
        "MULTIPART" => format!(
            "((\"TEXT\" \"PLAIN\" (\"CHARSET\" \"US-ASCII\") NIL NIL \"7BIT\" {size} {lines}) \"{subtype}\")"
        ),
        "TEXT" => format!(
            "(\"TEXT\" \"{subtype}\" (\"CHARSET\" \"{charset}\") NIL NIL \"{encoding}\" {size} {lines})"
        ),
        _ => format!("(\"APPLICATION\" \"OCTET-STREAM\" NIL NIL NIL \"{encoding}\" {size})"),
    }
}
