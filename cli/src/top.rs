//! `vane top`: a live view of request rate, error rate and p99 per route, computed from
//! two scrapes of the nodes' `/metrics` (summed over every `--node`: a fleet view).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::output::table;

#[derive(Debug, clap::Args)]
pub(crate) struct TopArgs {
    /// A node admin URL, e.g. `http://127.0.0.1:9901`; repeat for a fleet view.
    #[arg(long = "node", default_value = "http://127.0.0.1:9901")]
    nodes: Vec<String>,
    /// Time between screens.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Print one screen (after one interval) and exit.
    #[arg(long)]
    once: bool,
}

/// Per (listener, route, cluster): requests, 5xx, and histogram buckets (le → cumulative).
#[derive(Clone, Debug, Default)]
struct RouteSample {
    requests: f64,
    errors: f64,
    buckets: BTreeMap<u64, f64>,
}

type Key = (String, String, String);

async fn scrape(nodes: &[String]) -> anyhow::Result<BTreeMap<Key, RouteSample>> {
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut out: BTreeMap<Key, RouteSample> = BTreeMap::new();
    for node in nodes {
        let url: http::Uri = format!("{}/metrics", node.trim_end_matches('/')).parse().context("node url")?;
        let response = tokio::time::timeout(Duration::from_secs(5), client.get(url))
            .await
            .map_err(|_| anyhow!("{node}: no answer in 5s"))?
            .with_context(|| format!("cannot reach {node}"))?;
        let body = response.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&body);
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .with_context(|| format!("{node}: metrics do not parse"))?;
        for s in parsed.samples {
            let key = (
                s.labels.get("listener").unwrap_or_default().to_owned(),
                s.labels.get("route").unwrap_or_default().to_owned(),
                s.labels.get("cluster").unwrap_or_default().to_owned(),
            );
            match (s.metric.as_str(), &s.value) {
                (
                    "vane_http_requests_total",
                    prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v),
                ) => {
                    let entry = out.entry(key).or_default();
                    entry.requests += v;
                    if s.labels.get("status").is_some_and(|st| st.starts_with('5')) {
                        entry.errors += v;
                    }
                }
                ("vane_http_request_duration_seconds", prometheus_parse::Value::Histogram(buckets)) => {
                    let entry = out.entry(key).or_default();
                    for b in buckets {
                        // Bucket bounds in microseconds; +Inf as u64::MAX.
                        let le = if b.less_than.is_finite() { (b.less_than * 1e6).round() as u64 } else { u64::MAX };
                        *entry.buckets.entry(le).or_default() += b.count;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// The upper bound of the bucket holding the 99th percentile of the new observations.
fn p99(before: &RouteSample, after: &RouteSample) -> Option<u64> {
    let delta: Vec<(u64, f64)> =
        after.buckets.iter().map(|(le, n)| (*le, n - before.buckets.get(le).copied().unwrap_or(0.0))).collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta.iter().find(|(_, n)| *n >= total * 0.99).map(|(le, _)| *le)
}

fn screen(before: &BTreeMap<Key, RouteSample>, after: &BTreeMap<Key, RouteSample>, secs: f64) -> String {
    let mut rows: Vec<(f64, Vec<String>)> = after
        .iter()
        .map(|(key, now)| {
            let then = before.get(key).cloned().unwrap_or_default();
            let requests = now.requests - then.requests;
            let errors = now.errors - then.errors;
            let rate = requests / secs;
            let error_pct = if requests > 0.0 { errors / requests * 100.0 } else { 0.0 };
            let p99 = match p99(&then, now) {
                None => "-".to_owned(),
                Some(u64::MAX) => ">60s".to_owned(),
                Some(us) => format!("<={}ms", us as f64 / 1000.0),
            };
            let (listener, route, cluster) = key;
            let route = if route.is_empty() { "(no route)".to_owned() } else { route.clone() };
            let cluster = if cluster.is_empty() { "-".to_owned() } else { cluster.clone() };
            (
                rate,
                vec![
                    listener.clone(),
                    route,
                    cluster,
                    format!("{rate:.1}"),
                    format!("{error_pct:.1}%"),
                    p99,
                    format!("{}", now.requests),
                ],
            )
        })
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    table(&["LISTENER", "ROUTE", "CLUSTER", "REQ/S", "5XX", "P99", "TOTAL"], rows.into_iter().map(|(_, r)| r).collect())
}

pub(crate) async fn top(args: TopArgs) -> anyhow::Result<()> {
    let mut before = scrape(&args.nodes).await?;
    let mut at = Instant::now();
    loop {
        tokio::time::sleep(args.interval).await;
        let after = scrape(&args.nodes).await?;
        let secs = at.elapsed().as_secs_f64();
        at = Instant::now();
        let text = screen(&before, &after, secs);
        if args.once {
            out!("{text}")?;
            return Ok(());
        }
        // Clear the terminal and draw from the top left.
        out!("\x1b[2J\x1b[H{} node(s), every {:?} (Ctrl-C to quit)\n\n{text}", args.nodes.len(), args.interval)?;
        before = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_bucket_bound_reached_by_99_percent_of_new_observations() {
        let before =
            RouteSample { buckets: [(1000, 10.0), (5000, 10.0), (u64::MAX, 10.0)].into(), ..Default::default() };
        let after =
            RouteSample { buckets: [(1000, 60.0), (5000, 109.0), (u64::MAX, 110.0)].into(), ..Default::default() };
        assert_eq!(p99(&before, &after), Some(5000));
        assert_eq!(p99(&after, &after), None);
    }
}
