//! The reverse and forward paths of `MAIL FROM` and `RCPT TO` (RFC 5321 §4.1.2, with
//! RFC 6531's UTF-8), read strictly: anything outside the grammar is `None`, never a best
//! guess. The atoms are RFC 5322's, which the header readings share.

/// The mailbox of an SMTP path (`<a@b>`, `<@relay:a@b>`, or `a@b` without brackets, as
/// old clients send it); `Some("")` for the null path `<>` when `null_ok`.
pub fn smtp_path(path: &str, null_ok: bool) -> Option<&str> {
    let inner = match path.strip_prefix('<') {
        Some(rest) => rest.strip_suffix('>')?,
        None => path,
    };
    if inner.is_empty() {
        return null_ok.then_some("");
    }
    // A source route (`@a,@b:`) is read and ignored (RFC 5321 §4.1.2, §C).
    let mailbox = match inner.strip_prefix('@') {
        Some(route) => {
            let (hops, mailbox) = route.split_once(':')?;
            if !hops.split(",@").all(|hop| smtp_domain(hop.as_bytes())) {
                return None;
            }
            mailbox
        }
        None => inner,
    };
    smtp_mailbox(mailbox).then_some(mailbox)
}

/// `Local-part "@" ( Domain / address-literal )`.
fn smtp_mailbox(mailbox: &str) -> bool {
    let Some((local, domain)) = mailbox.rsplit_once('@') else {
        return false;
    };
    let local_ok = match local.strip_prefix('"') {
        Some(quoted) => quoted_smtp(quoted.as_bytes()),
        None => dot_string(local.as_bytes()),
    };
    let domain_ok = match domain.strip_prefix('[') {
        Some(literal) => literal.strip_suffix(']').is_some_and(address_literal),
        None => smtp_domain(domain.as_bytes()),
    };
    local_ok && domain_ok
}

/// The rest of a `Quoted-string` after its opening quote: `qtextSMTP` and `quoted-pairSMTP`
/// up to the closing quote, which ends the string.
fn quoted_smtp(rest: &[u8]) -> bool {
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            b'"' => return i + 1 == rest.len(),
            b'\\' if rest.get(i + 1).is_some_and(|b| (32..=126).contains(b)) => i += 2,
            b if b == b' ' || b == b'!' || (35..=91).contains(&b) || (93..=126).contains(&b) => {
                i += 1
            }
            b if b >= 0x80 => i += 1,
            _ => return false,
        }
    }
    false
}

/// `Dot-string`: atoms separated by single dots.
pub fn dot_string(s: &[u8]) -> bool {
    !s.is_empty()
        && s.split(|&b| b == b'.')
            .all(|atom| !atom.is_empty() && atom.iter().all(|&b| atext(b)))
}

/// `Domain`: labels of letters, digits and inner hyphens (or UTF-8, RFC 6531).
fn smtp_domain(s: &[u8]) -> bool {
    !s.is_empty()
        && s.split(|&b| b == b'.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.first() != Some(&b'-')
                && label.last() != Some(&b'-')
                && label
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80)
        })
}

/// An IPv4 or `IPv6:` address literal's inside.
fn address_literal(inner: &str) -> bool {
    match inner.get(..5) {
        Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
            inner[5..].parse::<std::net::Ipv6Addr>().is_ok()
        }
        _ => inner.parse::<std::net::Ipv4Addr>().is_ok(),
    }
}

/// `atext` (RFC 5322 §3.2.3), with UTF-8 octets (RFC 6532 §3.2).
pub fn atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_paths() {
        assert_eq!(smtp_path("<a@b.c>", false), Some("a@b.c"));
        assert_eq!(smtp_path("a@b.c", false), Some("a@b.c"));
        assert_eq!(smtp_path("<@r1.x,@r2.y:a@b.c>", false), Some("a@b.c"));
        assert_eq!(smtp_path("<\"a b\"@c.d>", false), Some("\"a b\"@c.d"));
        assert_eq!(smtp_path("<a@[127.0.0.1]>", false), Some("a@[127.0.0.1]"));
        assert_eq!(smtp_path("<a@[IPv6:::1]>", false), Some("a@[IPv6:::1]"));
        assert_eq!(smtp_path("<jörg@bücher.de>", false), Some("jörg@bücher.de"));
        assert_eq!(smtp_path("<>", true), Some(""));
        for bad in [
            "<>",
            "<a@x.com,b@y.com>",
            "<a@b.c",
            "<a>",
            "<@a.b>",
            "<a@-b.c>",
            "<a..b@c.d>",
            "<a@b..c>",
            "<a@[1.2.3]>",
            "<\"a@b.c>",
            "<a b@c.d>",
            "<@r1,a@b.c>",
            "<a@b.c>>",
        ] {
            assert_eq!(smtp_path(bad, false), None, "{bad}");
        }
    }
}
