//! What the administrator types, pastes or names on the command line, read with bounds and
//! checked: passwords, refresh tokens, a pasted address, tenants, GUIDs and dates.

use std::io::{BufRead, Read};

use anyhow::{Context, bail};
use zeroize::Zeroizing;

use crate::mailbox::is_host_name;
use crate::secret::{Password, RefreshToken};

/// Longest local password read from standard input.
const MAX_PASSWORD_LEN: usize = 1024;

/// Longest refresh token read from standard input (Entra's are about 1-2 KB).
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Longest address read back from the browser for `authorize --paste`.
const MAX_PASTED_LEN: usize = 16 * 1024;

/// One line of input: the address the browser ended on.
pub(super) fn read_pasted(input: &mut dyn BufRead) -> anyhow::Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    input
        .take(MAX_PASTED_LEN as u64 + 1)
        .read_line(&mut line)
        .context("reading the address from standard input")?;
    if line.len() > MAX_PASTED_LEN {
        bail!("the pasted address is longer than {MAX_PASTED_LEN} bytes");
    }
    if line.trim().is_empty() {
        bail!("nothing was pasted; run the command again");
    }
    Ok(line)
}

/// A `YYYY-MM-DD` date as seconds since the Unix epoch, at 00:00 UTC of that day.
pub(super) fn parse_date(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a date in the form YYYY-MM-DD");
    let mut parts = text.splitn(3, '-');
    let mut next = |digits: usize| -> Result<i64, String> {
        let part = parts.next().filter(|p| p.len() == digits).ok_or_else(bad)?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    let (year, month, day) = (next(4)?, next(2)?, next(2)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if year < 1970 || !(1..=days_in_month).contains(&day) {
        return Err(bad());
    }
    let days = crate::datetime::days_from_civil(year, month, day);
    u64::try_from(days * 86_400).map_err(|_| bad())
}

/// One line of input as a password, without its line ending.
pub(super) fn read_password(input: &mut dyn BufRead) -> anyhow::Result<Password> {
    let mut line = Zeroizing::new(String::with_capacity(MAX_PASSWORD_LEN + 2));
    input
        .take(MAX_PASSWORD_LEN as u64 + 2)
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    if line.len() > MAX_PASSWORD_LEN + 1 || (line.len() > MAX_PASSWORD_LEN && !line.ends_with('\n'))
    {
        bail!("the password is longer than {MAX_PASSWORD_LEN} bytes");
    }
    let password = line.trim_end_matches('\n').trim_end_matches('\r');
    if password.is_empty() {
        bail!("the password read from standard input is empty");
    }
    Ok(Password::new(password))
}

/// All of the input as a refresh token, trimmed.
pub(super) fn read_token(input: &mut dyn BufRead) -> anyhow::Result<RefreshToken> {
    let mut text = Zeroizing::new(String::new());
    input
        .take(MAX_TOKEN_LEN as u64 + 1)
        .read_to_string(&mut text)
        .context("reading the refresh token from standard input")?;
    let token = text.trim();
    if text.len() > MAX_TOKEN_LEN {
        bail!("the refresh token is longer than {MAX_TOKEN_LEN} bytes");
    }
    if token.is_empty() {
        bail!("no refresh token on standard input");
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("the refresh token contains white space; paste exactly one token");
    }
    Ok(RefreshToken::new(token))
}

/// A tenant: a GUID, `organizations`, `common`, or a domain name; lower-cased.
pub(super) fn validate_tenant(tenant: &str) -> anyhow::Result<String> {
    let t = tenant.to_ascii_lowercase();
    if t == "organizations" || t == "common" || validate_guid(&t).is_ok() {
        return Ok(t);
    }
    if !is_host_name(&t) {
        bail!("`{tenant}` is not a tenant GUID, a domain name, `organizations` or `common`");
    }
    Ok(t)
}

/// A GUID in its 8-4-4-4-12 hex form; lower-cased.
pub(super) fn validate_guid(s: &str) -> anyhow::Result<String> {
    let ok = s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if !ok {
        bail!("`{s}` is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
    }
    Ok(s.to_ascii_lowercase())
}
