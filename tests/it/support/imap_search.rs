//! SEARCH criteria for the fake Exchange Online IMAP server (RFC 3501 §6.4.4): flags, sequence
//! and UID sets, NOT/OR/lists, header and body substrings, sizes and dates (all dates compare
//! against the internal date).

use super::imap_store::{Message, parse_date};
use super::imap_wire::{SeqSet, Token};

const DAY: i64 = 86_400;

pub(super) enum Key {
    All,
    None,
    Flag {
        flag: String,
        set: bool,
    },
    Seq(SeqSet),
    Uid(SeqSet),
    Not(Box<Key>),
    Or(Box<Key>, Box<Key>),
    And(Vec<Key>),
    /// Substring of a header field; an empty value only asks for the field to exist.
    Header {
        name: String,
        value: String,
    },
    Body(String),
    Text(String),
    Larger(usize),
    Smaller(usize),
    Before(i64),
    On(i64),
    Since(i64),
}

/// A message as SEARCH sees it.
pub(super) struct Candidate<'a> {
    pub(super) seq: u32,
    /// Messages in the client's view (`*` for message numbers).
    pub(super) count: u32,
    /// Largest UID in the client's view (`*` for UIDs).
    pub(super) max_uid: u32,
    pub(super) msg: &'a Message,
}

/// The search program; a leading `CHARSET x` is accepted and ignored.
pub(super) fn parse(args: &[Token]) -> Option<Key> {
    let args = match args {
        [charset, _, rest @ ..] if charset.is("CHARSET") => rest,
        _ => args,
    };
    let mut tokens = args.iter();
    let mut keys = Vec::new();
    while let Some(token) = tokens.next() {
        keys.push(parse_key(token, &mut tokens)?);
    }
    (!keys.is_empty()).then_some(Key::And(keys))
}

fn parse_key<'a>(token: &Token, rest: &mut impl Iterator<Item = &'a Token>) -> Option<Key> {
    let word = match token {
        Token::List(list) => {
            let mut inner = list.iter();
            let mut keys = Vec::new();
            while let Some(token) = inner.next() {
                keys.push(parse_key(token, &mut inner)?);
            }
            return (!keys.is_empty()).then_some(Key::And(keys));
        }
        Token::Str(_) => return None,
        Token::Atom(word) => word,
    };
    let mut arg = || rest.next().and_then(Token::text);
    let flag = |flag: &str, set| Key::Flag {
        flag: flag.to_string(),
        set,
    };
    let key = match word.to_ascii_uppercase().as_str() {
        "ALL" | "OLD" => Key::All,
        // The fake never has \Recent messages.
        "NEW" | "RECENT" => Key::None,
        "SEEN" => flag(r"\Seen", true),
        "UNSEEN" => flag(r"\Seen", false),
        "ANSWERED" => flag(r"\Answered", true),
        "UNANSWERED" => flag(r"\Answered", false),
        "DELETED" => flag(r"\Deleted", true),
        "UNDELETED" => flag(r"\Deleted", false),
        "FLAGGED" => flag(r"\Flagged", true),
        "UNFLAGGED" => flag(r"\Flagged", false),
        "DRAFT" => flag(r"\Draft", true),
        "UNDRAFT" => flag(r"\Draft", false),
        "KEYWORD" => flag(&arg()?, true),
        "UNKEYWORD" => flag(&arg()?, false),
        "NOT" => Key::Not(Box::new(parse_key(rest.next()?, rest)?)),
        "OR" => {
            let a = parse_key(rest.next()?, rest)?;
            let b = parse_key(rest.next()?, rest)?;
            Key::Or(Box::new(a), Box::new(b))
        }
        "UID" => Key::Uid(SeqSet::parse(&arg()?)?),
        upper @ ("FROM" | "TO" | "CC" | "BCC" | "SUBJECT") => Key::Header {
            name: upper.to_string(),
            value: arg()?,
        },
        "HEADER" => Key::Header {
            name: arg()?,
            value: arg()?,
        },
        "BODY" => Key::Body(arg()?),
        "TEXT" => Key::Text(arg()?),
        "LARGER" => Key::Larger(arg()?.parse().ok()?),
        "SMALLER" => Key::Smaller(arg()?.parse().ok()?),
        "BEFORE" | "SENTBEFORE" => Key::Before(parse_date(&arg()?)?),
        "ON" | "SENTON" => Key::On(parse_date(&arg()?)?),
        "SINCE" | "SENTSINCE" => Key::Since(parse_date(&arg()?)?),
        _ => Key::Seq(SeqSet::parse(word)?),
    };
    Some(key)
}

impl Key {
    pub(super) fn matches(&self, c: &Candidate) -> bool {
        let msg = c.msg;
        let day = msg.internal_date.div_euclid(DAY) * DAY;
        match self {
            Key::All => true,
            Key::None => false,
            Key::Flag { flag, set } => msg.has_flag(flag) == *set,
            Key::Seq(set) => set.contains(c.seq, c.count),
            Key::Uid(set) => set.contains(msg.uid, c.max_uid),
            Key::Not(key) => !key.matches(c),
            Key::Or(a, b) => a.matches(c) || b.matches(c),
            Key::And(keys) => keys.iter().all(|k| k.matches(c)),
            Key::Header { name, value } => msg
                .header(name)
                .is_some_and(|v| contains(&v, value.as_bytes())),
            Key::Body(text) => contains(&msg.data[msg.header_len()..], text.as_bytes()),
            Key::Text(text) => contains(&msg.data, text.as_bytes()),
            Key::Larger(n) => msg.data.len() > *n,
            Key::Smaller(n) => msg.data.len() < *n,
            Key::Before(date) => day < *date,
            Key::On(date) => day == *date,
            Key::Since(date) => day >= *date,
        }
    }
}

/// Case-insensitive (ASCII) substring test.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || haystack
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}
