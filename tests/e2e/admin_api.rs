//! The admin API as any gRPC client meets it: standard error details, bounded statuses,
//! tokens checked before a body is read, garbage refused as the client's fault, empty
//! configs only on purpose, short summaries, clear messages, both reflection versions.
//! (tests/python/test_error_details.py reads the same details from Python.)

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use tonic_types::StatusExt;
use vane_proto::admin::config_service_client::ConfigServiceClient;
use vane_proto::admin::{ApplyRequest, DeleteRequest, Kind, ValidateResponse};
use vane_proto::prost::Message;
use vane_proto::{Format, load};
use vane_suite::*;

/// A config of `n` routes `r0..`, each to cluster `shared`, which does not exist unless
/// `with_cluster`.
fn many_routes(n: usize, with_cluster: bool) -> String {
    let echo: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let names: Vec<(String, String)> = (0..n).map(|i| (format!("r{i}"), format!("/r{i}"))).collect();
    let routes: Vec<(&str, &str, &str)> = names.iter().map(|(n, p)| (n.as_str(), p.as_str(), "shared")).collect();
    let clusters: &[(&str, &[SocketAddr])] = if with_cluster { &[("shared", &[echo])] } else { &[] };
    let yaml = config_yaml(clusters, &routes);
    if with_cluster { yaml } else { yaml.replace("clusters:\n", "clusters: []\n") }
}

fn apply_request(yaml: &str) -> ApplyRequest {
    ApplyRequest {
        config: Some(load(yaml, Format::Yaml).unwrap()),
        dry_run: false,
        expected_version: 0,
        allow_empty: false,
    }
}

/// An HTTP/2 (prior knowledge) connection to `addr`, driven in the background.
async fn h2c<B>(addr: &str) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    sender
}

/// Sends one gRPC message (`message`, already encoded, any bytes) to `path` over h2c, as
/// a client of any language could, and returns the status the server answered with.
async fn raw_call(addr: &str, path: &str, message: &[u8], token: Option<&str>) -> tonic::Status {
    let mut sender = h2c(addr).await;
    let mut body = vec![0];
    body.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    body.extend_from_slice(message);
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let response = sender.send_request(request.body(Full::new(Bytes::from(body))).unwrap()).await.unwrap();
    status_of(response).await
}

/// The status of a gRPC response: in its headers (trailers-only) or its trailers.
async fn status_of<B: hyper::body::Body>(response: http::Response<B>) -> tonic::Status
where
    B::Error: std::fmt::Debug,
{
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status;
    }
    let trailers = response.into_body().collect().await.unwrap().trailers().cloned().unwrap_or_default();
    tonic::Status::from_header_map(&trailers).expect("a grpc-status")
}

fn host_port(url: &str) -> &str {
    url.trim_start_matches("http://")
}

#[tokio::test]
async fn a_refused_config_carries_a_google_rpc_status_with_field_violations_and_vanes_own_detail() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let mut client = ConfigServiceClient::connect(cp.url()).await.unwrap();
    let yaml = config_yaml(&[("echo", &["127.0.0.1:9".parse().unwrap()])], &[("api", "/api", "nope")]);
    let status = client.apply(apply_request(&yaml)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "invalid config: route 'api': forward.clusters[0].name: unknown cluster 'nope'");

    // The standard model: a google.rpc.Status whose code and message equal the call's.
    let rpc = tonic_types::pb::Status::decode(status.details()).expect("details are a google.rpc.Status");
    assert_eq!((rpc.code, rpc.message.as_str()), (tonic::Code::InvalidArgument as i32, status.message()));
    let bad = status.get_details_bad_request().expect("a google.rpc.BadRequest");
    assert_eq!(bad.field_violations.len(), 1);
    assert_eq!(bad.field_violations[0].field, "config.routes[0].forward.clusters[0].name");
    assert_eq!(bad.field_violations[0].description, "route 'api': unknown cluster 'nope'");
    // Vane's own detail, beside it.
    let ours = rpc
        .details
        .iter()
        .find(|a| a.type_url == "type.googleapis.com/vane.admin.v1.ValidateResponse")
        .expect("vane's ValidateResponse detail");
    let ours = ValidateResponse::decode(ours.value.as_slice()).unwrap();
    assert_eq!((ours.valid, ours.errors.len(), ours.more_errors), (false, 1, 0));
    assert_eq!(ours.errors[0].field, "forward.clusters[0].name");

    // The CLI reads that detail.
    let dir = tempfile::tempdir().unwrap();
    let file = write_yaml(dir.path(), "bad.yaml", &yaml);
    let out = vane(&cp.url(), &["apply", "-f", &file]).await;
    assert_eq!(out.stderr, "error: invalid config: route 'api': forward.clusters[0].name: unknown cluster 'nope'\n");
}

#[tokio::test]
async fn three_thousand_problems_come_back_as_a_bounded_status_that_counts_the_rest() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let yaml = many_routes(3000, false);
    let mut client = ConfigServiceClient::connect(cp.url()).await.unwrap();
    let status = client.apply(apply_request(&yaml)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().len() <= 4096, "{}", status.message().len());
    assert!(status.message().ends_with("more problems)"), "{}", status.message());
    assert!(status.details().len() <= 8192, "{}", status.details().len());
    let shown = status.get_details_bad_request().unwrap().field_violations.len();
    assert!(shown >= 10, "the first problems are listed: {shown}");

    let dir = tempfile::tempdir().unwrap();
    let file = write_yaml(dir.path(), "bad.yaml", &yaml);
    let out = vane(&cp.url(), &["apply", "-f", &file]).await;
    assert!(!out.success);
    assert!(out.stderr.starts_with("error: invalid config: route 'r0': forward.clusters[0].name"), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("(and {} more problems", 3000 - shown)), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1);
}

#[tokio::test]
async fn deleting_a_cluster_used_by_3000_routes_says_it_is_in_use_and_by_which_routes() {
    init_logs();
    let cp = TestControlPlane::start().await;
    cp.apply(&many_routes(3000, true)).await.unwrap();
    let out = vane(&cp.url(), &["cluster", "delete", "shared"]).await;
    assert!(!out.success);
    assert_eq!(out.stderr, "error: cluster 'shared' is in use by routes r0, r1, r2 and 2997 more\n");

    let mut client = ConfigServiceClient::connect(cp.url()).await.unwrap();
    let request =
        DeleteRequest { kind: Kind::Cluster as i32, name: "shared".into(), expected_version: 0, dry_run: false };
    let status = client.delete(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(cp.plane.latest_version(), 1, "nothing changed");
}

#[tokio::test]
async fn an_empty_or_comment_only_file_is_refused_unless_allow_empty_is_given() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let cp = VaneProcess::control_plane(&dir.path().join("store"), &[]).await.unwrap();
    let url = cp.control_plane_url().unwrap();
    let good = write_yaml(dir.path(), "good.yaml", &many_routes(1, true));
    assert!(vane(&url, &["apply", "-f", &good]).await.success);
    let empty = write_yaml(dir.path(), "empty.yaml", "# everything is commented out\n# listeners: []\n");

    for args in [vec!["apply", "-f", &empty], vec!["apply", "-f", &empty, "--dry-run"]] {
        let out = vane(&url, &args).await;
        assert!(!out.success, "{args:?}");
        assert!(out.stderr.starts_with("error: the config is empty"), "{}", out.stderr);
        assert!(out.stderr.contains("--allow-empty"), "{}", out.stderr);
    }
    // The same refusal for any gRPC client.
    let mut client = ConfigServiceClient::connect(url.clone()).await.unwrap();
    let status = client.apply(apply_request("")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.get_details_bad_request().unwrap().field_violations[0].field, "config");
    let history = vane(&url, &["history"]).await.stdout;
    assert_eq!(history.lines().count(), 2, "still version 1 only:\n{history}");

    let out = vane(&url, &["apply", "-f", &empty, "--allow-empty"]).await;
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout, "applied version 2: -listener web, -cluster shared, -route r0\n");
}

#[tokio::test]
async fn a_2000_route_apply_prints_a_short_summary_and_history_repeats_it() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_yaml(dir.path(), "big.yaml", &many_routes(2000, true));
    let out = vane(&cp.url(), &["apply", "-f", &file]).await;
    assert_eq!(out.stdout, "applied version 1: +listener web, +cluster shared, +2000 routes (r0, r1, r10, ...)\n");
    let history = vane(&cp.url(), &["history"]).await.stdout;
    assert!(history.lines().nth(1).unwrap().ends_with("+2000 routes (r0, r1, r10, ...)"), "{history}");
}

#[tokio::test]
async fn calls_without_a_token_are_refused_before_their_body_is_read() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let token = vane_control_plane::generate_token();
    let tokens = write_yaml(dir.path(), "tokens", &format!("ops write {}\n", vane_control_plane::hash_token(&token)));
    let cp = VaneProcess::control_plane(&dir.path().join("store"), &["--admin-token-file", &tokens]).await.unwrap();
    let url = cp.control_plane_url().unwrap();
    let addr = host_port(&url).to_owned();
    let apply = "/vane.admin.v1.ConfigService/Apply";

    // A body that is not even a message: refused for the token, not parsed.
    let status = raw_call(&addr, apply, b"\xff\xff\xff garbage", None).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    // The same with a token: the server reads it and calls it the client's fault.
    let status = raw_call(&addr, apply, b"\xff\xff\xff garbage", Some(&token)).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // Four parallel 60 MiB bodies without a token: answered at once, none buffered.
    let before = peak_rss_kb(cp.pid());
    let calls = (0..4).map(|_| {
        let addr = addr.clone();
        tokio::spawn(async move { big_unauthenticated_call(&addr, 60 << 20).await })
    });
    for call in calls {
        assert_eq!(call.await.unwrap().code(), tonic::Code::Unauthenticated);
    }
    let after = peak_rss_kb(cp.pid());
    eprintln!("control plane peak RSS: {before} kB before, {after} kB after four 60 MiB calls without a token");
    assert!(after.saturating_sub(before) < 32 * 1024, "peak RSS grew from {before} kB to {after} kB");
}

/// Streams a gRPC frame announcing `len` bytes (zeros) to Apply, without a token.
async fn big_unauthenticated_call(addr: &str, len: usize) -> tonic::Status {
    let mut sender = h2c(addr).await;
    let mut head = vec![0];
    head.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
    let chunk = Bytes::from(vec![0u8; 1 << 20]);
    let chunks = std::iter::once(Bytes::from(head)).chain(std::iter::repeat_n(chunk, len >> 20));
    let body = StreamBody::new(futures::stream::iter(
        chunks.map(|b| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(b))),
    ));
    let request = http::Request::post(format!("http://{addr}/vane.admin.v1.ConfigService/Apply"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
        .await
        .expect("answered in time")
        .unwrap();
    status_of(response).await
}

/// The process's peak resident set (VmHWM), in kB.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[tokio::test]
async fn a_garbage_protobuf_body_is_invalid_argument_not_internal() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let addr = cp.addr.to_string();
    for path in ["/vane.admin.v1.ConfigService/Apply", "/vane.admin.v1.ConfigService/Validate"] {
        let status = raw_call(&addr, path, b"\x0a\xff\xff\xff\xff\x0f not protobuf", None).await;
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{path}: {status:?}");
        assert!(status.message().starts_with("the request body is not a valid message"), "{}", status.message());
    }
    assert_eq!(cp.plane.latest_version(), 0);
}

#[tokio::test]
async fn an_out_of_range_weight_names_the_field_and_its_range() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "clusters:\n  - name: c\n    endpoints:\n      - address: 127.0.0.1:1\n        weight: 4294967297\n";
    let json = r#"{"clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1:1", "weight": 4294967297}]}]}"#;
    for (name, text) in [("w.yaml", yaml), ("w.json", json)] {
        let file = write_yaml(dir.path(), name, text);
        // Refused while loading, before the control plane is asked.
        let out = vane("http://127.0.0.1:1", &["apply", "-f", &file]).await;
        assert!(!out.success);
        assert!(
            out.stderr.contains(
                "clusters[0].endpoints[0].weight: 4294967297 is out of range for a 32-bit unsigned integer (0 to 4294967295)"
            ),
            "{name}: {}",
            out.stderr
        );
    }
}

#[tokio::test]
async fn control_characters_in_names_are_refused_and_never_echoed_raw() {
    init_logs();
    let cp = TestControlPlane::start().await;
    let dir = tempfile::tempdir().unwrap();
    let json = r#"{"listeners": [{"name": "web", "address": "127.0.0.1:0"}],
        "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1:9"}]}],
        "routes": [{"name": "evil\u001b[2J\u001b]0;pwned\u0007", "match": {"prefix": "/"}, "forward": {"clusters": [{"name": "c"}]}}]}"#;
    let file = write_yaml(dir.path(), "evil.json", json);
    let out = vane(&cp.url(), &["apply", "-f", &file]).await;
    assert!(!out.success);
    assert!(
        !out.stderr.contains('\u{1b}') && !out.stderr.contains('\u{7}'),
        "raw control characters: {:?}",
        out.stderr
    );
    assert!(out.stderr.contains(r"route 'evil\u{1b}[2J\u{1b}]0;pwned\u{7}': name: may hold only"), "{}", out.stderr);

    // A name in a request is escaped in the answer too, for any client.
    let mut client = ConfigServiceClient::connect(cp.url()).await.unwrap();
    let request =
        DeleteRequest { kind: Kind::Route as i32, name: "x\u{1b}[2J".into(), expected_version: 0, dry_run: false };
    let status = client.delete(request).await.unwrap_err();
    assert_eq!(status.message(), r"route 'x\u{1b}[2J' not found");
}

#[tokio::test]
async fn reflection_answers_v1alpha_clients_too() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let cp = TestControlPlane::start().await;
    let channel = tonic::transport::Channel::from_shared(cp.url()).unwrap().connect().await.unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"vane.admin.v1.ConfigService".to_owned()), "{names:?}");
}
