//! Wire-level pieces of the fake Exchange Online IMAP server: Exchange's reply texts, a bounded
//! reader that assembles a command with its literals (`{n}` and LITERAL+ `{n+}`), the tokenizer,
//! sequence sets and string quoting. `imap_session` and its helpers use them.

use std::collections::VecDeque;
use std::io;

use tokio::io::AsyncWriteExt;

use super::line_io::{LineIo, MAX_LINE, Stream, trim_eol};

/// Largest total of literal bytes in one command, so a test bug cannot eat the machine.
pub(super) const MAX_LITERAL: usize = 200 * 1024 * 1024;
/// Deepest nesting of parenthesized lists the tokenizer accepts.
const MAX_DEPTH: usize = 16;

/// Exchange Online's reply texts (tagged texts go after `<tag> OK|NO|BAD `).
pub(super) mod reply {
    pub const GREETING: &str = "* OK The Microsoft Exchange IMAP4 service is ready. [TQBOADIAUABSADEAMgBDAEEAMAAwADAAMQAuAG4AYQBtAHAAcgBkADEAMgAuAHAAcgBvAGQALgBvAHUAdABsAG8AbwBrAC4AYwBvAG0A]";
    pub const CAPABILITIES: &str = "IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+";
    pub const CAPABILITIES_AUTHENTICATED: &str = "IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE ID UNSELECT CLIENTACCESSRULES CLIENTNETWORKPRESENCELOCATION BACKENDAUTHENTICATE CHILDREN IDLE NAMESPACE LITERAL+";
    pub const BYE_LOGOUT: &str = "* BYE Microsoft Exchange Server IMAP4 server signing off.";
    pub const BYE_TOKEN_EXPIRED: &str = "* BYE Session invalidated - AccessTokenExpired";
    pub const READY_FOR_LITERAL: &str = "+ Ready for additional command text.";
    pub const IDLE_ACCEPTED: &str = "+ IDLE accepted, awaiting DONE command.";
    pub const AUTH_CONTINUE: &str = "+ ";
    pub const AUTH_OK: &str = "AUTHENTICATE completed.";
    pub const AUTH_FAILED: &str = "AUTHENTICATE failed.";
    pub const AUTH_CANCELLED: &str = "The AUTH protocol exchange was canceled by the client.";
    pub const LOGIN_FAILED: &str = "LOGIN failed.";
    pub const INVALID_STATE: &str = "Command received in Invalid state.";
    pub const COMMAND_ERROR: &str = "Command Error. 12";
    pub const ARGUMENT_ERROR: &str = "Command Argument Error. 11";
    pub const BAD_MESSAGE_SET: &str = "The specified message set is invalid.";
    pub const NO_SUCH_FOLDER: &str = "Mailbox doesn't exist.";
    pub const FOLDER_EXISTS: &str = "Mailbox already exists.";
    pub const UNSUPPORTED: &str = "The fake Exchange server does not implement this command.";
    pub const FLAGS: &str = r"(\Seen \Answered \Flagged \Deleted \Draft $MDNSent)";
}

/// One command as read: its text with `{n}` markers in place of the literals, and the literals.
#[derive(Default)]
pub(super) struct RawCommand {
    pub(super) text: Vec<u8>,
    pub(super) literals: VecDeque<Vec<u8>>,
}

impl RawCommand {
    /// The command for transcripts: the text only, literal payloads left out (`{n}` stays).
    pub(super) fn display(&self) -> String {
        String::from_utf8_lossy(&self.text).into_owned()
    }
}

/// The shared bounded line reader, and a write buffer that is flushed per command.
pub(super) struct ImapIo {
    lines: LineIo,
    out: Vec<u8>,
}

impl ImapIo {
    pub(super) fn new(stream: Box<dyn Stream>) -> Self {
        Self {
            lines: LineIo::new(stream),
            out: Vec::new(),
        }
    }

    /// The next line including its `\n`; `None` on a clean EOF between lines. Cancel safe.
    pub(super) async fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        self.lines.read_line().await
    }

    /// A whole command: every line and literal up to the line that does not end in `{n}`.
    /// Synchronizing literals get `+ Ready for additional command text.` first (RFC 3501 §7.5).
    pub(super) async fn read_command(&mut self) -> io::Result<Option<RawCommand>> {
        let Some(mut line) = self.read_line().await? else {
            return Ok(None);
        };
        let mut command = RawCommand::default();
        let mut literal_bytes = 0;
        loop {
            let text = trim_eol(&line);
            if command.text.len() + text.len() > MAX_LINE {
                return Err(invalid("command text longer than 64 KiB".to_string()));
            }
            command.text.extend_from_slice(text);
            let Some((size, synchronizing)) = literal_marker(text) else {
                return Ok(Some(command));
            };
            literal_bytes += size;
            if literal_bytes > MAX_LITERAL {
                let message = format!("literals of {literal_bytes} bytes exceed the 200 MB cap");
                return Err(invalid(message));
            }
            if synchronizing {
                self.send(reply::READY_FOR_LITERAL).await?;
            }
            command
                .literals
                .push_back(self.lines.read_exact_bytes(size).await?);
            line = self
                .read_line()
                .await?
                .ok_or(io::ErrorKind::UnexpectedEof)?;
        }
    }

    /// Queues one response line (CRLF added); [`flush`](Self::flush) sends it.
    pub(super) fn queue(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Queues bytes exactly as given.
    pub(super) fn queue_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Sends what is queued, then `data` straight from the caller's buffer (a literal's bytes).
    pub(super) async fn write_literal(&mut self, data: &[u8]) -> io::Result<()> {
        self.lines.stream.write_all(&self.out).await?;
        self.out.clear();
        self.lines.stream.write_all(data).await
    }

    pub(super) async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.lines.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        self.lines.stream.flush().await
    }

    /// Queues `line` and flushes.
    pub(super) async fn send(&mut self, line: &str) -> io::Result<()> {
        self.queue(line);
        self.flush().await
    }

    /// Sends `prompt` (a SASL continuation) and reads the client's one-line answer as text.
    pub(super) async fn prompt(&mut self, prompt: &str) -> io::Result<String> {
        self.flush().await?;
        self.lines.prompt(prompt).await
    }

    pub(super) async fn shutdown(&mut self) -> io::Result<()> {
        self.lines.stream.shutdown().await
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// `... {123}` or `... {123+}` at the end of a line → (123, synchronizing).
fn literal_marker(text: &[u8]) -> Option<(usize, bool)> {
    let inner = text.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let number = &inner[open + 1..];
    let (digits, synchronizing) = match number.strip_suffix(b"+") {
        Some(digits) => (digits, false),
        None => (number, true),
    };
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let size = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((size, synchronizing))
}

// === Tokens ===

/// One element of a command: an atom (including `BODY[...]<..>` forms), a quoted string or a
/// literal, or a parenthesized list.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Token {
    Atom(String),
    Str(Vec<u8>),
    List(Vec<Token>),
}

impl Token {
    pub(super) fn atom(&self) -> Option<&str> {
        match self {
            Token::Atom(atom) => Some(atom),
            _ => None,
        }
    }

    /// An astring (atom, quoted string or literal) as text.
    pub(super) fn text(&self) -> Option<String> {
        match self {
            Token::Atom(atom) => Some(atom.clone()),
            Token::Str(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            Token::List(_) => None,
        }
    }

    /// Whether this is the atom `word` (case-insensitive).
    pub(super) fn is(&self, word: &str) -> bool {
        self.atom().is_some_and(|a| a.eq_ignore_ascii_case(word))
    }
}

/// Splits a command into tokens; the literals are taken in order at their `{n}` markers.
pub(super) fn tokenize(command: RawCommand) -> Result<Vec<Token>, String> {
    let mut parser = Parser {
        bytes: command.text,
        pos: 0,
        literals: command.literals,
    };
    parser.tokens(0)
}

struct Parser {
    bytes: Vec<u8>,
    pos: usize,
    literals: VecDeque<Vec<u8>>,
}

impl Parser {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Tokens up to the end (depth 0) or the `)` that closes the current list.
    fn tokens(&mut self, depth: usize) -> Result<Vec<Token>, String> {
        if depth > MAX_DEPTH {
            return Err("lists nested too deeply".to_string());
        }
        let mut tokens = Vec::new();
        loop {
            while self.peek() == Some(b' ') {
                self.pos += 1;
            }
            match self.peek() {
                None if depth == 0 => return Ok(tokens),
                None => return Err("unclosed (".to_string()),
                Some(b')') if depth > 0 => {
                    self.pos += 1;
                    return Ok(tokens);
                }
                Some(b')') => return Err("unexpected )".to_string()),
                Some(b'(') => {
                    self.pos += 1;
                    tokens.push(Token::List(self.tokens(depth + 1)?));
                }
                Some(b'"') => tokens.push(Token::Str(self.quoted()?)),
                Some(b'{') => tokens.push(Token::Str(self.literal()?)),
                Some(_) => tokens.push(Token::Atom(self.atom())),
            }
        }
    }

    fn quoted(&mut self) -> Result<Vec<u8>, String> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err("unterminated quoted string".to_string()),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    out.push(self.peek().ok_or("unterminated quoted string")?);
                    self.pos += 1;
                }
                Some(b) => {
                    out.push(b);
                    self.pos += 1;
                }
            }
        }
    }

    fn literal(&mut self) -> Result<Vec<u8>, String> {
        let close = self.bytes[self.pos..]
            .iter()
            .position(|&b| b == b'}')
            .ok_or("unterminated literal marker")?;
        self.pos += close + 1;
        self.literals
            .pop_front()
            .ok_or_else(|| "literal marker in the middle of a line".to_string())
    }

    /// An atom; a `[` keeps everything up to the matching `]` (spaces and lists included).
    fn atom(&mut self) -> String {
        let start = self.pos;
        let mut brackets = 0usize;
        while let Some(b) = self.peek() {
            match b {
                b'[' => brackets += 1,
                b']' => brackets = brackets.saturating_sub(1),
                b' ' | b'(' | b')' | b'"' | b'{' if brackets == 0 => break,
                _ => {}
            }
            self.pos += 1;
        }
        String::from_utf8_lossy(&self.bytes[start..self.pos]).into_owned()
    }
}

// === Sequence sets ===

#[derive(Clone, Copy, Debug)]
enum SeqNumber {
    Number(u32),
    Star,
}

/// A sequence set such as `1`, `1:*`, `2,4:5` (message numbers or UIDs).
#[derive(Clone, Debug)]
pub(super) struct SeqSet(Vec<(SeqNumber, SeqNumber)>);

impl SeqSet {
    pub(super) fn parse(text: &str) -> Option<SeqSet> {
        let number = |s: &str| match s {
            "*" => Some(SeqNumber::Star),
            _ => s
                .parse::<u32>()
                .ok()
                .filter(|&n| n > 0)
                .map(SeqNumber::Number),
        };
        let ranges = text
            .split(',')
            .map(|part| match part.split_once(':') {
                Some((a, b)) => Some((number(a)?, number(b)?)),
                None => number(part).map(|n| (n, n)),
            })
            .collect::<Option<Vec<_>>>()?;
        Some(SeqSet(ranges))
    }

    /// Whether `n` is in the set, with `*` standing for `star` (the largest number in use).
    pub(super) fn contains(&self, n: u32, star: u32) -> bool {
        let resolve = |s: SeqNumber| match s {
            SeqNumber::Number(n) => n,
            SeqNumber::Star => star,
        };
        self.0.iter().any(|&(a, b)| {
            let (a, b) = (resolve(a), resolve(b));
            a.min(b) <= n && n <= a.max(b)
        })
    }

    /// The largest explicit number (not `*`), to check message numbers against the mailbox size.
    pub(super) fn max_number(&self) -> u32 {
        let explicit = |s: SeqNumber| match s {
            SeqNumber::Number(n) => n,
            SeqNumber::Star => 0,
        };
        self.0
            .iter()
            .map(|&(a, b)| explicit(a).max(explicit(b)))
            .max()
            .unwrap_or(0)
    }
}

/// Formats numbers as a compact sequence set (`1:3,7`), as COPYUID and APPENDUID want them.
pub(super) fn format_set(numbers: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < numbers.len() {
        let start = numbers[i];
        while i + 1 < numbers.len() && numbers[i + 1] == numbers[i] + 1 {
            i += 1;
        }
        parts.push(match numbers[i] == start {
            true => start.to_string(),
            false => format!("{start}:{}", numbers[i]),
        });
        i += 1;
    }
    parts.join(",")
}

// === Quoting ===

/// A mailbox name as an atom when it is one, else as a quoted string.
pub(super) fn quote_name(name: &str) -> String {
    let atom = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"(){%*\"\\]".contains(&b));
    match atom {
        true => name.to_string(),
        false => quoted(name.as_bytes()).unwrap_or_else(|| format!("\"{name}\"")),
    }
}

/// An nstring: `NIL`, a quoted string when the bytes allow it, else a literal.
pub(super) fn nstring(value: Option<&[u8]>) -> Vec<u8> {
    let Some(value) = value else {
        return b"NIL".to_vec();
    };
    match quoted(value) {
        Some(quoted) => quoted.into_bytes(),
        None => {
            let mut out = format!("{{{}}}\r\n", value.len()).into_bytes();
            out.extend_from_slice(value);
            out
        }
    }
}

/// `"..."` with `\` and `"` escaped; `None` when the bytes need a literal (8-bit, CR, LF, NUL).
fn quoted(value: &[u8]) -> Option<String> {
    if !value
        .iter()
        .all(|&b| (0x01..0x80).contains(&b) && b != b'\r' && b != b'\n')
    {
        return None;
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for &b in value {
        if b == b'"' || b == b'\\' {
            out.push('\\');
        }
        out.push(char::from(b));
    }
    out.push('"');
    Some(out)
}
