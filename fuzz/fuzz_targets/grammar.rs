//! The input of the pre-auth targets: a structured script (via `arbitrary`) of lines built
//! from protocol words, base64 SASL responses, IMAP literals and quoted strings, mixed with
//! raw bytes, so that the fuzzer gets past EHLO, tags and base64 into the deep states (an
//! AUTH LOGIN exchange, a LOGIN with literals, a login that failed twice) instead of
//! spending its time guessing keywords.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use m365_relay::error::Error;

#[path = "../../tests/it/props/model.rs"]
pub mod model;

/// Words of SMTP, IMAP, POP3 and SASL before login, and a few that sit on limits.
const WORDS: &[&str] = &[
    "EHLO",
    "HELO",
    "STARTTLS",
    "AUTH",
    "PLAIN",
    "LOGIN",
    "XOAUTH2",
    "RSET",
    "NOOP",
    "QUIT",
    "HELP",
    "VRFY",
    "EXPN",
    "MAIL FROM:<a@b.c>",
    "RCPT TO:<d@e.f>",
    "DATA",
    "BDAT 10 LAST",
    "a1",
    "A2",
    "*",
    "+",
    "CAPABILITY",
    "AUTHENTICATE",
    "LOGOUT",
    "ID",
    "ENABLE",
    "SELECT",
    "IDLE",
    "NIL",
    "(",
    ")",
    "\"",
    "\\",
    "{",
    "}",
    "{0}",
    "{5}",
    "{11+}",
    "{4096}",
    "{4097}",
    "{99999999999}",
    "CAPA",
    "USER",
    "PASS",
    "STLS",
    "APOP",
    "STAT",
    "UIDL",
    "=",
    "alice@contoso.com",
    "client.example",
    " ",
    "  ",
    "\t",
];

/// Sizes of the reads the client's bytes arrive in.
const CHUNKS: [usize; 8] = [1, 2, 3, 7, 64, 512, 4096, 65536];

/// One piece of a client line.
#[derive(Arbitrary, Debug)]
pub enum Piece {
    Word(u8),
    Space,
    Bytes(Vec<u8>),
    /// A SASL response: these bytes in base64.
    Base64(Vec<u8>),
    /// A PLAIN message in base64: authzid NUL authcid NUL password.
    Plain(Vec<u8>, Vec<u8>, Vec<u8>),
    /// An IMAP quoted string.
    Quoted(Vec<u8>),
    /// A literal announcement `{n}` / `{n+}` that ends the line, and the literal after it.
    Literal {
        data: Vec<u8>,
        plus: bool,
        lie: Option<u16>,
    },
    Number(u32),
}

/// How a line ends.
#[derive(Arbitrary, Debug)]
pub enum End {
    CrLf,
    Lf,
    Cr,
    None,
}

#[derive(Arbitrary, Debug)]
pub enum Chunk {
    Line(Vec<Piece>, End),
    /// A line over every limit: 1 to 20 KB.
    Long(u8),
    Raw(Vec<u8>),
    /// The client's TLS handshake: what follows is a new segment.
    Handshake,
}

/// How a login ends upstream.
#[derive(Arbitrary, Debug)]
pub enum Outcome {
    Ok(Vec<u8>),
    Fail(u8),
}

#[derive(Arbitrary, Debug)]
pub struct Script {
    pub tls: bool,
    pub auth_allowed: bool,
    pub auth_after_tls: bool,
    /// Picks the largest read of the in-memory stream from [`CHUNKS`].
    pub chunk: u8,
    pub chunks: Vec<Chunk>,
    pub outcomes: Vec<Outcome>,
}

impl Script {
    /// The client's bytes, one segment per TLS handshake.
    pub fn segments(&self) -> Vec<Vec<u8>> {
        let mut segments = vec![Vec::new()];
        for chunk in &self.chunks {
            let out = segments.last_mut().expect("one segment at least");
            match chunk {
                Chunk::Line(pieces, end) => {
                    for piece in pieces {
                        piece.write(out);
                    }
                    out.extend_from_slice(match end {
                        End::CrLf => b"\r\n",
                        End::Lf => b"\n",
                        End::Cr => b"\r",
                        End::None => b"",
                    });
                }
                Chunk::Long(kb) => {
                    out.extend(std::iter::repeat_n(b'x', (*kb as usize % 20 + 1) * 1024));
                    out.extend_from_slice(b"\r\n");
                }
                Chunk::Raw(bytes) => out.extend_from_slice(bytes),
                Chunk::Handshake => segments.push(Vec::new()),
            }
        }
        segments
    }

    /// The upstream's answer to the `n`-th login.
    pub fn outcome(&self, n: usize) -> Result<String, Error> {
        match self.outcomes.get(n) {
            // An upstream line never holds CR or LF: the relay reads it line by line.
            Some(Outcome::Ok(text)) => Ok(String::from_utf8_lossy(text)
                .chars()
                .filter(|c| !matches!(c, '\r' | '\n'))
                .collect()),
            Some(Outcome::Fail(n)) => Err(model::login_error(*n)),
            None => Err(model::login_error(0)),
        }
    }

    pub fn run<S: m365_relay::protocol::PreAuth>(&self, session: S) -> Vec<model::Event> {
        let segments = self.segments();
        let input = model::Input {
            segments: &segments,
            chunk: CHUNKS[self.chunk as usize % CHUNKS.len()],
            auth_after_tls: self.auth_after_tls,
        };
        model::run(session, &input, |n| self.outcome(n))
    }
}

impl Piece {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Piece::Word(i) => out.extend_from_slice(WORDS[*i as usize % WORDS.len()].as_bytes()),
            Piece::Space => out.push(b' '),
            Piece::Bytes(b) => out.extend_from_slice(b),
            Piece::Base64(b) => out.extend_from_slice(STANDARD.encode(b).as_bytes()),
            Piece::Plain(authz, user, pass) => {
                let message = [&authz[..], b"\0", user, b"\0", pass].concat();
                out.extend_from_slice(STANDARD.encode(message).as_bytes());
            }
            Piece::Quoted(b) => {
                out.push(b'"');
                for &c in b {
                    if c == b'"' || c == b'\\' {
                        out.push(b'\\');
                    }
                    out.push(c);
                }
                out.push(b'"');
            }
            Piece::Literal { data, plus, lie } => {
                let len = lie.map_or(data.len(), usize::from);
                let plus = if *plus { "+" } else { "" };
                out.extend_from_slice(format!("{{{len}{plus}}}\r\n").as_bytes());
                out.extend_from_slice(data);
            }
            Piece::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        }
    }
}
