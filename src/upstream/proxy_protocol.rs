//! The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2): the header the
//! gateway writes at the start of a backend connection, so that the backend learns the
//! client's address and what the TLS handshake established; and the header a load
//! balancer in front writes at the start of a client connection, which the gateway
//! reads when the connection comes from a trusted address.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::config::ProxyProtocolVersion;

/// The twelve bytes a version 2 header begins with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The longest version 1 header, its CRLF included.
const V1_MAX: usize = 107;

/// The longest version 2 header read from a client connection: the fixed part and the
/// addresses, plus TLVs a load balancer may add (an authority, a unique ID, a CRC).
const V2_MAX: usize = 16 + 216 + 1024;

/// TLV types of version 2.
const PP2_TYPE_ALPN: u8 = 0x01;
const PP2_TYPE_AUTHORITY: u8 = 0x02;
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;

/// Flags of the `PP2_TYPE_SSL` TLV's client field.
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// What a backend is told about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct ClientFacts<'a> {
    /// The client's address (from the load balancer's header, when one sent it).
    pub source: SocketAddr,
    /// The address the client connected to.
    pub destination: SocketAddr,
    /// The SNI the client sent.
    pub sni: Option<&'a str>,
    /// The negotiated application protocol.
    pub alpn: Option<&'a [u8]>,
    /// The TLS version, as OpenSSL names it (`TLSv1.3`).
    pub tls_version: Option<&'a str>,
    /// The verified client certificate: its common name, when it has one, and its DER.
    pub device: Option<(Option<&'a str>, &'a [u8])>,
    /// Whether the certificate was presented in this handshake (not only in the session
    /// a ticket resumed).
    pub certificate_in_handshake: bool,
}

/// A version 1 header: `PROXY TCP4|TCP6 source destination sport dport`. When the two
/// addresses are of different families, both are written as IPv6.
pub fn v1_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source_ip, destination_ip) = same_family(source.ip(), destination.ip());
    let family = if source_ip.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {source_ip} {destination_ip} {} {}\r\n",
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// A version 2 `PROXY` header with the TLS facts as TLVs: ALPN, the SNI as authority, the
/// SSL TLV (verified flag, version and client CN sub-TLVs), and, when `certificate_tlv`
/// names a type, the client certificate's DER in a TLV of that type.
pub fn v2_header(facts: &ClientFacts<'_>, certificate_tlv: Option<u8>) -> Vec<u8> {
    let mut body = Vec::with_capacity(256);
    let (source, destination) = same_family(facts.source.ip(), facts.destination.ip());
    let family = match (source, destination) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            body.extend_from_slice(&source.octets());
            body.extend_from_slice(&destination.octets());
            0x11
        }
        (source, destination) => {
            body.extend_from_slice(&as_v6(source).octets());
            body.extend_from_slice(&as_v6(destination).octets());
            0x21
        }
    };
    body.extend_from_slice(&facts.source.port().to_be_bytes());
    body.extend_from_slice(&facts.destination.port().to_be_bytes());
    if let Some(alpn) = facts.alpn {
        push_tlv(&mut body, PP2_TYPE_ALPN, alpn);
    }
    if let Some(sni) = facts.sni {
        push_tlv(&mut body, PP2_TYPE_AUTHORITY, sni.as_bytes());
    }
    if let Some(version) = facts.tls_version {
        let mut ssl = Vec::with_capacity(64);
        let mut client = PP2_CLIENT_SSL;
        if facts.device.is_some() {
            client |= PP2_CLIENT_CERT_SESS;
            if facts.certificate_in_handshake {
                client |= PP2_CLIENT_CERT_CONN;
            }
        }
        ssl.push(client);
        // 0: the client certificate, when there is one, verified.
        ssl.extend_from_slice(&0u32.to_be_bytes());
        push_tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, version.as_bytes());
        let without_name = ssl.len();
        if let Some((Some(common_name), _)) = facts.device {
            push_tlv(&mut ssl, PP2_SUBTYPE_SSL_CN, common_name.as_bytes());
        }
        if !push_tlv(&mut body, PP2_TYPE_SSL, &ssl) {
            // A name too long for the header: the SSL facts go without it.
            push_tlv(&mut body, PP2_TYPE_SSL, &ssl[..without_name]);
        }
    }
    if let (Some(kind), Some((_, der))) = (certificate_tlv, facts.device) {
        push_tlv(&mut body, kind, der);
    }
    let mut header = Vec::with_capacity(16 + body.len());
    header.extend_from_slice(&V2_SIGNATURE);
    header.push(0x21); // version 2, PROXY
    header.push(family);
    // push_tlv keeps the body within what the length field can count.
    header.extend_from_slice(&(body.len() as u16).to_be_bytes());
    header.extend_from_slice(&body);
    header
}

/// The header a health check begins with: none, `PROXY UNKNOWN`, or a version 2 `LOCAL`
/// command (the connection is the gateway's own, with no client behind it).
pub fn health_check_header(version: ProxyProtocolVersion) -> Vec<u8> {
    match version {
        ProxyProtocolVersion::None => Vec::new(),
        ProxyProtocolVersion::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        ProxyProtocolVersion::V2 => {
            let mut header = V2_SIGNATURE.to_vec();
            header.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
            header
        }
    }
}

/// Appends one TLV; a value longer than a TLV can hold is left out.
/// Appends a TLV, unless `out` would then pass the 65,535 bytes a v2 length field can
/// count: a TLV left out (a huge certificate, say) is better than a length that lies
/// and leaves the rest to be read as the client's request. Returns whether it went in.
fn push_tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) -> bool {
    let total = out.len() + 3 + value.len();
    let Ok(length) = u16::try_from(value.len()) else {
        return false;
    };
    if total > usize::from(u16::MAX) {
        return false;
    }
    out.push(kind);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(value);
    true
}

fn same_family(source: IpAddr, destination: IpAddr) -> (IpAddr, IpAddr) {
    match (source, destination) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (source, destination),
        _ => (IpAddr::V6(as_v6(source)), IpAddr::V6(as_v6(destination))),
    }
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// The source networks a listener takes PROXY protocol headers from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedSources(Vec<(IpAddr, u8)>);

impl TrustedSources {
    /// Parses networks written `10.0.0.0/8`, `2001:db8::/32` or a single address.
    pub fn parse(networks: &[String]) -> Result<Self, String> {
        let mut parsed = Vec::new();
        for text in networks {
            let (ip, bits) = match text.split_once('/') {
                Some((ip, bits)) => (ip, Some(bits)),
                None => (text.as_str(), None),
            };
            let ip: IpAddr = (ip.parse()).map_err(|_| format!("{text:?}: not an IP address"))?;
            let most = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(bits) => bits
                    .parse::<u8>()
                    .ok()
                    .filter(|bits| *bits <= most)
                    .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {most}"))?,
                None => most,
            };
            parsed.push((ip, bits));
        }
        Ok(Self(parsed))
    }

    /// Whether `ip` (an IPv4-mapped IPv6 address read as IPv4) is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|(network, bits)| match (network, ip) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                prefix_matches(&network.octets(), &ip.octets(), *bits)
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                prefix_matches(&network.octets(), &ip.octets(), *bits)
            }
            _ => false,
        })
    }
}

fn prefix_matches(network: &[u8], ip: &[u8], bits: u8) -> bool {
    let (whole, rest) = (usize::from(bits / 8), bits % 8);
    if network[..whole] != ip[..whole] {
        return false;
    }
    let mask = (!0u8).checked_shl(u32::from(8 - rest)).unwrap_or(0);
    rest == 0 || (network[whole] & mask) == (ip[whole] & mask)
}

/// The addresses a load balancer's header gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The client's address and the address it connected to; `None` for a `LOCAL`
    /// command (the balancer's own health check) or an `UNKNOWN`/unspecified family,
    /// where the connection's own addresses stand.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
    /// How many bytes the header took.
    pub length: usize,
}

/// Why a header from a load balancer was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// Whether `bytes` (at least one) could be the start of a PROXY header of either version.
pub fn looks_like_header(bytes: &[u8]) -> bool {
    let prefix = |whole: &[u8]| whole.starts_with(&bytes[..bytes.len().min(whole.len())]);
    !bytes.is_empty() && (prefix(b"PROXY ") || prefix(&V2_SIGNATURE))
}

/// Whether `bytes` begin with a whole PROXY header signature of either version.
pub fn starts_with_header(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PROXY ") || bytes.starts_with(&V2_SIGNATURE)
}

/// Reads a header from the start of `bytes`: `Ok(None)` while more bytes are needed.
pub fn parse(bytes: &[u8]) -> Result<Option<Received>, Malformed> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes[0] == b'P' {
        return parse_v1(bytes);
    }
    if bytes[0] == b'\r' {
        return parse_v2(bytes);
    }
    Err(Malformed("not a PROXY protocol header"))
}

fn parse_v1(bytes: &[u8]) -> Result<Option<Received>, Malformed> {
    let Some(end) = bytes.windows(2).position(|pair| pair == b"\r\n") else {
        if bytes.len() >= V1_MAX || !looks_like_header(&bytes[..bytes.len().min(6)]) {
            return Err(Malformed("version 1 header too long or not PROXY"));
        }
        return Ok(None);
    };
    let length = end + 2;
    if length > V1_MAX {
        return Err(Malformed("version 1 header too long"));
    }
    let line = std::str::from_utf8(&bytes[..end]).map_err(|_| Malformed("not ASCII"))?;
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(Some(Received {
            addresses: None,
            length,
        })),
        ["PROXY", family @ ("TCP4" | "TCP6"), source, destination, sport, dport] => {
            let ip = |text: &str| -> Result<IpAddr, Malformed> {
                let ip: IpAddr = text.parse().map_err(|_| Malformed("bad address"))?;
                match (ip.is_ipv4(), *family == "TCP4") {
                    (true, true) | (false, false) => Ok(ip),
                    _ => Err(Malformed("address of the wrong family")),
                }
            };
            let port = |text: &str| -> Result<u16, Malformed> {
                let canonical = !text.is_empty() && (text == "0" || !text.starts_with('0'));
                match (canonical, text.parse()) {
                    (true, Ok(port)) => Ok(port),
                    _ => Err(Malformed("bad port")),
                }
            };
            let source = SocketAddr::new(ip(source)?, port(sport)?);
            let destination = SocketAddr::new(ip(destination)?, port(dport)?);
            Ok(Some(Received {
                addresses: Some((source, destination)),
                length,
            }))
        }
        _ => Err(Malformed("version 1 header with bad fields")),
    }
}

fn parse_v2(bytes: &[u8]) -> Result<Option<Received>, Malformed> {
    let known = bytes.len().min(V2_SIGNATURE.len());
    if bytes[..known] != V2_SIGNATURE[..known] {
        return Err(Malformed("bad version 2 signature"));
    }
    if bytes.len() < 16 {
        return Ok(None);
    }
    let (version, command) = (bytes[12] >> 4, bytes[12] & 0x0f);
    if version != 2 || command > 1 {
        return Err(Malformed("unknown version or command"));
    }
    let body = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    let length = 16 + body;
    if length > V2_MAX {
        return Err(Malformed("version 2 header too long"));
    }
    if bytes.len() < length {
        return Ok(None);
    }
    let body = &bytes[16..length];
    let family = bytes[13];
    let addresses = match (command, family) {
        // LOCAL: the balancer speaking for itself; the connection's addresses stand.
        (0, _) => None,
        (_, 0x11) => {
            let fixed = body.get(..12).ok_or(Malformed("short IPv4 addresses"))?;
            let ip = |at: usize| IpAddr::from(<[u8; 4]>::try_from(&fixed[at..at + 4]).unwrap());
            let port = |at: usize| u16::from_be_bytes([fixed[at], fixed[at + 1]]);
            Some((
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            ))
        }
        (_, 0x21) => {
            let fixed = body.get(..36).ok_or(Malformed("short IPv6 addresses"))?;
            let ip = |at: usize| IpAddr::from(<[u8; 16]>::try_from(&fixed[at..at + 16]).unwrap());
            let port = |at: usize| u16::from_be_bytes([fixed[at], fixed[at + 1]]);
            Some((
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            ))
        }
        // UNSPEC: the connection's own addresses stand (proxy-protocol.txt §2.2). UDP
        // and Unix families describe no TCP client: refused, as any other family.
        (_, 0x00) => None,
        _ => return Err(Malformed("unsupported address family")),
    };
    Ok(Some(Received { addresses, length }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(der: &'a [u8]) -> ClientFacts<'a> {
        ClientFacts {
            source: "192.0.2.7:50000".parse().unwrap(),
            destination: "198.51.100.1:8443".parse().unwrap(),
            sni: Some("api.test"),
            alpn: Some(b"http/1.1"),
            tls_version: Some("TLSv1.3"),
            device: Some((Some("device-1"), der)),
            certificate_in_handshake: true,
        }
    }

    #[test]
    fn a_certificate_too_large_for_the_length_field_is_left_out() {
        let der = vec![0x30; 65_520];
        let header = v2_header(&facts(&der), Some(0xe0));
        let declared = usize::from(u16::from_be_bytes([header[14], header[15]]));
        assert_eq!(16 + declared, header.len());
        assert!(header.len() < 1024, "the certificate TLV was left out");
        assert!(header.windows(8).any(|w| w == b"device-1"), "the CN stayed");
    }

    #[test]
    fn a_v2_header_reads_back_with_its_addresses_and_tlvs() {
        let header = v2_header(&facts(b"DER"), Some(0xe0));
        let received = parse(&header).unwrap().unwrap();
        assert_eq!(received.length, header.len());
        let (source, destination) = received.addresses.unwrap();
        assert_eq!(source.to_string(), "192.0.2.7:50000");
        assert_eq!(destination.to_string(), "198.51.100.1:8443");
        let tlvs = &header[16 + 12..];
        assert_eq!(&tlvs[..3], &[PP2_TYPE_ALPN, 0, 8]);
        assert!(tlvs.windows(8).any(|w| w == b"api.test"));
        assert!(tlvs.windows(7).any(|w| w == b"TLSv1.3"));
        assert!(tlvs.ends_with(&[0xe0, 0, 3, b'D', b'E', b'R']));
        for partial in 0..header.len() {
            assert_eq!(parse(&header[..partial]), Ok(None), "{partial}");
        }
    }

    #[test]
    fn v1_headers_parse_and_mixed_families_become_ipv6() {
        let source: SocketAddr = "192.0.2.7:50000".parse().unwrap();
        let destination: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let header = v1_header(source, destination);
        assert_eq!(
            header,
            b"PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 50000 443\r\n".to_vec()
        );
        let received = parse(&header).unwrap().unwrap();
        assert_eq!(received.length, header.len());
        let plain = parse(b"PROXY TCP4 10.1.2.3 10.0.0.1 1234 8443\r\nrest").unwrap();
        let (source, _) = plain.unwrap().addresses.unwrap();
        assert_eq!(source.to_string(), "10.1.2.3:1234");
    }

    #[test]
    fn trusted_sources_match_by_prefix() {
        let trusted = TrustedSources::parse(&[
            "10.0.0.0/8".into(),
            "192.0.2.7".into(),
            "2001:db8::/33".into(),
        ])
        .unwrap();
        for ip in [
            "10.255.0.1",
            "192.0.2.7",
            "::ffff:10.1.1.1",
            "2001:db8:7fff::1",
        ] {
            assert!(trusted.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["11.0.0.1", "192.0.2.8", "2001:db8:8000::1", "::1"] {
            assert!(!trusted.contains(ip.parse().unwrap()), "{ip}");
        }
        assert!(TrustedSources::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedSources::parse(&["ten".into()]).is_err());
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            &b"PROXY TCP4 10.1.2.3 10.0.0.1 1234\r\n"[..],
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP4 10.1.2.3 10.0.0.1 01234 8443\r\n",
            b"PROXY TCP4 10.1.2.3 10.0.0.1 99999 8443\r\n",
            b"\x16\x03\x01\x00\x05hello",
            b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04abcd",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&[b'P'; 200]).is_err());
        assert!(looks_like_header(b"PRO"));
        assert!(!looks_like_header(b"\x16\x03"));
    }
}
