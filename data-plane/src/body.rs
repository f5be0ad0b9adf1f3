//! A body read by hyper (a streamed request body, or an upstream's answer), with the
//! frames already taken off it, if any, in front; and what a request body that failed
//! on its way upstream says of its failure ([`BodyFault`]).
//!
//! Why: a chunked request body is read ahead before its request goes upstream
//! ([`crate::admission`]), so that a malformed one is refused before anything is sent.
//! A body that turns out larger than what is read ahead is forwarded as it streams, and
//! hyper's `Incoming` cannot be given back what was read off it: this type replays those
//! frames first. The frames live behind one pointer that is `None` for every other body,
//! so the common case pays a branch per frame and nothing else.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// hyper's body, after the frames read ahead of it.
#[derive(Debug)]
pub(crate) struct Streamed {
    // Boxed: a pointer in every body, rather than an empty queue's 32 bytes.
    #[allow(clippy::box_collection)]
    ahead: Option<Box<VecDeque<Frame<Bytes>>>>,
    body: Incoming,
}

impl Streamed {
    /// A body with nothing read ahead.
    pub(crate) fn new(body: Incoming) -> Streamed {
        Streamed { ahead: None, body }
    }

    /// `body`, after `ahead` (frames read off it, in order).
    pub(crate) fn after(ahead: VecDeque<Frame<Bytes>>, body: Incoming) -> Streamed {
        Streamed { ahead: (!ahead.is_empty()).then(|| Box::new(ahead)), body }
    }
}

impl From<Incoming> for Streamed {
    fn from(body: Incoming) -> Streamed {
        Streamed::new(body)
    }
}

impl Body for Streamed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(ahead) = &mut this.ahead {
            if let Some(frame) = ahead.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            this.ahead = None;
        }
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let hint = self.body.size_hint();
        let Some(ahead) = &self.ahead else { return hint };
        let buffered: u64 = ahead.iter().filter_map(|f| f.data_ref()).map(|d| d.len() as u64).sum();
        let mut sum = SizeHint::new();
        sum.set_lower(hint.lower().saturating_add(buffered));
        if let Some(upper) = hint.upper() {
            sum.set_upper(upper.saturating_add(buffered));
        }
        sum
    }
}

/// What went wrong with a request body on its way upstream, shared by the body (which
/// sees it) and the request (which answers for it).
#[derive(Debug, Default)]
pub(crate) struct BodyFault(AtomicU8);

impl BodyFault {
    const TOO_LARGE: u8 = 1;
    const BROKEN: u8 = 2;

    /// The body went past the route's `max_request_bytes`.
    pub(crate) fn set_too_large(&self) {
        self.0.store(Self::TOO_LARGE, Ordering::Relaxed);
    }

    /// The client's body failed (malformed, cut short): the client's fault.
    pub(crate) fn set_broken(&self) {
        let _ = self.0.compare_exchange(0, Self::BROKEN, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub(crate) fn too_large(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::TOO_LARGE
    }

    pub(crate) fn broken(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::BROKEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_faults_keep_the_first_cause() {
        let fault = BodyFault::default();
        assert!(!fault.broken() && !fault.too_large());
        fault.set_too_large();
        fault.set_broken();
        assert!(fault.too_large() && !fault.broken(), "the limit's error is not the client's malformed body");
        let fault = BodyFault::default();
        fault.set_broken();
        assert!(fault.broken());
    }
}
