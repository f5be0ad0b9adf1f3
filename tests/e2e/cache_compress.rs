//! A route with a cache and a compression: each encoding is stored as its own variant
//! (the compressor adds `Vary: Accept-Encoding`; the cache keys it on the set of codings
//! the client accepts), so a hit never compresses again and never hands a client a coding
//! it did not ask for. Decoded by curl.

use std::net::SocketAddr;

use vane_suite::{TestControlPlane, init_logs, listener, wait_version};

use super::cache::{Origin, PAGE};

/// curl's view of `GET /page` with `accept_encoding` (none: no header): the response
/// headers (lowercase) and the body curl decoded.
async fn curl(web: SocketAddr, accept_encoding: Option<&str>) -> (String, String) {
    let mut args = vec!["-s", "--max-time", "5", "-D", "-", "-H", "host: shop.example"];
    let header = accept_encoding.map(|ae| format!("accept-encoding: {ae}"));
    match &header {
        // --compressed decodes what comes; the explicit header replaces curl's own offer.
        Some(h) => args.extend(["--compressed", "-H", h.as_str()]),
        None => args.extend(["-H", "accept-encoding:"]),
    }
    let url = format!("http://{web}/page");
    args.push(&url);
    let out = tokio::process::Command::new("curl").args(&args).output().await.expect("curl runs");
    let text = String::from_utf8(out.stdout).expect("decoded text");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers, then the body");
    (head.to_lowercase(), body.to_owned())
}

fn header<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")).unwrap_or("")
}

#[tokio::test]
async fn each_encoding_is_cached_as_its_own_variant() {
    init_logs();
    let origin = Origin::start().await;
    let cp = TestControlPlane::start().await;
    let node = cp.node("n1").await;
    let yaml = format!(
        "listeners:\n  - {{name: web, address: '127.0.0.1:0'}}\n\
         clusters:\n  - {{name: origin, endpoints: [{{address: '{}'}}]}}\n\
         caches:\n  - {{name: edge}}\n\
         compressions:\n  - {{name: text, encodings: [br, gzip]}}\n\
         routes:\n  - {{name: all, match: {{prefix: /}}, forward: {{clusters: [{{name: origin}}]}}, cache: edge, compression: text}}\n",
        origin.addr
    );
    cp.apply(&yaml).await.expect("config applies");
    wait_version(&node, 1).await;
    let web = listener(&node, "web").await;
    let page = PAGE.repeat(64);

    let cases = [
        (Some("gzip"), "gzip", "miss"),
        (Some("br"), "br", "miss"),
        (Some("gzip"), "gzip", "hit"),
        // The same set of codings as the first client (q-values aside): the same variant.
        (Some("gzip;q=0.5"), "gzip", "hit"),
        (Some("br, gzip"), "br", "miss"),
        (Some("gzip, br"), "br", "hit"),
        (None, "", "miss"),
        (None, "", "hit"),
    ];
    for (ae, encoding, cache) in cases {
        let (head, body) = curl(web, ae).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let got = (header(&head, "content-encoding"), header(&head, "x-cache"));
        assert_eq!(got, (encoding, cache), "accept-encoding {ae:?}: {head}");
        assert_eq!(body, page, "decoded body for {ae:?}");
        assert!(header(&head, "vary").contains("accept-encoding"), "{head}");
    }
    assert_eq!(origin.hits("/page"), 4, "one origin request per variant: gzip, br, {{br,gzip}}, identity");
}
