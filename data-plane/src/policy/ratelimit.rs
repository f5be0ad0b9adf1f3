//! Local rate limiting: GCRA (the generic cell rate algorithm, a token bucket kept as one
//! timestamp per key) over a bounded, sharded map.
//!
//! Written here rather than taken from `governor`: governor's keyed limiter cannot bound
//! how many keys it holds (a flood of distinct client addresses grows it until a
//! `retain_recent` sweep), and its state is not carried across a config swap. A GCRA key
//! whose theoretical arrival time (TAT) has passed is indistinguishable from a fresh key,
//! so such entries can be dropped at any time without changing a decision: the bound costs
//! accuracy only when more than `max_keys` keys are all limited at once, and then the
//! least recently limited go first.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// One limiter: `burst` requests at once, refilled at one per `interval`.
#[derive(Debug)]
pub(crate) struct Limiter {
    /// Time one request "costs" (`per / requests`), in nanoseconds.
    interval: u64,
    /// How far ahead of now the TAT may run: `interval * (burst - 1)`.
    tolerance: u64,
    pub(crate) limit: u32,
    max_per_shard: usize,
    epoch: Instant,
    hasher: std::collections::hash_map::RandomState,
    shards: Box<[Mutex<HashMap<u64, u64>>]>,
}

/// A decision, with what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) allowed: bool,
    /// Requests that could be sent at once now.
    pub(crate) remaining: u32,
    /// Until the bucket is full again.
    pub(crate) reset: Duration,
    /// When refused: until one request is allowed again.
    pub(crate) retry_after: Duration,
}

impl Limiter {
    /// `requests` per `per`, bursts of `burst` (at least 1), at most `max_keys` keys.
    pub(crate) fn new(requests: u32, per: Duration, burst: u32, max_keys: usize) -> Limiter {
        let requests = u64::from(requests.max(1));
        let interval = (u64::try_from(per.as_nanos()).unwrap_or(u64::MAX) / requests).max(1);
        let burst = burst.max(1);
        Limiter {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst) - 1),
            limit: burst,
            max_per_shard: max_keys.div_ceil(SHARDS).max(1),
            epoch: Instant::now(),
            hasher: std::collections::hash_map::RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Counts one request for `key` at `now`.
    pub(crate) fn check(&self, key: &[u8], now: Instant) -> Decision {
        let hash = self.hasher.hash_one(key);
        let now = u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let shard = &self.shards[(hash as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        let tat = map.get(&hash).copied().unwrap_or(now).max(now);
        let allowed_at = tat.saturating_sub(self.tolerance);
        if now < allowed_at {
            let retry_after = Duration::from_nanos(allowed_at - now);
            return Decision { allowed: false, remaining: 0, reset: Duration::from_nanos(tat - now), retry_after };
        }
        let new_tat = tat + self.interval;
        if !map.contains_key(&hash) && map.len() >= self.max_per_shard {
            Self::make_room(&mut map, now, self.max_per_shard);
        }
        map.insert(hash, new_tat);
        // Room left in the bucket after this request.
        let used = new_tat - now;
        let remaining = (self.tolerance + self.interval).saturating_sub(used) / self.interval;
        Decision {
            allowed: true,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            reset: Duration::from_nanos(used),
            retry_after: Duration::ZERO,
        }
    }

    /// Drops keys whose bucket is full again (no effect on decisions); if that is not
    /// enough, the quarter of keys closest to full.
    fn make_room(map: &mut HashMap<u64, u64>, now: u64, max: usize) {
        map.retain(|_, tat| *tat > now);
        if map.len() >= max {
            let mut tats: Vec<u64> = map.values().copied().collect();
            let cut = (max / 4).max(1).min(tats.len() - 1);
            let (_, nth, _) = tats.select_nth_unstable(cut);
            let threshold = *nth;
            map.retain(|_, tat| *tat > threshold);
        }
    }

    /// Keys held now (for tests and metrics).
    pub(crate) fn keys(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let l = Limiter::new(10, Duration::from_secs(1), 5, 1000);
        let t0 = Instant::now();
        let allowed: Vec<bool> = (0..8).map(|_| l.check(b"k", t0).allowed).collect();
        assert_eq!(allowed, [true, true, true, true, true, false, false, false]);
        let refused = l.check(b"k", t0);
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        // One request per 100 ms after that.
        assert!(l.check(b"k", t0 + Duration::from_millis(100)).allowed);
        assert!(!l.check(b"k", t0 + Duration::from_millis(150)).allowed);
        assert!(l.check(b"k", t0 + Duration::from_millis(200)).allowed);
    }

    #[test]
    fn allowed_count_over_a_window_is_burst_plus_rate() {
        let l = Limiter::new(100, Duration::from_secs(1), 20, 1000);
        let t0 = Instant::now();
        // 1,000 requests evenly over 2 s: 20 (burst) + 200 (rate x 2 s), give or take one.
        let allowed = (0..1000).filter(|i| l.check(b"k", t0 + Duration::from_millis(i * 2)).allowed).count();
        assert!((219..=221).contains(&allowed), "{allowed}");
    }

    #[test]
    fn keys_are_isolated_and_remaining_counts_down() {
        let l = Limiter::new(1, Duration::from_secs(60), 3, 1000);
        let t0 = Instant::now();
        let d: Vec<u32> = (0..3).map(|_| l.check(b"a", t0).remaining).collect();
        assert_eq!(d, [2, 1, 0]);
        assert!(!l.check(b"a", t0).allowed);
        assert!(l.check(b"b", t0).allowed, "another key has its own bucket");
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_bounded() {
        let l = Limiter::new(1, Duration::from_secs(3600), 1, 1000);
        let t0 = Instant::now();
        assert!(l.check(b"victim", t0).allowed);
        assert!(!l.check(b"victim", t0).allowed);
        for i in 0u32..100_000 {
            l.check(&i.to_be_bytes(), t0 + Duration::from_nanos(u64::from(i)));
        }
        assert!(l.keys() <= 1000 + SHARDS, "{}", l.keys());
        // Keys whose bucket refilled are dropped first, free of any effect.
        let later = t0 + Duration::from_secs(7200);
        for i in 0u32..2000 {
            l.check(&(i + 1_000_000).to_be_bytes(), later);
        }
        assert!(l.keys() <= 1000 + SHARDS);
    }
}
