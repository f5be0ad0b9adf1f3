//! Response compression through a real `vane proxy` process (issue 19): each encoding
//! decoded by decoders not written here (curl's, the `gzip` and `zstd` tools, and
//! async-compression's), q-value choice, the answers never compressed, `Vary` and `ETag`,
//! a listed event stream flushed event by event, a 10 MB body streamed with bounded node
//! memory, and the metrics.

mod origin;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::AsyncReadExt;
use vane_suite::*;

use origin::{Origin, STREAM_BYTES};

/// A control plane, the origin, and a `vane proxy` process serving this config: `web`
/// (all encodings, defaults) on every host, `gz.test` gzip only at level 1, `sse.test`
/// gzip for `text/event-stream` only, `plain.test` without compression.
struct Fixture {
    cp: TestControlPlane,
    origin: Origin,
    proxy: VaneProcess,
    web: SocketAddr,
    admin: SocketAddr,
}

impl Fixture {
    async fn start() -> Fixture {
        init_logs();
        let cp = TestControlPlane::start().await;
        let origin = Origin::start().await;
        let yaml = format!(
            "listeners:\n  - {{name: web, address: '127.0.0.1:0'}}\n\
             clusters:\n  - {{name: origin, endpoints: [{{address: '{}'}}]}}\n\
             compressions:\n  - {{name: web}}\n  - {{name: gz, encodings: [gzip], gzip_level: 1}}\n\
             \x20 - {{name: sse, encodings: [gzip], content_types: [text/event-stream]}}\n\
             routes:\n\
             \x20 - {{name: gz, match: {{prefix: /, hosts: [gz.test]}}, forward: {{clusters: [{{name: origin}}]}}, compression: gz}}\n\
             \x20 - {{name: sse, match: {{prefix: /, hosts: [sse.test]}}, forward: {{clusters: [{{name: origin}}]}}, compression: sse}}\n\
             \x20 - {{name: plain, match: {{prefix: /, hosts: [plain.test]}}, forward: {{clusters: [{{name: origin}}]}}}}\n\
             \x20 - {{name: all, match: {{prefix: /}}, forward: {{clusters: [{{name: origin}}]}}, compression: web}}\n",
            origin.addr
        );
        cp.apply(&yaml).await.expect("config applies");
        let proxy =
            VaneProcess::start(&["proxy", "--control-plane", &cp.url(), "--node-id", "n1", "--admin", "127.0.0.1:0"])
                .await
                .expect("vane proxy starts");
        let admin: SocketAddr = proxy.banner.rsplit(' ').next().unwrap().parse().unwrap();
        let client = HttpClient::default();
        let config = eventually(Duration::from_secs(10), "the node serves version 1", || async {
            let json: serde_json::Value = serde_json::from_str(&client.get(admin, "/config").await.ok()?.body).ok()?;
            (json["version"] == 1).then_some(json)
        })
        .await;
        let web = config["listeners"]["web"].as_str().unwrap().parse().unwrap();
        Fixture { cp, origin, proxy, web, admin }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.web)
    }

    /// `method path` with `headers`; status, head and body bytes as they came.
    async fn fetch(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Bytes) {
        let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let mut req = Request::builder().method(method).uri(self.url(path));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let response = client.request(req.body(Empty::new()).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        (parts.status, parts.headers, body.collect().await.unwrap().to_bytes())
    }

    async fn metrics(&self) -> String {
        HttpClient::default().get(self.admin, "/metrics").await.unwrap().body
    }

    /// The node's resident memory, in KiB (`VmRSS` or `VmHWM`).
    fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proxy.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

async fn decode(encoding: &str, data: &[u8]) -> Vec<u8> {
    use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZstdDecoder};
    let mut out = Vec::new();
    match encoding {
        "gzip" => GzipDecoder::new(data).read_to_end(&mut out).await,
        "br" => BrotliDecoder::new(data).read_to_end(&mut out).await,
        "zstd" => ZstdDecoder::new(data).read_to_end(&mut out).await,
        other => panic!("unexpected encoding {other}"),
    }
    .unwrap();
    out
}

/// What the gzip stream so far decodes to (it is cut short: decoding stops at its end).
async fn inflate_prefix(data: &[u8]) -> Vec<u8> {
    let mut decoder = async_compression::tokio::bufread::GzipDecoder::new(data);
    let (mut out, mut buf) = (Vec::new(), [0u8; 1024]);
    while let Ok(n @ 1..) = decoder.read(&mut buf).await {
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// Runs a shell pipeline; its stdout.
async fn sh(script: &str) -> Vec<u8> {
    let out = tokio::process::Command::new("sh").args(["-c", script]).output().await.unwrap();
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[tokio::test]
async fn each_encoding_round_trips_through_curl_and_real_decoders() {
    let f = Fixture::start().await;
    let page = origin::text(32 * 1024);
    for encoding in ["gzip", "br", "zstd"] {
        let (status, headers, body) = f.fetch(Method::GET, "/text", &[("accept-encoding", encoding)]).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-encoding"], encoding);
        assert!(headers.get("content-length").is_none() && headers.get("accept-ranges").is_none());
        assert_eq!(headers["etag"], "W/\"v1\"", "a strong ETag is weakened");
        let vary: Vec<_> = headers.get_all("vary").iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(vary, ["Origin", "accept-encoding"]);
        assert!(body.len() < page.len() / 5, "{encoding}: {} of {} bytes", body.len(), page.len());
        assert_eq!(decode(encoding, &body).await, page.as_bytes(), "{encoding}");
    }
    // curl decodes what it is sent; --compressed offers `deflate, gzip, br, zstd` alike,
    // so the server's preference (zstd first) picks.
    let url = f.url("/text");
    let head = sh(&format!("curl -sS --compressed -D - -o /dev/null {url}")).await;
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.contains("content-encoding: zstd"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    for encoding in ["gzip", "br", "zstd"] {
        let body = sh(&format!("curl -sS --compressed -H 'Accept-Encoding: {encoding}' {url}")).await;
        assert_eq!(body, page.as_bytes(), "curl decoding {encoding}");
    }
    // The stock command-line decoders, on the raw bytes.
    let gunzipped = sh(&format!("curl -sS -H 'Accept-Encoding: gzip' {url} | gzip -dc")).await;
    assert_eq!(gunzipped, page.as_bytes());
    let unzstd = sh(&format!("curl -sS -H 'Accept-Encoding: zstd' {url} | zstd -dc")).await;
    assert_eq!(unzstd, page.as_bytes());
    // Over HTTP/2 too (h2c prior knowledge): DATA frames, no length.
    let body = sh(&format!("curl -sS --http2-prior-knowledge --compressed -H 'Accept-Encoding: br' {url}")).await;
    assert_eq!(body, page.as_bytes());
}

#[tokio::test]
async fn q_values_choose_and_the_server_breaks_ties() {
    let f = Fixture::start().await;
    for (accept, expected) in [
        ("gzip, deflate, br, zstd", Some("zstd")),
        ("gzip, deflate, br", Some("br")),
        ("gzip;q=1, br;q=0.5, zstd;q=0.8", Some("gzip")),
        ("zstd;q=0, br;q=0, *;q=0.1", Some("gzip")),
        ("*", Some("zstd")),
        ("gzip;q=0, deflate", None),
        ("identity", None),
        ("identity;q=1, br;q=0.4", None),
    ] {
        let (_, headers, body) = f.fetch(Method::GET, "/json", &[("accept-encoding", accept)]).await;
        let got = headers.get("content-encoding").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(got.as_deref(), expected, "Accept-Encoding: {accept}");
        assert_eq!(headers["vary"], "accept-encoding", "{accept}: Vary whatever was chosen");
        if let Some(e) = expected {
            assert!(decode(e, &body).await.starts_with(b"{\"page\":"));
        } else {
            assert!(body.starts_with(b"{\"page\":"));
            assert!(headers.get("content-length").is_some());
        }
    }
    // A compression offering gzip only: a browser's header gets gzip.
    let (_, headers, _) =
        f.fetch(Method::GET, "/json", &[("host", "gz.test"), ("accept-encoding", "gzip, deflate, br, zstd")]).await;
    assert_eq!(headers["content-encoding"], "gzip");
    // `vane get compressions` shows what each applies, defaults included.
    let table = vane(&f.cp.url(), &["get", "compressions"]).await;
    assert!(table.success, "{}", table.stderr);
    let rows: Vec<Vec<&str>> = table
        .stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect())
        .collect();
    assert_eq!(rows[0], ["COMPRESSION", "ENCODINGS", "LEVELS", "MIN LENGTH", "CONTENT TYPES"]);
    assert_eq!(rows[1], ["web", "zstd,br,gzip", "gzip 6 br 4 zstd 3", "256", "defaults"]);
    assert_eq!(rows[2], ["gz", "gzip", "gzip 1 br 4 zstd 3", "256", "defaults"]);
    // A route without compression leaves everything as it came.
    let (_, headers, _) =
        f.fetch(Method::GET, "/text", &[("host", "plain.test"), ("accept-encoding", "gzip, br, zstd")]).await;
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(headers["etag"], "\"v1\"");
    assert_eq!(headers["vary"], "Origin");
}

#[tokio::test]
async fn answers_that_must_not_be_compressed_pass_as_they_came() {
    let f = Fixture::start().await;
    let all = [("accept-encoding", "gzip, br, zstd")];
    for (path, reason) in [
        ("/encoded", "already_encoded"),
        ("/partial", "status"),
        ("/no-transform", "no_transform"),
        ("/sse", "content_type"),
        ("/grpc", "grpc"),
        ("/png", "content_type"),
        ("/small", "too_small"),
        ("/empty", "status"),
    ] {
        let (status, headers, _) = f.fetch(Method::GET, path, &all).await;
        assert!(status.is_success(), "{path}: {status}");
        let encoding = headers.get("content-encoding").map(|v| v.to_str().unwrap());
        let expected = (path == "/encoded").then_some("gzip");
        assert_eq!(encoding, expected, "{path}: the upstream's Content-Encoding or none");
        assert!(headers.get("vary").is_none(), "{path}: the same answer for every client");
        let metrics = f.metrics().await;
        let series = format!("vane_compression_skipped_total{{compression=\"web\",reason=\"{reason}\"}}");
        assert!(metric(&metrics, &series) >= 1.0, "{path}: {series}");
    }
    // A Range request the upstream answers whole is compressed like any other (206 is not).
    let (_, headers, _) = f.fetch(Method::GET, "/text", &[("range", "bytes=0-99"), ("accept-encoding", "gzip")]).await;
    assert_eq!(headers["content-encoding"], "gzip");
    // HEAD: no body to compress, but the answer varies all the same.
    let (status, headers, body) = f.fetch(Method::HEAD, "/text", &all).await;
    assert_eq!(status, 200);
    assert!(headers.get("content-encoding").is_none() && body.is_empty());
    assert_eq!(headers.get_all("vary").iter().count(), 2);
    // No Accept-Encoding at all: as it came, with Vary so a cache keeps both apart.
    let (_, headers, body) = f.fetch(Method::GET, "/text", &[]).await;
    assert!(headers.get("content-encoding").is_none());
    assert_eq!(headers["etag"], "\"v1\"");
    assert_eq!(body.len(), 32 * 1024);
    let vary: Vec<_> = headers.get_all("vary").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(vary, ["Origin", "accept-encoding"]);
    let metrics = f.metrics().await;
    assert!(metric(&metrics, "vane_compression_skipped_total{compression=\"web\",reason=\"not_accepted\"}") >= 1.0);
    assert!(metric(&metrics, "vane_compression_skipped_total{compression=\"web\",reason=\"head\"}") >= 1.0);
}

#[tokio::test]
async fn a_10_mb_body_streams_compressed_with_bounded_node_memory() {
    let f = Fixture::start().await;
    // Warm up each encoder once, so the baseline holds what a first use allocates.
    for encoding in ["gzip", "br", "zstd"] {
        f.fetch(Method::GET, "/text", &[("accept-encoding", encoding)]).await;
    }
    let expected = origin::stream_body();
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    for encoding in ["gzip", "br", "zstd"] {
        f.origin.finished.store(false, Ordering::SeqCst);
        let before = f.memory_kib("VmRSS:");
        let req = Request::get(f.url("/stream")).header("accept-encoding", encoding).body(Empty::new()).unwrap();
        let response = client.request(req).await.unwrap();
        assert_eq!(response.headers()["content-encoding"], encoding);
        let mut body = response.into_body();
        let mut compressed = Vec::new();
        // The origin stops after 5 MB: only a node that streams gets anything to the
        // client before then. The first megabyte's compressed bytes must arrive.
        let mut resumed = false;
        while let Some(frame) = body.frame().await {
            compressed.extend_from_slice(&frame.unwrap().into_data().unwrap_or_default());
            if !resumed && compressed.len() > 512 * 1024 {
                assert!(!f.origin.finished.load(Ordering::SeqCst), "{encoding}: the origin had not finished");
                let during = f.memory_kib("VmRSS:");
                assert!(
                    during.saturating_sub(before) < 8 * 1024,
                    "{encoding}: node RSS grew {} KiB mid-stream (from {before} KiB)",
                    during.saturating_sub(before)
                );
                f.origin.resume.notify_one();
                resumed = true;
            }
        }
        assert!(resumed, "{encoding}: nothing arrived before the origin paused");
        let after = f.memory_kib("VmRSS:");
        let decoded = decode(encoding, &compressed).await;
        assert_eq!(decoded.len(), STREAM_BYTES, "{encoding}");
        assert!(decoded == expected, "{encoding}: the body decodes to what the origin sent");
        eprintln!(
            "{encoding}: {STREAM_BYTES} -> {} bytes; node RSS {before} KiB before, {after} KiB after",
            compressed.len()
        );
        assert!(after.saturating_sub(before) < 8 * 1024, "{encoding}: RSS {before} -> {after} KiB");
    }
    let metrics = f.metrics().await;
    for encoding in ["gzip", "br", "zstd"] {
        let labels = format!("{{compression=\"web\",encoding=\"{encoding}\"}}");
        let into = metric(&metrics, &format!("vane_compression_bytes_in_total{labels}"));
        let out = metric(&metrics, &format!("vane_compression_bytes_out_total{labels}"));
        assert!(into >= STREAM_BYTES as f64 && out > 0.0 && out < into, "{encoding}: {into} in, {out} out");
        assert!(metric(&metrics, &format!("vane_compression_responses_total{labels}")) >= 2.0);
    }
}

#[tokio::test]
async fn a_listed_event_stream_is_compressed_and_each_event_arrives_as_it_is_sent() {
    let f = Fixture::start().await;
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(f.url("/events"))
        .header("host", "sse.test")
        .header("accept-encoding", "gzip")
        .body(Empty::new())
        .unwrap();
    let response = client.request(req).await.unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let mut body = response.into_body();
    // The origin holds its second event until the first was read, decoded, here.
    let mut compressed = Vec::new();
    while inflate_prefix(&compressed).await != b"data: one\n\n" {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame()).await;
        compressed.extend_from_slice(
            &frame.expect("the first event in time").expect("a frame").unwrap().into_data().unwrap_or_default(),
        );
    }
    f.origin.resume.notify_one();
    while let Some(frame) = body.frame().await {
        compressed.extend_from_slice(&frame.unwrap().into_data().unwrap_or_default());
    }
    let text = decode("gzip", &compressed).await;
    assert_eq!(text, b"data: one\n\ndata: two\n\n");
}
