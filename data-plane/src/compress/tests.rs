//! The compressor's decisions on response heads, and its bodies decoded back.

use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame};
use tokio::io::AsyncReadExt;
use vane_proto::{Format, load};

use super::*;

fn compressor(fields: &str) -> Arc<Compressor> {
    let config = load(&format!("compressions:\n  - {{name: c{fields}}}\n"), Format::Yaml).unwrap();
    vane_proto::validate(&config).unwrap();
    Compressions::compile(&config, None).get("c").unwrap()
}

fn accepting(value: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(value));
    headers
}

fn response(headers: &[(&'static str, &'static str)], body: &'static str) -> Response<InnerBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(body.as_bytes()))));
    for (name, value) in headers {
        response.headers_mut().append(*name, HeaderValue::from_static(value));
    }
    response
}

const TEXT: &str = "a line of text that repeats, a line of text that repeats, a line of text that repeats; \
                    a line of text that repeats, a line of text that repeats, a line of text that repeats; \
                    a line of text that repeats, a line of text that repeats, a line of text that repeats.";

async fn decode(encoding: &str, data: &[u8]) -> Vec<u8> {
    use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZstdDecoder};
    let mut out = Vec::new();
    match encoding {
        "gzip" => GzipDecoder::new(data).read_to_end(&mut out).await,
        "br" => BrotliDecoder::new(data).read_to_end(&mut out).await,
        "zstd" => ZstdDecoder::new(data).read_to_end(&mut out).await,
        other => panic!("{other}"),
    }
    .unwrap();
    out
}

#[tokio::test]
async fn each_encoding_round_trips_and_the_head_says_so() {
    for (accept, token) in [("gzip", "gzip"), ("br", "br"), ("zstd", "zstd")] {
        let c = compressor("");
        let offer = c.negotiate(&Method::GET, &accepting(accept));
        let mut r = response(
            &[
                ("content-type", "text/plain"),
                ("content-length", "264"),
                ("etag", "\"v1\""),
                ("accept-ranges", "bytes"),
                ("vary", "Origin"),
            ],
            TEXT,
        );
        c.apply(offer, &mut r);
        let h = r.headers();
        assert_eq!(h["content-encoding"], token);
        assert!(h.get("content-length").is_none() && h.get("accept-ranges").is_none());
        assert_eq!(h["etag"], "W/\"v1\"");
        let vary: Vec<_> = h.get_all("vary").iter().collect();
        assert_eq!(vary, ["Origin", "accept-encoding"]);
        let compressed = r.into_body().collect().await.unwrap().to_bytes();
        assert!(compressed.len() < TEXT.len() / 2, "{token}: {} bytes", compressed.len());
        assert_eq!(decode(token, &compressed).await, TEXT.as_bytes(), "{token}");
        assert_eq!(c.stats.compressed[Encoding::from_token(token).unwrap().index()].load(Ordering::Relaxed), 1);
    }
}

/// Response headers of a case.
type Head = &'static [(&'static str, &'static str)];

#[tokio::test]
async fn responses_never_compressed_are_left_as_they_came() {
    let c = compressor("");
    let gzip = c.negotiate(&Method::GET, &accepting("gzip"));
    let cases: [(Head, StatusCode, Skip); 8] = [
        (&[("content-type", "text/plain"), ("content-encoding", "br")], StatusCode::OK, Skip::Encoded),
        (&[("content-type", "text/plain")], StatusCode::PARTIAL_CONTENT, Skip::Status),
        (&[("content-type", "text/plain"), ("content-range", "bytes 0-9/100")], StatusCode::OK, Skip::Range),
        (
            &[("content-type", "text/plain"), ("cache-control", "public, No-Transform")],
            StatusCode::OK,
            Skip::NoTransform,
        ),
        (&[("content-type", "application/grpc")], StatusCode::OK, Skip::Grpc),
        (&[("content-type", "text/event-stream")], StatusCode::OK, Skip::ContentType),
        (&[("content-type", "image/png")], StatusCode::OK, Skip::ContentType),
        (&[("content-type", "text/plain"), ("content-length", "255")], StatusCode::OK, Skip::TooSmall),
    ];
    for (headers, status, why) in cases {
        let mut r = response(headers, TEXT);
        *r.status_mut() = status;
        c.apply(gzip, &mut r);
        assert!(r.headers().get("vary").is_none(), "{why:?}: not the client's doing, no Vary");
        assert!(matches!(r.body(), Either::Right(_)), "{why:?}: body untouched");
        assert!(c.stats.skipped[why as usize].load(Ordering::Relaxed) > 0, "{why:?}");
    }
    for status in [StatusCode::NO_CONTENT, StatusCode::NOT_MODIFIED] {
        let mut r = response(&[("content-type", "text/plain")], "");
        *r.status_mut() = status;
        c.apply(gzip, &mut r);
        assert!(r.headers().get("content-encoding").is_none());
    }
}

#[tokio::test]
async fn a_client_that_accepts_nothing_offered_or_asks_head_gets_vary_but_no_encoding() {
    let c = compressor(", encodings: [br]");
    for (method, accept) in [(Method::GET, "gzip"), (Method::GET, "br;q=0, *"), (Method::HEAD, "br")] {
        let offer = c.negotiate(&method, &accepting(accept));
        let mut r = response(&[("content-type", "application/json"), ("vary", "accept-encoding, origin")], TEXT);
        c.apply(offer, &mut r);
        assert!(r.headers().get("content-encoding").is_none(), "{method} {accept}");
        let vary: Vec<_> = r.headers().get_all("vary").iter().collect();
        assert_eq!(vary, ["accept-encoding, origin"], "merged, not repeated");
    }
    let offer = c.negotiate(&Method::GET, &HeaderMap::new());
    let mut r = response(&[("content-type", "text/html")], TEXT);
    c.apply(offer, &mut r);
    assert_eq!(r.headers()["vary"], "accept-encoding");
    assert!(r.headers().get("content-encoding").is_none());
}

/// A streaming upstream: its frames, with a pause (pending once) after each.
struct Trickle {
    frames: Vec<Bytes>,
    paused: bool,
}

impl Body for Trickle {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if !self.paused && !self.frames.is_empty() {
            self.paused = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.paused = false;
        if self.frames.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Ready(Some(Ok(Frame::data(self.frames.remove(0)))))
        }
    }
}

#[tokio::test]
async fn what_the_upstream_sent_before_going_quiet_is_flushed_to_the_client() {
    let c = compressor("");
    let frames: Vec<Bytes> = (0..3).map(|i| Bytes::from(format!("data: event {i}\n\n"))).collect();
    let mut body = body::Compressing::new(Trickle { frames, paused: false }, Encoding::Gzip, 6, c.stats.clone());
    let mut out = Vec::new();
    let mut seen = Vec::new();
    while let Some(frame) = body.frame().await {
        out.extend_from_slice(&frame.unwrap().into_data().unwrap());
        // Each flush ends a deflate block: what arrived so far decodes on its own.
        seen.push(out.len());
    }
    assert!(seen.len() >= 3, "a frame per event, not one at the end: {seen:?}");
    assert_eq!(decode("gzip", &out).await, b"data: event 0\n\ndata: event 1\n\ndata: event 2\n\n");
    let n = |a: &[AtomicU64; 3]| a[0].load(Ordering::Relaxed);
    assert_eq!(n(&c.stats.bytes_in), 45);
    assert_eq!(n(&c.stats.bytes_out), out.len() as u64);
}

#[test]
fn metrics_name_each_compression_encoding_and_reason() {
    let c = compressor("");
    c.stats.skip(Skip::NotAccepted);
    let config = load("compressions:\n  - {name: c}\n", Format::Yaml).unwrap();
    let all = Compressions::compile(&config, Some(&Compressions { by_name: HashMap::from([("c".into(), c)]) }));
    let mut out = String::new();
    all.render(&mut out);
    assert!(out.contains("vane_compression_skipped_total{compression=\"c\",reason=\"not_accepted\"} 1\n"), "{out}");
    assert!(out.contains("vane_compression_responses_total{compression=\"c\",encoding=\"zstd\"} 0\n"), "{out}");
    assert!(out.contains("vane_compression_bytes_out_total{compression=\"c\",encoding=\"br\"} 0\n"), "{out}");
}
