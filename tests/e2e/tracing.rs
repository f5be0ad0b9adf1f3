//! OpenTelemetry: a span per request, child of the client's traceparent, exported over
//! OTLP/gRPC to a collector (here a fake one that records what it receives).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use vane_data_plane::{Node, NodeConfig};
use vane_suite::*;

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()).and_then(|v| v.value)
}

#[tokio::test]
async fn requests_become_spans_under_the_clients_trace_and_the_upstream_sees_the_proxy_span() {
    init_logs();
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let cp = TestControlPlane::start().await;
    let node = Node::start(NodeConfig {
        node_id: "traced".into(),
        control_plane: cp.url(),
        cache_dir: None,
        admin: None,
        labels: Default::default(),
        token: None,
        tls: None,
        otlp_endpoint: Some(otlp),
        replay_budget_bytes: None,
        file_poll_interval: NodeConfig::DEFAULT_FILE_POLL_INTERVAL,
    })
    .await
    .unwrap();
    let e1 = EchoServer::start("echo-1", ([127, 0, 0, 1], 0).into()).await.unwrap();
    cp.apply(&config_yaml(&[("echo", &[e1.addr()])], &[("api", "/api", "echo")])).await.unwrap();
    wait_version(&node, 1).await;
    let web = vane_suite::listener(&node, "web").await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let req = Request::get(format!("http://{web}/api/traced"))
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let reply = HttpClient::default().send(req).await.unwrap();
    assert_eq!(reply.status, 200);
    let upstream_parent = reply.body.lines().find_map(|l| l.strip_prefix("traceparent: ")).unwrap().to_owned();

    let span = eventually(Duration::from_secs(10), "the span reaches the collector", || async {
        collector.spans.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(hex(&span.trace_id), trace_id, "the client's trace continues");
    assert_eq!(hex(&span.parent_span_id), client_span, "the proxy span is the client span's child");
    assert_eq!(
        upstream_parent,
        format!("00-{trace_id}-{}-01", hex(&span.span_id)),
        "the upstream nests under the proxy"
    );
    assert_eq!(attribute(&span, "vane.route"), Some(Value::StringValue("api".into())));
    assert_eq!(attribute(&span, "vane.cluster"), Some(Value::StringValue("echo".into())));
    assert_eq!(attribute(&span, "server.address"), Some(Value::StringValue(e1.addr().to_string())));
    assert_eq!(attribute(&span, "http.response.status_code"), Some(Value::IntValue(200)));
    assert_eq!(span.name, "GET /api/traced");
    drop(node);
    server.abort();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
