//! Response compression (issue 19): gzip, brotli and zstd per route, a layer of the
//! request path between the forward and the client.
//!
//! A route that names a `compressions` resource holds it compiled ([`Compressor`], an
//! `Option<Arc<_>>` on the route: routes without one pay one branch). Before the forward,
//! [`Compressor::negotiate`] reads the request (`Accept-Encoding`, method) into an
//! [`Offer`]; once the answer is back, [`Compressor::apply`] decides on the response
//! head alone and, when it compresses, swaps the body for one encoded as it streams
//! (`body.rs`). Never compressed: 1xx/204/206/304 answers and `Content-Range` ones,
//! answers to `HEAD`, already content-encoded ones, `Cache-Control: no-transform`, gRPC,
//! media types off the list (`types.rs`), bodies announced shorter than `min_length`, and
//! requests whose `Accept-Encoding` accepts none of the offered codings
//! (`negotiate.rs`). A compressed answer gets `Content-Encoding`, loses `Content-Length`
//! (HTTP/1.1 sends it chunked, HTTP/2 as DATA frames) and `Accept-Ranges`, and a strong
//! `ETag` becomes weak (the bytes differ, the meaning does not: RFC 9110 8.8.1). Every
//! answer that would be compressed for some client gets `Vary: Accept-Encoding`, merged
//! into the upstream's `Vary`, compressed or not, so shared caches key it right.

mod body;
mod negotiate;
mod stats;
mod types;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::Either;
use hyper::body::Body;
use vane_proto::config::Config;

use crate::http::body::{Encoded, InnerBody};

use body::Compressing;
pub(crate) use negotiate::Encoding;
use stats::{CompressStats, Skip};
use types::ContentTypes;

/// Server preference when a compression lists none (`vane_proto::COMPRESSION_ENCODINGS`):
/// zstd, br, gzip. zstd 3 compresses about as well as gzip 6 for a fraction of its CPU;
/// brotli 4 beats gzip 6 on ratio at about its cost; gzip is what every client decodes.
use vane_proto::COMPRESSION_ENCODINGS as DEFAULT_ENCODINGS;
/// Levels when a compression sets none, by [`Encoding::index`] (gzip 6 as zlib's default,
/// brotli 4 and zstd 3 as what CDNs use for dynamic content), and the smallest body
/// compressed: shared with the CLI, which shows them.
use vane_proto::{COMPRESSION_DEFAULT_LEVELS as DEFAULT_LEVELS, COMPRESSION_DEFAULT_MIN_LENGTH as DEFAULT_MIN_LENGTH};

/// One compression resource, compiled.
#[derive(Debug)]
pub(crate) struct Compressor {
    name: Arc<str>,
    /// In the server's order of preference.
    offered: Box<[Encoding]>,
    levels: [i32; 3],
    types: ContentTypes,
    min_length: u64,
    stats: Arc<CompressStats>,
}

/// What a request allows its answer: the encoding negotiated, or why none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    Encode(Encoding),
    NotAccepted,
    Head,
}

impl Compressor {
    /// Reads a request's `Accept-Encoding` (and method) before it goes upstream.
    pub(crate) fn negotiate(&self, method: &Method, headers: &HeaderMap) -> Offer {
        if method == Method::HEAD {
            return Offer::Head;
        }
        match negotiate::choose(headers.get_all(header::ACCEPT_ENCODING).iter(), &self.offered) {
            Some(e) => Offer::Encode(e),
            None => Offer::NotAccepted,
        }
    }

    /// Compresses `response` when it and `offer` allow, editing its head to match.
    pub(crate) fn apply(&self, offer: Offer, response: &mut Response<InnerBody>) {
        if let Err(why) = self.eligible(response) {
            self.stats.skip(why);
            return;
        }
        // Compressible for some client: caches must key on the request's Accept-Encoding.
        add_vary(response.headers_mut());
        let encoding = match offer {
            Offer::Encode(e) => e,
            Offer::NotAccepted => return self.stats.skip(Skip::NotAccepted),
            Offer::Head => return self.stats.skip(Skip::Head),
        };
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding.token()));
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::ACCEPT_RANGES);
        if let Some(etag) = headers.get(header::ETAG)
            && etag.as_bytes().first() == Some(&b'"')
        {
            let mut weak = Vec::with_capacity(etag.len() + 2);
            weak.extend_from_slice(b"W/");
            weak.extend_from_slice(etag.as_bytes());
            match HeaderValue::from_bytes(&weak) {
                Ok(weak) => headers.insert(header::ETAG, weak),
                Err(_) => headers.remove(header::ETAG),
            };
        }
        self.stats.compressed[encoding.index()].fetch_add(1, Ordering::Relaxed);
        let level = self.levels[encoding.index()];
        let stats = self.stats.clone();
        let body = std::mem::replace(response.body_mut(), Either::Right(Default::default()));
        let compressing = Compressing::new(body, encoding, level, stats);
        *response.body_mut() = Either::Left(Either::Right(Either::Right(Encoded::new(compressing))));
    }

    /// Whether the response is one to compress at all, whoever asks.
    fn eligible(&self, response: &Response<InnerBody>) -> Result<(), Skip> {
        let status = response.status();
        if status.is_informational()
            || matches!(status, StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED)
        {
            return Err(Skip::Status);
        }
        let headers = response.headers();
        if headers.contains_key(header::CONTENT_RANGE) {
            return Err(Skip::Range);
        }
        if headers.get_all(header::CONTENT_ENCODING).iter().any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity")) {
            return Err(Skip::Encoded);
        }
        let no_transform = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .any(|v| v.as_bytes().split(|b| *b == b',').any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-transform")));
        if no_transform {
            return Err(Skip::NoTransform);
        }
        let Some(content_type) = headers.get(header::CONTENT_TYPE) else { return Err(Skip::ContentType) };
        if types::is_grpc(content_type.as_bytes()) {
            return Err(Skip::Grpc);
        }
        if !self.types.allows(content_type.as_bytes()) {
            return Err(Skip::ContentType);
        }
        let announced =
            headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let length = announced.or_else(|| response.body().size_hint().exact());
        if length.is_some_and(|n| n < self.min_length) {
            return Err(Skip::TooSmall);
        }
        Ok(())
    }
}

/// Adds `Accept-Encoding` to `Vary` unless it is there already (or `Vary: *`).
fn add_vary(headers: &mut HeaderMap) {
    let present = headers.get_all(header::VARY).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|f| {
            let f = f.trim_ascii();
            f == b"*" || f.eq_ignore_ascii_case(b"accept-encoding")
        })
    });
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
}

/// The compression resources of one snapshot, by name.
#[derive(Debug, Default)]
pub(crate) struct Compressions {
    by_name: HashMap<String, Arc<Compressor>>,
}

impl Compressions {
    /// Compiles every compression of a validated config; counters of a name the previous
    /// snapshot had carry over.
    pub(crate) fn compile(config: &Config, previous: Option<&Compressions>) -> Compressions {
        let by_name = config
            .compressions
            .iter()
            .map(|c| {
                let offered: Box<[Encoding]> = if c.encodings.is_empty() {
                    DEFAULT_ENCODINGS.iter().filter_map(|e| Encoding::from_token(e)).collect()
                } else {
                    c.encodings.iter().filter_map(|e| Encoding::from_token(e)).collect()
                };
                let level = |set: Option<u32>, e: Encoding| {
                    i32::try_from(set.unwrap_or(DEFAULT_LEVELS[e.index()])).unwrap_or(i32::MAX)
                };
                let stats =
                    previous.and_then(|p| p.by_name.get(&c.name)).map(|old| old.stats.clone()).unwrap_or_default();
                let compressor = Compressor {
                    name: c.name.as_str().into(),
                    offered,
                    levels: [
                        level(c.gzip_level, Encoding::Gzip),
                        level(c.brotli_level, Encoding::Brotli),
                        level(c.zstd_level, Encoding::Zstd),
                    ],
                    types: ContentTypes::compile(&c.content_types),
                    min_length: c.min_length.unwrap_or(DEFAULT_MIN_LENGTH),
                    stats,
                };
                (c.name.clone(), Arc::new(compressor))
            })
            .collect();
        Compressions { by_name }
    }

    /// The compressor a route names (empty: none).
    pub(crate) fn get(&self, name: &str) -> Option<Arc<Compressor>> {
        if name.is_empty() { None } else { self.by_name.get(name).cloned() }
    }

    /// `vane_compression_*` families, one series per resource.
    pub(crate) fn render(&self, out: &mut String) {
        let mut all: Vec<(&str, &CompressStats)> = self.by_name.values().map(|c| (&*c.name, &*c.stats)).collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        stats::render(out, &all);
    }
}

#[cfg(test)]
mod tests;
