//! Fuzz harness for the PROXY protocol: the header a load balancer sends before a
//! client's bytes, and the headers the gateway writes for its backends.

use std::net::SocketAddr;

use crate::upstream::proxy_protocol::{self, v1_header, v2_header, ClientFacts, Received};

/// The longest header of each version the parser takes (see `proxy_protocol`).
const V1_MAX: usize = 107;
const V2_MAX: usize = 16 + 216 + 1024;

/// Reads `data` as what a trusted load balancer sent first. A header that parses
/// takes no more than it was given and no more than its version allows, parses the
/// same alone, asks for more at every shorter length, and its addresses, written again
/// as a version 1 and a version 2 header, read back unchanged. A header the gateway
/// writes from facts made of `data` reads back with its own length and addresses.
pub fn proxy_header(data: &[u8]) {
    check_written(data);
    let received = match proxy_protocol::parse(data) {
        Ok(Some(received)) => received,
        Ok(None) => {
            let most = if data.starts_with(b"P") {
                V1_MAX
            } else {
                V2_MAX
            };
            assert!(
                data.len() < most,
                "still asking for more after {}",
                data.len()
            );
            return;
        }
        Err(_) => return,
    };

    let length = received.length;
    assert!(length > 0 && length <= data.len());
    let header = &data[..length];
    if header.starts_with(b"PROXY ") {
        assert!(length <= V1_MAX && header.ends_with(b"\r\n"));
    } else {
        assert!((16..=V2_MAX).contains(&length));
        assert!(header.starts_with(&proxy_protocol::V2_SIGNATURE));
    }
    assert_eq!(proxy_protocol::parse(header), Ok(Some(received)));
    for cut in 0..length {
        assert_eq!(
            proxy_protocol::parse(&header[..cut]),
            Ok(None),
            "cut at {cut}"
        );
    }
    if let Some((source, destination)) = received.addresses {
        assert_eq!(source.is_ipv4(), destination.is_ipv4(), "mixed families");
        check_round_trip(source, destination);
    }
}

/// The addresses, written as each version, read back as they were.
fn check_round_trip(source: SocketAddr, destination: SocketAddr) {
    let v1 = v1_header(source, destination);
    assert_eq!(addresses_of(&v1), Some((source, destination)));
    let v2 = v2_header(&facts(source, destination), None);
    assert_eq!(addresses_of(&v2), Some((source, destination)));
}

/// A version 2 header with TLVs made of `data`, read back whole.
fn check_written(data: &[u8]) {
    let source: SocketAddr = "[2001:db8::7]:50000".parse().expect("an address");
    let destination: SocketAddr = "192.0.2.1:8443".parse().expect("an address");
    let half = data.len() / 2;
    let (first, second) = data.split_at(half);
    let text = String::from_utf8_lossy(first);
    let facts = ClientFacts {
        sni: Some(&text),
        alpn: Some(second),
        tls_version: Some("TLSv1.3"),
        device: Some((Some(&text), data)),
        ..facts(source, destination)
    };
    let header = v2_header(&facts, Some(0xe0));
    // Whatever it holds, the length field counts exactly the bytes that follow it.
    let declared = usize::from(u16::from_be_bytes([header[14], header[15]]));
    assert_eq!(
        16 + declared,
        header.len(),
        "a length that does not match the header"
    );
    if header.len() > V2_MAX {
        return;
    }
    let received = proxy_protocol::parse(&header).expect("the gateway's own header parses");
    let received = received.expect("the gateway's own header is whole");
    assert_eq!(received.length, header.len());
    // Mixed families are written as IPv6, with the IPv4 address mapped.
    let mapped = |address: SocketAddr| match address {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    };
    let expected = (mapped(source), mapped(destination));
    assert_eq!(received.addresses, Some(expected));
}

fn addresses_of(header: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    match proxy_protocol::parse(header) {
        Ok(Some(Received { addresses, length })) => {
            assert_eq!(length, header.len());
            addresses
        }
        other => panic!("{:?} reads as {other:?}", String::from_utf8_lossy(header)),
    }
}

fn facts(source: SocketAddr, destination: SocketAddr) -> ClientFacts<'static> {
    ClientFacts {
        source,
        destination,
        sni: None,
        alpn: None,
        tls_version: None,
        device: None,
        certificate_in_handshake: false,
    }
}
