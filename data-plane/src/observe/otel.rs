//! OpenTelemetry tracing (cargo feature `otlp`): one server span per proxied request,
//! child of the client's W3C `traceparent` when it sent one, exported in batches over
//! OTLP/gRPC by a background task. The upstream receives a `traceparent` naming this
//! span, so its spans nest under the proxy's. Attributes: route, cluster, upstream
//! address, status code, bytes.

use std::borrow::Cow;
use std::time::Duration;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{BatchConfigBuilder, SdkTracer, SdkTracerProvider};

/// How often finished spans are sent.
const EXPORT_EVERY: Duration = Duration::from_millis(500);

/// The node's tracer; spans are flushed when it is dropped.
pub(crate) struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tracing")
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        // Shutdown flushes through the batch task, which runs on the tokio runtime: waiting
        // for it on a runtime thread of a current-thread runtime would deadlock. A
        // multi-thread runtime lends the thread (`block_in_place`); otherwise a helper
        // thread waits and the runtime goes on.
        let provider = self.provider.clone();
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(|| {
                let _ = provider.shutdown();
            });
        } else {
            std::thread::spawn(move || {
                let _ = provider.shutdown();
            });
        }
    }
}

struct Extract<'a>(&'a HeaderMap);

impl Extractor for Extract<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct Inject<'a>(&'a mut HeaderMap);

impl Injector for Inject<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

impl Tracing {
    /// Starts the exporter towards an OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`.
    /// Must run inside the tokio runtime (the batch exporter is a task on it).
    pub(crate) fn start(endpoint: &str, node_id: &str) -> Result<Tracing, String> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| format!("otlp exporter: {e}"))?;
        let batch = BatchConfigBuilder::default().with_scheduled_delay(EXPORT_EVERY).build();
        let processor =
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).with_batch_config(batch).build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("vane")
            .with_attribute(KeyValue::new("service.instance.id", node_id.to_owned()))
            .build();
        let provider = SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build();
        let tracer = provider.tracer("vane");
        Ok(Tracing { provider, tracer, propagator: TraceContextPropagator::new() })
    }

    /// A server span for a request, child of its `traceparent` if any.
    pub(crate) fn start_request(&self, headers: &HeaderMap, method: &http::Method, path: &str) -> Context {
        let parent = self.propagator.extract(&Extract(headers));
        let span = self
            .tracer
            .span_builder(format!("{method} {path}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.as_str().to_owned()),
                KeyValue::new("url.path", path.to_owned()),
            ])
            .start_with_context(&self.tracer, &parent);
        parent.with_span(span)
    }

    /// Replaces the request's `traceparent` (and `tracestate`) with this span's.
    pub(crate) fn inject(&self, cx: &Context, headers: &mut HeaderMap) {
        self.propagator.inject_context(cx, &mut Inject(headers));
    }
}

/// Ends a request span with what is known once the response is done.
pub(crate) fn finish(
    cx: Context,
    route: &str,
    cluster: &str,
    upstream: Option<&str>,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
) {
    let span = cx.span();
    let mut attributes = vec![
        KeyValue::new("vane.route", Cow::Owned(route.to_owned())),
        KeyValue::new("vane.cluster", Cow::Owned(cluster.to_owned())),
        KeyValue::new("http.response.status_code", i64::from(status)),
        KeyValue::new("http.request.body.size", i64::try_from(bytes_in).unwrap_or(i64::MAX)),
        KeyValue::new("http.response.body.size", i64::try_from(bytes_out).unwrap_or(i64::MAX)),
    ];
    if let Some(upstream) = upstream {
        attributes.push(KeyValue::new("server.address", upstream.to_owned()));
    }
    span.set_attributes(attributes);
    if status >= 500 {
        span.set_status(Status::error(format!("status {status}")));
    }
    span.end();
}
