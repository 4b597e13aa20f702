//! The short test message that `mailbox test --send-to` sends, over SMTP or Graph.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::oauth::flows;

/// The subject of the message that `--send-to` sends.
pub const TEST_SUBJECT: &str = "m365-relay test message";

/// The message `--send-to` sends: From the mailbox, a Subject, a Date and a Message-ID,
/// and a short plain-text body. CRLF line ends.
pub(super) fn test_message(from: &str, to: &str, now: SystemTime) -> Vec<u8> {
    let domain = from.rsplit_once('@').map_or("localhost", |(_, d)| d);
    let mut random = [0u8; 8];
    // Unpredictability is not needed here, only uniqueness; the clock covers a failure.
    let _ = aws_lc_rs::rand::fill(&mut random);
    let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let date = rfc5322_date(now);
    format!(
        "From: <{from}>\r\n\
         To: <{to}>\r\n\
         Subject: {TEST_SUBJECT}\r\n\
         Date: {date}\r\n\
         Message-ID: <m365-relay-test.{}.{random}@{domain}>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         Content-Transfer-Encoding: 7bit\r\n\
         \r\n\
         This is a test message sent by `m365-relay mailbox test` as {from}\r\n\
         at {date}, to check that the relay can send mail for it.\r\n\
         No reply is needed.\r\n",
        since_epoch.as_secs()
    )
    .into_bytes()
}

/// `Sat, 21 Nov 2026 10:00:00 +0000` (RFC 5322 §3.3), in UTC.
fn rfc5322_date(time: SystemTime) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) / 86_400;
    // 1970-01-01 was a Thursday.
    let weekday = WEEKDAYS[(days % 7) as usize];
    // `YYYY-MM-DD hh:mm:ss UTC`, from the one calendar conversion in the crate.
    let utc = flows::utc(time);
    let mut parts = utc.split([' ', '-']);
    let (year, month, day, clock) = (
        parts.next().unwrap_or("1970"),
        parts
            .next()
            .and_then(|m| m.parse::<usize>().ok())
            .unwrap_or(1),
        parts.next().unwrap_or("01"),
        parts.next().unwrap_or("00:00:00"),
    );
    let month = MONTHS[month.clamp(1, 12) - 1];
    format!("{weekday}, {day} {month} {year} {clock} +0000")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const HELP: &str = "helpdesk@contoso.com";

    #[test]
    fn the_test_message() {
        let at = UNIX_EPOCH + Duration::from_secs(1_795_255_200); // 2026-11-21 10:00:00 UTC
        assert_eq!(rfc5322_date(at), "Sat, 21 Nov 2026 10:00:00 +0000");
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        let message = String::from_utf8(test_message(HELP, "bob@fabrikam.com", at)).unwrap();
        let (head, body) = message.split_once("\r\n\r\n").unwrap();
        let headers: Vec<&str> = head.split("\r\n").collect();
        assert_eq!(headers[0], "From: <helpdesk@contoso.com>");
        assert_eq!(headers[1], "To: <bob@fabrikam.com>");
        assert_eq!(headers[2], "Subject: m365-relay test message");
        assert_eq!(headers[3], "Date: Sat, 21 Nov 2026 10:00:00 +0000");
        assert!(
            headers[4].starts_with("Message-ID: <m365-relay-test.1795255200.")
                && headers[4].ends_with("@contoso.com>"),
            "{}",
            headers[4]
        );
        assert!(body.ends_with("\r\n") && !body.replace("\r\n", "").contains('\n'));
        assert!(message.is_ascii());
        assert_ne!(
            test_message(HELP, "bob@fabrikam.com", at),
            test_message(HELP, "bob@fabrikam.com", at),
            "each message has its own Message-ID"
        );
    }
}
