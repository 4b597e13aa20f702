use super::*;

fn senders(header: &str) -> Result<Vec<String>, SenderFault> {
    header_senders(header.as_bytes())
}

#[test]
fn one_from_and_one_sender_are_read() {
    assert_eq!(
        senders(
            "From: \"Alice\" <Alice@Contoso.com>\r\nSender: bob@contoso.com\r\nTo: x@y.z\r\n\r\nFrom: body@evil.example\r\n"
        ),
        Ok(vec![
            "alice@contoso.com".to_string(),
            "bob@contoso.com".into()
        ])
    );
    assert_eq!(
        senders("From: a@x.com, \"B\" <b@x.com>\r\n\r\n"),
        Ok(vec!["a@x.com".to_string(), "b@x.com".into()])
    );
    assert_eq!(
        senders("Subject: folded\r\n  subject\r\nFROM:\r\n  Alice\r\n <a@x.com>\r\n\r\n"),
        Ok(vec!["a@x.com".to_string()])
    );
    assert_eq!(senders("Subject: no from\r\n\r\n"), Ok(vec![]));
    assert_eq!(senders("\r\nFrom: body@x.com\r\n"), Ok(vec![]));
    assert_eq!(
        senders("From: a@x.com\r\n"),
        Ok(vec!["a@x.com".to_string()]),
        "a message that ends inside its header section"
    );
    assert_eq!(
        senders("From : a@x.com\r\n\r\n"),
        Ok(vec!["a@x.com".to_string()]),
        "white space before the colon is still a From"
    );
}

/// The three ways the review got `250` for a delegate's address, and their relatives.
#[test]
fn what_a_lenient_reader_would_split_differently_is_refused() {
    let cases = [
        (
            "From: alice@contoso.com\r\nFrom: help@contoso.com\r\n\r\n",
            SenderFault::Repeated("From"),
        ),
        (
            "Sender: a@x.com\r\nsender: b@x.com\r\n\r\n",
            SenderFault::Repeated("Sender"),
        ),
        (
            " \r\nFrom: alice@contoso.com\r\n\r\n",
            SenderFault::Malformed,
        ),
        (
            "Subject: x\n\r\nFrom: alice@contoso.com\r\n\r\n",
            SenderFault::Malformed,
        ),
        (
            "Subject: x\r\r\nFrom: a@x.com\r\n\r\n",
            SenderFault::Malformed,
        ),
        (
            "no colon here\r\nFrom: a@x.com\r\n\r\n",
            SenderFault::Malformed,
        ),
        (": empty name\r\n\r\n", SenderFault::Malformed),
        ("Fr\u{f6}m: a@x.com\r\n\r\n", SenderFault::Malformed),
        ("From: a@x.com\0\r\n\r\n", SenderFault::Malformed),
        ("From: \r\n\r\n", SenderFault::Unreadable("From")),
        (
            "From: undisclosed-recipients:;\r\n\r\n",
            SenderFault::Unreadable("From"),
        ),
        ("From: alice\r\n\r\n", SenderFault::Unreadable("From")),
        (
            "From: a@x.com b@y.com\r\n\r\n",
            SenderFault::Unreadable("From"),
        ),
        ("Sender: <>\r\n\r\n", SenderFault::Unreadable("Sender")),
        (
            "Sender: a@x.com, b@x.com\r\n\r\n",
            SenderFault::Unreadable("Sender"),
        ),
    ];
    for (header, fault) in cases {
        assert_eq!(senders(header), Err(fault), "{header:?}");
    }
}

#[test]
fn the_header_section_ends_only_at_crlf_crlf() {
    let msg = b"A: b\r\nC: d\r\n\r\nbody\r\n";
    assert_eq!(header_end(msg), Some(14));
    assert_eq!(header_end(b"\r\nbody"), Some(2));
    assert_eq!(header_end(b"A: b\n\nbody"), None);
    assert_eq!(header_end(b"A: b\r\n\nbody"), None);
    assert_eq!(header_end(b"Subject: x\r\n"), None);
}

#[test]
fn bare_line_ends_are_found_across_reads() {
    for (bytes, bare) in [
        (&b"a\r\nb\r\n"[..], false),
        (b"", false),
        (b"a\nb", true),
        (b"\n", true),
        (b"a\rb", true),
        (b"a\r", true),
        (b"a\r\r\n", true),
        (b"\r\n\r\n", false),
    ] {
        assert_eq!(bare_line_end(bytes), bare, "{bytes:?}");
        for piece in 1..=bytes.len().max(1) {
            let mut ends = LineEnds::default();
            bytes.chunks(piece).for_each(|c| ends.scan(c));
            assert_eq!(ends.finish(), bare, "{bytes:?} in pieces of {piece}");
        }
    }
}
