//! The PROXY protocol header parser (`protocol/proxy_header.rs`), the first thing a
//! stranger's bytes meet on a listener that takes headers from a load balancer. The input
//! is the connection's first bytes. A finding is a panic, or a decision that breaks what
//! the relay relies on: a header longer than its bound or than the input, one that does not
//! end where its version says (v1 at its CRLF, v2 at 16 bytes plus its length), a decision
//! that changes with the bytes behind the header, a shorter start that is not
//! `Incomplete`, an `Invalid` that more bytes would turn into something else, or `Incomplete`
//! on a full buffer (the reader would wait for bytes it will never look at).
#![no_main]

use libfuzzer_sys::fuzz_target;
use m365_relay::protocol::proxy_header::{
    MAX_HEADER, MAX_V1, MAX_V2, Parsed, Sniffed, V1_PREFIX, V2_SIGNATURE, Version, parse, sniff,
};

fuzz_target!(|bytes: &[u8]| {
    let bytes = &bytes[..bytes.len().min(MAX_HEADER + 16)];
    match parse(bytes) {
        Parsed::Header(header) => {
            let len = header.len;
            assert!(len <= bytes.len() && len <= MAX_HEADER, "{len} of {}", bytes.len());
            let own = &bytes[..len];
            match header.version {
                Version::V1 => {
                    assert!(len <= MAX_V1 && own.starts_with(V1_PREFIX) && own.ends_with(b"\r\n"));
                    assert_eq!(own.iter().filter(|&&b| b == b'\r').count(), 1, "{own:?}");
                }
                Version::V2 => {
                    assert!(len <= MAX_V2 && own.starts_with(V2_SIGNATURE));
                    assert_eq!(len, 16 + usize::from(u16::from_be_bytes([own[14], own[15]])));
                }
            }
            assert_eq!(parse(own), Parsed::Header(header), "what follows changed it");
            assert_eq!(parse(&own[..len - 1]), Parsed::Incomplete);
            assert_eq!(sniff(own), Sniffed::Header);
        }
        Parsed::Incomplete => {
            assert!(bytes.len() < MAX_HEADER);
            assert_ne!(sniff(bytes), Sniffed::Other);
        }
        Parsed::Invalid(_) => {
            let mut more = bytes.to_vec();
            more.extend_from_slice(b"\r\n");
            assert!(matches!(parse(&more), Parsed::Invalid(_)), "{bytes:?}");
        }
    }
});
