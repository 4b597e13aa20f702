//! Address rules: what a mailbox address and a host name may look like.

use super::error::RegistryError;

/// Longest mailbox address, in octets (RFC 5321 §4.5.3.1.3 path limit minus the brackets).
pub const MAX_ADDRESS_LEN: usize = 254;

/// Longest local part (RFC 5321 §4.5.3.1.1).
const MAX_LOCAL_LEN: usize = 64;

/// Longest host name (RFC 1035 §2.3.4, without the trailing dot).
const MAX_HOST_LEN: usize = 253;

/// Longest domain label (RFC 1035 §2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// Validates a mailbox address and lower-cases it: `local@domain`, ASCII, at most 254
/// octets, an unquoted local part of letters, digits and ``.!#$%&'*+-=?^_{|}~`` (no
/// leading, trailing or double dot), a domain of at least two letter-digit-hyphen labels.
/// The result is also a safe file name (no `/`, no leading `.`).
pub fn normalize_address(s: &str) -> Result<String, RegistryError> {
    let bad = |why| RegistryError::InvalidAddress {
        address: s.chars().filter(|c| !c.is_control()).take(300).collect(),
        why,
    };
    if !s.is_ascii() {
        return Err(bad("only ASCII addresses are supported"));
    }
    if s.len() > MAX_ADDRESS_LEN {
        return Err(bad("longer than 254 characters"));
    }
    let (local, domain) = s.split_once('@').ok_or_else(|| bad("no `@`"))?;
    if local.is_empty() || local.len() > MAX_LOCAL_LEN {
        return Err(bad("the part before `@` must be 1 to 64 characters"));
    }
    let local_ok = |c: char| c.is_ascii_alphanumeric() || ".!#$%&'*+-=?^_{|}~".contains(c);
    if !local.chars().all(local_ok) {
        return Err(bad(
            "the part before `@` has a character that is not allowed",
        ));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(bad("misplaced `.` before `@`"));
    }
    if !is_host_name(domain) {
        return Err(bad("the domain is not a host name with a `.`"));
    }
    Ok(s.to_ascii_lowercase())
}

/// Whether `s` is a DNS host name of at least two labels: letters, digits and inner
/// hyphens, each label 1 to 63 characters, 253 in all.
pub fn is_host_name(s: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= MAX_LABEL_LEN
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    s.len() <= MAX_HOST_LEN && s.contains('.') && s.split('.').all(label_ok)
}
