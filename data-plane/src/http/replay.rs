//! Request bodies kept for a second send (a retry of a request the upstream received, a
//! mirror), within the node's memory budget for them.
//!
//! A body the inline server read whole is already in memory: sending it again costs a
//! reference count. A streamed one (chunked, larger than the inline server reads, or
//! HTTP/2) is read ahead up to the route's `replay_body_bytes` before it goes upstream:
//! if it ends within that, it is held whole like an inline one; if not, what was read
//! goes back in front of the rest and the body streams once, not kept. Bytes read ahead
//! are charged to [`ReplayBudget`] until the request's answer is in; a body announced
//! (`Content-Length`) that does not fit is refused at once, one of unknown length that
//! stops fitting streams on, not kept.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::body::UpstreamBody;

/// Default node budget for kept bodies: 64 MiB, a thousand 64 KiB bodies at once.
pub const DEFAULT_REPLAY_BUDGET: u64 = 64 << 20;
/// Default `replay_body_bytes` of a route: what the inline server reads whole anyway.
pub(crate) const DEFAULT_REPLAY_BODY_BYTES: u64 = 64 << 10;

/// The node's memory for kept request bodies, in bytes, shared by all its requests.
#[derive(Debug)]
pub(crate) struct ReplayBudget {
    bytes: Arc<Semaphore>,
    total: usize,
    /// Requests refused for want of room (the `503`s).
    refused: AtomicU64,
}

impl Default for ReplayBudget {
    fn default() -> Self {
        ReplayBudget::new(DEFAULT_REPLAY_BUDGET)
    }
}

impl ReplayBudget {
    pub(crate) fn new(bytes: u64) -> ReplayBudget {
        let total = usize::try_from(bytes).unwrap_or(usize::MAX).min(Semaphore::MAX_PERMITS);
        ReplayBudget { bytes: Arc::new(Semaphore::new(total)), total, refused: AtomicU64::new(0) }
    }

    /// Bytes charged now.
    pub(crate) fn in_use(&self) -> usize {
        self.total - self.bytes.available_permits()
    }

    /// Requests refused for want of room so far.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// `n` more bytes on `charge`, if the budget has them.
    fn charge(&self, charge: &mut Option<OwnedSemaphorePermit>, n: usize) -> bool {
        let Ok(n) = u32::try_from(n) else { return false };
        if n == 0 {
            return true;
        }
        let Ok(more) = self.bytes.clone().try_acquire_many_owned(n) else { return false };
        match charge {
            Some(held) => held.merge(more),
            None => *charge = Some(more),
        }
        true
    }
}

/// What reading a streamed body ahead came to.
#[derive(Debug)]
pub(crate) enum ReadAhead {
    /// The body is held whole in memory, charged to the budget until this is dropped.
    Whole(Option<OwnedSemaphorePermit>),
    /// Longer than the limit, or the budget ran out: the body streams once, not kept.
    Streams,
    /// Announced longer than the budget has room for: refuse the request.
    NoRoom,
    /// The client's body failed while read (its fault is told to the body's fault).
    Failed,
}

/// Reads `body` ahead up to `limit` bytes (see the module). On `Streams` the bytes read
/// are back in front of the body; on `Whole` the body is those bytes.
/// A body still arriving at `deadline` streams from there.
pub(crate) async fn read_ahead(
    body: &mut UpstreamBody,
    limit: u64,
    budget: &ReplayBudget,
    deadline: tokio::time::Instant,
) -> ReadAhead {
    let hint = body.size_hint();
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut charge = None;
    if let Some(announced) = hint.exact() {
        let Ok(announced) = usize::try_from(announced) else { return ReadAhead::Streams };
        if announced > limit {
            return ReadAhead::Streams;
        }
        if !budget.charge(&mut charge, announced) {
            budget.refused.fetch_add(1, Ordering::Relaxed);
            return ReadAhead::NoRoom;
        }
    } else if hint.lower() > limit as u64 {
        return ReadAhead::Streams;
    }
    let announced = hint.exact().is_some();
    let mut frames: Vec<Frame<Bytes>> = Vec::new();
    let mut read = 0usize;
    loop {
        let next = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
        let Ok(frame) = tokio::time::timeout_at(deadline, next).await else {
            body.unread(frames);
            return ReadAhead::Streams;
        };
        match frame {
            None => break,
            Some(Err(_)) => return ReadAhead::Failed,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    read += data.len();
                    let fits = read <= limit && (announced || budget.charge(&mut charge, data.len()));
                    if !fits {
                        frames.push(frame);
                        body.unread(frames);
                        return ReadAhead::Streams;
                    }
                    frames.push(frame);
                } else {
                    // Trailers: a body with them is not held whole (the inline client
                    // cannot send them); it streams, trailers and all.
                    frames.push(frame);
                    body.unread(frames);
                    return ReadAhead::Streams;
                }
            }
        }
    }
    let whole = match frames.len() {
        0 => Bytes::new(),
        1 => frames.pop().and_then(|f| f.into_data().ok()).unwrap_or_default(),
        _ => {
            let mut out = BytesMut::with_capacity(read);
            for frame in frames {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            out.freeze()
        }
    };
    body.hold(whole);
    ReadAhead::Whole(charge)
}
