//! The SMTP commands (RFC 5321 §4.1, RFC 3207 STARTTLS, RFC 4954 AUTH, RFC 3030 BDAT),
//! parsed once from a line, the same before and after login. Each session answers the
//! commands it does not take in its state: before login, a mail transaction needs AUTH
//! first; after it, STARTTLS and AUTH are refused.

use super::path::smtp_path;
use super::reply;

/// One command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Ehlo(&'a str),
    Helo(&'a str),
    /// `MAIL FROM:<path> [params]`; `path` is empty for the null reverse path.
    Mail {
        path: &'a str,
        params: &'a str,
    },
    /// `RCPT TO:<path> [params]`.
    Rcpt {
        path: &'a str,
        params: &'a str,
    },
    Data,
    /// `BDAT size [LAST]` (RFC 3030); the chunk's `size` octets follow the line.
    Bdat {
        size: u64,
        last: bool,
    },
    /// A BDAT line whose size does not parse: the relay cannot know where the chunk ends.
    BadBdat,
    Rset,
    Noop,
    Quit,
    Help,
    Vrfy,
    /// `STARTTLS`, with what followed it (there should be nothing).
    StartTls(&'a str),
    /// `AUTH mechanism [initial-response]` (RFC 4954 §4).
    Auth {
        mechanism: &'a str,
        initial: Option<&'a [u8]>,
    },
    /// A command the relay knows but does not offer (EXPN, TURN, ...).
    NotImplemented,
    /// A MAIL or RCPT line whose path or parameters do not parse: the reply.
    Syntax(&'static str),
    Unknown,
}

impl<'a> Command<'a> {
    /// Reads one command line, without its CRLF. The verb is matched without regard to
    /// case. Arguments that are not UTF-8 read as empty (a MAIL or RCPT path as a syntax
    /// error); AUTH's are the bytes they are.
    pub fn parse(line: &'a [u8]) -> Self {
        let (verb, args) = match line.iter().position(|&b| b == b' ') {
            Some(at) => (&line[..at], &line[at + 1..]),
            None => (line, &b""[..]),
        };
        let text = std::str::from_utf8(args).ok();
        match verb.to_ascii_uppercase().as_slice() {
            b"MAIL" => text
                .and_then(|args| path_command(args, "FROM:", true))
                .map_or(Command::Syntax(reply::MAIL_SYNTAX), |(path, params)| {
                    Command::Mail { path, params }
                }),
            b"RCPT" => text
                .and_then(|args| path_command(args, "TO:", false))
                .map_or(Command::Syntax(reply::RCPT_SYNTAX), |(path, params)| {
                    Command::Rcpt { path, params }
                }),
            b"AUTH" => auth(args),
            b"EHLO" => Command::Ehlo(text.unwrap_or("").trim()),
            b"HELO" => Command::Helo(text.unwrap_or("").trim()),
            b"STARTTLS" => Command::StartTls(text.unwrap_or("").trim()),
            b"DATA" => Command::Data,
            b"BDAT" => bdat(text.unwrap_or("")),
            b"RSET" => Command::Rset,
            b"NOOP" => Command::Noop,
            b"QUIT" => Command::Quit,
            b"HELP" => Command::Help,
            b"VRFY" => Command::Vrfy,
            b"EXPN" | b"TURN" | b"ETRN" | b"ATRN" => Command::NotImplemented,
            _ => Command::Unknown,
        }
    }
}

/// `AUTH mechanism [initial-response]`: a mechanism that is not UTF-8 reads as `?`.
fn auth(args: &[u8]) -> Command<'_> {
    let args = args.trim_ascii();
    let (mechanism, initial) = match args.iter().position(|&b| b == b' ') {
        Some(at) => (&args[..at], Some(args[at + 1..].trim_ascii())),
        None => (args, None),
    };
    Command::Auth {
        mechanism: std::str::from_utf8(mechanism).unwrap_or("?"),
        initial,
    }
}

/// `123` or `123 LAST`.
fn bdat(args: &str) -> Command<'static> {
    let mut words = args.split_ascii_whitespace();
    let size = words.next().and_then(|n| n.parse::<u64>().ok());
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Command::BadBdat,
    };
    match (size, words.next()) {
        (Some(size), None) => Command::Bdat { size, last },
        _ => Command::BadBdat,
    }
}

/// `FROM:<a@b> SIZE=10` → (`a@b`, `SIZE=10`): the path read strictly (RFC 5321 §4.1.2,
/// [`smtp_path`]), one mailbox only. Tolerates a space after the colon and a path without
/// angle brackets, as old clients send them; the null path `<>` only when `null_ok`.
fn path_command<'a>(args: &'a str, keyword: &str, null_ok: bool) -> Option<(&'a str, &'a str)> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = args[keyword.len()..].trim_start();
    let (path, params) = match rest.starts_with('<') {
        true => {
            let end = closing_bracket(rest)?;
            let params = &rest[end + 1..];
            if !params.is_empty() && !params.starts_with(' ') {
                return None;
            }
            (&rest[..=end], params.trim())
        }
        false => rest
            .split_once(' ')
            .map_or((rest, ""), |(p, r)| (p, r.trim())),
    };
    if !params.split(' ').filter(|p| !p.is_empty()).all(esmtp_param) {
        return None;
    }
    Some((smtp_path(path, null_ok)?, params))
}

/// `esmtp-keyword ["=" esmtp-value]` (RFC 5321 §4.1.2).
fn esmtp_param(param: &str) -> bool {
    let (keyword, value) = param.split_once('=').unwrap_or((param, "x"));
    let mut keyword = keyword.bytes();
    keyword.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && keyword.all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !value.is_empty()
        && value
            .bytes()
            .all(|b| (33..=126).contains(&b) && b != b'=' || b >= 0x80)
}

/// Where the `>` that closes the path at the start of `s` stands, past quoted strings.
fn closing_bracket(s: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (at, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => return Some(at),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_and_rcpt() {
        for (line, path, params) in [
            (
                &b"MAIL FROM:<Alice@Contoso.com> SIZE=1000 BODY=8BITMIME"[..],
                "Alice@Contoso.com",
                "SIZE=1000 BODY=8BITMIME",
            ),
            (b"mail from: <a@b.c>", "a@b.c", ""),
            (b"MAIL FROM:<>", "", ""),
        ] {
            assert_eq!(Command::parse(line), Command::Mail { path, params });
        }
        for (line, path, params) in [
            (
                &b"RCPT TO:<@relay.example:bob@d.e> NOTIFY=NEVER"[..],
                "bob@d.e",
                "NOTIFY=NEVER",
            ),
            (b"RCPT TO:bob@d.e", "bob@d.e", ""),
        ] {
            assert_eq!(Command::parse(line), Command::Rcpt { path, params });
        }
        for bad in [
            &b"MAIL TO:<a@b.c>"[..],
            b"MAIL FROM:<a@b.c",
            b"RCPT TO:<>",
            b"RCPT TO:<bob>",
            b"MAIL",
            b"RCPT TO:<a b@c.d>",
            b"RCPT TO:<a@x.com,b@y.com>",
            b"RCPT TO:a@x.com,b@y.com",
            b"RCPT TO:<a@x.com>,<b@y.com>",
            b"RCPT TO:<a@x.com>>",
            b"MAIL FROM:<a@b.c>x",
            b"MAIL FROM:<a@@b.c>",
            b"RCPT TO:<a@x.com> <b@y.com>",
            b"MAIL FROM:<a@b.c> SIZE==1",
        ] {
            assert!(
                matches!(Command::parse(bad), Command::Syntax(_)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn other_verbs() {
        assert_eq!(
            Command::parse(b"ehlo client.example"),
            Command::Ehlo("client.example")
        );
        assert_eq!(Command::parse(b"DATA"), Command::Data);
        assert_eq!(
            Command::parse(b"BDAT 100 LAST"),
            Command::Bdat {
                size: 100,
                last: true
            }
        );
        assert_eq!(
            Command::parse(b"bdat 0 last"),
            Command::Bdat {
                size: 0,
                last: true
            }
        );
        assert_eq!(
            Command::parse(b"BDAT 7"),
            Command::Bdat {
                size: 7,
                last: false
            }
        );
        for bad in [
            &b"BDAT"[..],
            b"BDAT x",
            b"BDAT 1 FIRST",
            b"BDAT 1 LAST more",
            b"BDAT -1",
        ] {
            assert_eq!(Command::parse(bad), Command::BadBdat);
        }
        assert_eq!(Command::parse(b"quit"), Command::Quit);
        assert_eq!(Command::parse(b"EXPN staff"), Command::NotImplemented);
        assert_eq!(Command::parse(b"XYZZY"), Command::Unknown);
        assert!(matches!(
            Command::parse(b"MAIL FROM:<\xff@x.y>"),
            Command::Syntax(_)
        ));
    }
}
