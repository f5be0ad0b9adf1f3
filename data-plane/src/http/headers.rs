//! Header hygiene on the way upstream: hop-by-hop headers removed (with those the
//! `Connection` header names), the forwarding chain (`X-Forwarded-*`, `Forwarded`, `Via`)
//! extended or started depending on whether the peer is a trusted proxy, and request ids.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 §7.6.1 and long-standing practice), never forwarded.
static HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

/// Where a request came from, for the forwarding headers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Downstream {
    /// The peer is a trusted proxy: keep and extend its forwarding headers.
    pub(crate) trusted_proxy: bool,
    /// The request arrived over TLS (`proto=https`).
    pub(crate) tls: bool,
}

/// How many headers [`upstream_request`] may add to a request: `X-Forwarded-For/-Proto/
/// -Host`, `Forwarded`, `Via`, `Host`, `X-Request-Id` and `TE`. Header maps built for a
/// request that will be forwarded reserve this much beyond their own headers.
pub(crate) const FORWARDING_HEADROOM: usize = 8;

/// A peer's IP as a header value (no port, no brackets).
pub(crate) fn ip_value(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from(peer.ip().to_string()))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// `X-Forwarded-For/-Proto/-Host`, `Forwarded` (RFC 7239) and `Via`. From a trusted proxy
/// the chain it sent is kept and extended; from anyone else it is replaced, since a client
/// can claim anything. `peer_ip` is [`ip_value`] of `peer`.
pub(crate) fn forwarding_headers(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    peer_ip: &HeaderValue,
    host: Option<&HeaderValue>,
    downstream: Downstream,
) {
    // Owned strings become header values without another copy.
    let value = |s: String| HeaderValue::from_maybe_shared(Bytes::from(s)).ok();
    // A chain of values sent before ("a, b"), extended by `add`.
    let extended = |sent: header::ValueIter<'_, HeaderValue>, add: &str| -> Option<HeaderValue> {
        let mut out = String::new();
        for v in sent.filter_map(|v| v.to_str().ok()) {
            out.push_str(v);
            out.push_str(", ");
        }
        out.push_str(add);
        value(out)
    };
    let ip = peer_ip.to_str().unwrap_or("unknown");
    let proto = if downstream.tls { "https" } else { "http" };
    // Plain pushes: `write!` costs several times as much for these few pieces.
    let mut forwarded = String::with_capacity(64);
    if peer.is_ipv6() {
        forwarded.push_str("for=\"[");
        forwarded.push_str(ip);
        forwarded.push_str("]\"");
    } else {
        forwarded.push_str("for=");
        forwarded.push_str(ip);
    }
    forwarded.push_str(";proto=");
    forwarded.push_str(proto);
    if let Some(h) = host.and_then(|h| h.to_str().ok()) {
        forwarded.push_str(";host=\"");
        if h.contains('"') {
            forwarded.push_str(&h.replace('"', ""));
        } else {
            forwarded.push_str(h);
        }
        forwarded.push('"');
    }
    if downstream.trusted_proxy {
        if let Some(v) = extended(headers.get_all(&X_FORWARDED_FOR).iter(), ip) {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        if let Some(v) = extended(headers.get_all(&FORWARDED).iter(), &forwarded) {
            headers.insert(FORWARDED.clone(), v);
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
        }
        if let (false, Some(h)) = (headers.contains_key(&X_FORWARDED_HOST), host) {
            headers.insert(X_FORWARDED_HOST.clone(), h.clone());
        }
    } else {
        headers.insert(X_FORWARDED_FOR.clone(), peer_ip.clone());
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
        match host {
            Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
        if let Some(v) = value(forwarded) {
            headers.insert(FORWARDED.clone(), v);
        }
    }
    match headers.entry(header::VIA) {
        header::Entry::Occupied(mut via) => {
            if let Some(v) = extended(via.iter(), "1.1 vane") {
                via.insert(v);
            }
        }
        header::Entry::Vacant(via) => {
            via.insert(HeaderValue::from_static("1.1 vane"));
        }
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few names present instead of a hash lookup per hop-by-hop name:
    // most messages carry none of them.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(&name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// A random UUID v4, as `X-Request-Id`.
pub(crate) fn request_id() -> HeaderValue {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = [0u8; 36];
    let hex = b"0123456789abcdef";
    let mut i = 0;
    for (n, byte) in b.iter().enumerate() {
        if matches!(n, 4 | 6 | 8 | 10) {
            out[i] = b'-';
            i += 1;
        }
        out[i] = hex[usize::from(byte >> 4)];
        out[i + 1] = hex[usize::from(byte & 0x0f)];
        i += 2;
    }
    // An owned value is shared by reference count when cloned (the id is kept for the
    // access log); a copied one would allocate again at its first clone.
    HeaderValue::from_maybe_shared(Bytes::from_owner(out)).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarding_headers_quote_ipv6_peers_and_strip_quotes_from_hosts() {
        let peer: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert(header::VIA, HeaderValue::from_static("1.1 edge"));
        let host = HeaderValue::from_static("shop\"x.example");
        forwarding_headers(&mut h, peer, &ip_value(peer), Some(&host), Downstream { trusted_proxy: false, tls: true });
        assert_eq!(h["x-forwarded-for"], "2001:db8::7", "the peer replaces an untrusted claim");
        assert_eq!(h["forwarded"], "for=\"[2001:db8::7]\";proto=https;host=\"shopx.example\"");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h[header::VIA], "1.1 edge, 1.1 vane");

        // From a trusted proxy the chains it sent are extended.
        let peer: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        forwarding_headers(&mut h, peer, &ip_value(peer), None, Downstream { trusted_proxy: true, tls: false });
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.2");
        assert_eq!(h["forwarded"], "for=10.0.0.2;proto=http");
        assert_eq!(h[header::VIA], "1.1 vane");
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = request_id();
        let s = id.to_str().unwrap();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "4");
        assert_ne!(request_id(), id);
    }
}
