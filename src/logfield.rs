//! Client-controlled text in log fields: user names, addresses, EHLO names. Escaped so
//! that a CR, LF or other control character cannot forge a log line (or a terminal
//! escape), and capped so that one field cannot fill a log. Also an error's source chain
//! on one line ([`chain`]), for log fields and messages.

use std::fmt;

/// The most characters of a client-controlled field that reach a log.
pub const MAX_LOGGED_CHARS: usize = 256;

/// Displays client-controlled text escaped (`\r`, `\n`, `\u{1b}`, ...) and capped at
/// [`MAX_LOGGED_CHARS`], with `…` when cut.
#[derive(Clone, Copy)]
pub struct Field<'a>(pub &'a str);

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(MAX_LOGGED_CHARS) {
            if c.is_control() || c == '\\' {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_fmt(format_args!("{c}"))?;
            }
        }
        if chars.next().is_some() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Client-controlled bytes (not necessarily UTF-8) as an escaped, capped log field.
pub fn lossy(bytes: &[u8]) -> String {
    Field(&String::from_utf8_lossy(bytes)).to_string()
}

/// An error and its sources on one line, joined by `: ` (reqwest keeps the useful part in
/// the sources).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let line = s.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_text_is_cut() {
        let forged = "alice@contoso.com\r\n2026-12-06T00:00:00Z INFO login ok mailbox=ceo";
        let shown = Field(forged).to_string();
        assert!(!shown.contains('\r') && !shown.contains('\n'), "{shown}");
        assert!(shown.starts_with("alice@contoso.com\\r\\n2026"), "{shown}");
        assert_eq!(Field("a\u{1b}[31mb\\").to_string(), "a\\u{1b}[31mb\\\\");
        let long = "x".repeat(1000);
        assert_eq!(
            Field(&long).to_string().chars().count(),
            MAX_LOGGED_CHARS + 1
        );
        assert_eq!(Field("jörg@bücher.de").to_string(), "jörg@bücher.de");
        assert_eq!(lossy(b"a\xffb\n"), "a\u{fffd}b\\n");
    }
}
