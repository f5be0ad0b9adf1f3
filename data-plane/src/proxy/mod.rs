//! The HTTP request path: route, pick an endpoint, forward, stream the answer back.
//!
//! A request loads the current runtime once and keeps it to the end, so a swap never
//! changes the rules under a request in flight. Local answers: `404` no route, `502`
//! upstream unreachable or broken, `503` no config yet, `504` upstream too slow.
//! The response body is wrapped so that when it is done (sent, or dropped because the
//! client left) the request's metrics are recorded and its access log line is queued.

mod connection;
mod finish;
mod forward;
mod handle;

pub(crate) use connection::{Connection, Serving};
pub(crate) use finish::{ProxyBody, unrecorded};
pub(crate) use forward::upstream_request;
