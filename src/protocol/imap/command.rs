//! IMAP command syntax before login (RFC 9051 §9, RFC 3501 §9): a tag, a command name and
//! arguments (atoms, quoted strings, literals `{n}` / `{n+}` per RFC 7888, parenthesized
//! lists), assembled from the lines and literals a client sent. Pure and bounded: the
//! session enforces the literal and command limits below (and `limits.max_literal_imap`)
//! while assembling.

/// Largest literal before login under the default limits (`limits.max_literal_imap`).
pub const MAX_LITERAL: usize = 4096;
/// Most literals in one command (LOGIN has two; ID may have a few).
pub const MAX_LITERALS: usize = 8;
/// Largest command before login, lines and literals together, unless the configured line
/// and literal limits make room for more (see [`max_command`]).
pub const MAX_COMMAND: usize = 16 * 1024;

/// The largest command before login for a line limit and a literal limit: room for a
/// LOGIN with two literals as large as allowed, and at least [`MAX_COMMAND`].
pub fn max_command(max_line: usize, max_literal: usize) -> usize {
    MAX_COMMAND.max(max_line.saturating_add(max_literal.saturating_mul(2)))
}

/// One piece of a command as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// A line without its CRLF (it may end in a literal announcement).
    Text(Vec<u8>),
    /// The bytes of a literal.
    Literal(Vec<u8>),
}

/// A command's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Atom(Vec<u8>),
    /// A quoted string (unescaped) or a literal.
    String(Vec<u8>),
    List(Vec<Arg>),
}

impl Arg {
    /// The value of an `astring` (atom or string), as LOGIN takes them.
    pub fn astring(&self) -> Option<&[u8]> {
        match self {
            Arg::Atom(a) => Some(a),
            Arg::String(s) => Some(s),
            Arg::List(_) => None,
        }
    }
}

/// A complete command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub tag: String,
    /// Upper-cased.
    pub name: String,
    pub args: Vec<Arg>,
}

/// Why a command could not be parsed; `tag` when the tag at least was readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub tag: Option<String>,
}

/// The literal a line announces at its end, `{n}` (synchronizing) or `{n+}`: its length
/// and whether it is non-synchronizing.
pub fn literal_announced(line: &[u8]) -> Option<(u64, bool)> {
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    if open > 0 && line[open - 1] != b' ' {
        return None;
    }
    let digits = &inner[open + 1..];
    let (digits, non_sync) = match digits.strip_suffix(b"+") {
        Some(d) => (d, true),
        None => (digits, false),
    };
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let len = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((len, non_sync))
}

/// The tag of a command in progress, when its first line has one.
pub fn tag_of(parts: &[Part]) -> Option<String> {
    let Some(Part::Text(first)) = parts.first() else {
        return None;
    };
    let end = first.iter().position(|&b| b == b' ').unwrap_or(first.len());
    valid_tag(&first[..end])
}

/// `tag = 1*<any ASTRING-CHAR except "+">` (RFC 9051 §9).
fn valid_tag(bytes: &[u8]) -> Option<String> {
    let ok = !bytes.is_empty()
        && bytes.len() <= 64
        && bytes
            .iter()
            .all(|&b| b.is_ascii_graphic() && !b"(){%*\"\\+".contains(&b));
    ok.then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// Parses a command from its parts.
pub fn parse(parts: &[Part]) -> Result<Command, SyntaxError> {
    let tag = tag_of(parts);
    let fail = || SyntaxError { tag: tag.clone() };
    let mut cursor = Cursor {
        parts,
        part: 0,
        pos: 0,
    };
    let mut tokens = Vec::new();
    while let Some(arg) = cursor.next_arg(0).map_err(|()| fail())? {
        tokens.push(arg);
    }
    let mut tokens = tokens.into_iter();
    let (Some(Arg::Atom(_)), Some(Arg::Atom(name)), Some(tag)) =
        (tokens.next(), tokens.next(), tag.clone())
    else {
        return Err(fail());
    };
    Ok(Command {
        tag,
        name: String::from_utf8_lossy(&name).to_ascii_uppercase(),
        args: tokens.collect(),
    })
}

/// Walks the text parts byte by byte, taking literal parts where they were announced.
struct Cursor<'a> {
    parts: &'a [Part],
    part: usize,
    pos: usize,
}

/// Lists nest at most this deep (ID's argument is one list).
const MAX_DEPTH: usize = 4;

impl<'a> Cursor<'a> {
    fn text(&self) -> &'a [u8] {
        match self.parts.get(self.part) {
            Some(Part::Text(t)) => t,
            _ => &[],
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text().get(self.pos).copied()
    }

    /// The next argument, `None` at the end of the command (or of a list, at `)`).
    fn next_arg(&mut self, depth: usize) -> Result<Option<Arg>, ()> {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
        match self.peek() {
            None => Ok(None),
            Some(b')') if depth > 0 => Ok(None),
            Some(b')') => Err(()),
            Some(b'"') => self.quoted().map(Some),
            Some(b'(') => self.list(depth).map(Some),
            Some(b'{') => self.literal().map(Some),
            Some(_) => Ok(Some(self.atom())),
        }
    }

    fn atom(&mut self) -> Arg {
        let text = self.text();
        let start = self.pos;
        let len = text[start..]
            .iter()
            .position(|b| b" ()\"{".contains(b))
            .unwrap_or(text.len() - start);
        self.pos += len;
        Arg::Atom(text[start..start + len].to_vec())
    }

    fn quoted(&mut self) -> Result<Arg, ()> {
        let text = self.text();
        let mut out = Vec::new();
        let mut i = self.pos + 1;
        loop {
            match text.get(i) {
                None => return Err(()),
                Some(b'"') => break,
                Some(b'\\') => {
                    out.push(*text.get(i + 1).ok_or(())?);
                    i += 2;
                }
                Some(&b) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        self.pos = i + 1;
        Ok(Arg::String(out))
    }

    fn list(&mut self, depth: usize) -> Result<Arg, ()> {
        if depth >= MAX_DEPTH {
            return Err(());
        }
        self.pos += 1;
        let mut items = Vec::new();
        while let Some(arg) = self.next_arg(depth + 1)? {
            items.push(arg);
        }
        if self.peek() != Some(b')') {
            return Err(());
        }
        self.pos += 1;
        Ok(Arg::List(items))
    }

    /// `{n}` ends its text part; the next part holds the literal's bytes.
    fn literal(&mut self) -> Result<Arg, ()> {
        let text = self.text();
        literal_announced(&text[self.pos..]).ok_or(())?;
        let Some(Part::Literal(bytes)) = self.parts.get(self.part + 1) else {
            return Err(());
        };
        self.part += 2;
        self.pos = 0;
        Ok(Arg::String(bytes.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Part {
        Part::Text(s.as_bytes().to_vec())
    }

    fn atom(s: &str) -> Arg {
        Arg::Atom(s.as_bytes().to_vec())
    }

    fn string(s: &str) -> Arg {
        Arg::String(s.as_bytes().to_vec())
    }

    #[test]
    fn literal_announcements() {
        assert_eq!(literal_announced(b"a LOGIN {5}"), Some((5, false)));
        assert_eq!(literal_announced(b"a LOGIN {12+}"), Some((12, true)));
        assert_eq!(literal_announced(b" {0}"), Some((0, false)));
        assert_eq!(literal_announced(b"{7}"), Some((7, false)));
        assert_eq!(literal_announced(b"a LOGIN x{5}"), None);
        assert_eq!(literal_announced(b"a LOGIN {}"), None);
        assert_eq!(literal_announced(b"a LOGIN {5+5}"), None);
        assert_eq!(literal_announced(b"a LOGIN {99999999999}"), None);
        assert_eq!(literal_announced(b"a LOGIN \"x\""), None);
    }

    #[test]
    fn login_with_atoms_quoted_strings_and_literals() {
        let c = parse(&[text("a1 login alice@x.com \"p \\\"w\\\\ d\"")]).unwrap();
        assert_eq!((c.tag.as_str(), c.name.as_str()), ("a1", "LOGIN"));
        assert_eq!(c.args, vec![atom("alice@x.com"), string("p \"w\\ d")]);

        let parts = [
            text("A2 LOGIN {11}"),
            Part::Literal(b"alice@x.com".to_vec()),
            text(" {9+}"),
            Part::Literal("pä ss\"".as_bytes().to_vec()),
            text(""),
        ];
        let c = parse(&parts).unwrap();
        assert_eq!(c.args, vec![string("alice@x.com"), string("pä ss\"")]);
    }

    #[test]
    fn lists_and_nil() {
        let c = parse(&[text("t ID (\"name\" \"Thunderbird\" \"version\" NIL)")]).unwrap();
        assert_eq!(
            c.args,
            vec![Arg::List(vec![
                string("name"),
                string("Thunderbird"),
                string("version"),
                atom("NIL")
            ])]
        );
        assert_eq!(parse(&[text("t ID NIL")]).unwrap().args, vec![atom("NIL")]);
    }

    #[test]
    fn syntax_errors_keep_the_tag_when_there_is_one() {
        for (line, tag) in [
            ("t1 LOGIN \"unterminated", Some("t1")),
            ("t2 ID (a", Some("t2")),
            ("t3 ID a)", Some("t3")),
            ("t4", Some("t4")),
            ("", None),
            ("+bad NOOP", None),
            ("t5 ID ((((((x))))))", Some("t5")),
            // A literal announced but never delivered.
            ("t6 LOGIN {3}", Some("t6")),
        ] {
            let tag = tag.map(String::from);
            assert_eq!(parse(&[text(line)]), Err(SyntaxError { tag }), "{line}");
        }
    }
}
