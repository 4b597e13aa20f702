//! How the queue and the delivery log read on a terminal: sizes and ages in short words,
//! envelopes as `<sender> -> recipients`, and text from outside (addresses, Microsoft's
//! replies) with its control characters escaped so that it cannot move the cursor or forge
//! a line.

use crate::logfield::Field;

/// `812 B`, `12.3 KB`, `4.0 MB`, `1.1 GB` (powers of 1024).
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KB", "MB", "GB", "TB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `45s`, `12m`, `3h05m`, `2d04h`: a duration in its two largest units.
pub fn age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// Text from a client or from Microsoft, safe for a terminal line.
pub fn clean(text: &str) -> String {
    Field(text).to_string()
}

/// The envelope sender as SMTP writes it: `<>` for the null sender.
pub fn sender(sender: &str) -> String {
    format!("<{}>", clean(sender))
}

/// `a@x.com, b@y.com` or, when the addresses are not known, `3 recipients`.
pub fn recipients(addresses: &[String], count: usize) -> String {
    if addresses.is_empty() {
        return match count {
            1 => "1 recipient".to_owned(),
            n => format!("{n} recipients"),
        };
    }
    let shown: Vec<String> = addresses.iter().map(|a| clean(a)).collect();
    shown.join(", ")
}

/// Lines of cells, each column as wide as its widest cell; the last column unpadded.
pub fn columns(rows: &[Vec<String>]) -> Vec<String> {
    let width = |column: usize| {
        rows.iter()
            .filter_map(|row| row.get(column))
            .map(|cell| cell.chars().count())
            .max()
            .unwrap_or(0)
    };
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns).map(width).collect();
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
                }
            }
            line.trim_end().to_owned()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_short() {
        assert_eq!(size(812), "812 B");
        assert_eq!(size(12_595), "12.3 KB");
        assert_eq!(size(4 * 1024 * 1024), "4.0 MB");
        assert_eq!(age(45), "45s");
        assert_eq!(age(12 * 60 + 5), "12m");
        assert_eq!(age(3 * 3600 + 5 * 60), "3h05m");
        assert_eq!(age(2 * 86_400 + 4 * 3600 + 1), "2d04h");
    }

    #[test]
    fn outside_text_cannot_forge_a_line() {
        assert_eq!(sender(""), "<>");
        assert_eq!(
            clean("550 no\r\nfake line\x1b[2J"),
            "550 no\\r\\nfake line\\u{1b}[2J"
        );
        assert_eq!(recipients(&[], 3), "3 recipients");
        assert_eq!(
            recipients(&["a@x.com".into(), "b\n@y.com".into()], 2),
            "a@x.com, b\\n@y.com"
        );
    }

    #[test]
    fn columns_line_up() {
        let rows = vec![
            vec!["ID".into(), "STATE".into(), "REPLY".into()],
            vec!["0193".into(), "queued".into(), "451 4.7.0 later".into()],
        ];
        assert_eq!(
            columns(&rows),
            ["ID    STATE   REPLY", "0193  queued  451 4.7.0 later"]
        );
    }
}
