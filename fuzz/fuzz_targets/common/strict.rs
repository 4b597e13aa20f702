//! A strict reading of SMTP message content, the reference the `data_differential` and
//! `smtp_session` targets hold the relay to: RFC 5321 §4.1.1.4 and §4.5.2 (a DATA stream
//! ends only at CRLF `.` CRLF; lines end only at CRLF; a leading dot is removed) and
//! RFC 5322 §2.2, §3.4, §3.6 (the header section is fields and folded continuations up to
//! the first empty line; at most one From and one Sender; From is a mailbox list, Sender
//! one mailbox). Anything else is a [`Fault`]; obsolete syntax is a fault too, except
//! blanks before a field's colon and dots in a display name ("John Q. Public"; the relay
//! takes one anywhere in the name, which changes no address, so this reading does too).

/// Why the strict reading refuses a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// A CR not followed by LF, or an LF not preceded by CR.
    BareLineEnd,
    /// A header line that is neither a field nor a continuation of one.
    MalformedHeader,
    DuplicateFrom,
    DuplicateSender,
    UnparsableSender,
    /// A Sender field with more than one mailbox.
    SenderList,
}

/// Where a DATA stream ends: just past the first line that is a lone `.`.
pub fn data_end(stream: &[u8]) -> Option<usize> {
    if stream.starts_with(b".\r\n") {
        return Some(3);
    }
    find(stream, b"\r\n.\r\n").map(|at| at + 5)
}

/// The message of a DATA stream up to its end (end marker included): the marker removed,
/// and the leading dot of every CRLF line.
pub fn unstuff(stream: &[u8]) -> Vec<u8> {
    let body = stream.strip_suffix(b".\r\n").unwrap_or(stream);
    let mut out = Vec::with_capacity(body.len());
    let mut line_start = true;
    for (i, &b) in body.iter().enumerate() {
        if !(line_start && b == b'.') {
            out.push(b);
        }
        line_start = b == b'\n' && i > 0 && body[i - 1] == b'\r';
    }
    out
}

/// Whether `message` has a CR not followed by LF or an LF not preceded by CR.
pub fn bare_line_end(message: &[u8]) -> bool {
    message.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => message.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || message[i - 1] != b'\r',
        _ => false,
    })
}

/// Where the header section ends (just past the empty line): at the first CRLF CRLF, or
/// at once for a message that starts with CRLF.
pub fn header_end(message: &[u8]) -> Option<usize> {
    if message.starts_with(b"\r\n") {
        return Some(2);
    }
    find(message, b"\r\n\r\n").map(|at| at + 4)
}

/// The senders of `message` (From, then Sender; lower case), or why it is refused.
pub fn senders(message: &[u8]) -> Result<Vec<String>, Fault> {
    if bare_line_end(message) {
        return Err(Fault::BareLineEnd);
    }
    let header = &message[..header_end(message).unwrap_or(message.len())];
    let mut fields: Vec<(&[u8], Vec<u8>)> = Vec::new();
    for line in header.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue; // the empty line that ends the header, or the end of the input
        }
        if matches!(line[0], b' ' | b'\t') {
            let (_, value) = fields.last_mut().ok_or(Fault::MalformedHeader)?;
            value.extend_from_slice(line); // unfolding: the CRLF goes, the WSP stays
            continue;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(Fault::MalformedHeader)?;
        // Blanks before the colon are obsolete syntax that every reader takes alike
        // (RFC 5322 §4.5.8, obs-optional): the name without them.
        let mut name = &line[..colon];
        while let Some(rest) = name.strip_suffix(b" ").or_else(|| name.strip_suffix(b"\t")) {
            name = rest;
        }
        if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
            return Err(Fault::MalformedHeader);
        }
        fields.push((name, line[colon + 1..].to_vec()));
    }
    let named = |n: &[u8]| -> Vec<&Vec<u8>> {
        fields
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case(n))
            .map(|(_, v)| v)
            .collect()
    };
    let (from, sender) = (named(b"from"), named(b"sender"));
    if from.len() > 1 {
        return Err(Fault::DuplicateFrom);
    }
    if sender.len() > 1 {
        return Err(Fault::DuplicateSender);
    }
    let mut out = Vec::new();
    for value in from {
        out.extend(
            Parser::new(value)
                .mailbox_list()
                .ok_or(Fault::UnparsableSender)?,
        );
    }
    for value in sender {
        let list = Parser::new(value)
            .mailbox_list()
            .ok_or(Fault::UnparsableSender)?;
        if list.len() > 1 && !TOLERATE_SENDER_LIST {
            return Err(Fault::SenderList);
        }
        out.extend(list);
    }
    Ok(out)
}

/// RFC 5322 §3.6.2 allows one mailbox in Sender. The relay took a list until da4c7c9;
/// `true` tolerates that (for a relay before it).
const TOLERATE_SENDER_LIST: bool = false;

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// RFC 5322 §3.4 over one unfolded field value.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

fn atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

impl<'a> Parser<'a> {
    fn new(s: &'a [u8]) -> Self {
        Self { s, i: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.i += usize::from(hit);
        hit
    }

    /// Blanks and (nested) comments; `None` for an unterminated comment.
    fn cfws(&mut self) -> Option<()> {
        loop {
            match self.peek() {
                Some(b' ' | b'\t') => self.i += 1,
                Some(b'(') => {
                    let mut depth = 0usize;
                    loop {
                        match self.peek()? {
                            b'(' => depth += 1,
                            b')' => depth -= 1,
                            b'\\' => self.i += 1,
                            _ => {}
                        }
                        self.i += 1;
                        if depth == 0 {
                            break;
                        }
                    }
                }
                _ => return Some(()),
            }
        }
    }

    fn dot_atom(&mut self, dots_anywhere: bool) -> Option<String> {
        let start = self.i;
        while let Some(b) = self.peek() {
            if atext(b) || (b == b'.' && (dots_anywhere || self.i > start)) {
                self.i += 1;
            } else {
                break;
            }
        }
        let text = &self.s[start..self.i];
        let ok = !text.is_empty()
            && (dots_anywhere || (!text.ends_with(b".") && find(text, b"..").is_none()));
        ok.then(|| String::from_utf8_lossy(text).into_owned())
    }

    /// A quoted string's content, quoted pairs resolved.
    fn quoted(&mut self) -> Option<String> {
        if !self.eat(b'"') {
            return None;
        }
        let mut out = Vec::new();
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' => {
                    self.i += 1;
                    out.push(self.peek()?);
                }
                b => out.push(b),
            }
            self.i += 1;
        }
        self.i += 1;
        Some(String::from_utf8_lossy(&out).into_owned())
    }

    fn addr_spec(&mut self) -> Option<String> {
        self.cfws()?;
        let local = match self.peek()? {
            b'"' => self.quoted()?,
            _ => self.dot_atom(false)?,
        };
        self.cfws()?;
        if !self.eat(b'@') {
            return None;
        }
        self.cfws()?;
        let domain = if self.eat(b'[') {
            let start = self.i;
            while !matches!(self.peek()?, b']' | b'[' | b'\\') {
                self.i += 1;
            }
            let text = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
            self.eat(b']').then(|| format!("[{text}]"))?
        } else {
            self.dot_atom(false)?
        };
        self.cfws()?;
        Some(format!("{local}@{domain}").to_lowercase())
    }

    fn mailbox(&mut self) -> Option<String> {
        let start = self.i;
        if let Some(address) = self.addr_spec()
            && matches!(self.peek(), None | Some(b','))
        {
            return Some(address);
        }
        self.i = start;
        loop {
            self.cfws()?;
            let word = match self.peek() {
                Some(b'"') => self.quoted().map(drop),
                Some(b) if atext(b) || b == b'.' => self.dot_atom(true).map(drop),
                _ => break,
            };
            word?;
        }
        if !self.eat(b'<') {
            return None;
        }
        let address = self.addr_spec()?;
        if !self.eat(b'>') {
            return None;
        }
        self.cfws()?;
        Some(address)
    }

    fn mailbox_list(mut self) -> Option<Vec<String>> {
        let mut out = vec![self.mailbox()?];
        while self.eat(b',') {
            out.push(self.mailbox()?);
        }
        (self.i == self.s.len()).then_some(out)
    }
}
