//! Strict readings of the addresses a sender check depends on: the `mailbox-list` of a
//! header From or Sender (RFC 5322 §3.4, with RFC 6532's UTF-8). The reverse and forward
//! paths of `MAIL FROM` and `RCPT TO` are read by [`crate::protocol::smtp::path`].
//!
//! Both fail closed: anything outside the grammar is `None`, never a best guess. The
//! header reading is deliberately narrower than RFC 5322 where a wider reading would let
//! two readers disagree about who a message is from: group syntax, quoted local parts and
//! domain literals are refused in From and Sender (no mail client writes them there).

use crate::protocol::smtp::path::{atext, dot_string};

/// Comments nest (RFC 5322 §3.2.2); deeper than this is refused.
const MAX_COMMENT_DEPTH: usize = 8;

/// The addresses of a From or Sender field's value (unfolded or not), lower case, in
/// order; `None` unless the whole value is a non-empty `mailbox-list`.
pub fn mailbox_list(value: &[u8]) -> Option<Vec<String>> {
    let mut cursor = Cursor { s: value, i: 0 };
    let mut addresses = Vec::new();
    loop {
        addresses.push(cursor.mailbox()?);
        cursor.cfws()?;
        match cursor.next() {
            None => return Some(addresses),
            Some(b',') => continue,
            Some(_) => return None,
        }
    }
}

/// A position in a header field's value.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    /// Skips folding white space and comments; `None` on a broken comment.
    fn cfws(&mut self) -> Option<()> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t') => self.i += 1,
                Some(b'\r') if self.s.get(self.i + 1) == Some(&b'\n') => {
                    if !matches!(self.s.get(self.i + 2), Some(b' ' | b'\t')) {
                        return None;
                    }
                    self.i += 2;
                }
                Some(b'(') => self.comment()?,
                _ => return Some(()),
            }
        }
    }

    fn comment(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            match self.next()? {
                b'(' => {
                    depth += 1;
                    if depth > MAX_COMMENT_DEPTH {
                        return None;
                    }
                }
                b')' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(());
                    }
                }
                b'\\' => {
                    self.next()?;
                }
                b'\r' | b'\n' if !self.folding_after_cr() => return None,
                0 => return None,
                _ => {}
            }
        }
    }

    /// At a CR or LF just read: whether it is part of a fold (CRLF then WSP).
    fn folding_after_cr(&mut self) -> bool {
        let at = self.i - 1;
        let folds = self.s[at] == b'\r'
            && self.s.get(at + 1) == Some(&b'\n')
            && matches!(self.s.get(at + 2), Some(b' ' | b'\t'));
        if folds {
            self.i = at + 2;
            return true;
        }
        false
    }

    /// `mailbox = name-addr / addr-spec`, its address lower case.
    fn mailbox(&mut self) -> Option<String> {
        let start = self.i;
        if let Some(address) = self.bare_addr_spec() {
            return Some(address);
        }
        self.i = start;
        self.cfws()?;
        if self.peek() != Some(b'<') {
            self.phrase()?;
        }
        self.cfws()?;
        if self.next()? != b'<' {
            return None;
        }
        let address = self.addr_spec()?;
        (self.next()? == b'>').then_some(address)
    }

    /// An `addr-spec` standing alone: followed only by CFWS and then `,` or the end.
    fn bare_addr_spec(&mut self) -> Option<String> {
        self.cfws()?;
        let address = self.addr_spec()?;
        self.cfws()?;
        matches!(self.peek(), None | Some(b',')).then_some(address)
    }

    /// `local-part "@" domain`, both dot-atoms (see the module doc), lower case.
    fn addr_spec(&mut self) -> Option<String> {
        let local = self.dot_atom_text()?;
        if self.next()? != b'@' {
            return None;
        }
        let domain = self.dot_atom_text()?;
        let address = [&self.s[local], b"@", &self.s[domain]].concat();
        String::from_utf8(address).ok().map(|a| a.to_lowercase())
    }

    /// A `dot-atom-text` at the cursor: where it stands.
    fn dot_atom_text(&mut self) -> Option<std::ops::Range<usize>> {
        let start = self.i;
        while self.peek().is_some_and(|b| atext(b) || b == b'.') {
            self.i += 1;
        }
        dot_string(&self.s[start..self.i]).then_some(start..self.i)
    }

    /// `phrase`: one or more words (atoms, quoted strings), with the obsolete `.` that
    /// unquoted initials use (RFC 5322 §4.1).
    fn phrase(&mut self) -> Option<()> {
        let mut words = 0;
        loop {
            self.cfws()?;
            match self.peek() {
                Some(b'"') => self.quoted_string()?,
                Some(b) if atext(b) || b == b'.' => {
                    while self.peek().is_some_and(|b| atext(b) || b == b'.') {
                        self.i += 1;
                    }
                }
                _ => return (words > 0).then_some(()),
            }
            words += 1;
        }
    }

    fn quoted_string(&mut self) -> Option<()> {
        self.next()?;
        loop {
            match self.next()? {
                b'"' => return Some(()),
                b'\\' => {
                    self.next().filter(|&b| b != 0)?;
                }
                b'\r' | b'\n' if !self.folding_after_cr() => return None,
                0 => return None,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(value: &str) -> Option<Vec<String>> {
        mailbox_list(value.as_bytes())
    }

    #[test]
    fn mailbox_lists_as_clients_write_them() {
        assert_eq!(list(" alice@contoso.com").unwrap(), ["alice@contoso.com"]);
        assert_eq!(
            list(" Alice <Alice@Contoso.COM>").unwrap(),
            ["alice@contoso.com"]
        );
        assert_eq!(
            list(" \"Doe, J.\" <j@x.org>, J. Smith <s@x.org> (work)").unwrap(),
            ["j@x.org", "s@x.org"]
        );
        assert_eq!(list(" (c (nested)) a@b.c").unwrap(), ["a@b.c"]);
        assert_eq!(list(" =?utf-8?q?J=C3=B6rg?= <j@x.de>").unwrap(), ["j@x.de"]);
        assert_eq!(list(" Jörg <jörg@bücher.de>").unwrap(), ["jörg@bücher.de"]);
        assert_eq!(list(" A\r\n <a@b.c>").unwrap(), ["a@b.c"], "folded");
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            " ",
            " alice",
            " alice@",
            " <>",
            " a@b.c,",
            " , a@b.c",
            " a@b.c b@d.e",
            " a@b.c <b@d.e>",
            " \"a\"@b.c",
            " a@[1.2.3.4]",
            " undisclosed:;",
            " g: a@b.c;",
            " <a@b.c",
            " a@b..c",
            " .a@b.c",
            " (unclosed a@b.c",
            " a@b.c\r\nx",
            " a@b.c\n b",
            " \"q\r\n",
            " a\0 <a@b.c>",
        ] {
            assert_eq!(list(bad), None, "{bad:?}");
        }
        let deep = format!(" {}x{} a@b.c", "(".repeat(9), ")".repeat(9));
        assert_eq!(list(&deep), None);
    }
}
