//! `log --since T`: a moment as RFC 3339 (`2026-12-07T10:00:00Z`, `2026-12-07T11:00:00+01:00`,
//! fractions of a second allowed) or as a time back from now (`90s`, `10m`, `2h`, `1d`), in
//! milliseconds since the Unix epoch.

/// `text` as milliseconds since the epoch, relative times counted back from `now_ms`.
pub fn parse(text: &str, now_ms: u64) -> Result<u64, String> {
    let text = text.trim();
    relative(text)
        .map(|back| now_ms.saturating_sub(back))
        .or_else(|| rfc3339(text))
        .ok_or_else(|| {
            format!(
                "not a time: {}; give RFC 3339 (2026-12-07T10:00:00Z) or a time back \
                 from now (90s, 10m, 2h, 1d)",
                crate::logfield::Field(text)
            )
        })
}

/// `10m` as milliseconds.
fn relative(text: &str) -> Option<u64> {
    let unit = text.chars().last()?;
    let number: u64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return None,
    };
    number.checked_mul(secs)?.checked_mul(1000)
}

/// Digits of `text[range]` as a number (digits only).
fn digits(text: &str, range: std::ops::Range<usize>) -> Option<i64> {
    let part = text.get(range)?;
    part.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| part.parse().ok())?
}

/// `YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)` as milliseconds since the epoch.
fn rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if b.len() < 20 || separators.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (year, month, day) = (
        digits(text, 0..4)?,
        digits(text, 5..7)?,
        digits(text, 8..10)?,
    );
    let (hour, minute, second) = (
        digits(text, 11..13)?,
        digits(text, 14..16)?,
        digits(text, 17..19)?,
    );
    let valid = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        && second < 61;
    if !valid {
        return None;
    }
    let mut rest = &text[19..];
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let end = fraction
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        if end == 0 {
            return None;
        }
        let first3: String = fraction[..end]
            .chars()
            .chain("000".chars())
            .take(3)
            .collect();
        millis = first3.parse::<i64>().ok()?;
        rest = &fraction[end..];
    }
    let offset = offset_secs(rest)?;
    let days = crate::datetime::days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(secs * 1000 + millis).ok()
}

/// `Z` or `±HH:MM` as seconds east of UTC.
fn offset_secs(text: &str) -> Option<i64> {
    if text == "Z" || text == "z" {
        return Some(0);
    }
    if text.len() != 6 || text.as_bytes()[3] != b':' {
        return None;
    }
    let sign = match text.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = (digits(text, 1..3)?, digits(text, 4..6)?);
    (h <= 23 && m <= 59).then_some(sign * (h * 3600 + m * 60))
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_796_644_800_123;

    #[test]
    fn rfc3339_round_trips_with_the_log_times() {
        for at in [0, 951_782_400_000, NOW, 4_102_444_799_999] {
            let text = crate::datetime::rfc3339_ms(at);
            assert_eq!(parse(&text, NOW), Ok(at), "{text}");
        }
        assert_eq!(parse("2026-12-07T12:00:00Z", 0), Ok(1_796_644_800_000));
        assert_eq!(parse("2026-12-07T13:30:00+01:30", 0), Ok(1_796_644_800_000));
        assert_eq!(
            parse("2026-12-07T10:00:00.5-02:00", 0),
            Ok(1_796_644_800_500)
        );
    }

    #[test]
    fn relative_times_count_back_from_now() {
        assert_eq!(parse("90s", NOW), Ok(NOW - 90_000));
        assert_eq!(parse("10m", NOW), Ok(NOW - 600_000));
        assert_eq!(parse("2h", NOW), Ok(NOW - 7_200_000));
        assert_eq!(parse("1d", NOW), Ok(NOW - 86_400_000));
        assert_eq!(parse("100000000d", NOW), Ok(0));
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "m",
            "-5m",
            "10w",
            "2026-12-07",
            "2026-13-07T10:00:00Z",
            "2026-02-30T10:00:00Z",
            "2026-12-07T10:00:00",
            "2026-12-07T10:00:00.Z",
            "2026-12-07T10:00:00+1:00",
            "2026-12-07T10:00:0xZ",
            "2026-12-07T10:00:00é",
            "99999999999999999999d",
        ] {
            assert!(parse(bad, NOW).is_err(), "{bad}");
        }
    }
}
