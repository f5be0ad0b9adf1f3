//! What a forwarded exchange is held to while its bodies stream ([`Held`]: the route's
//! limits, see [`crate::proxy`]'s `limits`), read by the body that finishes it: a leaf,
//! so that the finishing body and the limits' rules each import it and not each other.

use std::sync::Arc;

use crate::http::body::BodyFault;
use crate::observe::metrics::ClusterStats;

/// The access log's `error` of an exchange whose request body stopped arriving.
pub(super) const BODY_TIMEOUT: &str = "request_body_timeout";
/// The access log's `error` of an answer refused or cut at `max_response_bytes`.
pub(super) const RESPONSE_TOO_LARGE: &str = "response_too_large";

/// The error an answer ends with where it crosses its route's `max_response_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("upstream response larger than {0} bytes")]
pub(crate) struct ResponseTooLarge(pub(super) u64);

/// What a forwarded exchange is held to while its bodies stream, read when it finishes.
#[derive(Debug)]
pub(crate) struct Held {
    /// The request body's fault, shared with the body: a timeout there is the client's.
    pub(super) fault: Option<Arc<BodyFault>>,
    /// Most response body bytes passed to the client (0: any).
    pub(super) max_response_bytes: u64,
    /// Where an answer cut at the limit is counted.
    pub(super) cluster: Arc<ClusterStats>,
    /// The answer was refused or cut at the limit.
    pub(super) cut: bool,
}

impl Held {
    /// Why the exchange ended early, for its access log line.
    pub(super) fn error(&self) -> Option<&'static str> {
        if self.cut {
            Some(RESPONSE_TOO_LARGE)
        } else if self.fault.as_deref().is_some_and(BodyFault::timed_out) {
            Some(BODY_TIMEOUT)
        } else {
            None
        }
    }
}
