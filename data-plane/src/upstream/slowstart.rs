//! Slow start: an endpoint that comes back into rotation (its ejection ended, it passed
//! its health checks again, it was undrained, or it was added to a cluster that already
//! served) gets a share that ramps up over a window instead of a full share at once, as
//! Envoy's `slow_start_config` and HAProxy's `slowstart`. Its weight during the window is
//! `weight x max(min, (time back / window) ^ (1 / aggression))` (Envoy's formula).
//!
//! Applied by rejection: the balancer draws as usual (round robin, random, the two draws
//! of least request), and a ramping endpoint keeps its draw with probability equal to its
//! factor, else the balancer draws again (a few times at most). For random draws that is
//! exactly the weighted choice; for round robin the share comes out the same (an endpoint
//! at factor f of weight w among others of total weight W gets `f w / (f w + W)`). No
//! schedule is rebuilt as the factor grows, and nothing is allocated per pick. Hash
//! policies cannot ramp without moving keys back and forth; the validator refuses them.
//!
//! When nothing ramps, a pick pays two relaxed loads: the process-wide count of returns
//! (`health::returns`), unchanged since the last look, and a zero "ramping until". A
//! change of either makes the next pick look at the clock and, if needed, at every
//! endpoint once (never more than one thread at a time); while an endpoint ramps, a pick
//! reads the clock and the chosen endpoint's state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vane_proto::config;

use crate::support::duration_or;
use crate::upstream::health::{self, EndpointHealth};

/// Draws a ramping endpoint may cost a pick before the last draw is kept whatever it is.
const MAX_DRAWS: usize = 8;
/// Defaults (Envoy's).
const DEFAULT_MIN_WEIGHT_PERCENT: u32 = 10;
const DEFAULT_AGGRESSION: f64 = 1.0;

/// A cluster's slow start, built with its balancer.
#[derive(Debug)]
pub(crate) struct SlowStart {
    window_ms: u64,
    /// The smallest factor (`min_weight_percent / 100`).
    min: f64,
    /// `1 / aggression`; exactly 1.0 for a linear ramp (no `powf`).
    exponent: f64,
    /// The cluster's endpoints, in endpoint order (shared by address across swaps).
    health: Arc<[Arc<EndpointHealth>]>,
    /// `health::returns()` as of the last look at the endpoints.
    seen: AtomicU64,
    /// Until when (`health::now_ms`) some endpoint ramps, as of that look; 0: none.
    until_ms: AtomicU64,
    /// Held by the one pick that looks at every endpoint; others do not wait for it.
    scan: Mutex<()>,
}

impl SlowStart {
    pub(crate) fn compile(spec: Option<&config::SlowStart>, health: &Arc<[Arc<EndpointHealth>]>) -> Option<SlowStart> {
        let spec = spec?;
        let window = duration_or(spec.window.as_ref(), Duration::ZERO);
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        if window_ms == 0 {
            return None;
        }
        let min = f64::from(spec.min_weight_percent.unwrap_or(DEFAULT_MIN_WEIGHT_PERCENT).min(100)) / 100.0;
        let aggression = spec.aggression.filter(|a| *a > 0.0 && a.is_finite()).unwrap_or(DEFAULT_AGGRESSION);
        Some(SlowStart {
            window_ms,
            min,
            exponent: 1.0 / aggression,
            health: health.clone(),
            // Look once at the first pick: endpoints may already be ramping.
            seen: AtomicU64::new(u64::MAX),
            until_ms: AtomicU64::new(0),
            scan: Mutex::new(()),
        })
    }

    /// The clock (`health::now_ms`) when some endpoint may be ramping; `None` (after two
    /// loads) when none is.
    #[inline]
    fn ramping(&self) -> Option<u64> {
        let returns = health::returns();
        let until = self.until_ms.load(Ordering::Relaxed);
        if until == 0 && returns == self.seen.load(Ordering::Relaxed) {
            return None;
        }
        let now = health::now_ms();
        if returns == self.seen.load(Ordering::Relaxed) && now < until {
            return Some(now);
        }
        // Something came back, or the last ramp ended: look at every endpoint.
        let Ok(_scan) = self.scan.try_lock() else { return Some(now) };
        let returns = health::returns();
        let until = self
            .health
            .iter()
            .map(|h| h.back_since_ms())
            .filter(|back| *back != 0)
            .map(|back| back.saturating_add(self.window_ms))
            .filter(|end| *end > now)
            .max()
            .unwrap_or(0);
        self.until_ms.store(until, Ordering::Relaxed);
        self.seen.store(returns, Ordering::Relaxed);
        (until != 0).then_some(now)
    }

    /// The share of its weight endpoint `index` gets at `now`: 1.0 unless it ramps.
    pub(crate) fn factor(&self, index: usize, now: u64) -> f64 {
        let back = self.health.get(index).map_or(0, |h| h.back_since_ms());
        ramp(back, now, self.window_ms, self.min, self.exponent)
    }

    /// A draw of `draw` that honours ramping endpoints (see the module docs).
    #[inline]
    pub(crate) fn draw(&self, draw: impl Fn() -> Option<usize>) -> Option<usize> {
        let Some(now) = self.ramping() else { return draw() };
        let mut candidate = draw()?;
        for _ in 1..MAX_DRAWS {
            let f = self.factor(candidate, now);
            if f >= 1.0 || rand::random::<f64>() < f {
                break;
            }
            candidate = draw()?;
        }
        Some(candidate)
    }

    /// The weight percent endpoint `index` gets now (100 unless it ramps), for the admin
    /// endpoint and `/metrics`.
    pub(crate) fn percent_now(&self, index: usize) -> u32 {
        (self.factor(index, health::now_ms()) * 100.0).round() as u32
    }
}

/// Envoy's ramp: `max(min, (elapsed / window) ^ exponent)` within the window, 1 outside;
/// `min` before the endpoint is back (an ejection that has not ended yet).
fn ramp(back: u64, now: u64, window: u64, min: f64, exponent: f64) -> f64 {
    if back == 0 || now >= back.saturating_add(window) {
        return 1.0;
    }
    if now < back {
        return min;
    }
    // Envoy counts at least one unit of time, so the start is never a zero share.
    let elapsed = (now - back).max(1) as f64 / window as f64;
    let shaped = if exponent == 1.0 { elapsed } else { elapsed.powf(exponent) };
    shaped.clamp(min, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ramp_is_envoys() {
        // Linear, from the floor.
        assert_eq!(ramp(0, 5_000, 10_000, 0.1, 1.0), 1.0, "never came back: full weight");
        assert_eq!(ramp(1_000, 1_000, 10_000, 0.1, 1.0), 0.1, "just back: the floor");
        assert!((ramp(1_000, 6_000, 10_000, 0.1, 1.0) - 0.5).abs() < 1e-9, "half way: half");
        assert_eq!(ramp(1_000, 11_000, 10_000, 0.1, 1.0), 1.0, "after the window: full");
        assert_eq!(ramp(9_000, 5_000, 10_000, 0.1, 1.0), 0.1, "still ejected: the floor");
        // Aggression 2: the square root, more traffic early.
        assert!((ramp(1, 2_501, 10_000, 0.0, 0.5) - 0.5).abs() < 1e-9);
        // Aggression 0.5: the square, less traffic early.
        assert!((ramp(1, 5_001, 10_000, 0.0, 2.0) - 0.25).abs() < 1e-9);
    }

    fn health(n: usize) -> Arc<[Arc<EndpointHealth>]> {
        (0..n).map(|_| Arc::new(EndpointHealth::default())).collect()
    }

    #[test]
    fn nothing_ramps_until_an_endpoint_comes_back() {
        let h = health(3);
        let spec =
            config::SlowStart { window: Some(pbjson_types::Duration { seconds: 60, nanos: 0 }), ..Default::default() };
        let ss = SlowStart::compile(Some(&spec), &h).unwrap();
        assert_eq!(ss.ramping(), None, "fresh endpoints do not ramp");
        assert_eq!(ss.ramping(), None);
        h[1].mark_returned();
        let now = ss.ramping().expect("an endpoint ramps");
        assert_eq!(ss.factor(0, now), 1.0);
        assert!(ss.factor(1, now) < 0.2, "{}", ss.factor(1, now));
        assert!(ss.percent_now(1) <= 20);
        assert_eq!(ss.percent_now(2), 100);
    }

    #[test]
    fn no_window_means_no_slow_start() {
        assert!(SlowStart::compile(Some(&config::SlowStart::default()), &health(1)).is_none());
        assert!(SlowStart::compile(None, &health(1)).is_none());
    }

    use crate::upstream::balancer::{Balancer, Operators};
    use crate::upstream::health::Outlier;
    use vane_proto::config::cluster::LbPolicy;

    fn addrs(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.1.{i}:80")).collect()
    }

    fn minute() -> config::SlowStart {
        config::SlowStart { window: Some(pbjson_types::Duration { seconds: 60, nanos: 0 }), ..Default::default() }
    }

    fn shares(b: &Balancer, n: usize, picks: usize) -> Vec<f64> {
        let mut c = vec![0usize; n];
        for _ in 0..picks {
            c[b.pick(None, &|_| true).unwrap().index] += 1;
        }
        c.into_iter().map(|k| k as f64 / picks as f64).collect()
    }

    #[test]
    fn undrained_and_added_endpoints_start_at_the_floor_under_every_policy_that_ramps() {
        for policy in [LbPolicy::RoundRobin, LbPolicy::Random, LbPolicy::LeastRequest] {
            let old_health = health(2);
            let old_ops = Operators { drained: &[false, true], slow_start: Some(&minute()), health: Some(&old_health) };
            let old = Balancer::build(policy, None, &addrs(2), &[1, 1], Arc::default(), None, old_ops);
            assert_eq!(shares(&old, 2, 100)[1], 0.0, "{policy:?}: drained");
            // Endpoint 1 undrained, endpoint 2 added; their health follows the address.
            let new_health: Arc<[Arc<EndpointHealth>]> =
                vec![old_health[0].clone(), old_health[1].clone(), Arc::new(EndpointHealth::default())].into();
            let ops = Operators { slow_start: Some(&minute()), health: Some(&new_health), ..Default::default() };
            let new =
                Balancer::build(policy, None, &addrs(3), &[1, 1, 1], Arc::default(), Some((&addrs(2), &old)), ops);
            let s = shares(&new, 3, 20_000);
            // At the 10% floor each gets 0.1 / 1.2 of the picks: about 8%.
            for i in [1, 2] {
                assert!(s[i] > 0.03 && s[i] < 0.15, "{policy:?}: endpoint {i} ramps: {s:?}");
            }
            assert_eq!(new.describe(1), (false, 0, 10));
            assert_eq!(new.describe(0), (false, 0, 100));
        }
    }

    #[test]
    fn a_new_cluster_and_a_cluster_without_slow_start_do_not_ramp() {
        let h = health(2);
        let ops = Operators { slow_start: Some(&minute()), health: Some(&h), ..Default::default() };
        let b = Balancer::build(LbPolicy::RoundRobin, None, &addrs(2), &[1, 1], Arc::default(), None, ops);
        assert_eq!(shares(&b, 2, 1000), vec![0.5, 0.5], "nothing came back: plain round robin");

        let old = Balancer::build(LbPolicy::RoundRobin, None, &addrs(1), &[1], Arc::default(), None, ops);
        let off = Operators { health: Some(&h), ..Default::default() };
        let b = Balancer::build(
            LbPolicy::RoundRobin,
            None,
            &addrs(2),
            &[1, 1],
            Arc::default(),
            Some((&addrs(1), &old)),
            off,
        );
        assert_eq!(shares(&b, 2, 1000), vec![0.5, 0.5], "added, but slow start is off");
    }

    #[test]
    fn an_endpoint_ramps_up_once_its_ejection_ends() {
        let h = health(2);
        let od = config::OutlierDetection {
            consecutive_errors: 1,
            base_ejection_time: Some(pbjson_types::Duration { seconds: 0, nanos: 20_000_000 }),
            max_ejection_percent: 50,
            disabled: false,
        };
        let outlier = Outlier::compile(Some(&od)).unwrap();
        let ops = Operators { slow_start: Some(&minute()), health: Some(&h), ..Default::default() };
        let b = Balancer::build(LbPolicy::RoundRobin, None, &addrs(2), &[1, 1], Arc::default(), None, ops);
        assert_eq!(shares(&b, 2, 100), vec![0.5, 0.5]);
        outlier.report(&h, 1, crate::upstream::health::Outcome::Failed);
        assert!(!h[1].available(), "ejected");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !h[1].available() {
            assert!(std::time::Instant::now() < deadline, "the ejection ends");
            std::thread::sleep(Duration::from_millis(5));
        }
        let s = shares(&b, 2, 20_000);
        assert!(s[1] > 0.05 && s[1] < 0.15, "back from ejection, at the floor: {s:?}");
    }
}
