//! How `mailbox test` prints: one aligned line per step, made printable, with the hint
//! under a known failure, and the count of failed steps.

use std::io::Write;
use std::time::Duration;

use tokio::time::Instant;

use super::failure::{Context, Outcome, Step};
use super::hints::hint;

/// Prints the step lines and counts the failures.
pub(super) struct Report<'a, 'o> {
    pub(super) out: &'o mut dyn Write,
    pub(super) cx: Context<'a>,
    pub(super) failed: usize,
}

impl Report<'_, '_> {
    pub(super) fn step(
        &mut self,
        step: Step,
        started: Instant,
        outcome: Outcome,
    ) -> std::io::Result<()> {
        let took = started.elapsed();
        match outcome {
            Ok(detail) => writeln!(self.out, "{}", line(step, "ok", Some(took), &detail)),
            Err(failure) => {
                self.failed += 1;
                let detail = failure.to_string();
                writeln!(self.out, "{}", line(step, "FAILED", Some(took), &detail))?;
                match hint(step, &failure, &self.cx) {
                    Some(hint) => writeln!(self.out, "{:22}hint: {}", "", printable(&hint)),
                    None => Ok(()),
                }
            }
        }
    }

    pub(super) fn skipped(&mut self, step: Step, why: &str) -> std::io::Result<()> {
        writeln!(self.out, "{}", line(step, "skipped", None, why))
    }
}

/// `imap  ok        0.05s  detail`: the columns line up; server text is made printable.
pub(super) fn line(step: Step, outcome: &str, took: Option<Duration>, detail: &str) -> String {
    let took = took.map_or(String::new(), |t| format!("{:.2}s", t.as_secs_f64()));
    format!(
        "{:<6}{:<8}{:>6}  {}",
        step.name(),
        outcome,
        took,
        printable(detail)
    )
}

/// `text` on one line, without control characters (a server's reply is not trusted to be
/// harmless on a terminal).
fn printable(text: &str) -> String {
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `1 message`, `3 messages`.
pub(super) fn count_words(n: u64, what: &str) -> String {
    match n {
        1 => format!("1 {what}"),
        n => format!("{n} {what}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_line_up_and_hold_no_control_characters() {
        let ok = line(
            Step::Imap,
            "ok",
            Some(Duration::from_millis(52)),
            "a\r\n\x1b[31mb",
        );
        assert_eq!(ok, "imap  ok       0.05s  a [31mb");
        let failed = line(Step::Token, "FAILED", Some(Duration::from_secs(12)), "x");
        assert_eq!(failed, "token FAILED  12.00s  x");
        let skipped = line(Step::Send, "skipped", None, "no SMTP login");
        assert_eq!(skipped, "send  skipped         no SMTP login");
        assert_eq!(count_words(1, "message"), "1 message");
        assert_eq!(count_words(0, "byte"), "0 bytes");
    }
}
