//! The DATA stream of RFC 5321 §4.1.1.4: where it ends (only at `CRLF . CRLF`, found
//! across reads), whether it holds a bare CR or LF, and how its lines are unstuffed
//! (§4.5.2). The header section is read in [`super::header`].

pub use super::header::{LineEnds, SenderFault, bare_line_end, header_end, header_senders};

/// The end marker's tail, after the line end that precedes it.
const DOT_LINE: &[u8] = b".\r\n";

/// Finds the end of a DATA stream across reads, and notes bare line ends on the way. The
/// stream starts at a line start, so a message may end at once (`.` CRLF as its first
/// line). Only CRLF starts a line: `LF . CRLF` is message content (and a bare LF), never
/// the end, so the relay and any strict server agree on where a message ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataEnd {
    state: State,
    ends: LineEnds,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    LineStart,
    Dot,
    DotCr,
    Mid,
    MidCr,
}

impl Default for DataEnd {
    fn default() -> Self {
        Self {
            state: State::LineStart,
            ends: LineEnds::default(),
        }
    }
}

impl DataEnd {
    /// Scans the next `chunk` of the stream. `Some(n)`: the stream ends with
    /// `chunk[..n]`, end marker included; what follows is the client's next command.
    pub fn scan(&mut self, chunk: &[u8]) -> Option<usize> {
        let end = self.find_end(chunk);
        self.ends.scan(&chunk[..end.unwrap_or(chunk.len())]);
        end
    }

    /// Whether the stream so far holds a bare CR or LF (when ended: anywhere in it).
    pub fn bare_line_end(&self) -> bool {
        self.ends.seen()
    }

    fn find_end(&mut self, chunk: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            self.state = match self.state {
                State::Mid => match memchr::memchr(b'\r', &chunk[i..]) {
                    Some(at) => {
                        i += at + 1;
                        self.state = State::MidCr;
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
                State::MidCr if b == b'\n' => State::LineStart,
                _ if b == b'\r' => State::MidCr,
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
    fn only_crlf_dot_crlf_ends_the_stream() {
        for stream in [
            &b"a\n.\r\nb\r\n"[..],
            b"a\r\n.\nb\r\n",
            b"a\r.\r\n",
            b"a\r\n.\r\r\n",
            b"a\n.\n",
        ] {
            for piece in 1..=stream.len() {
                assert_eq!(end_in_pieces(stream, piece), None, "{stream:?} / {piece}");
            }
        }
        let smuggled = b"Subject: x\r\n\r\nhi\n.\r\nMAIL FROM:<x@y.z>\r\n\r\n.\r\n";
        for piece in 1..=smuggled.len() {
            let mut end = DataEnd::default();
            let mut at = None;
            let mut offset = 0;
            for chunk in smuggled.chunks(piece) {
                if let Some(n) = end.scan(chunk) {
                    at = Some(offset + n);
                    break;
                }
                offset += chunk.len();
            }
            assert_eq!(at, Some(smuggled.len()), "piece {piece}");
            assert!(end.bare_line_end(), "piece {piece}");
        }
        let mut clean = DataEnd::default();
        assert_eq!(clean.scan(b"a\r\n\r\n..b\r\n.\r\n"), Some(13));
        assert!(!clean.bare_line_end());
    }
}
