//! The notices the queue sends to a message's sender (RFC 3464 delivery status
//! notifications): "undelivered" when Microsoft refused a message for good or it stayed
//! queued past `queue.max_age_secs`, "delayed" once when it is still queued after
//! `queue.delay_warning_secs`. Pure: [`build`] turns a [`Report`] into a message.
//!
//! A notice is `multipart/report; report-type=delivery-status` (RFC 6522) with three
//! parts: a text for people (what happened, Microsoft's reply), the machine-readable
//! `message/delivery-status` (RFC 3464 §2: per-message fields, then one group per
//! recipient with its `Status` (RFC 3463) and `Diagnostic-Code`), and the original's
//! header section as `text/rfc822-headers` (never its body: mail is sensitive, and the
//! sender has it).
//!
//! It is sent as the mailbox itself (`From:` and `MAIL FROM`), not from the null sender
//! `<>` that RFC 3464 suggests: Exchange Online refuses a sender the mailbox is not
//! authorised for. `Auto-Submitted: auto-replied` (RFC 3834) keeps well-behaved
//! responders from answering it; the queue itself never answers a notice with another.

use crate::datetime::rfc5322;

/// The longest original header section a notice quotes; longer ones are cut at a line.
pub const MAX_QUOTED_HEADER: usize = 64 * 1024;
/// The longest reply text a notice repeats per recipient.
const MAX_REPLY: usize = 900;

/// What a notice says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// The message was not delivered to these recipients and never will be.
    Failure,
    /// The message is still queued; the relay keeps trying.
    Delay,
}

impl NoticeKind {
    fn subject(self) -> &'static str {
        match self {
            NoticeKind::Failure => "Undelivered Mail Returned to Sender",
            NoticeKind::Delay => "Delayed Mail (still being retried)",
        }
    }

    fn action(self) -> &'static str {
        match self {
            NoticeKind::Failure => "failed",
            NoticeKind::Delay => "delayed",
        }
    }

    /// A short word for Message-IDs and logs.
    pub fn name(self) -> &'static str {
        match self {
            NoticeKind::Failure => "failure",
            NoticeKind::Delay => "delay",
        }
    }
}

/// Everything a notice is built from.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    pub kind: NoticeKind,
    /// The relay's host name (`Reporting-MTA`, the Message-ID's right side).
    pub host: &'a str,
    /// The mailbox the message was to go out as: the notice's `From:`.
    pub mailbox: &'a str,
    /// The original's envelope sender: the notice's `To:`.
    pub sender: &'a str,
    /// The original's queue id (names the notice's Message-ID).
    pub queue_id: &'a str,
    /// When the original was accepted, and now (Unix seconds).
    pub arrival: u64,
    pub now: u64,
    /// Until when the relay keeps trying (a delay notice's `Will-Retry-Until`).
    pub retry_until: Option<u64>,
    /// The recipients this notice is about, each with the reply that concerns it.
    pub recipients: &'a [(String, String)],
    /// The original message (only its header section is quoted).
    pub original: &'a [u8],
}

/// The notice as a complete RFC 5322 message, CRLF.
pub fn build(report: &Report<'_>) -> Vec<u8> {
    let headers = quoted_header(report.original);
    let mut boundary = format!("=_m365-relay-{}-{}", report.queue_id, report.kind.name());
    while memchr::memmem::find(&headers, boundary.as_bytes()).is_some() {
        boundary.push('x');
    }
    let mut out = Vec::with_capacity(headers.len() + 2048);
    let mut push = |text: &str| out.extend_from_slice(text.as_bytes());
    push(&envelope_fields(report, &boundary));
    push(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Description: Notification\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    ));
    push(&human_text(report));
    push(&format!(
        "\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\
         Content-Description: Delivery report\r\n\r\n"
    ));
    push(&delivery_status(report));
    push(&format!(
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\
         Content-Description: Undelivered message headers\r\n\r\n"
    ));
    out.extend_from_slice(&headers);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// The notice's own header section.
fn envelope_fields(report: &Report<'_>, boundary: &str) -> String {
    let (mailbox, sender) = (one_line(report.mailbox), one_line(report.sender));
    format!(
        "From: Mail Delivery System <{mailbox}>\r\nTo: <{sender}>\r\n\
         Subject: {}\r\nDate: {}\r\nMessage-ID: <{}.{}@{}>\r\n\
         Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n \
         boundary=\"{boundary}\"\r\n\r\nThis is a MIME-encapsulated message.\r\n\r\n",
        report.kind.subject(),
        rfc5322(report.now),
        report.kind.name(),
        one_line(report.queue_id),
        one_line(report.host),
    )
}

/// The text part, for the person who sent the message.
fn human_text(report: &Report<'_>) -> String {
    let mut text = format!(
        "This is the mail relay at {}.\r\n\r\nYour message, accepted on {} to be sent as \
         {}, ",
        one_line(report.host),
        rfc5322(report.arrival),
        one_line(report.mailbox),
    );
    text.push_str(match report.kind {
        NoticeKind::Failure => {
            "could not be delivered to the recipients below. It will not be tried again.\r\n"
        }
        NoticeKind::Delay => {
            "has not been delivered yet to the recipients below. The relay keeps trying; \
             you do not need to send it again.\r\n"
        }
    });
    if let (NoticeKind::Delay, Some(until)) = (report.kind, report.retry_until) {
        text.push_str(&format!("It gives up after {}.\r\n", rfc5322(until)));
    }
    text.push_str("\r\nWhat Microsoft 365 answered:\r\n\r\n");
    for (recipient, reply) in report.recipients {
        text.push_str(&format!(
            "<{}>: {}\r\n",
            one_line(recipient),
            reply_text(reply)
        ));
    }
    text
}

/// The `message/delivery-status` body: per-message fields, then one group per recipient.
fn delivery_status(report: &Report<'_>) -> String {
    let mut body = format!(
        "Reporting-MTA: dns; {}\r\nArrival-Date: {}\r\n",
        one_line(report.host),
        rfc5322(report.arrival)
    );
    for (recipient, reply) in report.recipients {
        body.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: {}\r\nStatus: {}\r\n\
             Diagnostic-Code: smtp; {}\r\nLast-Attempt-Date: {}\r\n",
            one_line(recipient),
            report.kind.action(),
            status(report.kind, reply),
            reply_text(reply),
            rfc5322(report.now),
        ));
        if let (NoticeKind::Delay, Some(until)) = (report.kind, report.retry_until) {
            body.push_str(&format!("Will-Retry-Until: {}\r\n", rfc5322(until)));
        }
    }
    body
}

/// The `Status` of a recipient (RFC 3463): the enhanced code of `reply` when its class
/// fits what the notice says (5 for a failure, 4 for a delay); a failure whose last
/// reply was temporary ran out of time (5.4.7, delivery time expired).
pub fn status(kind: NoticeKind, reply: &str) -> String {
    let code = enhanced_code(reply);
    match (kind, code) {
        (NoticeKind::Failure, Some(code)) if code.starts_with('5') => code,
        (NoticeKind::Failure, _) => "5.4.7".to_owned(),
        (NoticeKind::Delay, Some(code)) if code.starts_with('4') => code,
        (NoticeKind::Delay, _) => "4.0.0".to_owned(),
    }
}

/// The enhanced status code after a reply's code (`550 5.1.1 ...` -> `5.1.1`).
fn enhanced_code(reply: &str) -> Option<String> {
    let after_code = reply.trim_start().get(4..)?.trim_start();
    let code = after_code.split_whitespace().next()?;
    let parts: Vec<&str> = code.split('.').collect();
    let fits = parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    fits.then(|| code.to_owned())
}

/// A reply, all its lines on one, without the continuation codes, bounded.
fn reply_text(reply: &str) -> String {
    let lines: Vec<&str> = reply
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let joined = lines
        .iter()
        .enumerate()
        .map(|(i, line)| match (i, line.get(..4)) {
            (0, _) => *line,
            (_, Some(code)) if code.as_bytes()[..3].iter().all(u8::is_ascii_digit) => &line[4..],
            _ => *line,
        })
        .collect::<Vec<_>>()
        .join(" ");
    one_line(&joined).chars().take(MAX_REPLY).collect()
}

/// `text` with control characters (CR, LF, ...) as spaces: safe in one header line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The original's header section (without the empty line that ends it), at most
/// [`MAX_QUOTED_HEADER`] bytes, cut after a whole line.
fn quoted_header(original: &[u8]) -> Vec<u8> {
    let end = memchr::memmem::find(original, b"\r\n\r\n").map_or(original.len(), |at| at + 2);
    let mut header = &original[..end];
    if header.len() > MAX_QUOTED_HEADER {
        let cut = &header[..MAX_QUOTED_HEADER];
        header = memchr::memmem::rfind(cut, b"\r\n").map_or(&cut[..0], |at| &cut[..at + 2]);
    }
    let mut quoted = header.to_vec();
    if !quoted.is_empty() && !quoted.ends_with(b"\r\n") {
        quoted.extend_from_slice(b"\r\n");
    }
    quoted
}

#[cfg(test)]
mod tests {
    use mail_parser::{MessageParser, MimeHeaders};

    use super::*;

    const ORIGINAL: &[u8] = b"From: App <app@contoso.com>\r\nTo: bob@fabrikam.com\r\n\
        Subject: Invoice 42\r\nMessage-ID: <42@app>\r\n\r\nSECRET BODY\r\n";

    fn report<'a>(kind: NoticeKind, recipients: &'a [(String, String)]) -> Report<'a> {
        Report {
            kind,
            host: "relay.contoso.com",
            mailbox: "app@contoso.com",
            sender: "app@contoso.com",
            queue_id: "0193a5c2d81f3c9e4b7a21d0",
            arrival: 1_796_644_800,
            now: 1_796_648_400,
            retry_until: Some(1_797_076_800),
            recipients,
            original: ORIGINAL,
        }
    }

    #[test]
    fn a_failure_notice_is_a_well_formed_multipart_report() {
        let recipients = vec![
            (
                "bob@fabrikam.com".to_owned(),
                "550 5.1.1 User unknown\r\n".to_owned(),
            ),
            (
                "eve@fabrikam.com".to_owned(),
                "550-5.7.1 Denied\r\n550 5.7.1 by policy\r\n".to_owned(),
            ),
        ];
        let bytes = build(&report(NoticeKind::Failure, &recipients));
        assert!(!crate::submission::header::bare_line_end(&bytes));
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains("SECRET BODY"), "{text}");
        let message = MessageParser::default().parse(&bytes).unwrap();
        assert_eq!(
            message.subject(),
            Some("Undelivered Mail Returned to Sender")
        );
        let from = message.from().unwrap().first().unwrap();
        assert_eq!(from.address(), Some("app@contoso.com"));
        let to = message.to().unwrap().first().unwrap();
        assert_eq!(to.address(), Some("app@contoso.com"));
        assert_eq!(
            message.message_id(),
            Some("failure.0193a5c2d81f3c9e4b7a21d0@relay.contoso.com")
        );
        let content_type = message.content_type().unwrap();
        assert_eq!(content_type.ctype(), "multipart");
        assert_eq!(content_type.subtype(), Some("report"));
        assert_eq!(
            content_type.attribute("report-type"),
            Some("delivery-status")
        );
        assert_eq!(message.parts.len(), 4, "the report and its three parts");
        let types: Vec<String> = message.parts[1..]
            .iter()
            .map(|p| {
                let ct = p.content_type().unwrap();
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default())
            })
            .collect();
        assert_eq!(
            types,
            [
                "text/plain",
                "message/delivery-status",
                "text/rfc822-headers"
            ]
        );
        assert!(text.contains("Auto-Submitted: auto-replied\r\n"));
        assert!(text.contains("Reporting-MTA: dns; relay.contoso.com\r\n"));
        assert!(text.contains("Arrival-Date: Mon, 07 Dec 2026 12:00:00 +0000\r\n"));
        assert!(
            text.contains(
                "Final-Recipient: rfc822; bob@fabrikam.com\r\nAction: failed\r\nStatus: 5.1.1\r\n\
             Diagnostic-Code: smtp; 550 5.1.1 User unknown\r\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "Status: 5.7.1\r\nDiagnostic-Code: smtp; 550-5.7.1 Denied 5.7.1 by policy\r\n"
            ),
            "{text}"
        );
        assert!(text.contains("Subject: Invoice 42\r\nMessage-ID: <42@app>\r\n"));
        assert!(!text.contains("Will-Retry-Until"));
    }

    #[test]
    fn a_delay_notice_says_delayed_and_until_when() {
        let recipients = vec![(
            "bob@fabrikam.com".to_owned(),
            "451 4.7.0 Throttled\r\n".to_owned(),
        )];
        let bytes = build(&report(NoticeKind::Delay, &recipients));
        let message = MessageParser::default().parse(&bytes).unwrap();
        assert_eq!(
            message.subject(),
            Some("Delayed Mail (still being retried)")
        );
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains("Action: delayed\r\nStatus: 4.7.0\r\n"),
            "{text}"
        );
        assert!(
            text.contains("Will-Retry-Until: Sat, 12 Dec 2026 12:00:00 +0000\r\n"),
            "{text}"
        );
        assert!(text.contains("you do not need to send it again"));
    }

    #[test]
    fn statuses_fit_the_action() {
        assert_eq!(status(NoticeKind::Failure, "550 5.1.1 unknown"), "5.1.1");
        assert_eq!(status(NoticeKind::Failure, "451 4.7.0 throttled"), "5.4.7");
        assert_eq!(status(NoticeKind::Failure, "554 no enhanced code"), "5.4.7");
        assert_eq!(status(NoticeKind::Delay, "451 4.4.0 away"), "4.4.0");
        assert_eq!(status(NoticeKind::Delay, "no reply"), "4.0.0");
        assert_eq!(status(NoticeKind::Failure, "550 5.1234.1 odd"), "5.4.7");
    }

    #[test]
    fn hostile_text_stays_on_its_line_and_headers_are_bounded() {
        let recipients = vec![(
            "bob@x.com\r\nBcc: eve@x.com".to_owned(),
            "550 5.1.1 a\rb".to_owned(),
        )];
        let mut original = b"Subject: x\r\n".repeat(10_000);
        original.extend_from_slice(b"\r\nbody");
        let mut r = report(NoticeKind::Failure, &recipients);
        r.original = &original;
        r.sender = "app@x.com\r\nBcc: eve@x.com";
        let bytes = build(&r);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains("\r\nBcc:"), "{text}");
        assert!(bytes.len() < MAX_QUOTED_HEADER + 4096);
        assert!(MessageParser::default().parse(&bytes).is_some());
        let unterminated = quoted_header(b"Subject: no body");
        assert_eq!(unterminated, b"Subject: no body\r\n");
    }
}
