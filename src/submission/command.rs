//! The SMTP commands of a logged-in session (RFC 5321 §4.1), parsed from one line.

use super::address::smtp_path;

/// One command line after login.
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
    StartTls,
    Auth,
    /// A command the relay knows but does not offer (EXPN, TURN, ...).
    NotImplemented,
    /// A MAIL or RCPT line whose path does not parse.
    Syntax(&'static str),
    Unknown,
}

impl<'a> Command<'a> {
    pub fn parse(line: &'a [u8]) -> Self {
        let Ok(line) = std::str::from_utf8(line) else {
            return Command::Syntax("501 5.5.2 Command line is not UTF-8\r\n");
        };
        let (verb, args) = line.split_once(' ').unwrap_or((line, ""));
        let is = |name: &str| verb.eq_ignore_ascii_case(name);
        if is("MAIL") {
            return path_command(args, "FROM:", true).map_or(
                Command::Syntax("501 5.5.4 Syntax: MAIL FROM:<address>\r\n"),
                |(path, params)| Command::Mail { path, params },
            );
        }
        if is("RCPT") {
            return path_command(args, "TO:", false).map_or(
                Command::Syntax("501 5.1.3 Syntax: RCPT TO:<address>, one address\r\n"),
                |(path, params)| Command::Rcpt { path, params },
            );
        }
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => Command::Ehlo(args.trim()),
            "HELO" => Command::Helo(args.trim()),
            "DATA" => Command::Data,
            "BDAT" => bdat(args),
            "RSET" => Command::Rset,
            "NOOP" => Command::Noop,
            "QUIT" => Command::Quit,
            "HELP" => Command::Help,
            "VRFY" => Command::Vrfy,
            "STARTTLS" => Command::StartTls,
            "AUTH" => Command::Auth,
            "EXPN" | "TURN" | "ETRN" | "ATRN" => Command::NotImplemented,
            _ => Command::Unknown,
        }
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
        assert_eq!(
            Command::parse(b"MAIL FROM:<Alice@Contoso.com> SIZE=1000 BODY=8BITMIME"),
            Command::Mail {
                path: "Alice@Contoso.com",
                params: "SIZE=1000 BODY=8BITMIME"
            }
        );
        assert_eq!(
            Command::parse(b"mail from: <a@b.c>"),
            Command::Mail {
                path: "a@b.c",
                params: ""
            }
        );
        assert_eq!(
            Command::parse(b"MAIL FROM:<>"),
            Command::Mail {
                path: "",
                params: ""
            }
        );
        assert_eq!(
            Command::parse(b"RCPT TO:<@relay.example:bob@d.e> NOTIFY=NEVER"),
            Command::Rcpt {
                path: "bob@d.e",
                params: "NOTIFY=NEVER"
            }
        );
        assert_eq!(
            Command::parse(b"RCPT TO:bob@d.e"),
            Command::Rcpt {
                path: "bob@d.e",
                params: ""
            }
        );
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
