//! The PROXY protocol (HAProxy's spec, v1 text and v2 binary): read from trusted peers on
//! any listener, written to endpoints of clusters that ask for it.
//!
//! Reading takes exactly the header's bytes off the socket and nothing after it (those
//! belong to the TLS handshake or HTTP request that follows): the 16 bytes that both
//! versions start with, then for v2 the length it announces, for v1 up to its CRLF (the
//! bytes already there are peeked to find it; a slow sender is read a byte at a time, at
//! most 107 bytes in all, the spec's bound). Parsing uses bounds-checked accessors only.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest v1 header, CRLF included.
const V1_MAX: usize = 107;
/// Largest v2 address block and TLVs accepted.
const V2_MAX_BODY: usize = 1024;

/// Why a header was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Invalid(pub(crate) &'static str);

/// Reads a PROXY header from the start of `stream`: the client address it carries, or
/// `None` for `LOCAL`/`UNKNOWN` (keep the peer's).
pub(crate) async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, Invalid> {
    // 15 bytes first: the shortest v1 header (`PROXY UNKNOWN\r\n`) is that long, and
    // v2's fixed part is one more.
    let mut head = [0u8; 16];
    read_exact(stream, &mut head[..15], "connection closed before a PROXY header").await?;
    if head.starts_with(&V2_SIGNATURE) {
        read_exact(stream, &mut head[15..], "truncated v2 header").await?;
        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
        if len > V2_MAX_BODY {
            return Err(Invalid("v2 header too long"));
        }
        let mut body = vec![0u8; len];
        read_exact(stream, &mut body, "truncated v2 header").await?;
        return parse_v2(head[12], head[13], &body);
    }
    if !head.starts_with(b"PROXY ") {
        return Err(Invalid("no PROXY header"));
    }
    let mut line = head[..15].to_vec();
    // Up to the first LF, never past it; bounded by V1_MAX (each turn adds a byte or fails).
    while !line.contains(&b'\n') {
        if line.len() >= V1_MAX {
            return Err(Invalid("v1 header too long"));
        }
        let mut peeked = [0u8; V1_MAX];
        let available = stream.peek(&mut peeked[..V1_MAX - line.len()]).await.unwrap_or(0);
        let seen = peeked.get(..available).unwrap_or_default();
        let take = seen.iter().position(|b| *b == b'\n').map_or(available, |i| i + 1).max(1);
        let mut more = vec![0u8; take];
        read_exact(stream, &mut more, "truncated v1 header").await?;
        line.extend_from_slice(&more);
    }
    parse_v1(&line)
}

async fn read_exact<R: AsyncRead + Unpin>(stream: &mut R, buf: &mut [u8], what: &'static str) -> Result<(), Invalid> {
    stream.read_exact(buf).await.map(|_| ()).map_err(|_| Invalid(what))
}

/// `PROXY TCP4 src dst sport dport\r\n` (or `PROXY UNKNOWN...\r\n`).
fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, Invalid> {
    let text = std::str::from_utf8(line).map_err(|_| Invalid("v1 header is not text"))?;
    let Some(text) = text.strip_suffix("\r\n") else { return Err(Invalid("malformed v1 header")) };
    let mut fields = text.split(' ');
    let (Some("PROXY"), Some(family)) = (fields.next(), fields.next()) else {
        return Err(Invalid("malformed v1 header"));
    };
    if family == "UNKNOWN" {
        return Ok(None);
    }
    let (Some(src), Some(_dst), Some(sport), Some(_dport), None) =
        (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(Invalid("malformed v1 header"));
    };
    let ip: IpAddr = src.parse().map_err(|_| Invalid("bad v1 source address"))?;
    let port: u16 = sport.parse().map_err(|_| Invalid("bad v1 source port"))?;
    match (family, ip) {
        ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(Some(SocketAddr::new(ip, port))),
        _ => Err(Invalid("v1 family does not match its address")),
    }
}

/// The v2 fields after the signature: version/command, family/transport, addresses.
fn parse_v2(version_command: u8, family: u8, body: &[u8]) -> Result<Option<SocketAddr>, Invalid> {
    if version_command >> 4 != 2 {
        return Err(Invalid("unknown v2 version"));
    }
    match version_command & 0x0f {
        0 => return Ok(None), // LOCAL: the proxy's own connection (health checks)
        1 => {}
        _ => return Err(Invalid("unknown v2 command")),
    }
    let port = |at: usize| body.get(at..at + 2).map(|p| u16::from_be_bytes([p[0], p[1]]));
    match family >> 4 {
        1 => {
            let ip: [u8; 4] = body.get(..4).and_then(|b| b.try_into().ok()).ok_or(Invalid("short v2 header"))?;
            Ok(Some(SocketAddr::new(ip.into(), port(8).ok_or(Invalid("short v2 header"))?)))
        }
        2 => {
            let ip: [u8; 16] = body.get(..16).and_then(|b| b.try_into().ok()).ok_or(Invalid("short v2 header"))?;
            Ok(Some(SocketAddr::new(ip.into(), port(32).ok_or(Invalid("short v2 header"))?)))
        }
        // AF_UNSPEC or AF_UNIX: nothing an IP policy could use.
        _ => Ok(None),
    }
}

/// The header announcing a connection from `client` to `local` (v1 or v2).
pub(crate) fn header(v2: bool, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    // Both addresses in one family: an IPv4 one is mapped when the other is IPv6.
    let (src, dst) = match (client.ip(), local.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (client.ip(), local.ip()),
        (src, dst) => (v6(src), v6(dst)),
    };
    if !v2 {
        let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
        return format!("PROXY {family} {src} {dst} {} {}\r\n", client.port(), local.port()).into_bytes();
    }
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21); // version 2, PROXY
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x11, 0, 12]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.extend_from_slice(&[0x21, 0, 36]);
            out.extend_from_slice(&v6_octets(s));
            out.extend_from_slice(&v6_octets(d));
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&local.port().to_be_bytes());
    out
}

fn v6(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    }
}

fn v6_octets(ip: IpAddr) -> [u8; 16] {
    match v6(ip) {
        IpAddr::V6(v6) => v6.octets(),
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Sends `chunks` one by one over a real socket and reads a header off the other end;
    /// returns what it gave and what is left to read.
    async fn over_socket(chunks: &[&[u8]]) -> (Result<Option<SocketAddr>, Invalid>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for chunk in chunks {
                client.write_all(&chunk).await.unwrap();
                client.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            client.shutdown().await.unwrap();
        });
        let parsed = read_header(&mut server).await;
        let mut rest = Vec::new();
        let _ = server.read_to_end(&mut rest).await;
        writer.await.unwrap();
        (parsed, rest)
    }

    #[tokio::test]
    async fn v1_and_v2_headers_give_the_client_and_leave_what_follows() {
        let client: SocketAddr = "203.0.113.9:51234".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:443".parse().unwrap();
        for v2 in [false, true] {
            let head = header(v2, client, local);
            let (parsed, rest) = over_socket(&[&head, b"GET / HTTP/1.1\r\n"]).await;
            assert_eq!((parsed, rest.as_slice()), (Ok(Some(client)), &b"GET / HTTP/1.1\r\n"[..]));
        }
        let v6: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        let (parsed, _) = over_socket(&[&header(true, v6, local)]).await;
        assert_eq!(parsed, Ok(Some(v6)));
        assert_eq!(
            String::from_utf8(header(false, v6, local)).unwrap(),
            "PROXY TCP6 2001:db8::7 ::ffff:127.0.0.1 4000 443\r\n"
        );
    }

    #[tokio::test]
    async fn a_v1_header_split_over_many_writes_is_read_exactly() {
        let (parsed, rest) = over_socket(&[b"PROXY TCP4 192.0.2.1 ", b"10.0.0.1 5", b"6789 80\r", b"\nhello"]).await;
        assert_eq!(parsed, Ok(Some("192.0.2.1:56789".parse().unwrap())));
        assert_eq!(rest, b"hello");
    }

    #[tokio::test]
    async fn local_unknown_and_garbage() {
        assert_eq!(over_socket(&[b"PROXY UNKNOWN\r\nrest"]).await, (Ok(None), b"rest".to_vec()));
        assert_eq!(
            over_socket(&[b"PROXY TCP4 1.2.3.4\nGET"]).await,
            (Err(Invalid("malformed v1 header")), b"GET".to_vec())
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(over_socket(&[&local]).await.0, Ok(None));
        assert_eq!(over_socket(&[b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]).await.0, Err(Invalid("no PROXY header")));
        assert_eq!(
            over_socket(&[b"PROXY TCP4 192.0.2.1 10.0.0.1 1 2 3\r\n"]).await.0,
            Err(Invalid("malformed v1 header"))
        );
        assert_eq!(
            over_socket(&[b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n"]).await.0,
            Err(Invalid("v1 family does not match its address"))
        );
        let long = [b"PROXY TCP4 ".to_vec(), vec![b'1'; 200]].concat();
        assert_eq!(over_socket(&[&long]).await.0, Err(Invalid("v1 header too long")));
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert_eq!(over_socket(&[&short]).await.0, Err(Invalid("short v2 header")));
    }
}
