//! Endpoint health: passive (outlier detection on live traffic) and active (periodic
//! probes). Both feed one availability flag per endpoint that the balancer honours, unless
//! too few endpoints are available (the panic threshold), in which case all are used.
//!
//! Health state belongs to an endpoint address, not to a snapshot: a cluster rebuilt by a
//! swap keeps the state of the endpoints it still has.
//!
//! Each endpoint also remembers when it last came back into rotation (its ejection ended,
//! it passed its checks again, it was undrained or added), for slow start
//! (`upstream::slowstart`); every such event bumps one process-wide counter, so that a
//! balancer learns of it with one load instead of scanning its endpoints on every pick.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http_body_util::Empty;

use crate::tls::UpstreamTls;
use tracing::{debug, info};
use vane_proto::config;

use crate::support::duration_or;

/// Milliseconds since the first use in this process: a cheap clock for ejection deadlines.
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Comings back into rotation of any endpoint of this process (see the module docs).
static RETURNS: AtomicU64 = AtomicU64::new(0);

/// How many times any endpoint has come back (or been scheduled to, by an ejection).
pub(crate) fn returns() -> u64 {
    RETURNS.load(Ordering::Relaxed)
}

/// One endpoint's health.
#[derive(Debug)]
pub(crate) struct EndpointHealth {
    consecutive_errors: AtomicU32,
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
    active_healthy: AtomicBool,
    /// When it last came back by a health check or a config change ([`now_ms`]; 0: never).
    returned_ms: AtomicU64,
}

impl Default for EndpointHealth {
    fn default() -> Self {
        EndpointHealth {
            consecutive_errors: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            active_healthy: AtomicBool::new(true),
            returned_ms: AtomicU64::new(0),
        }
    }
}

impl EndpointHealth {
    pub(crate) fn available(&self) -> bool {
        self.active_healthy.load(Ordering::Relaxed) && !self.ejected()
    }

    fn ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// When its ejection ends (ms on this module's clock; 0: never ejected).
    pub(crate) fn ejected_until(&self) -> u64 {
        self.ejected_until_ms.load(Ordering::Relaxed)
    }

    /// When it last came back into rotation ([`now_ms`]; 0: never): the later of the end
    /// of its last ejection (which may lie ahead) and its last recovery or config return.
    pub(crate) fn back_since_ms(&self) -> u64 {
        self.returned_ms.load(Ordering::Relaxed).max(self.ejected_until_ms.load(Ordering::Relaxed))
    }

    /// Records that it came back now (passed its checks again, undrained, added).
    pub(crate) fn mark_returned(&self) {
        self.returned_ms.store(now_ms().max(1), Ordering::Relaxed);
        RETURNS.fetch_add(1, Ordering::Relaxed);
    }

    /// For the admin endpoint: (available, actively healthy, ms of ejection left).
    pub(crate) fn describe(&self) -> (bool, bool, u64) {
        let left = self.ejected_until_ms.load(Ordering::Relaxed).saturating_sub(now_ms());
        (self.available(), self.active_healthy.load(Ordering::Relaxed), left)
    }
}

/// What one exchange with an endpoint told of its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// An answer below 500, or a failure that was the client's.
    Ok,
    /// A 5xx answer, a reset exchange, a timeout: the endpoint was reached.
    Failed,
    /// No connection could be made: refused, reset or timed out while connecting.
    Unreachable,
}

/// Passive health settings of a cluster.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Outlier {
    consecutive_errors: u32,
    base_ms: u64,
    /// Longest ejection, however many came before.
    max_ms: u64,
    max_percent: u32,
    /// Only connect failures count (the default's rule: a 5xx is the application's answer).
    unreachable_only: bool,
}

/// Longest ejection (Envoy's `max_ejection_time` default).
const MAX_EJECTION_MS: u64 = 300_000;

impl Outlier {
    /// What a cluster without `outlier_detection` gets: 3 connect failures in a row take
    /// an endpoint out for 5 s times its ejections so far, at most 5 min, at most half of
    /// the endpoints at once. nginx's own default (`max_fails=1 fail_timeout=10s`) counts
    /// any error; this one waits for three, so a single refused connection (a restart, a
    /// full backlog) does not take an endpoint out.
    pub(crate) const DEFAULT: Outlier = Outlier {
        consecutive_errors: 3,
        base_ms: 5_000,
        max_ms: MAX_EJECTION_MS,
        max_percent: 50,
        unreachable_only: true,
    };

    /// The cluster's settings: the default when it sets none, none when it turns them off.
    pub(crate) fn compile(od: Option<&config::OutlierDetection>) -> Option<Outlier> {
        let Some(od) = od else { return Some(Outlier::DEFAULT) };
        if od.disabled {
            return None;
        }
        let base_ms = u64::try_from(duration_or(od.base_ejection_time.as_ref(), Duration::from_secs(30)).as_millis())
            .unwrap_or(u64::MAX);
        Some(Outlier {
            consecutive_errors: if od.consecutive_errors == 0 { 5 } else { od.consecutive_errors },
            base_ms,
            max_ms: MAX_EJECTION_MS.max(base_ms),
            max_percent: if od.max_ejection_percent == 0 { 10 } else { od.max_ejection_percent },
            unreachable_only: false,
        })
    }

    /// Records one exchange with endpoint `index`. Returns when its ejection ends, if
    /// this exchange ejected it.
    ///
    /// An endpoint back from an ejection is on probation: its first failure ejects it
    /// again, for longer; its first success forgets its ejections.
    pub(crate) fn report(&self, all: &[Arc<EndpointHealth>], index: usize, outcome: Outcome) -> Option<u64> {
        let h = all.get(index)?;
        let counts = match outcome {
            Outcome::Ok => false,
            Outcome::Failed => !self.unreachable_only,
            Outcome::Unreachable => true,
        };
        if !counts {
            // Read first: the common case finds a zero and writes nothing.
            if h.consecutive_errors.load(Ordering::Relaxed) != 0 {
                h.consecutive_errors.store(0, Ordering::Relaxed);
            }
            if outcome == Outcome::Ok && h.ejections.load(Ordering::Relaxed) != 0 && !h.ejected() {
                h.ejections.store(0, Ordering::Relaxed);
            }
            return None;
        }
        if h.consecutive_errors.fetch_add(1, Ordering::Relaxed) + 1 < self.consecutive_errors || h.ejected() {
            return None;
        }
        let out = all.iter().filter(|e| e.ejected()).count();
        let cap = (all.len() * self.max_percent as usize / 100).max(1);
        if out >= cap {
            return None;
        }
        let n = h.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let until = now_ms() + self.base_ms.saturating_mul(u64::from(n)).min(self.max_ms);
        h.ejected_until_ms.store(until, Ordering::Relaxed);
        // Probation: one more failure once it is back ejects it again.
        h.consecutive_errors.store(self.consecutive_errors - 1, Ordering::Relaxed);
        // Its return is now scheduled (see `back_since_ms`).
        RETURNS.fetch_add(1, Ordering::Relaxed);
        info!(endpoint = index, ejections = n, "endpoint ejected");
        Some(until)
    }
}

/// One gRPC health check: SERVING is healthy; anything else, or no answer in time, is not.
async fn grpc_check(addr: SocketAddr, service: &str, timeout: Duration) -> bool {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).ok()?.connect().await.ok()?;
        let response =
            HealthClient::new(channel).check(HealthCheckRequest { service: service.to_owned() }).await.ok()?;
        Some(response.into_inner().status == ServingStatus::Serving as i32)
    };
    matches!(tokio::time::timeout(timeout, check).await, Ok(Some(true)))
}

/// Probes every endpoint of a cluster until dropped (the task is aborted with it).
#[derive(Debug)]
pub(crate) struct Checker(tokio::task::JoinHandle<()>);

impl Drop for Checker {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Checker {
    /// Probes `endpoints`; HTTP checks go over TLS (verified as requests are) when the
    /// cluster has `tls`.
    pub(crate) fn start(
        hc: &config::HealthCheck,
        endpoints: Vec<(SocketAddr, Arc<EndpointHealth>)>,
        tls: Option<UpstreamTls>,
    ) -> Checker {
        let interval = duration_or(hc.interval.as_ref(), Duration::from_secs(5));
        let timeout = duration_or(hc.timeout.as_ref(), Duration::from_secs(2));
        let rise = if hc.healthy_threshold == 0 { 2 } else { hc.healthy_threshold };
        let fall = if hc.unhealthy_threshold == 0 { 3 } else { hc.unhealthy_threshold };
        let path = hc.http_path.clone();
        let grpc_service = hc.grpc_service.clone();
        let host = hc.host.clone();
        let expected: Vec<u16> = hc.expected_statuses.iter().filter_map(|s| u16::try_from(*s).ok()).collect();
        let task = tokio::spawn(async move {
            let scheme = if tls.is_some() { "https" } else { "http" };
            let client: super::sidecall::SideClient<Empty<bytes::Bytes>> =
                super::sidecall::client(tls.as_ref(), timeout, Duration::from_secs(90));
            // Consecutive results per endpoint: positive successes, negative failures.
            let mut streaks = vec![0i64; endpoints.len()];
            loop {
                for (i, (addr, health)) in endpoints.iter().enumerate() {
                    let ok = if let Some(service) = &grpc_service {
                        grpc_check(*addr, service, timeout).await
                    } else if path.is_empty() {
                        matches!(tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)))
                    } else {
                        let authority = if host.is_empty() { addr.to_string() } else { host.clone() };
                        let req = http::Request::get(format!("{scheme}://{addr}{path}"))
                            .header(http::header::HOST, authority)
                            .header(http::header::USER_AGENT, "vane-health-check")
                            .body(Empty::new());
                        match req {
                            Ok(req) => match tokio::time::timeout(timeout, client.request(req)).await {
                                Ok(Ok(resp)) => {
                                    let s = resp.status().as_u16();
                                    if expected.is_empty() { (200..400).contains(&s) } else { expected.contains(&s) }
                                }
                                _ => false,
                            },
                            Err(_) => false,
                        }
                    };
                    let streak = &mut streaks[i];
                    *streak = if ok { (*streak).max(0) + 1 } else { (*streak).min(0) - 1 };
                    let healthy = health.active_healthy.load(Ordering::Relaxed);
                    if healthy && *streak <= -i64::from(fall) {
                        health.active_healthy.store(false, Ordering::Relaxed);
                        info!(%addr, "endpoint unhealthy");
                    } else if !healthy && *streak >= i64::from(rise) {
                        health.active_healthy.store(true, Ordering::Relaxed);
                        health.mark_returned();
                        info!(%addr, "endpoint healthy again");
                    }
                    debug!(%addr, ok, "health check");
                }
                let jitter = interval.mul_f64(rand::random::<f64>() * 0.1);
                tokio::time::sleep(interval + jitter).await;
            }
        });
        Checker(task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: usize) -> Vec<Arc<EndpointHealth>> {
        (0..n).map(|_| Arc::default()).collect()
    }

    #[test]
    fn by_default_three_connect_failures_eject_and_answers_never_do() {
        let all = endpoints(2);
        let od = Outlier::compile(None).unwrap();
        for _ in 0..10 {
            assert_eq!(od.report(&all, 0, Outcome::Failed), None, "a 5xx is the application's answer");
        }
        assert!(od.report(&all, 0, Outcome::Unreachable).is_none());
        assert!(od.report(&all, 0, Outcome::Unreachable).is_none());
        let until = od.report(&all, 0, Outcome::Unreachable).expect("the third ejects");
        assert!(!all[0].available() && all[1].available());
        assert!((4_900..=5_100).contains(&(until - now_ms())), "5 s for a first ejection");
        // At most half of the endpoints: the other one stays, however it fails.
        for _ in 0..5 {
            assert_eq!(od.report(&all, 1, Outcome::Unreachable), None);
        }
        assert!(all[1].available());
    }

    #[test]
    fn an_endpoint_back_from_ejection_is_on_probation_and_its_ejections_grow() {
        let all = endpoints(2);
        let od = Outlier::compile(None).unwrap();
        for _ in 0..3 {
            od.report(&all, 0, Outcome::Unreachable);
        }
        // Its ejection over, one failure ejects it again, for longer.
        all[0].ejected_until_ms.store(0, Ordering::Relaxed);
        let until = od.report(&all, 0, Outcome::Unreachable).expect("probation");
        assert!(until - now_ms() > 9_000, "second ejection: 10 s");
        // Back again and answering: its ejections are forgotten.
        all[0].ejected_until_ms.store(0, Ordering::Relaxed);
        od.report(&all, 0, Outcome::Ok);
        assert_eq!(all[0].ejections.load(Ordering::Relaxed), 0);
        assert_eq!(all[0].consecutive_errors.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn explicit_settings_count_5xx_and_disabled_means_none() {
        let all = endpoints(4);
        let od =
            Outlier::compile(Some(&config::OutlierDetection { consecutive_errors: 2, ..Default::default() })).unwrap();
        assert!(od.report(&all, 0, Outcome::Failed).is_none());
        assert!(od.report(&all, 0, Outcome::Failed).is_some());
        let off = config::OutlierDetection { disabled: true, ..Default::default() };
        assert_eq!(Outlier::compile(Some(&off)), None);
    }
}
