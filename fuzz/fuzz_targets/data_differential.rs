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
use m365_relay::submission::data::{DataEnd, header_end, unstuffed_message};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let end = relay_end(stream, usize::from(cut.max(1)));
    assert_eq!(end, strict::data_end(stream), "where the DATA stream ends");
    let mut data_senders = false;
    if let Some(end) = end {
        let relay = check(&unstuffed_message(&stream[..end]));
        data_senders = compare(relay, &strict::unstuff(&stream[..end]));
    }
    if !strict::bare_line_end(stream) {
        assert_eq!(
            header_end(stream),
            strict::header_end(stream),
            "where the header section ends"
        );
    }
    let bdat_senders = compare(check(stream), stream);
    depth::report(&[
        ("data_end", end.is_some()),
        ("header_sender", data_senders || bdat_senders),
    ]);
});

/// The end the relay finds reading `stream` in pieces of `cut` bytes (and in one piece:
/// the two agree).
fn relay_end(stream: &[u8], cut: usize) -> Option<usize> {
    let whole = DataEnd::default().scan(stream);
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
    assert_eq!(whole, found, "the end depends on how the stream was read");
    whole
}

/// The relay's verdict on a message, as the session driver reaches it: refused, or
/// accepted with these header senders.
fn check(message: &[u8]) -> Result<Vec<String>, String> {
    relay::check(message)
}

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

/// The relay's checks of a message's start, as `submission::driver` applies them.
mod relay {
    use m365_relay::submission::data::{header_end, header_senders};

    /// Today's API: `header_senders` answers a list, and nothing refuses bare line ends.
    pub fn check(message: &[u8]) -> Result<Vec<String>, String> {
        let header = &message[..header_end(message).unwrap_or(message.len())];
        Ok(header_senders(header))
    }
}
