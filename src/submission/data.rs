//! The DATA stream of RFC 5321 §4.1.1.4: where it ends (`CRLF . CRLF`, found across
//! reads), how its lines are unstuffed (§4.5.2), where the header section ends, and the
//! senders the header names (From and Sender, read with mail-parser).

use mail_parser::MessageParser;

/// The end marker's tail, after the line end that precedes it.
const DOT_LINE: &[u8] = b".\r\n";

/// Finds the end of a DATA stream across reads. The stream starts at a line start, so a
/// message may end at once (`.` CRLF as its first line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataEnd {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    LineStart,
    Dot,
    DotCr,
    Mid,
}

impl Default for DataEnd {
    fn default() -> Self {
        Self {
            state: State::LineStart,
        }
    }
}

impl DataEnd {
    /// Scans the next `chunk` of the stream. `Some(n)`: the stream ends with
    /// `chunk[..n]`, end marker included; what follows is the client's next command.
    pub fn scan(&mut self, chunk: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            self.state = match self.state {
                State::Mid => match memchr::memchr(b'\n', &chunk[i..]) {
                    Some(at) => {
                        i += at + 1;
                        self.state = State::LineStart;
                        continue;
                    }
                    None => return None,
                },
                State::LineStart if b == b'.' => State::Dot,
                State::Dot if b == b'\r' => State::DotCr,
                State::DotCr if b == b'\n' => {
                    self.state = State::LineStart;
                    return Some(i + 1);
                }
                _ if b == b'\n' => State::LineStart,
                _ => State::Mid,
            };
            i += 1;
        }
        None
    }
}

/// Removes the dot that RFC 5321 §4.5.2 adds to lines starting with one, appending to
/// `out`. `line_start` carries whether the next byte starts a line across calls.
pub fn unstuff_into(out: &mut Vec<u8>, chunk: &[u8], line_start: &mut bool) {
    let mut rest = chunk;
    while !rest.is_empty() {
        if std::mem::take(line_start) && rest[0] == b'.' {
            rest = &rest[1..];
        }
        match memchr::memchr(b'\n', rest) {
            Some(at) => {
                out.extend_from_slice(&rest[..=at]);
                rest = &rest[at + 1..];
                *line_start = true;
            }
            None => {
                out.extend_from_slice(rest);
                return;
            }
        }
    }
}

/// The message of a complete DATA stream (end marker included), unstuffed.
pub fn unstuffed_message(stream: &[u8]) -> Vec<u8> {
    let body = stream.strip_suffix(DOT_LINE).unwrap_or(stream);
    let mut out = Vec::with_capacity(body.len());
    unstuff_into(&mut out, body, &mut true);
    out
}

/// Turns a complete DATA stream (end marker included) into its message, in place.
pub fn unstuff_in_place(stream: &mut Vec<u8>) {
    if stream.ends_with(DOT_LINE) {
        stream.truncate(stream.len() - DOT_LINE.len());
    }
    let mut kept = 0;
    let mut line_start = true;
    for read in 0..stream.len() {
        let b = stream[read];
        if line_start && b == b'.' {
            line_start = false;
            continue;
        }
        stream[kept] = b;
        kept += 1;
        line_start = b == b'\n';
    }
    stream.truncate(kept);
}

/// Where the header section of `message` ends (just past the empty line), if it does:
/// the first empty line, CRLF or bare LF.
pub fn header_end(message: &[u8]) -> Option<usize> {
    if message.starts_with(b"\r\n") {
        return Some(2);
    }
    if message.starts_with(b"\n") {
        return Some(1);
    }
    let mut from = 0;
    while let Some(at) = memchr::memchr(b'\n', &message[from..]) {
        let next = from + at + 1;
        match message.get(next..) {
            Some([b'\r', b'\n', ..]) => return Some(next + 2),
            Some([b'\n', ..]) => return Some(next + 1),
            _ => from = next,
        }
    }
    None
}

/// The addresses of the header From and Sender fields, lower case (unstuffed `header`:
/// the header section, or a whole message).
pub fn header_senders(header: &[u8]) -> Vec<String> {
    let Some(message) = MessageParser::default().parse_headers(header) else {
        return Vec::new();
    };
    message
        .from()
        .into_iter()
        .chain(message.sender())
        .flat_map(|list| list.iter())
        .filter_map(|addr| addr.address())
        .map(str::to_ascii_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_in_pieces(stream: &[u8], piece: usize) -> Option<usize> {
        let mut end = DataEnd::default();
        let mut offset = 0;
        for chunk in stream.chunks(piece) {
            if let Some(n) = end.scan(chunk) {
                return Some(offset + n);
            }
            offset += chunk.len();
        }
        None
    }

    #[test]
    fn the_end_is_found_across_reads() {
        let stream = b"Subject: x\r\n\r\nline\r\n..dot\r\n.x\r\n.\r\nQUIT\r\n";
        let expected = stream.len() - b"QUIT\r\n".len();
        for piece in 1..stream.len() {
            assert_eq!(
                end_in_pieces(stream, piece),
                Some(expected),
                "piece {piece}"
            );
        }
        assert_eq!(end_in_pieces(b".\r\n", 1), Some(3), "an empty message");
        assert_eq!(end_in_pieces(b"a\r\n.\r", 2), None);
        assert_eq!(end_in_pieces(b"a.\r\n\r\n", 2), None, "a dot inside a line");
        assert_eq!(
            end_in_pieces(b"a\r\n..\r\nb", 3),
            None,
            "a stuffed dot line"
        );
    }

    #[test]
    fn unstuffing_across_reads() {
        let stream = b"..a\r\nb.\r\n...c\r\n.\r\n";
        assert_eq!(unstuffed_message(stream), b".a\r\nb.\r\n..c\r\n");
        let mut out = Vec::new();
        let mut line_start = true;
        for chunk in stream[..stream.len() - 3].chunks(1) {
            unstuff_into(&mut out, chunk, &mut line_start);
        }
        assert_eq!(out, b".a\r\nb.\r\n..c\r\n");
        assert_eq!(unstuffed_message(b".\r\n"), b"");
        let mut in_place = stream.to_vec();
        unstuff_in_place(&mut in_place);
        assert_eq!(in_place, b".a\r\nb.\r\n..c\r\n");
    }

    #[test]
    fn header_section_and_senders() {
        let msg = b"From: \"Alice\" <Alice@Contoso.com>\r\nSender: bob@contoso.com\r\nTo: x@y.z\r\n\r\nFrom: body@evil.example\r\n";
        assert_eq!(
            header_end(msg),
            Some(msg.len() - b"From: body@evil.example\r\n".len())
        );
        let end = header_end(msg).unwrap();
        assert_eq!(
            header_senders(&msg[..end]),
            ["alice@contoso.com", "bob@contoso.com"]
        );
        assert_eq!(header_end(b"\r\nbody"), Some(2));
        assert_eq!(header_end(b"Subject: x\r\n"), None);
        assert_eq!(header_end(b"A: b\n\nbody"), Some(6));
        assert!(header_senders(b"Subject: no from\r\n\r\n").is_empty());
        assert_eq!(
            header_senders(b"From: a@x.com, \"B\" <b@x.com>\r\n\r\n"),
            ["a@x.com", "b@x.com"]
        );
    }
}
