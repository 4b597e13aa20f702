//! Time in words for people and in numbers for files: the `2026-11-21 10:00:00 UTC`
//! dates that the command line, sign-ins and certificates print, durations and countdowns
//! in words, and Unix seconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2026-11-21 10:00:00 UTC`.
pub fn utc(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's `civil_from_days`).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 of a civil date, negative before it (H. Hinnant's
/// `days_from_civil`); `month` 1..=12.
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-21T10:00:00.123Z` (RFC 3339, UTC, milliseconds) for `at_ms` milliseconds
/// since the Unix epoch.
pub fn rfc3339_ms(at_ms: u64) -> String {
    let day_and_time = utc(UNIX_EPOCH + Duration::from_secs(at_ms / 1000));
    let (date, time) = day_and_time
        .trim_end_matches(" UTC")
        .split_once(' ')
        .unwrap_or(("1970-01-01", "00:00:00"));
    format!("{date}T{time}.{:03}Z", at_ms % 1000)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `90 seconds`, `1 minute`, `15 minutes`.
pub fn duration_words(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..=119 if !secs.is_multiple_of(60) || secs == 0 => format!("{secs} seconds"),
        60 => "1 minute".to_owned(),
        _ => format!("{} minutes", secs.div_ceil(60)),
    }
}

/// `14:59` (minutes and seconds), for a countdown.
pub fn countdown(left: Duration) -> String {
    let secs = left.as_secs();
    format!("{}:{:02}", secs / 60, secs % 60)
}

/// Seconds since the Unix epoch (0 for a time before it).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `Mon, 07 Dec 2026 06:37:29 +0000`: an RFC 5322 §3.3 date (a message's `Date:`), UTC,
/// for `secs` seconds since the Unix epoch.
pub fn rfc5322(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let stamp = utc(UNIX_EPOCH + Duration::from_secs(secs));
    let field = |from: usize, to: usize| stamp.get(from..to).unwrap_or("0");
    let month: usize = field(5, 7).parse().unwrap_or(1);
    format!(
        "{}, {} {} {} {} +0000",
        DAYS[(secs / 86_400 % 7) as usize],
        field(8, 10),
        MONTHS[month.clamp(1, 12) - 1],
        field(0, 4),
        field(11, 19)
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc5322_dates() {
        assert_eq!(super::rfc5322(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            super::rfc5322(1_796_644_800),
            "Mon, 07 Dec 2026 12:00:00 +0000"
        );
    }

    #[test]
    fn rfc3339_with_milliseconds() {
        assert_eq!(super::rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339_ms(1_796_644_800_123),
            "2026-12-07T12:00:00.123Z"
        );
    }

    use super::*;

    #[test]
    fn words_for_the_admin() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14 22:13:20 UTC"
        );
        assert_eq!(
            utc(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29 00:00:00 UTC"
        );
        for (secs, words) in [
            (0, "0 seconds"),
            (45, "45 seconds"),
            (60, "1 minute"),
            (90, "90 seconds"),
            (120, "2 minutes"),
            (900, "15 minutes"),
            (3598, "60 minutes"),
        ] {
            assert_eq!(duration_words(Duration::from_secs(secs)), words);
        }
        assert_eq!(countdown(Duration::from_secs(899)), "14:59");
        assert_eq!(countdown(Duration::from_secs(5)), "0:05");
    }

    #[test]
    fn unix_seconds() {
        assert_eq!(unix(UNIX_EPOCH + Duration::from_secs(99)), 99);
        assert_eq!(unix(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
