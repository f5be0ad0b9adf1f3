//! The HTTP request path: route, pick an endpoint, forward, stream the answer back.
//!
//! A request loads the current runtime once and keeps it to the end, so a swap never
//! changes the rules under a request in flight. Local answers: `404` no route, `502`
//! upstream unreachable or broken (or over the route's `max_response_bytes`), `503` no
//! config yet, `504` upstream too slow, `408` a request body that stopped arriving.
//! The response body is wrapped so that when it is done (sent, or dropped because the
//! client left) the request's metrics are recorded and its access log line is queued.

mod cached;
mod connection;
mod finish;
mod forward;
mod handle;
mod held;
mod limits;

pub(crate) use connection::{Connection, Serving};
pub(crate) use finish::{ProxyBody, unrecorded};
pub(crate) use forward::upstream_request;
