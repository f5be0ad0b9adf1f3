//! What one compression resource counts, for `/metrics`: bytes through each encoder,
//! responses compressed by encoding, responses left as they were by reason. A leaf of
//! the compress layer; handles carry over swaps by resource name.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::observe::metrics::{escape, header};

use super::negotiate::Encoding;

/// Why a response of a compressing route was sent as it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    /// The client accepts none of the offered encodings (or sent no `Accept-Encoding`).
    NotAccepted,
    /// A `HEAD` request: no body to compress.
    Head,
    /// 1xx, 204, 206, 304: no body, or a part of one.
    Status,
    /// A `Content-Range` answer.
    Range,
    /// Already content-encoded by the upstream.
    Encoded,
    /// `Cache-Control: no-transform`.
    NoTransform,
    /// gRPC (`application/grpc*`).
    Grpc,
    /// A media type not on the list (or none given).
    ContentType,
    /// Shorter than `min_length`.
    TooSmall,
}

impl Skip {
    const ALL: [Skip; 9] = [
        Skip::NotAccepted,
        Skip::Head,
        Skip::Status,
        Skip::Range,
        Skip::Encoded,
        Skip::NoTransform,
        Skip::Grpc,
        Skip::ContentType,
        Skip::TooSmall,
    ];

    fn label(self) -> &'static str {
        match self {
            Skip::NotAccepted => "not_accepted",
            Skip::Head => "head",
            Skip::Status => "status",
            Skip::Range => "range",
            Skip::Encoded => "already_encoded",
            Skip::NoTransform => "no_transform",
            Skip::Grpc => "grpc",
            Skip::ContentType => "content_type",
            Skip::TooSmall => "too_small",
        }
    }
}

/// Counters of one compression resource.
#[derive(Debug, Default)]
pub(crate) struct CompressStats {
    pub(crate) compressed: [AtomicU64; 3],
    pub(crate) bytes_in: [AtomicU64; 3],
    pub(crate) bytes_out: [AtomicU64; 3],
    pub(crate) skipped: [AtomicU64; Skip::ALL.len()],
}

impl CompressStats {
    pub(crate) fn skip(&self, why: Skip) {
        if let Some(n) = self.skipped.get(why as usize) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The compression families over `stats` (by resource name, sorted).
pub(crate) fn render(out: &mut String, stats: &[(&str, &CompressStats)]) {
    if stats.is_empty() {
        return;
    }
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    header(out, "vane_compression_responses_total", "counter", "Responses compressed, by compression and encoding.");
    for (name, s) in stats {
        for e in Encoding::ALL {
            let (name, token, count) = (escape(name), e.token(), n(&s.compressed[e.index()]));
            let _ = writeln!(
                out,
                "vane_compression_responses_total{{compression=\"{name}\",encoding=\"{token}\"}} {count}"
            );
        }
    }
    header(
        out,
        "vane_compression_skipped_total",
        "counter",
        "Responses of compressing routes sent as they came, by compression and reason.",
    );
    for (name, s) in stats {
        for why in Skip::ALL {
            let (name, reason, count) = (escape(name), why.label(), n(&s.skipped[why as usize]));
            let _ =
                writeln!(out, "vane_compression_skipped_total{{compression=\"{name}\",reason=\"{reason}\"}} {count}");
        }
    }
    for (family, help, get) in [
        ("vane_compression_bytes_in_total", "Body bytes into the compressor, by compression and encoding.", 0),
        ("vane_compression_bytes_out_total", "Compressed body bytes out, by compression and encoding.", 1),
    ] {
        header(out, family, "counter", help);
        for (name, s) in stats {
            for e in Encoding::ALL {
                let counter = if get == 0 { &s.bytes_in[e.index()] } else { &s.bytes_out[e.index()] };
                let (name, token) = (escape(name), e.token());
                let _ = writeln!(out, "{family}{{compression=\"{name}\",encoding=\"{token}\"}} {}", n(counter));
            }
        }
    }
}
