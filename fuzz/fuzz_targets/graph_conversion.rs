//! The Graph conversion (`graph/mime.rs`, `json.rs`, `draft.rs`) on arbitrary messages:
//! what `Graph::send` makes of a message before its first request. Input: the envelope
//! recipients on the first line (separated by blanks), then the message.
//! Findings: an envelope recipient lost, doubled, or one that is not in the envelope; a
//! Bcc rewrite that changes the body, leaves another Bcc field, or folds badly; JSON that
//! does not parse or is longer than the relay's estimate (which decides whether one
//! request can carry it); upload ranges that do not tile the attachment.
#![no_main]

mod common;

use common::depth;
use libfuzzer_sys::fuzz_target;
use m365_relay::graph::fuzzing::{Conversion, convert, fold_field, upload_plan};

fuzz_target!(|data: &[u8]| {
    let (first, mime) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    // RCPT paths: no blanks, CR or LF, as the SMTP command parser hands them on.
    let envelope: Vec<String> = String::from_utf8_lossy(first)
        .split_ascii_whitespace()
        .map(str::to_owned)
        .collect();
    let Some(c) = convert(mime, &envelope) else {
        depth::report(&[]);
        return;
    };
    check_recipients(&c, &envelope);
    check_bcc_rewrite(&c, mime);
    let parsed: serde_json::Value = serde_json::from_str(&c.json).expect("the JSON message parses");
    assert!(parsed.is_object());
    assert!(
        c.json.len() <= c.estimated_len,
        "{} > estimate {}",
        c.json.len(),
        c.estimated_len
    );
    for (size, file, item) in &c.attachments {
        serde_json::from_str::<serde_json::Value>(file).expect("a fileAttachment parses");
        serde_json::from_str::<serde_json::Value>(item).expect("an upload item parses");
        check_upload_plan(*size);
    }
    depth::report(&[
        ("parsed", true),
        ("to", !c.to.is_empty()),
        ("cc", !c.cc.is_empty()),
        ("bcc", !c.bcc.is_empty()),
        ("headers_in_envelope", c.headers_in_envelope),
        ("attachment", !c.attachments.is_empty()),
    ]);
});

/// Every envelope recipient lands in exactly one of To, Cc and Bcc; nothing else does.
fn check_recipients(c: &Conversion, envelope: &[String]) {
    let bare = |a: &str| {
        let a = a.trim();
        a.strip_prefix('<')
            .and_then(|a| a.strip_suffix('>'))
            .unwrap_or(a)
            .to_ascii_lowercase()
    };
    let envelope: Vec<String> = envelope
        .iter()
        .map(|a| bare(a))
        .filter(|a| !a.is_empty())
        .collect();
    let mut placed: Vec<String> =
        c.to.iter()
            .chain(&c.cc)
            .chain(&c.bcc)
            .map(|a| a.to_ascii_lowercase())
            .collect();
    for a in &placed {
        assert!(envelope.contains(a), "{a} is not an envelope recipient");
    }
    let n = placed.len();
    placed.sort();
    placed.dedup();
    assert_eq!(n, placed.len(), "a recipient placed twice");
    for a in &envelope {
        assert!(placed.contains(a), "envelope recipient {a} lost");
    }
}

/// The rewritten message: the body byte for byte, one Bcc field exactly when there are
/// blind copies, folded as `fold_field` folds it.
fn check_bcc_rewrite(c: &Conversion, mime: &[u8]) {
    let mut body_start = mime.len();
    let mut offset = 0;
    for line in mime.split_inclusive(|&b| b == b'\n') {
        if line == b"\r\n" || line == b"\n" {
            body_start = offset;
            break;
        }
        offset += line.len();
    }
    let body = &mime[body_start..];
    let out = &c.mime_with_bcc;
    assert!(out.ends_with(body), "the body changed");
    let header = &out[..out.len() - body.len()];
    let mut bcc_fields = 0;
    for line in header.split_inclusive(|&b| b == b'\n') {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        if !matches!(line.first(), Some(b' ' | b'\t'))
            && line.contains(&b':')
            && name.trim_ascii_end().eq_ignore_ascii_case(b"bcc")
        {
            bcc_fields += 1;
        }
    }
    assert_eq!(
        bcc_fields,
        usize::from(!c.bcc.is_empty()),
        "Bcc fields in {header:?}"
    );
    if !c.bcc.is_empty() {
        let field = fold_field("Bcc", &c.bcc);
        assert!(
            header.ends_with(field.as_bytes()),
            "the Bcc field is not the last"
        );
        for line in field.split("\r\n").filter(|l| !l.is_empty()) {
            let longest_item = c.bcc.iter().map(String::len).max().unwrap_or(0);
            assert!(
                line.len() <= 78 || line.len() <= longest_item + 6,
                "{line:?}"
            );
        }
    }
}

/// The upload ranges tile `0..total` in chunks of a multiple of 320 KiB, at most 4 MB.
fn check_upload_plan(total: usize) {
    let (ranges, chunk) = upload_plan(total);
    assert!(chunk % (320 * 1024) == 0 && chunk <= 4 * 1024 * 1024);
    let mut next = 0;
    for (i, &(first, last)) in ranges.iter().enumerate() {
        assert_eq!(first, next);
        assert!(last >= first);
        let len = last - first + 1;
        assert!(len == chunk || (i + 1 == ranges.len() && len <= chunk));
        next = last + 1;
    }
    assert_eq!(next, total);
}
