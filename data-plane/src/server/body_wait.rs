//! The inline server's wait for a request body it reads whole before serving the request
//! (`Content-Length` up to 64 KiB, see [`crate::server::inline`]).
//!
//! Once a head is whole the listener's `request_headers_timeout` is done with it; its
//! body gets the `request_body_timeout` of the route the head takes (30 s by default),
//! between two reads, as nginx's `client_body_timeout`. A body that stops arriving gets
//! a `408` recorded under that route, as a streamed body that stops does
//! ([`crate::proxy`]'s limits): the client's fault, and the upstream never saw it.
//!
//! Cost: only a body that does not arrive with its head is waited for; its head is then
//! parsed again (into a request of its own, for the route lookup) and routed once more
//! than it would be, a few microseconds against the reads of a body.

use std::time::{Duration, Instant};

use http::{Method, Request, Response, Version};

use crate::proxy::{Connection, ProxyBody};

/// Most header lines of a head (as the inline server).
const MAX_HEADERS: usize = 100;

/// A body being waited for: its request's head, since when, and for how long between
/// two reads.
#[derive(Debug)]
pub(crate) struct BodyWait {
    head: Request<()>,
    head_len: usize,
    since: Instant,
    timeout: Duration,
}

impl BodyWait {
    /// The wait for the body of the head at the front of `buf` (a head the inline server
    /// has parsed and accepted already).
    pub(crate) fn start(conn: &Connection, buf: &[u8]) -> Box<BodyWait> {
        let (head, head_len) = head_of(buf).unwrap_or_else(|| (Request::new(()), buf.len()));
        let timeout = conn.request_body_timeout(&head);
        Box::new(BodyWait { head, head_len, since: Instant::now(), timeout })
    }

    /// How long the client may send nothing.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The `408` for a body that stopped arriving with `buffered` bytes (head included)
    /// read; whether it answers a HEAD request.
    pub(crate) fn answer(&self, conn: &Connection, buffered: usize) -> (Response<ProxyBody>, bool) {
        let received = buffered.saturating_sub(self.head_len) as u64;
        (conn.body_timed_out(&self.head, self.since, received), self.head.method() == Method::HEAD)
    }
}

/// The request head at the front of `buf` (copied: the buffer is still being filled) and
/// its length.
fn head_of(buf: &[u8]) -> Option<(Request<()>, usize)> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    let httparse::Status::Complete(len) = parsed.parse(buf).ok()? else { return None };
    let mut req = Request::new(());
    *req.method_mut() = Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    *req.uri_mut() = parsed.path?.parse().ok()?;
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    for h in parsed.headers.iter() {
        let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        headers.append(name, http::HeaderValue::from_bytes(h.value).ok()?);
    }
    Some((req, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_of_a_body_still_arriving_is_read_for_its_route() {
        let buf = b"POST /upload?x=1 HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 1000\r\nX-Two: 1\r\nX-Two: 2\r\n\r\n0123456789";
        let (head, len) = head_of(buf).unwrap();
        assert_eq!(len, buf.len() - 10);
        assert_eq!((head.method(), head.uri().path(), head.uri().query()), (&Method::POST, "/upload", Some("x=1")));
        assert_eq!(head.headers()["host"], "shop.example");
        assert_eq!(head.headers().get_all("x-two").iter().count(), 2);
        assert!(head_of(b"POST / HTTP/1.1\r\nHost: a\r\n").is_none(), "a partial head");
    }
}
