//! The wait for a client's request body, bounded between two reads: the route's
//! `request_body_timeout` (nginx's `client_body_timeout`, which also runs between two
//! successive reads; Envoy's `stream_idle_timeout` counts idle time either way).
//!
//! Why only while the body waits on the client: a streamed body is polled by whoever sends
//! it upstream, and it is not polled while the upstream takes no more (back pressure).
//! That time is the upstream's, bounded by the route timeout and blamed on the upstream.
//! So the timer is armed when a poll finds nothing ready after some progress, and a frame
//! disarms it; a client that sends nothing for the timeout ends its body with
//! [`BodyTimeout`]. A body that keeps arriving, however slowly, is not cut here (as with
//! nginx); the route timeout still bounds the wait for the upstream's answer.
//!
//! Cost: a frame that is ready costs a store of a flag; the timer (one allocation) is
//! made at the body's first wait and reset at each later one.

use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The error a request body ends with when its client stopped sending it.
#[derive(Debug, thiserror::Error)]
#[error("request body idle for more than {0:?}")]
pub(crate) struct BodyTimeout(pub(crate) Duration);

/// The idle timer of one request body.
#[derive(Debug)]
pub(crate) struct Idle {
    timeout: Duration,
    /// Made at the first wait.
    sleep: Option<Pin<Box<Sleep>>>,
    /// The last poll found nothing ready: the timer runs.
    waiting: bool,
}

impl Idle {
    pub(crate) fn new(timeout: Duration) -> Idle {
        Idle { timeout, sleep: None, waiting: false }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The body gave a frame, or ended: the client is not being waited on.
    pub(crate) fn progress(&mut self) {
        self.waiting = false;
    }

    /// The body had nothing ready: whether its client has now been silent for the
    /// timeout. Otherwise the timer will wake `cx` when it has.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.waiting {
            self.waiting = true;
            let deadline = Instant::now() + self.timeout;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.sleep.as_mut().is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready())
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_timer_counts_only_the_wait_since_the_last_progress() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut idle = Idle::new(Duration::from_secs(30));
        assert!(!idle.poll_expired(&mut cx), "armed at the first wait");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(!idle.poll_expired(&mut cx));
        idle.progress();
        // Not polled for a while (the upstream took no more): not the client's time.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!idle.poll_expired(&mut cx), "re-armed from this wait, not the last one");
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!idle.poll_expired(&mut cx));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(idle.poll_expired(&mut cx), "30 s without a byte");
    }
}
