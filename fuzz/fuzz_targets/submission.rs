//! SMTP after login, its pure pieces: command lines (MAIL/RCPT paths, BDAT sizes), the
//! DATA stream's end in any chunking, unstuffing (in place and streaming agree), the header
//! section and its senders (mail-parser on arbitrary header bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;
use m365_relay::submission::command::Command;
use m365_relay::submission::data::{
    DataEnd, header_end, header_senders, unstuff_in_place, unstuff_into, unstuffed_message,
};

fuzz_target!(|input: (Vec<u8>, Vec<u8>, u8)| {
    let (line, stream, cut) = input;
    if let Command::Mail { path, .. } | Command::Rcpt { path, .. } = Command::parse(&line) {
        assert!(!path.chars().any(char::is_whitespace), "{path:?}");
        assert!(path.is_empty() || path.contains('@'));
    }

    // The end found in one piece is the end found in pieces of `cut` bytes.
    let whole = DataEnd::default().scan(&stream);
    let mut end = DataEnd::default();
    let mut found = None;
    let mut offset = 0;
    for piece in stream.chunks(usize::from(cut.max(1))) {
        if let Some(at) = end.scan(piece) {
            found = Some(offset + at);
            break;
        }
        offset += piece.len();
    }
    assert_eq!(whole, found);
    if let Some(at) = whole {
        assert!(stream[..at].ends_with(b".\r\n"));
        let message = unstuffed_message(&stream[..at]);
        let mut in_place = stream[..at].to_vec();
        unstuff_in_place(&mut in_place);
        assert_eq!(message, in_place);
        let mut streamed = Vec::new();
        let mut line_start = true;
        for piece in stream[..at - 3].chunks(usize::from(cut.max(1))) {
            unstuff_into(&mut streamed, piece, &mut line_start);
        }
        assert_eq!(message, streamed);
    }
    if let Some(at) = header_end(&stream) {
        assert!(at <= stream.len());
        for sender in header_senders(&stream[..at]) {
            assert_eq!(sender, sender.to_ascii_lowercase());
        }
    }
});
