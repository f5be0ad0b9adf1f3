//! Observability, a leaf layer: Prometheus metrics, access logs, OpenTelemetry spans.

pub(crate) mod accesslog;
pub(crate) mod datagrams;
mod json;
pub(crate) mod metrics;
#[cfg(feature = "otlp")]
pub(crate) mod otel;
pub(crate) mod streams;
