//! Upstream clusters as the hot path sees them: resolved endpoints, a precomputed smooth
//! weighted round-robin schedule, and pooled keep-alive upstream connections (HTTP/1.1 in
//! [`crate::upstream::pool`], HTTP/2 through hyper-util's client, which multiplexes one connection).
//!
//! Round robin is per cluster per node: one atomic cursor walks the schedule, whatever
//! thread serves the request. The cursor and the pool are carried across snapshot swaps
//! while the cluster keeps its name (see [`ClusterRegistry`]).

mod stream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::Authority;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use vane_proto::config::{self, cluster::LbPolicy, cluster::UpstreamProtocol};

use crate::http::body::UpstreamBody;
use crate::http::body::UpstreamResponseBody;
use crate::observe::metrics::ClusterStats;
use crate::support::duration_or;
use crate::tls::{self, UpstreamTls};
use crate::upstream::balancer::{Balancer, Operators, PickContext, Picked};
use crate::upstream::health::{self, Checker, EndpointHealth, Outcome, Outlier};
use crate::upstream::pool::{Http1Pool, Lease, SendError};
use crate::upstream::sticky::Sticky;
use http::header::HeaderValue;
use http::{Request, Response, Uri};
use http_body_util::Either;
use hyper::body::Body;
use hyper_rustls::HttpsConnector;

/// Connect timeout when a cluster sets none.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle pooled upstream connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type UpstreamClient = Client<HttpsConnector<HttpConnector>, crate::http::body::UpstreamBody>;

/// One upstream endpoint, its authority prebuilt for request URIs.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) authority: Authority,
}

/// A compiled cluster.
#[derive(Debug)]
pub(crate) struct Cluster {
    pub(crate) name: Arc<str>,
    spec: config::Cluster,
    endpoints: Arc<[Endpoint]>,
    /// Endpoint addresses as configured (after DNS expansion), in endpoint order.
    addresses: Box<[String]>,
    balancer: Balancer,
    /// Round-robin position, carried across swaps while the cluster keeps its name.
    cursor: Arc<AtomicUsize>,
    /// HTTP/1.1 connections per endpoint, and HTTP/2 prior knowledge when the cluster
    /// uses it.
    http1: Arc<Http1Pool>,
    client_h2: Option<UpstreamClient>,
    protocol: UpstreamProtocol,
    pub(crate) stats: Arc<ClusterStats>,
    /// Requests and retries in flight, for the retry budget (carried with the cursor).
    load: Arc<Load>,
    budget_percent: f64,
    min_retry_concurrency: usize,
    /// Circuit breaker: most requests in flight (0: no limit).
    max_requests: usize,
    /// Circuit breaker: exchanges at once, and how many may wait for one.
    connections: Option<Arc<tokio::sync::Semaphore>>,
    max_pending: usize,
    max_retries: usize,
    /// Per endpoint, in endpoint order; shared with the previous cluster by address.
    health: Arc<[Arc<EndpointHealth>]>,
    /// Priority of each endpoint, and the distinct levels, highest (lowest number) first.
    priorities: Box<[u32]>,
    levels: Box<[u32]>,
    outlier: Option<Outlier>,
    /// When the last ejection of any endpoint ends (ms, [`health::now_ms`]'s clock; 0:
    /// none ejected): while none is, picks skip the scan of health state.
    ejected_until: AtomicU64,
    panic_percent: u32,
    /// Active health checks; the task stops when the cluster is dropped.
    checker: Option<Checker>,
    sticky: Option<Sticky>,
    /// `https` for TLS clusters: the connector originates TLS for those URIs.
    pub(crate) scheme: http::uri::Scheme,
    tls_fingerprint: Option<String>,
    /// TLS to the endpoints, as TCP and TLS listeners open it (`stream.rs`).
    stream_tls: Option<UpstreamTls>,
}

#[derive(Debug, Default)]
struct Load {
    requests: AtomicUsize,
    retries: AtomicUsize,
    /// Requests waiting for a connection slot.
    pending: AtomicUsize,
}

/// The endpoints a request has tried, by index (the first 64; later ones are not
/// remembered, so a retry may go back to one of them).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tried(u64);

impl Tried {
    pub(crate) fn add(&mut self, index: usize) {
        if index < 64 {
            self.0 |= 1 << index;
        }
    }

    pub(crate) fn has(&self, index: usize) -> bool {
        index < 64 && self.0 & (1 << index) != 0
    }

    fn is_empty(&self) -> bool {
        self.0 == 0
    }
}

/// Counts a request in flight until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Load>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A retry the budget allowed; returns its share when dropped.
#[derive(Debug)]
pub(crate) struct RetryPermit(Arc<Load>);

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.0.retries.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Cluster {
    /// A connection slot under `max_connections`: at once, or after waiting in the pending
    /// queue until `deadline`. `Err` names the limit that refused the request.
    pub(crate) async fn connection_slot(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, &'static str> {
        let Some(semaphore) = &self.connections else { return Ok(None) };
        if let Ok(permit) = semaphore.clone().try_acquire_owned() {
            return Ok(Some(permit));
        }
        if self.load.pending.fetch_add(1, Ordering::Relaxed) >= self.max_pending {
            self.load.pending.fetch_sub(1, Ordering::Relaxed);
            self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err("max_pending_requests");
        }
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        let waited = tokio::time::timeout_at(deadline, semaphore.clone().acquire_owned()).await;
        self.stats.pending.fetch_sub(1, Ordering::Relaxed);
        self.load.pending.fetch_sub(1, Ordering::Relaxed);
        match waited {
            Ok(Ok(permit)) => Ok(Some(permit)),
            _ => {
                self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                Err("max_connections")
            }
        }
    }

    /// Feeds passive health with the outcome of one exchange with endpoint `index`.
    pub(crate) fn report(&self, index: usize, outcome: Outcome) {
        if let Some(outlier) = &self.outlier
            && let Some(until) = outlier.report(&self.health, index, outcome)
        {
            self.ejected_until.fetch_max(until, Ordering::Relaxed);
        }
    }

    /// Whether some endpoint may be ejected now (false once the last ejection ended).
    fn any_ejected(&self) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until == 0 {
            return false;
        }
        if health::now_ms() < until {
            return true;
        }
        // Over: later picks skip the clock too, unless an ejection came in between.
        let _ = self.ejected_until.compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
        false
    }

    /// `(address, available, actively healthy, ms of ejection left)` per endpoint.
    pub(crate) fn health(&self) -> Vec<(String, bool, bool, u64)> {
        self.spec
            .endpoints
            .iter()
            .zip(self.health.iter())
            .map(|(e, h)| {
                let (available, active, left) = h.describe();
                (e.address.clone(), available, active, left)
            })
            .collect()
    }

    /// `(drained, requests in flight, weight percent now)` per endpoint, in the order of
    /// [`Cluster::health`]: what operators set and what slow start makes of it.
    pub(crate) fn operators(&self) -> Vec<(bool, usize, u32)> {
        (0..self.spec.endpoints.len()).map(|i| self.balancer.describe(i)).collect()
    }

    /// Counts a request in flight, or refuses it when the circuit breaker's limit is
    /// reached (the name of the limit is returned).
    pub(crate) fn start_request(&self) -> Result<InFlight, &'static str> {
        let before = self.load.requests.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(self.load.clone());
        if self.max_requests > 0 && before >= self.max_requests {
            self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err("max_requests");
        }
        Ok(guard)
    }

    /// A retry, if the budget allows one now (counted in the metrics either way).
    pub(crate) fn try_retry(&self) -> Option<RetryPermit> {
        let requests = self.load.requests.load(Ordering::Relaxed);
        let mut allowed = ((requests as f64 * self.budget_percent / 100.0) as usize).max(self.min_retry_concurrency);
        if self.max_retries > 0 {
            allowed = allowed.min(self.max_retries);
        }
        if self.load.retries.fetch_add(1, Ordering::Relaxed) >= allowed {
            self.load.retries.fetch_sub(1, Ordering::Relaxed);
            self.stats.retry_budget_exhausted.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.stats.retries.fetch_add(1, Ordering::Relaxed);
        Some(RetryPermit(self.load.clone()))
    }

    /// The HTTP version a request that arrived as `downstream` goes upstream with.
    pub(crate) fn version_for(&self, downstream: http::Version) -> http::Version {
        let h2 = match self.protocol {
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Auto => downstream == http::Version::HTTP_2,
            UpstreamProtocol::Http1 => false,
        };
        if h2 && self.client_h2.is_some() { http::Version::HTTP_2 } else { http::Version::HTTP_11 }
    }

    /// Sends `req` (its URI as [`crate::proxy::upstream_request`] builds it) to
    /// endpoint `index` over the HTTP version the request carries. An HTTP/1.1 request
    /// without a body or with one held whole in memory is exchanged inline
    /// ([`crate::http::h1`]); one with a streamed body or an upgrade goes
    /// through hyper and comes back with the lease of its connection, to release once the
    /// response has been read whole. `now` is the caller's clock reading.
    ///
    /// Not an `async fn`: those keep each argument twice in their future (as passed, and
    /// moved into the body), and a request is 300 bytes; every request's future carries
    /// this one.
    pub(crate) fn send(
        &self,
        index: usize,
        req: Request<UpstreamBody>,
        now: std::time::Instant,
    ) -> impl Future<Output = Result<(Response<UpstreamResponseBody>, Option<Lease>), SendError>> + Send + '_ {
        let h2 = self.client_h2.is_some() && req.version() == http::Version::HTTP_2;
        let inline = !h2
            && (req.body().is_end_stream() || req.body().is_buffered())
            && !req.headers().contains_key(http::header::UPGRADE);
        async move {
            if inline {
                // `h1::exchange` writes HTTP/1.1 whatever the request's version says.
                let response = self.http1.exchange(index, req, now).await?;
                return Ok((response.map(|b| Either::Right(Either::Left(b))), None));
            }
            // Boxed: HTTP/2 upstreams, streamed bodies and upgrades have larger futures,
            // which would otherwise make the common case's larger too.
            Box::pin(self.send_through_hyper(index, req, now)).await
        }
    }

    async fn send_through_hyper(
        &self,
        index: usize,
        mut req: Request<UpstreamBody>,
        now: std::time::Instant,
    ) -> Result<(Response<UpstreamResponseBody>, Option<Lease>), SendError> {
        if let (Some(client), http::Version::HTTP_2) = (&self.client_h2, req.version()) {
            return match client.request(req).await {
                Ok(response) => Ok((response.map(|b| Either::Left(b.into())), None)),
                Err(error) if error.is_connect() => Err(SendError::Connect(error.into(), None)),
                Err(error) => Err(SendError::Exchange(error.into())),
            };
        }
        *req.version_mut() = http::Version::HTTP_11;
        let (response, lease) = self.http1.send(index, req, now).await?;
        Ok((response.map(|b| Either::Left(b.into())), Some(lease)))
    }

    /// Picks the endpoint for a request (`None`: a retry, any other endpoint). The
    /// returned guard counts the request against the endpoint until dropped.
    pub(crate) fn pick(&self, ctx: Option<&PickContext<'_>>) -> Option<(Picked, &Endpoint)> {
        self.pick_avoiding(ctx, &Tried::default())
    }

    /// As [`Self::pick`], avoiding the endpoints a request already tried while another
    /// is available (a retry goes elsewhere when it can).
    pub(crate) fn pick_avoiding(&self, ctx: Option<&PickContext<'_>>, tried: &Tried) -> Option<(Picked, &Endpoint)> {
        // Without health checks, ejections or priorities every endpoint is available:
        // skip the per-request scan of health state.
        if self.checker.is_none() && self.levels.len() <= 1 && !self.any_ejected() {
            let picked = if tried.is_empty() {
                self.balancer.pick(ctx, &|_| true)?
            } else {
                self.balancer.pick(ctx, &|i| !tried.has(i))?
            };
            let endpoint = self.endpoints.get(picked.index)?;
            return Some((picked, endpoint));
        }
        // Drained endpoints count on neither side of the panic threshold: draining one
        // must not spread traffic back onto it.
        let healthy = |i: usize| self.balancer.serving(i) && self.health.get(i).is_none_or(|h| h.available());
        let available = |i: usize| !tried.has(i) && healthy(i);
        let total = self.balancer.serving_count();
        let up = (0..self.health.len()).filter(|i| healthy(*i)).count();
        // Panic: too few endpoints available anywhere: spread over all of them.
        let panic = up == 0 || up * 100 < self.panic_percent as usize * total;
        let picked = if panic {
            self.balancer.pick(ctx, &|i| !tried.has(i))?
        } else if self.levels.len() > 1 {
            let level = self.choose_level(&available);
            self.balancer.pick(ctx, &|i| self.priorities.get(i) == Some(&level) && available(i))?
        } else {
            self.balancer.pick(ctx, &available)?
        };
        let endpoint = self.endpoints.get(picked.index)?;
        Some((picked, endpoint))
    }

    /// The priority level for a request: level P takes min(1, 1.4 x its healthy share) of
    /// what reaches it; the rest spills to the next level.
    fn choose_level(&self, available: &dyn Fn(usize) -> bool) -> u32 {
        let mut last_with_any = self.levels.first().copied().unwrap_or(0);
        for level in &*self.levels {
            let (mut members, mut up) = (0usize, 0usize);
            for (i, p) in self.priorities.iter().enumerate() {
                if p == level {
                    members += usize::from(self.balancer.serving(i));
                    up += usize::from(available(i));
                }
            }
            if up == 0 {
                continue;
            }
            last_with_any = *level;
            let load = (1.4 * up as f64 / members as f64).min(1.0);
            if rand::random::<f64>() < load {
                return *level;
            }
        }
        last_with_any
    }

    /// The affinity cookie naming endpoint `index`, when the cluster has affinity.
    pub(crate) fn set_cookie_for(&self, index: usize) -> Option<HeaderValue> {
        self.sticky.as_ref()?.set_cookie(index)
    }

    /// As `pick`, honouring session affinity: the endpoint the request's cookie names
    /// while it is available. Also returns the `Set-Cookie` to send when the request
    /// had no valid cookie or its endpoint is gone.
    pub(crate) fn pick_sticky(&self, ctx: &PickContext<'_>) -> Option<(Picked, &Endpoint, Option<HeaderValue>)> {
        let Some(sticky) = &self.sticky else {
            let (p, e) = self.pick(Some(ctx))?;
            return Some((p, e, None));
        };
        if let Some(index) = sticky.endpoint(ctx.headers)
            && self.health.get(index).is_some_and(|h| h.available())
            && let Some(picked) = self.balancer.take(index)
        {
            let endpoint = self.endpoints.get(index)?;
            return Some((picked, endpoint, None));
        }
        let (picked, endpoint) = self.pick(Some(ctx))?;
        let cookie = sticky.set_cookie(picked.index);
        Some((picked, endpoint, cookie))
    }
}

/// Builds clusters for a new snapshot, reusing what the previous runtime had: an
/// unchanged cluster is shared whole (pool, cursor); a changed one keeps its cursor.
#[derive(Debug)]
pub(crate) struct ClusterRegistry<'a> {
    previous: &'a HashMap<Arc<str>, Arc<Cluster>>,
}

impl<'a> ClusterRegistry<'a> {
    pub(crate) fn new(previous: &'a HashMap<Arc<str>, Arc<Cluster>>) -> Self {
        ClusterRegistry { previous }
    }

    /// A compiled cluster for a validated spec.
    pub(crate) fn build(
        &self,
        spec: &config::Cluster,
        stats: Arc<ClusterStats>,
        tls: Option<&UpstreamTls>,
    ) -> Arc<Cluster> {
        let old = self.previous.get(spec.name.as_str());
        let fingerprint = tls.map(|t| t.fingerprint.clone());
        if let Some(old) =
            old.filter(|old| old.spec == *spec && Arc::ptr_eq(&old.stats, &stats) && old.tls_fingerprint == fingerprint)
        {
            return old.clone();
        }
        let endpoints: Vec<Endpoint> = spec
            .endpoints
            .iter()
            .filter_map(|e| {
                // Validated upstream: every address parses; a failure here is skipped, not a panic.
                let addr: SocketAddr = e.address.parse().ok()?;
                let authority = Authority::try_from(addr.to_string()).ok()?;
                Some(Endpoint { authority })
            })
            .collect();
        let weights: Vec<u32> = spec.endpoints.iter().map(|e| e.weight.max(1)).collect();
        let addresses: Vec<String> = spec.endpoints.iter().map(|e| e.address.clone()).collect();
        let cursor: Arc<AtomicUsize> = old.map(|o| o.cursor.clone()).unwrap_or_default();
        let health: Arc<[Arc<EndpointHealth>]> = spec
            .endpoints
            .iter()
            .map(|e| {
                old.and_then(|o| {
                    o.spec.endpoints.iter().position(|p| p.address == e.address).and_then(|i| o.health.get(i))
                })
                .cloned()
                .unwrap_or_default()
            })
            .collect();
        let checker = spec.health_check.as_ref().map(|hc| {
            let targets = spec
                .endpoints
                .iter()
                .zip(health.iter())
                .filter_map(|(e, h)| Some((e.address.parse().ok()?, h.clone())))
                .collect();
            Checker::start(hc, targets, tls.cloned())
        });
        let drained: Vec<bool> = spec.endpoints.iter().map(|e| e.drain).collect();
        let balancer = Balancer::build(
            LbPolicy::try_from(spec.lb_policy).unwrap_or(LbPolicy::RoundRobin),
            spec.hash_policy.as_ref(),
            &addresses,
            &weights,
            cursor.clone(),
            old.map(|o| (o.addresses.as_ref(), &o.balancer)),
            Operators { drained: &drained, slow_start: spec.slow_start.as_ref(), health: Some(&health) },
        );
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // TLS clusters hand `https` URIs to the TLS layer above this connector.
        connector.enforce_http(false);
        connector.set_connect_timeout(Some(duration_or(spec.connect_timeout.as_ref(), DEFAULT_CONNECT_TIMEOUT)));
        let protocol = UpstreamProtocol::try_from(spec.protocol).unwrap_or(UpstreamProtocol::Http1);
        let scheme = if tls.is_some() { http::uri::Scheme::HTTPS } else { http::uri::Scheme::HTTP };
        let targets = endpoints
            .iter()
            .map(|e| {
                Uri::builder()
                    .scheme(scheme.clone())
                    .authority(e.authority.clone())
                    .path_and_query("/")
                    .build()
                    .unwrap_or_default()
            })
            .collect();
        let http1 = Http1Pool::new(tls::connector(connector.clone(), tls, false), targets, POOL_IDLE_TIMEOUT);
        let client_h2 = (protocol != UpstreamProtocol::Http1).then(|| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .http2_only(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .build(tls::connector(connector, tls, true))
        });
        Arc::new(Cluster {
            name: spec.name.as_str().into(),
            spec: spec.clone(),
            endpoints: endpoints.into(),
            balancer,
            cursor,
            load: old.map(|o| o.load.clone()).unwrap_or_default(),
            budget_percent: spec.retry_budget.as_ref().map_or(20.0, |b| b.budget_percent),
            min_retry_concurrency: spec.retry_budget.as_ref().map_or(3, |b| b.min_retry_concurrency as usize),
            max_requests: spec.circuit_breaker.as_ref().map_or(0, |c| c.max_requests as usize),
            connections: spec
                .circuit_breaker
                .as_ref()
                .filter(|c| c.max_connections > 0)
                .map(|c| Arc::new(tokio::sync::Semaphore::new(c.max_connections as usize))),
            max_pending: spec
                .circuit_breaker
                .as_ref()
                .map_or(1024, |c| if c.max_pending_requests == 0 { 1024 } else { c.max_pending_requests as usize }),
            max_retries: spec.circuit_breaker.as_ref().map_or(0, |c| c.max_retries as usize),
            outlier: Outlier::compile(spec.outlier_detection.as_ref()),
            ejected_until: AtomicU64::new(health.iter().map(|h| h.ejected_until()).max().unwrap_or(0)),
            panic_percent: spec.panic_threshold_percent.unwrap_or(50),
            sticky: Sticky::compile(spec.sticky_session.as_ref(), &addresses),
            addresses: addresses.clone().into(),
            priorities: spec.endpoints.iter().map(|e| e.priority).collect(),
            levels: {
                let mut levels: Vec<u32> = spec.endpoints.iter().map(|e| e.priority).collect();
                levels.sort_unstable();
                levels.dedup();
                levels.into()
            },
            health,
            checker,
            http1,
            client_h2,
            protocol,
            stats,
            scheme,
            tls_fingerprint: fingerprint,
            stream_tls: tls.cloned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(weights: &[u32]) -> config::Cluster {
        config::Cluster {
            name: "c".into(),
            endpoints: weights
                .iter()
                .enumerate()
                .map(|(i, w)| config::Endpoint {
                    address: format!("127.0.0.1:{}", 9000 + i),
                    weight: *w,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn round_robin_cycles_and_cursor_survives_a_changed_cluster() {
        let empty = HashMap::new();
        let stats = Arc::new(ClusterStats::default());
        let cluster = ClusterRegistry::new(&empty).build(&spec(&[1, 1, 1]), stats.clone(), None);
        let ports: Vec<u16> = (0..4).map(|_| cluster.pick(None).unwrap().1.authority.port_u16().unwrap()).collect();
        assert_eq!(ports, vec![9000, 9001, 9002, 9000]);

        let previous = HashMap::from([(cluster.name.clone(), cluster.clone())]);
        let same = ClusterRegistry::new(&previous).build(&spec(&[1, 1, 1]), stats.clone(), None);
        assert!(Arc::ptr_eq(&same, &cluster), "an unchanged cluster is shared whole");
        let changed = ClusterRegistry::new(&previous).build(&spec(&[1, 1, 2]), stats, None);
        assert!(!Arc::ptr_eq(&changed, &cluster));
        assert_eq!(changed.cursor.load(Ordering::Relaxed), 4, "the cursor is carried over");
    }

    #[tokio::test]
    async fn a_cookie_naming_a_drained_endpoint_is_moved_elsewhere() {
        let mut spec = spec(&[1, 1]);
        spec.sticky_session = Some(config::StickySession { secret: "0123456789abcdef".into(), ..Default::default() });
        let stats = Arc::new(ClusterStats::default());
        let empty = HashMap::new();
        let serving = ClusterRegistry::new(&empty).build(&spec, stats.clone(), None);
        let cookie = serving.set_cookie_for(0).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::COOKIE, cookie.to_str().unwrap().split(';').next().unwrap().parse().unwrap());
        let ctx = PickContext { client: "192.0.2.1".parse().unwrap(), path: "/", headers: &headers };
        let (picked, _, set) = serving.pick_sticky(&ctx).unwrap();
        assert_eq!((picked.index, set), (0, None), "the cookie keeps its endpoint");
        drop(picked);

        spec.endpoints[0].drain = true;
        let previous = HashMap::from([(serving.name.clone(), serving.clone())]);
        let draining = ClusterRegistry::new(&previous).build(&spec, stats, None);
        for _ in 0..4 {
            let (picked, _, set) = draining.pick_sticky(&ctx).unwrap();
            assert_eq!(picked.index, 1, "re-pinned to a serving endpoint");
            assert_eq!(set, draining.set_cookie_for(1), "with a new cookie naming it");
        }
        assert_eq!(draining.operators()[0], (true, 0, 0));
        assert_eq!(draining.operators()[1], (false, 0, 100));
    }
}
