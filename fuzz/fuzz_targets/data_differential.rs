//! The relay's reading of message content against the strict reading of `common/strict.rs`
//! (the SMTP smuggling class, issue 12 item 1). The input is a DATA stream as it comes
//! from the wire (dot-stuffed, up to its end marker and beyond), cut into reads of `cut`
//! bytes, and the same bytes as a BDAT message (not stuffed, no end marker). A finding:
//! - the relay ends the DATA stream somewhere else than at the first CRLF `.` CRLF;
//! - the relay accepts a message the strict reading refuses (a bare CR or LF, a header
//!   section that is not fields and continuations, two From or two Sender fields, a From
//!   or Sender that does not parse);
//! - both accept it and name different senders.
//! The relay refusing what the strict reading accepts fails closed and is no finding.
#![no_main]

mod common;

use common::{depth, strict};
use libfuzzer_sys::fuzz_target;
use m365_relay::submission::data::{header_end, unstuffed_message};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut.max(1));
    let (end, bare) = relay::data_end(stream, cut);
    assert_eq!(end, strict::data_end(stream), "where the DATA stream ends");
    let mut data_senders = false;
    if let Some(end) = end {
        assert_eq!(
            bare,
            strict::bare_line_end(&stream[..end]),
            "a bare line end in DATA"
        );
        let relay = match bare {
            true => Err("550 5.5.2".to_owned()),
            false => relay::check(&unstuffed_message(&stream[..end])),
        };
        data_senders = compare(relay, &strict::unstuff(&stream[..end]));
    }
    assert_eq!(
        relay::bdat_bare_line_end(stream, cut),
        strict::bare_line_end(stream),
        "a bare line end in BDAT content"
    );
    if !strict::bare_line_end(stream) {
        assert_eq!(
            header_end(stream),
            strict::header_end(stream),
            "where the header section ends"
        );
    }
    let bdat_senders = compare(relay::check(stream), stream);
    depth::report(&[
        ("data_end", end.is_some()),
        ("header_sender", data_senders || bdat_senders),
    ]);
});

/// Holds the relay's verdict on a message to the strict one on `strict_message` (the
/// same bytes, unstuffed the strict way). Whether the message named a sender.
fn compare(relay: Result<Vec<String>, String>, strict_message: &[u8]) -> bool {
    let reference = strict::senders(strict_message);
    match (relay, reference) {
        (Ok(mut relay), Ok(mut reference)) => {
            relay.sort();
            reference.sort();
            assert_eq!(
                relay, reference,
                "the relay and RFC 5322 name other senders"
            );
            !relay.is_empty()
        }
        (Ok(relay), Err(fault)) => {
            panic!("the relay accepts a message with {fault:?} (its senders: {relay:?})")
        }
        (Err(_), _) => false,
    }
}

/// The relay's reading, as `submission::driver` and `driver/bdat.rs` apply it.
mod relay {
    use m365_relay::submission::data::{
        DataEnd, LineEnds, bare_line_end, header_end, header_senders,
    };

    /// Where the relay ends a DATA stream read in pieces of `cut` bytes (the same as in
    /// one piece), and whether it saw a bare line end before that.
    pub fn data_end(stream: &[u8], cut: usize) -> (Option<usize>, bool) {
        let mut whole = DataEnd::default();
        let at_once = whole.scan(stream);
        let mut end = DataEnd::default();
        let mut offset = 0;
        let mut found = None;
        for piece in stream.chunks(cut) {
            if let Some(at) = end.scan(piece) {
                found = Some(offset + at);
                break;
            }
            offset += piece.len();
        }
        assert_eq!(at_once, found, "the end depends on how the stream was read");
        if found.is_some() {
            assert_eq!(whole.bare_line_end(), end.bare_line_end());
        }
        (found, end.bare_line_end())
    }

    /// Whether the relay finds a bare line end in BDAT content that comes in pieces of
    /// `cut` bytes.
    pub fn bdat_bare_line_end(content: &[u8], cut: usize) -> bool {
        let mut ends = LineEnds::default();
        for piece in content.chunks(cut) {
            ends.scan(piece);
        }
        ends.finish()
    }

    /// The relay's verdict on a message: refused, or accepted with these header senders.
    pub fn check(message: &[u8]) -> Result<Vec<String>, String> {
        if bare_line_end(message) {
            return Err("550 5.5.2".to_owned());
        }
        let header = &message[..header_end(message).unwrap_or(message.len())];
        header_senders(header).map_err(|fault| fault.to_string())
    }
}
