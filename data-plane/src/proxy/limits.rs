//! Slow and oversized traffic (issue 17): what a request is held to once its route is
//! known, beside the forward itself.
//!
//! - A request body that stops arriving for the route's `request_body_timeout` (between
//!   two reads, see [`crate::http::idle`]) is the client's fault: `408` with
//!   `Connection: close` while no answer has started, whichever server read it (the
//!   inline one for bodies it reads whole, hyper's for streamed ones, HTTP/2 included);
//!   a route timeout that ends while Vane waits on the client's body is the client's too.
//!   After the upstream began answering, the answer is cut (hyper ends the upstream
//!   exchange when the body fails). Either way it counts in
//!   `vane_http_request_body_timeouts_total` under its route and never against the
//!   upstream (`vane_upstream_timeouts_total`, errors, passive health).
//! - An answer over the route's `max_response_bytes` is refused with a `502` before any
//!   byte of it leaves when its length is announced (`Content-Length`), and cut where it
//!   crosses the limit otherwise ([`crate::proxy::finish`]'s body ends with
//!   [`super::held::ResponseTooLarge`]: HTTP/1.1 closes the connection without the last chunk, HTTP/2
//!   resets the stream). Both count in `vane_upstream_response_too_large_total{cluster}`:
//!   it is the upstream's answer that broke the route's rule.
//!
//! Access log lines of such exchanges say why in `error` (`request_body_timeout`,
//! `response_too_large`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Body;

use crate::http::body::BodyFault;
use crate::http::body::InnerBody;
use crate::http::body::local;
use crate::observe::metrics;
use crate::routing::router::Route;
use crate::routing::runtime::DEFAULT_REQUEST_BODY_TIMEOUT;
use crate::upstream::cluster::Cluster;

use super::connection::Connection;
use super::finish::{Finish, Finishing, ProxyBody, Upstream, draft_line};
use super::held::{BODY_TIMEOUT, Held};

/// Names the limit an answer broke, as `x-vane-overloaded` names the circuit breaker's.
static X_VANE_RESPONSE_TOO_LARGE: HeaderName = HeaderName::from_static("x-vane-response-too-large");

/// After a forward: holds the exchange to the route's limits. An answer announcing more
/// than `max_response_bytes` becomes a `502` here, its upstream connection not reused
/// (its body is left unread).
pub(super) fn hold(
    route: &Route,
    cluster: &Cluster,
    head_request: bool,
    fault: Option<Arc<BodyFault>>,
    response: &mut Response<InnerBody>,
    upstream: &mut Upstream,
) {
    let max = route.max_response_bytes;
    if fault.is_none() && max == 0 {
        return;
    }
    let mut held = Held { fault, max_response_bytes: max, cluster: cluster.stats.clone(), cut: false };
    // Local answers (a refusal that replaced the upstream's) are the node's own.
    let from_upstream = matches!(response.body(), Either::Left(_));
    let hinted = response.body().size_hint().lower();
    if max > 0 && from_upstream && announced_over(response.status(), response.headers(), hinted, head_request, max) {
        cluster.stats.response_too_large.fetch_add(1, Ordering::Relaxed);
        held.cut = true;
        *response = local(StatusCode::BAD_GATEWAY, "upstream response too large\n");
        response
            .headers_mut()
            .insert(X_VANE_RESPONSE_TOO_LARGE.clone(), HeaderValue::from_static("max_response_bytes"));
        upstream.lease = None;
    }
    upstream.held = Some(Box::new(held));
}

/// Whether an answer (`status`, `headers`, a body of at least `hinted` bytes) says it
/// will send a body of more than `max` bytes. Answers without a body never do, whatever
/// length they announce (HEAD, 1xx, 204, 304).
fn announced_over(status: StatusCode, headers: &HeaderMap, hinted: u64, head_request: bool, max: u64) -> bool {
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if bodiless {
        return false;
    }
    let announced =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    announced.unwrap_or(0).max(hinted) > max
}

impl Connection {
    /// The `request_body_timeout` of the route a request head takes (the default for a
    /// head no forwarding route takes): how long a server reading its body ahead waits
    /// between two reads.
    pub(crate) fn request_body_timeout<B>(&self, head: &Request<B>) -> Duration {
        let runtime = self.shared.runtime.load();
        runtime
            .as_ref()
            .and_then(|rt| rt.listeners.get(&self.slot))
            .and_then(|router| router.find_with(head, self.tls.as_deref()))
            .map_or(DEFAULT_REQUEST_BODY_TIMEOUT, |found| found.entry.route.request_body_timeout)
    }

    /// The `408` for a request whose body, read ahead by a server, stopped arriving;
    /// recorded under the route its head takes (metrics, access log), with `received`
    /// body bytes since `since`. The connection closes after it.
    pub(crate) fn body_timed_out<B>(&self, head: &Request<B>, since: Instant, received: u64) -> Response<ProxyBody> {
        let mut response = local(StatusCode::REQUEST_TIMEOUT, "request body not received in time\n");
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        let runtime = self.shared.runtime.load_full();
        let Some(router) = runtime.as_ref().and_then(|rt| rt.listeners.get(&self.slot)) else {
            return response.map(super::unrecorded);
        };
        let (stats, route) = match router.find_with(head, self.tls.as_deref()) {
            Some(found) => (
                found.entry.stats.first().cloned().unwrap_or_else(|| router.unrouted.clone()),
                Some(found.entry.route.name.clone()),
            ),
            None => (router.unrouted.clone(), None),
        };
        stats.count_body_timeout();
        let draft = router.access_log.as_ref().map(|sink| {
            let mut line = draft_line(head, self.peer);
            line.error = Some(BODY_TIMEOUT);
            Box::new((sink.clone(), line))
        });
        let finish = Finish {
            start: since,
            stats,
            method: metrics::method_index(head.method()),
            status: StatusCode::REQUEST_TIMEOUT.as_u16(),
            upstream: None,
            bytes_in: Some(Arc::new(AtomicU64::new(received))),
            draft,
            listener: router.listener.clone(),
            route,
            cluster: None,
            #[cfg(feature = "otlp")]
            trace: None,
        };
        response.map(|body| Finishing::new(body, Some(finish)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http::uri::Authority;
    use http_body_util::BodyExt;
    use hyper::body::Frame;

    use super::*;
    use crate::observe::metrics::ClusterStats;
    use crate::proxy::held::ResponseTooLarge;

    /// An answer streamed in the given chunks, length unknown.
    struct Chunks(VecDeque<&'static [u8]>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = crate::support::BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(Bytes::from_static(c)))))
        }
    }

    fn finishing(chunks: &[&'static [u8]], max: u64, cluster: &Arc<ClusterStats>) -> Finishing<Chunks> {
        let held = Held { fault: None, max_response_bytes: max, cluster: cluster.clone(), cut: false };
        let upstream = Upstream {
            authority: Authority::from_static("127.0.0.1:9001"),
            time: Duration::ZERO,
            request_id: None,
            lease: None,
            held: Some(Box::new(held)),
            fill: None,
        };
        let finish = Finish {
            start: Instant::now(),
            stats: Arc::default(),
            method: 0,
            status: 200,
            upstream: Some(upstream),
            bytes_in: None,
            draft: None,
            listener: "web".into(),
            route: None,
            cluster: None,
            #[cfg(feature = "otlp")]
            trace: None,
        };
        Finishing::new(Chunks(chunks.iter().copied().collect()), Some(finish))
    }

    #[tokio::test]
    async fn a_streamed_answer_ends_in_an_error_where_it_crosses_the_limit_and_is_counted() {
        let cluster = Arc::new(ClusterStats::default());
        let mut body = finishing(&[b"01234", b"56789", b"X"], 10, &cluster);
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "01234");
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "56789", "the limit itself passes");
        let error = body.frame().await.unwrap().expect_err("cut at the limit");
        assert!(error.is::<ResponseTooLarge>(), "{error}");
        assert_eq!(cluster.response_too_large.load(Ordering::Relaxed), 1);

        let mut within = finishing(&[b"01234", b"56789"], 10, &cluster);
        while let Some(frame) = within.frame().await {
            frame.unwrap();
        }
        assert_eq!(cluster.response_too_large.load(Ordering::Relaxed), 1, "an answer within the limit");
    }

    fn length(n: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_str(n).unwrap());
        headers
    }

    #[test]
    fn an_answer_announcing_more_than_the_limit_is_over_it_unless_it_has_no_body() {
        let ok = StatusCode::OK;
        assert!(announced_over(ok, &length("11"), 0, false, 10));
        assert!(!announced_over(ok, &length("10"), 0, false, 10), "the limit itself passes");
        assert!(announced_over(ok, &HeaderMap::new(), 11, false, 10), "a body framed longer (hyper's hint)");
        assert!(!announced_over(ok, &HeaderMap::new(), 0, false, 10), "chunked: judged as it streams");
        assert!(!announced_over(ok, &length("not a number"), 0, false, 10));
        assert!(!announced_over(ok, &length("11"), 0, true, 10), "HEAD");
        for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED, StatusCode::CONTINUE] {
            assert!(!announced_over(status, &length("11"), 0, false, 10), "{status}");
        }
    }
}
