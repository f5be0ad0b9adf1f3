//! Endpoint choice within a cluster, built once per snapshot: smooth weighted round robin,
//! weighted random, least request (power of two choices), ring hash and Maglev.
//!
//! Hash keys come from the request (a header, a cookie, the client address or the path);
//! a request without its key falls back to round robin. Keys are hashed with SipHash
//! (std's `DefaultHasher`, fixed keys): the same key lands on the same endpoint on every
//! node running the same build.
//!
//! Operators' controls live here too. A drained endpoint (`Endpoint.drain`) is left out of
//! the round-robin schedule and the weighted draws, so those policies never see it; the
//! hash policies keep it on their ring or table (keys do not move when it comes back) and
//! pass over it to the next endpoint, as they pass over an unavailable one. Slow start
//! (`upstream::slowstart`) thins the draws of ramping endpoints. An endpoint undrained,
//! or added to a cluster that already served, is marked as back when the balancer is built
//! (its slow start begins).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::HeaderMap;
use vane_proto::config::{self, cluster::LbPolicy, hash_policy};

use crate::upstream::health::EndpointHealth;
use crate::upstream::slowstart::SlowStart;

/// Ring points per unit of weight, and the most points a ring may hold.
const POINTS_PER_WEIGHT: u64 = 100;
const MAX_RING_POINTS: u64 = 100_000;
/// Maglev table size: a prime well above 100 x endpoints for typical clusters.
const MAGLEV_SIZE: u64 = 65_537;

/// What a request offers the hash policies.
#[derive(Debug)]
pub(crate) struct PickContext<'a> {
    pub(crate) client: IpAddr,
    pub(crate) path: &'a str,
    pub(crate) headers: &'a HeaderMap,
}

#[derive(Debug)]
enum HashKey {
    SourceIp,
    Path,
    Header(http::HeaderName),
    Cookie(Box<str>),
}

impl HashKey {
    fn compile(p: Option<&config::HashPolicy>) -> HashKey {
        match p.and_then(|p| p.key.as_ref()) {
            Some(hash_policy::Key::Header(h)) => http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                .map(HashKey::Header)
                .unwrap_or(HashKey::SourceIp),
            Some(hash_policy::Key::Cookie(c)) => HashKey::Cookie(c.as_str().into()),
            Some(hash_policy::Key::Path(true)) => HashKey::Path,
            _ => HashKey::SourceIp,
        }
    }

    fn hash(&self, ctx: &PickContext<'_>) -> Option<u64> {
        let mut h = DefaultHasher::new();
        match self {
            HashKey::SourceIp => ctx.client.hash(&mut h),
            HashKey::Path => ctx.path.hash(&mut h),
            HashKey::Header(name) => ctx.headers.get(name)?.as_bytes().hash(&mut h),
            HashKey::Cookie(name) => {
                let value = ctx
                    .headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .find_map(|kv| kv.trim().strip_prefix(&**name)?.strip_prefix('='))?;
                value.hash(&mut h);
            }
        }
        Some(h.finish())
    }
}

fn hash_of(value: &str) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

#[derive(Debug)]
enum Strategy {
    RoundRobin,
    Random,
    LeastRequest,
    /// Sorted `(point, endpoint)`.
    Ring(Box<[(u64, u32)]>),
    /// Endpoint per slot.
    Maglev(Box<[u32]>),
}

/// A cluster's endpoint chooser.
#[derive(Debug)]
pub(crate) struct Balancer {
    strategy: Strategy,
    key: HashKey,
    /// Endpoint indexes in smooth weighted round-robin order (length = sum of weights);
    /// also the weighted draw of RANDOM and LEAST_REQUEST.
    schedule: Box<[u32]>,
    weights: Box<[u32]>,
    cursor: Arc<AtomicUsize>,
    /// Requests in flight per endpoint (LEAST_REQUEST); one counter per endpoint address,
    /// shared with the previous balancer for the addresses it had.
    in_flight: Arc<[Arc<AtomicUsize>]>,
    /// Drained endpoints, in endpoint order; empty when none is.
    drained: Box<[bool]>,
    /// Endpoints not drained.
    serving: usize,
    slow_start: Option<SlowStart>,
}

/// What operators set on a cluster's endpoints, for [`Balancer::build`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Operators<'a> {
    /// Per endpoint, in endpoint order (shorter: the rest are not drained).
    pub(crate) drained: &'a [bool],
    pub(crate) slow_start: Option<&'a config::SlowStart>,
    /// The endpoints' health, in endpoint order: when each came back, for slow start.
    pub(crate) health: Option<&'a Arc<[Arc<EndpointHealth>]>>,
}

/// Counts a request against its endpoint until dropped.
#[derive(Debug)]
pub(crate) struct Picked {
    pub(crate) index: usize,
    counter: Arc<AtomicUsize>,
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    /// `addresses` and `weights` in endpoint order; `cursor` is carried across swaps.
    pub(crate) fn build(
        policy: LbPolicy,
        hash_policy: Option<&config::HashPolicy>,
        addresses: &[String],
        weights: &[u32],
        cursor: Arc<AtomicUsize>,
        previous: Option<(&[String], &Balancer)>,
        ops: Operators<'_>,
    ) -> Balancer {
        let strategy = match policy {
            LbPolicy::RoundRobin => Strategy::RoundRobin,
            LbPolicy::Random => Strategy::Random,
            LbPolicy::LeastRequest => Strategy::LeastRequest,
            LbPolicy::RingHash => Strategy::Ring(ring(addresses, weights)),
            LbPolicy::Maglev => Strategy::Maglev(maglev(addresses, weights)),
        };
        let drained_at = |i: usize| ops.drained.get(i).copied().unwrap_or(false);
        let serving = (0..addresses.len()).filter(|i| !drained_at(*i)).count();
        // The validator keeps one endpoint undrained; should none be, serve on all of them
        // rather than on none.
        let drained: Box<[bool]> =
            if serving == addresses.len() || serving == 0 { Box::new([]) } else { ops.drained.into() };
        let serving = if drained.is_empty() { addresses.len() } else { serving };
        let schedule_weights: Vec<u32> =
            weights.iter().enumerate().map(|(i, w)| if drained.get(i) == Some(&true) { 0 } else { *w }).collect();
        let old_index = |a: &String| previous.and_then(|(old, b)| Some((old.iter().position(|o| o == a)?, b)));
        if let (Some(_), Some(health)) = (previous, ops.health) {
            // Back into rotation: added to a cluster that already served, or undrained.
            for (i, a) in addresses.iter().enumerate() {
                let returned = match old_index(a) {
                    None => true,
                    Some((j, b)) => b.drained.get(j) == Some(&true),
                };
                if returned
                    && drained.get(i) != Some(&true)
                    && let Some(h) = health.get(i)
                {
                    h.mark_returned();
                }
            }
        }
        let slow_start = match (&strategy, ops.health) {
            (Strategy::RoundRobin | Strategy::Random | Strategy::LeastRequest, Some(health)) => {
                SlowStart::compile(ops.slow_start, health)
            }
            _ => None,
        };
        Balancer {
            strategy,
            key: HashKey::compile(hash_policy),
            schedule: smooth_weighted_schedule(&schedule_weights).into(),
            weights: weights.into(),
            cursor,
            in_flight: addresses
                .iter()
                .map(|a| old_index(a).and_then(|(i, b)| b.in_flight.get(i)).cloned().unwrap_or_default())
                .collect(),
            drained,
            serving,
            slow_start,
        }
    }

    /// Whether endpoint `index` takes new requests (it is not drained).
    #[inline]
    pub(crate) fn serving(&self, index: usize) -> bool {
        self.drained.get(index) != Some(&true)
    }

    /// How many endpoints take new requests.
    pub(crate) fn serving_count(&self) -> usize {
        self.serving
    }

    /// For the admin endpoint: drained, requests in flight (awaiting their response
    /// head), and the percent of its weight it gets now (below 100 while it ramps up).
    pub(crate) fn describe(&self, index: usize) -> (bool, usize, u32) {
        let in_flight = self.in_flight.get(index).map_or(0, |n| n.load(Ordering::Relaxed));
        let percent =
            if self.serving(index) { self.slow_start.as_ref().map_or(100, |s| s.percent_now(index)) } else { 0 };
        (!self.serving(index), in_flight, percent)
    }

    fn round_robin(&self) -> Option<usize> {
        let slot = self.cursor.fetch_add(1, Ordering::Relaxed) % self.schedule.len().max(1);
        self.schedule.get(slot).map(|i| *i as usize)
    }

    fn weighted_draw(&self) -> Option<usize> {
        self.schedule.get(rand::random_range(0..self.schedule.len().max(1))).map(|i| *i as usize)
    }

    /// `draw`, thinned by slow start when the cluster has it.
    #[inline]
    fn ramped(&self, draw: impl Fn() -> Option<usize>) -> Option<usize> {
        match &self.slow_start {
            None => draw(),
            Some(slow_start) => slow_start.draw(draw),
        }
    }

    /// The endpoint for a request; `None` context (a retry) means "another one": round
    /// robin for the hash policies. Endpoints `usable` refuses are passed over (the
    /// cluster decides: health, priority level, panic mode); drained ones always are.
    pub(crate) fn pick(&self, ctx: Option<&PickContext<'_>>, usable: &dyn Fn(usize) -> bool) -> Option<Picked> {
        let first = self.choose(ctx)?;
        let ok = |i: usize| self.serving(i) && usable(i);
        let index = if ok(first) {
            first
        } else {
            self.another(first, ctx, &ok)
                .or_else(|| (!self.serving(first)).then(|| self.another(first, ctx, &|i| self.serving(i))).flatten())
                .unwrap_or(first)
        };
        self.count(index)
    }

    /// Counts a request against endpoint `index` chosen by other means (session
    /// affinity); `None` when it takes no new requests (drained).
    pub(crate) fn take(&self, index: usize) -> Option<Picked> {
        if !self.serving(index) {
            return None;
        }
        self.count(index)
    }

    fn count(&self, index: usize) -> Option<Picked> {
        let counter = self.in_flight.get(index)?.clone();
        counter.fetch_add(1, Ordering::Relaxed);
        Some(Picked { index, counter })
    }

    /// The next usable endpoint after `first` in the policy's own order.
    fn another(&self, first: usize, ctx: Option<&PickContext<'_>>, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        match (&self.strategy, ctx.and_then(|c| self.key.hash(c))) {
            (Strategy::Ring(points), Some(h)) if !points.is_empty() => {
                let start = points.partition_point(|(p, _)| *p < h);
                (0..points.len()).map(|k| points[(start + k) % points.len()].1 as usize).find(|i| usable(*i))
            }
            (Strategy::Maglev(table), Some(h)) if !table.is_empty() => {
                let start = (h % table.len() as u64) as usize;
                (0..table.len()).map(|k| table[(start + k) % table.len()] as usize).find(|i| usable(*i))
            }
            _ => (0..self.schedule.len()).filter_map(|_| self.round_robin()).find(|i| *i != first && usable(*i)),
        }
    }

    fn choose(&self, ctx: Option<&PickContext<'_>>) -> Option<usize> {
        match (&self.strategy, ctx) {
            (Strategy::RoundRobin, _) => self.ramped(|| self.round_robin()),
            (Strategy::Random, _) => self.ramped(|| self.weighted_draw()),
            (Strategy::LeastRequest, _) => {
                // Two distinct candidates when the cluster has them (a few redraws at most).
                let a = self.ramped(|| self.weighted_draw())?;
                let mut b = self.ramped(|| self.weighted_draw())?;
                for _ in 0..3 {
                    if b != a {
                        break;
                    }
                    b = self.ramped(|| self.weighted_draw())?;
                }
                let load = |i: usize| self.in_flight.get(i).map_or(0, |n| n.load(Ordering::Relaxed));
                let weight = |i: usize| self.weights.get(i).copied().unwrap_or(1).max(1) as usize;
                // Fewer requests per unit of weight wins; ties go to the first draw.
                Some(if load(b) * weight(a) < load(a) * weight(b) { b } else { a })
            }
            (Strategy::Ring(points), Some(ctx)) => match self.key.hash(ctx) {
                Some(h) if !points.is_empty() => {
                    let i = points.partition_point(|(p, _)| *p < h) % points.len();
                    points.get(i).map(|(_, e)| *e as usize)
                }
                _ => self.round_robin(),
            },
            (Strategy::Maglev(table), Some(ctx)) => match self.key.hash(ctx) {
                Some(h) if !table.is_empty() => table.get((h % table.len() as u64) as usize).map(|e| *e as usize),
                _ => self.round_robin(),
            },
            (Strategy::Ring(_) | Strategy::Maglev(_), None) => self.round_robin(),
        }
    }
}

/// nginx's smooth weighted round robin, unrolled once: weights 5,1,1 give
/// `a a b a c a a`, spreading each endpoint's turns instead of bunching them.
pub(crate) fn smooth_weighted_schedule(weights: &[u32]) -> Vec<u32> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += i64::from(*w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(u32::try_from(best).unwrap_or(0));
    }
    out
}

/// Virtual nodes by weight, scaled down to fit `MAX_RING_POINTS`.
fn ring(addresses: &[String], weights: &[u32]) -> Box<[(u64, u32)]> {
    let total: u64 = weights.iter().map(|w| u64::from(*w) * POINTS_PER_WEIGHT).sum::<u64>().max(1);
    let scale = (MAX_RING_POINTS as f64 / total as f64).min(1.0);
    let mut points = Vec::new();
    for (i, (addr, w)) in addresses.iter().zip(weights).enumerate() {
        let n = ((u64::from(*w) * POINTS_PER_WEIGHT) as f64 * scale).max(1.0) as u64;
        for k in 0..n {
            points.push((hash_of(&format!("{addr}#{k}")), u32::try_from(i).unwrap_or(0)));
        }
    }
    points.sort_unstable();
    points.into()
}

/// Maglev (Eisenbud et al., NSDI '16) with weights: each round, an endpoint claims as many
/// of its preferred free slots as its weight.
fn maglev(addresses: &[String], weights: &[u32]) -> Box<[u32]> {
    let m = MAGLEV_SIZE;
    let n = addresses.len();
    if n == 0 {
        return Box::new([]);
    }
    let perms: Vec<(u64, u64)> = addresses
        .iter()
        .map(|a| (hash_of(&format!("{a}/offset")) % m, hash_of(&format!("{a}/skip")) % (m - 1) + 1))
        .collect();
    let mut next = vec![0u64; n];
    let mut table = vec![u32::MAX; m as usize];
    let mut filled = 0u64;
    'fill: loop {
        for i in 0..n {
            for _ in 0..weights.get(i).copied().unwrap_or(1).max(1) {
                let (offset, skip) = perms[i];
                let mut slot = (offset + next[i] * skip) % m;
                while table[slot as usize] != u32::MAX {
                    next[i] += 1;
                    slot = (offset + next[i] * skip) % m;
                }
                table[slot as usize] = u32::try_from(i).unwrap_or(0);
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
    }
    table.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    fn ctx_for<'a>(headers: &'a HeaderMap, path: &'a str) -> PickContext<'a> {
        PickContext { client: "192.0.2.1".parse().unwrap(), path, headers }
    }

    fn counts(b: &Balancer, n: usize, draws: usize) -> Vec<usize> {
        let headers = HeaderMap::new();
        let mut c = vec![0; n];
        for i in 0..draws {
            let path = format!("/k{i}");
            let p = b.pick(Some(&ctx_for(&headers, &path)), &|_| true).unwrap();
            c[p.index] += 1;
        }
        c
    }

    #[test]
    fn smooth_schedule_spreads_weights() {
        assert_eq!(smooth_weighted_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_weighted_schedule(&[3, 1]), vec![0, 0, 1, 0]);
    }

    #[test]
    fn weights_are_respected_by_every_policy() {
        let weights = [1, 2, 5];
        for policy in
            [LbPolicy::RoundRobin, LbPolicy::Random, LbPolicy::LeastRequest, LbPolicy::RingHash, LbPolicy::Maglev]
        {
            let hash = config::HashPolicy { key: Some(hash_policy::Key::Path(true)) };
            let b =
                Balancer::build(policy, Some(&hash), &addrs(3), &weights, Arc::default(), None, Operators::default());
            let c = counts(&b, 3, 16_000);
            for (i, w) in weights.iter().enumerate() {
                let share = c[i] as f64 / 16_000.0;
                let want = f64::from(*w) / 8.0;
                // Ring hash with 100 points per weight unit is the least even: allow 30% relative.
                assert!(
                    (share - want).abs() < want * 0.3,
                    "{policy:?}: endpoint {i} got {share:.3}, want {want:.3} ({c:?})"
                );
            }
        }
    }

    #[test]
    fn hash_policies_keep_keys_and_move_about_one_nth_when_an_endpoint_goes() {
        for policy in [LbPolicy::RingHash, LbPolicy::Maglev] {
            let hash = config::HashPolicy { key: Some(hash_policy::Key::Path(true)) };
            let five =
                Balancer::build(policy, Some(&hash), &addrs(5), &[1; 5], Arc::default(), None, Operators::default());
            let four =
                Balancer::build(policy, Some(&hash), &addrs(4), &[1; 4], Arc::default(), None, Operators::default());
            let headers = HeaderMap::new();
            let (mut moved, keys) = (0, 10_000);
            for k in 0..keys {
                let path = format!("/user/{k}");
                let a = five.pick(Some(&ctx_for(&headers, &path)), &|_| true).unwrap().index;
                let again = five.pick(Some(&ctx_for(&headers, &path)), &|_| true).unwrap().index;
                assert_eq!(a, again, "{policy:?}: a key stays on its endpoint");
                let b = four.pick(Some(&ctx_for(&headers, &path)), &|_| true).unwrap().index;
                if a != 4 && a != b {
                    moved += 1;
                }
            }
            // Keys of the removed endpoint must move (about 1/5); others should stay.
            let moved_share = moved as f64 / keys as f64;
            assert!(moved_share < 0.05, "{policy:?}: {moved_share:.3} of the remaining keys moved");
        }
    }

    #[test]
    fn least_request_avoids_a_busy_endpoint_and_counts_are_released() {
        let b = Balancer::build(
            LbPolicy::LeastRequest,
            None,
            &addrs(2),
            &[1, 1],
            Arc::default(),
            None,
            Operators::default(),
        );
        let busy: Vec<Picked> = (0..50).filter_map(|_| b.pick(None, &|_| true)).filter(|p| p.index == 0).collect();
        assert!(!busy.is_empty());
        let c = counts(&b, 2, 1000);
        assert!(c[1] > c[0] * 2, "the busy endpoint is avoided: {c:?}");
        drop(busy);
        assert_eq!(b.in_flight[0].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn in_flight_counts_follow_addresses_into_a_rebuilt_balancer() {
        let old_addrs = addrs(2);
        let old = Balancer::build(
            LbPolicy::LeastRequest,
            None,
            &old_addrs,
            &[1, 1],
            Arc::default(),
            None,
            Operators::default(),
        );
        let held = old.take(1).unwrap();
        let mut new_addrs = addrs(3);
        new_addrs.swap(0, 1);
        let new = Balancer::build(
            LbPolicy::LeastRequest,
            None,
            &new_addrs,
            &[1, 1, 1],
            Arc::default(),
            Some((&old_addrs, &old)),
            Operators::default(),
        );
        assert_eq!(new.in_flight[0].load(Ordering::Relaxed), 1, "10.0.0.1 still has its request in flight");
        drop(held);
        assert_eq!(new.in_flight[0].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn header_and_cookie_keys() {
        let b = Balancer::build(
            LbPolicy::Maglev,
            Some(&config::HashPolicy { key: Some(hash_policy::Key::Cookie("session".into())) }),
            &addrs(8),
            &[1; 8],
            Arc::default(),
            None,
            Operators::default(),
        );
        let mut with = HeaderMap::new();
        with.insert(http::header::COOKIE, "theme=dark; session=abc123".parse().unwrap());
        let first = b.pick(Some(&ctx_for(&with, "/a")), &|_| true).unwrap().index;
        for path in ["/b", "/c", "/d"] {
            assert_eq!(b.pick(Some(&ctx_for(&with, path)), &|_| true).unwrap().index, first);
        }
    }

    #[test]
    fn drained_endpoints_get_no_new_requests_and_hash_keys_of_the_others_stay() {
        let hash = config::HashPolicy { key: Some(hash_policy::Key::Path(true)) };
        let drained = [false, true, false];
        for policy in
            [LbPolicy::RoundRobin, LbPolicy::Random, LbPolicy::LeastRequest, LbPolicy::RingHash, LbPolicy::Maglev]
        {
            let all =
                Balancer::build(policy, Some(&hash), &addrs(3), &[1; 3], Arc::default(), None, Operators::default());
            let ops = Operators { drained: &drained, ..Default::default() };
            let b = Balancer::build(policy, Some(&hash), &addrs(3), &[1; 3], Arc::default(), None, ops);
            assert_eq!(b.serving_count(), 2);
            let headers = HeaderMap::new();
            for k in 0..3000 {
                let path = format!("/k{k}");
                let ctx = ctx_for(&headers, &path);
                let before = all.pick(Some(&ctx), &|_| true).unwrap().index;
                let now = b.pick(Some(&ctx), &|_| true).unwrap().index;
                assert_ne!(now, 1, "{policy:?}: a drained endpoint gets nothing");
                if matches!(policy, LbPolicy::RingHash | LbPolicy::Maglev) && before != 1 {
                    assert_eq!(now, before, "{policy:?}: keys of the serving endpoints stay");
                }
                // Retries and panic mode ("any endpoint") pass over it too.
                assert_ne!(b.pick(None, &|_| true).unwrap().index, 1);
                // Even when the cluster refuses every endpoint (all unhealthy).
                assert_ne!(b.pick(Some(&ctx), &|_| false).unwrap().index, 1);
            }
            assert!(b.take(1).is_none(), "affinity cannot pin a drained endpoint");
            assert!(b.take(0).is_some());
            assert_eq!(b.describe(1), (true, 0, 0));
        }
    }

    #[test]
    fn a_cluster_with_every_endpoint_drained_still_serves() {
        let ops = Operators { drained: &[true, true], ..Default::default() };
        let b = Balancer::build(LbPolicy::RoundRobin, None, &addrs(2), &[1, 1], Arc::default(), None, ops);
        assert_eq!(b.serving_count(), 2, "the validator refuses this; should it come, all serve");
        let c = counts(&b, 2, 10);
        assert_eq!(c, vec![5, 5]);
    }
}
