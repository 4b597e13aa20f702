//! SMTP after login, its pure pieces: command lines (MAIL/RCPT paths, BDAT sizes), the
//! DATA stream's end in any chunking, unstuffing (in place and streaming agree), the header
//! section and its senders. Input: a byte `cut` (the size of the reads), a command line up
//! to the first LF, then a DATA stream (seeds: fuzz/seeds/submission/).
#![no_main]

mod common;

use common::depth;
use libfuzzer_sys::fuzz_target;
use m365_relay::protocol::smtp::command::Command;
use m365_relay::submission::data::{
    DataEnd, header_end, header_senders, unstuff_in_place, unstuff_into, unstuffed_message,
};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut.max(1));
    let (line, stream) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let command = Command::parse(line);
    if let Command::Mail { path, .. } | Command::Rcpt { path, .. } = &command {
        // A quoted local part may hold spaces (`"john doe"@example.com`, RFC 5321
        // qtextSMTP); nothing else in a path may, and no path holds a tab or a line end.
        let outside_quotes = match path.strip_prefix('"') {
            Some(quoted) => quoted.rsplit_once("\"@").map_or(quoted, |(_, domain)| domain),
            None => path,
        };
        assert!(!outside_quotes.chars().any(char::is_whitespace), "{path:?}");
        assert!(!path.contains(['\t', '\r', '\n']), "{path:?}");
        assert!(path.is_empty() || path.contains('@'));
    }

    // The end found in one piece is the end found in pieces of `cut` bytes.
    let whole = DataEnd::default().scan(stream);
    let mut end = DataEnd::default();
    let mut found = None;
    let mut offset = 0;
    for piece in stream.chunks(cut) {
        if let Some(at) = end.scan(piece) {
            found = Some(offset + at);
            break;
        }
        offset += piece.len();
    }
    assert_eq!(whole, found);
    let message = whole.map(|at| {
        assert!(stream[..at].ends_with(b".\r\n"));
        let message = unstuffed_message(&stream[..at]);
        let mut in_place = stream[..at].to_vec();
        unstuff_in_place(&mut in_place);
        assert_eq!(message, in_place);
        let mut streamed = Vec::new();
        let mut line_start = true;
        for piece in stream[..at - 3].chunks(cut) {
            unstuff_into(&mut streamed, piece, &mut line_start);
        }
        assert_eq!(message, streamed);
        message
    });
    let mut senders = 0;
    if let Some(message) = &message
        && let Some(at) = header_end(message)
    {
        assert!(at <= message.len());
        for sender in relay::senders(&message[..at]) {
            assert_eq!(sender, sender.to_ascii_lowercase());
            senders += 1;
        }
    }
    depth::report(&[
        ("mail", matches!(command, Command::Mail { .. })),
        ("rcpt", matches!(command, Command::Rcpt { .. })),
        (
            "bdat_last",
            matches!(command, Command::Bdat { last: true, .. }),
        ),
        ("data_end", whole.is_some()),
        ("header_sender", senders > 0),
    ]);
});

/// The header senders (none when the relay refuses the header section).
mod relay {
    pub fn senders(header: &[u8]) -> Vec<String> {
        super::header_senders(header).unwrap_or_default()
    }
}
