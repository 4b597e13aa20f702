//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, version 1 in text and version 2 in
//! binary): a load balancer in front of the relay opens each connection with a header that
//! names the client it accepted, so that the relay sees the real client instead of the
//! balancer. It is the first thing a connection's bytes meet, before any TLS.
//!
//! [`parse`] is pure: the `ppp` crate reads the wire format, this file decides what the
//! relay makes of it, under a hard bound (v1 at most 107 bytes, v2 at most
//! [`MAX_V2`]). [`read`] takes the header off a fresh TCP connection without consuming a
//! byte past it ([`TcpStream::peek`], then exactly the header), so whatever the client sent
//! behind it (a TLS ClientHello, a pipelined command) stays for the session. [`sniff`] and
//! [`starts_with_header`] tell whether a connection that may not send a header starts with
//! one anyway.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::PartialResult;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::error::Error;

/// The longest v1 header, its line end included (the specification's bound).
pub const MAX_V1: usize = 107;
/// The longest v2 header accepted: the 16 fixed bytes and 520 of addresses and TLVs (the
/// specification's 536-byte receive buffer). A longer one is refused.
pub const MAX_V2: usize = 536;
/// How many bytes [`read`] looks at, at most.
pub const MAX_HEADER: usize = MAX_V2;
/// How a v1 header starts.
pub const V1_PREFIX: &[u8] = b"PROXY ";
/// How a v2 header starts.
pub const V2_SIGNATURE: &[u8] = ppp::v2::PROTOCOL_PREFIX;
/// The v2 fixed part: the signature, version and command, family and protocol, length.
const V2_FIXED: usize = 16;

/// How long [`starts_with_header`] waits on a first few bytes that could still become a
/// header ("PRO", "\r\n") before it lets the session have them.
const SNIFF_PATIENCE: Duration = Duration::from_secs(1);
/// The first pause between two looks at a connection whose bytes are not enough yet
/// (a peek returns at once while any byte is queued); it doubles up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const LONGEST_PAUSE: Duration = Duration::from_millis(200);

/// The PROXY protocol version of a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A complete header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its length in bytes: what [`read`] takes off the connection.
    pub len: usize,
    pub version: Version,
    /// The client the balancer accepted. `None` when the header names none: a v2 `LOCAL`
    /// (the balancer's own health check), v1 `UNKNOWN`, a v2 `UNSPEC` or `UNIX` family.
    /// The connection's own peer address stands then.
    pub client: Option<SocketAddr>,
}

/// What the first bytes of a connection are, read as a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes yet: more may make a header.
    Incomplete,
    Header(Header),
    /// Not a valid header, whatever follows (why, for the log).
    Invalid(&'static str),
}

/// Reads `bytes`, the first bytes of a connection, as a PROXY header (either version).
pub fn parse(bytes: &[u8]) -> Parsed {
    if is_start_of(bytes, V2_SIGNATURE) {
        parse_v2(bytes)
    } else if is_start_of(bytes, V1_PREFIX) {
        parse_v1(bytes)
    } else {
        Parsed::Invalid("not a PROXY protocol header")
    }
}

/// Whether `bytes` start with `prefix`, or are the start of it.
fn is_start_of(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes.starts_with(prefix) || prefix.starts_with(bytes)
}

fn parse_v2(bytes: &[u8]) -> Parsed {
    if let Some(length) = bytes.get(V2_FIXED - 2..V2_FIXED)
        && V2_FIXED + usize::from(u16::from_be_bytes([length[0], length[1]])) > MAX_V2
    {
        return Parsed::Invalid("v2 header longer than 536 bytes");
    }
    let header = match ppp::v2::Header::try_from(bytes) {
        Ok(header) => header,
        Err(e) if e.is_incomplete() => return Parsed::Incomplete,
        Err(_) => return Parsed::Invalid("malformed v2 header"),
    };
    let client = match (header.command, header.protocol, header.addresses) {
        (ppp::v2::Command::Local, ..) => None,
        (_, ppp::v2::Protocol::Datagram, _) => {
            return Parsed::Invalid("v2 header for a datagram connection");
        }
        (_, _, ppp::v2::Addresses::IPv4(a)) => Some(client(a.source_address.into(), a.source_port)),
        (_, _, ppp::v2::Addresses::IPv6(a)) => Some(client(a.source_address.into(), a.source_port)),
        (_, _, ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_)) => None,
    };
    Parsed::Header(Header {
        len: header.len(),
        version: Version::V2,
        client,
    })
}

/// A v1 header is one line of ASCII words, addresses and ports. `ppp` reads the line once
/// it is complete: it takes some cut-off lines ("... 587 " ) for wrong ones.
fn parse_v1(bytes: &[u8]) -> Parsed {
    let window = &bytes[..bytes.len().min(MAX_V1)];
    let end = window.iter().position(|&b| b == b'\r');
    let text = &window[..end.unwrap_or(window.len())];
    if !text
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b".: ".contains(&b))
    {
        return Parsed::Invalid("malformed v1 header");
    }
    let line = match end {
        Some(cr) if cr + 2 > MAX_V1 => None,
        Some(cr) => match bytes.get(..cr + 2) {
            Some(line) => Some(line),
            None => return Parsed::Incomplete,
        },
        None if window.len() < MAX_V1 => return Parsed::Incomplete,
        None => None,
    };
    let Some(line) = line else {
        return Parsed::Invalid("v1 header longer than 107 bytes");
    };
    let Ok(header) = ppp::v1::Header::try_from(line) else {
        return Parsed::Invalid("malformed v1 header");
    };
    let client = match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(client(a.source_address.into(), a.source_port)),
        ppp::v1::Addresses::Tcp6(a) => Some(client(a.source_address.into(), a.source_port)),
        ppp::v1::Addresses::Unknown => None,
    };
    Parsed::Header(Header {
        len: line.len(),
        version: Version::V1,
        client,
    })
}

/// The client's address; an IPv4 client that a balancer names in IPv6 form
/// (`::ffff:192.0.2.1`) is the IPv4 address, so that networks and loopback match it.
fn client(ip: std::net::IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.to_canonical(), port)
}

/// What the first bytes of a connection that may not send a header look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// The start of a PROXY header (`PROXY ` or the v2 signature).
    Header,
    /// Anything else.
    Other,
    /// Too few bytes to tell ("PRO", "\r\n", nothing).
    Undecided,
}

/// Whether `bytes` start a PROXY header.
pub fn sniff(bytes: &[u8]) -> Sniffed {
    if bytes.starts_with(V1_PREFIX) || bytes.starts_with(V2_SIGNATURE) {
        Sniffed::Header
    } else if V1_PREFIX.starts_with(bytes) || V2_SIGNATURE.starts_with(bytes) {
        Sniffed::Undecided
    } else {
        Sniffed::Other
    }
}

/// Takes the PROXY header off `tcp`, and nothing behind it. The caller bounds the time;
/// a connection closed, or whose first bytes are not a valid header, is an error.
pub async fn read(tcp: &mut TcpStream) -> Result<Header, Error> {
    let mut buf = [0u8; MAX_HEADER];
    let mut pause = FIRST_PAUSE;
    loop {
        let n = tcp.peek(&mut buf).await.map_err(Error::ClientIo)?;
        if n == 0 {
            return Err(Error::ProxyHeader("closed before a PROXY header"));
        }
        match parse(&buf[..n]) {
            Parsed::Header(header) => {
                // Queued already: this returns at once, and takes the header only.
                tcp.read_exact(&mut buf[..header.len])
                    .await
                    .map_err(Error::ClientIo)?;
                return Ok(header);
            }
            Parsed::Invalid(why) => return Err(Error::ProxyHeader(why)),
            Parsed::Incomplete if n == buf.len() => {
                return Err(Error::ProxyHeader("header over the bound"));
            }
            Parsed::Incomplete => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
        }
    }
}

/// Whether the client's first bytes on `tcp` are a PROXY header, without taking them.
/// Waits for the client's first bytes (the caller bounds the time); a start that could
/// still become one gets [`SNIFF_PATIENCE`], then counts as not one.
pub async fn starts_with_header(tcp: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; V2_SIGNATURE.len()];
    let patience = tokio::time::Instant::now() + SNIFF_PATIENCE;
    let mut pause = FIRST_PAUSE;
    loop {
        let n = tcp.peek(&mut buf).await?;
        match sniff(&buf[..n]) {
            Sniffed::Header => return Ok(true),
            Sniffed::Other => return Ok(false),
            // Closed, or nothing more came: the session sees what there is.
            Sniffed::Undecided if n == 0 || tokio::time::Instant::now() >= patience => {
                return Ok(false);
            }
            Sniffed::Undecided => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
        }
    }
}

/// Closes a connection whose first bytes are a PROXY header where none is accepted: from
/// an address not in `proxy_protocol_from`, or a second one behind a balancer's. Waits for
/// the client's first bytes until `deadline`; at the deadline the session's own timeout
/// takes over.
pub async fn refuse_stray(tcp: &TcpStream, deadline: tokio::time::Instant) -> Result<(), Error> {
    match tokio::time::timeout_at(deadline, starts_with_header(tcp)).await {
        Ok(Ok(true)) => {
            tracing::warn!("connection closed: a PROXY header where none is accepted");
            Err(Error::ProxyHeader("a header where none is accepted"))
        }
        Ok(Ok(false)) | Err(_) => Ok(()),
        Ok(Err(e)) => Err(Error::ClientIo(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend([0x20 | command, family]);
        out.extend(((addresses.len() + tlvs.len()) as u16).to_be_bytes());
        out.extend(addresses);
        out.extend(tlvs);
        out
    }

    fn v2_tcp4(client: [u8; 4], port: u16) -> Vec<u8> {
        let mut addresses = client.to_vec();
        addresses.extend([10, 0, 0, 5]);
        addresses.extend(port.to_be_bytes());
        addresses.extend(587u16.to_be_bytes());
        v2(1, 0x11, &addresses, &[])
    }

    fn header(version: Version, len: usize, client: Option<&str>) -> Parsed {
        Parsed::Header(Header {
            len,
            version,
            client: client.map(|c| c.parse().unwrap()),
        })
    }

    #[test]
    fn v1_names_the_client() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.5 51234 587\r\n";
        assert_eq!(
            parse(line),
            header(Version::V1, line.len(), Some("192.0.2.7:51234"))
        );
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::5 51234 587\r\n";
        let expected = header(Version::V1, line.len(), Some("[2001:db8::7]:51234"));
        assert_eq!(parse(line), expected);
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), header(Version::V1, 15, None));
    }

    #[test]
    fn the_header_ends_where_it_ends_whatever_follows() {
        let mut bytes = b"PROXY TCP4 192.0.2.7 10.0.0.5 1 587\r\n".to_vec();
        let len = bytes.len();
        bytes.extend(b"EHLO client\r\n");
        assert_eq!(parse(&bytes), header(Version::V1, len, Some("192.0.2.7:1")));
        let mut bytes = v2_tcp4([192, 0, 2, 7], 1);
        let len = bytes.len();
        bytes.extend([0x16, 0x03, 0x01]);
        assert_eq!(parse(&bytes), header(Version::V2, len, Some("192.0.2.7:1")));
    }

    #[test]
    fn v2_names_the_client_or_leaves_the_peer() {
        let bytes = v2_tcp4([192, 0, 2, 7], 40000);
        assert_eq!(
            parse(&bytes),
            header(Version::V2, 28, Some("192.0.2.7:40000"))
        );
        let mut six = [0u8; 36];
        six[..16].copy_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        six[32..34].copy_from_slice(&40000u16.to_be_bytes());
        let bytes = v2(1, 0x21, &six, &[]);
        assert_eq!(
            parse(&bytes),
            header(Version::V2, 52, Some("[2001:db8::7]:40000"))
        );
        // A health check of the balancer itself, and an unspecified family: the peer stands.
        assert_eq!(parse(&v2(0, 0x00, &[], &[])), header(Version::V2, 16, None));
        assert_eq!(
            parse(&v2(0, 0x11, &[0; 12], &[])),
            header(Version::V2, 28, None)
        );
        assert_eq!(parse(&v2(1, 0x00, &[], &[])), header(Version::V2, 16, None));
    }

    #[test]
    fn v2_tlvs_are_part_of_the_header() {
        let addresses = [192, 0, 2, 7, 10, 0, 0, 5, 0, 1, 2, 75];
        let tlvs = [0x04, 0x00, 0x03, b'a', b'b', b'c'];
        let bytes = v2(1, 0x11, &addresses, &tlvs);
        assert_eq!(parse(&bytes), header(Version::V2, 34, Some("192.0.2.7:1")));
    }

    #[test]
    fn an_ipv4_client_in_ipv6_form_is_ipv4() {
        let line = b"PROXY TCP6 ::ffff:192.0.2.7 ::ffff:10.0.0.5 1 587\r\n";
        assert_eq!(
            parse(line),
            header(Version::V1, line.len(), Some("192.0.2.7:1"))
        );
    }

    #[test]
    fn every_shorter_start_is_incomplete() {
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.5 51234 587\r\n";
        let bytes = v2_tcp4([192, 0, 2, 7], 1);
        for whole in [&line[..], &bytes[..]] {
            for end in 0..whole.len() {
                assert_eq!(
                    parse(&whole[..end]),
                    Parsed::Incomplete,
                    "{:?}",
                    &whole[..end]
                );
            }
        }
    }

    #[test]
    fn bad_headers_are_invalid() {
        for bad in [
            &b"EHLO client\r\n"[..],
            b"GET / HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00",
            b"PROXY TCP4 300.0.2.7 10.0.0.5 1 587\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.5 1 587\n",
            b"PROXY TCP5 192.0.2.7 10.0.0.5 1 587\r\n",
            b"PROXY TCP4 2001:db8::7 10.0.0.5 1 587\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.5 1 587 8\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.5 01 587\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.5 1 65536\r\n",
            b"PROXY \xff\r\n",
        ] {
            assert!(matches!(parse(bad), Parsed::Invalid(_)), "{bad:?}");
        }
        // Version 1 of the binary form, an unknown command, UDP, addresses too short.
        let mut bytes = v2_tcp4([192, 0, 2, 7], 1);
        bytes[12] = 0x11;
        assert!(matches!(parse(&bytes), Parsed::Invalid(_)));
        assert!(matches!(
            parse(&v2(2, 0x11, &[0; 12], &[])),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse(&v2(1, 0x12, &[0; 12], &[])),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse(&v2(1, 0x11, &[0; 8], &[])),
            Parsed::Invalid(_)
        ));
    }

    #[test]
    fn headers_over_the_bound_are_invalid_before_they_end() {
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 100]].concat();
        assert!(matches!(parse(&long), Parsed::Invalid(_)));
        // A v2 length of 521 is over the bound from the 16th byte on.
        let mut start = V2_SIGNATURE.to_vec();
        start.extend([0x21, 0x11]);
        start.extend(521u16.to_be_bytes());
        assert!(matches!(parse(&start), Parsed::Invalid(_)));
        let tlv: Vec<u8> = [0x04, 0x01, 0xF9].into_iter().chain([0; 505]).collect();
        let most = v2(1, 0x11, &[0; 12], &tlv);
        assert_eq!(most.len(), MAX_V2);
        assert!(matches!(parse(&most), Parsed::Header(_)));
    }

    #[test]
    fn sniffing_tells_a_header_from_a_command() {
        assert_eq!(sniff(b"PROXY TCP4"), Sniffed::Header);
        assert_eq!(sniff(V2_SIGNATURE), Sniffed::Header);
        assert_eq!(sniff(b"EHLO x"), Sniffed::Other);
        assert_eq!(sniff(b"\x16\x03"), Sniffed::Other);
        assert_eq!(sniff(b"PROX"), Sniffed::Undecided);
        assert_eq!(sniff(b"\r\n"), Sniffed::Undecided);
        assert_eq!(sniff(b"\r\n\r\nX"), Sniffed::Other);
        assert_eq!(sniff(b""), Sniffed::Undecided);
    }
}
