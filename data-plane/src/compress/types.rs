//! Which media types a compression compresses: the configured list or the defaults,
//! matched on a `Content-Type`'s essence (type/subtype, case-insensitive, parameters
//! dropped) without allocating.
//!
//! The defaults are nginx's `gzip_types` as its users extend it and Envoy's compressor
//! defaults, together: every `text/*`, JSON, JavaScript, XML and their `+json`/`+xml`
//! kinds, SVG, WebAssembly, YAML/TOML, uncompressed fonts and icons. Images, video, audio,
//! archives and `woff`/`woff2` fonts are compressed already. `text/event-stream` (SSE) is
//! left out even under `text/*`: an event held in a compressor's window stalls the
//! stream for every proxy that buffers; listed as such, it is compressed, flushed each
//! time the upstream goes quiet (after each event, for an SSE source).

/// The default list.
pub(crate) const DEFAULT: [&str; 21] = [
    "text/*",
    "application/json",
    "application/*+json",
    "application/x-ndjson",
    "application/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "application/xml",
    "application/*+xml",
    "application/wasm",
    "application/yaml",
    "application/x-yaml",
    "application/toml",
    "application/graphql",
    "image/svg+xml",
    "image/x-icon",
    "image/vnd.microsoft.icon",
    "image/bmp",
    "font/ttf",
    "font/otf",
    "application/vnd.ms-fontobject",
];

const EVENT_STREAM: &str = "text/event-stream";

#[derive(Debug)]
enum Pattern {
    /// `type/subtype`.
    Exact(Box<str>),
    /// `type/*` (the type, with its slash).
    Type(Box<str>),
    /// `type/*+suffix`: the type with its slash, and `+suffix`.
    Suffix(Box<str>, Box<str>),
}

/// A compiled list.
#[derive(Debug)]
pub(crate) struct ContentTypes {
    patterns: Box<[Pattern]>,
    /// `text/event-stream` is listed as such.
    event_stream: bool,
}

impl ContentTypes {
    /// Compiles validated patterns (empty: the defaults).
    pub(crate) fn compile(listed: &[String]) -> ContentTypes {
        let listed: Vec<String> = if listed.is_empty() {
            DEFAULT.iter().map(|s| (*s).to_owned()).collect()
        } else {
            listed.iter().map(|s| s.to_ascii_lowercase()).collect()
        };
        let patterns = listed
            .iter()
            .filter_map(|p| {
                let (kind, sub) = p.split_once('/')?;
                let kind = format!("{kind}/");
                Some(match sub.strip_prefix('*') {
                    None => Pattern::Exact(p.as_str().into()),
                    Some("") => Pattern::Type(kind.into()),
                    Some(suffix) => Pattern::Suffix(kind.into(), suffix.into()),
                })
            })
            .collect();
        ContentTypes { patterns, event_stream: listed.iter().any(|p| p == EVENT_STREAM) }
    }

    /// Whether a response whose `Content-Type` is `value` is compressed.
    pub(crate) fn allows(&self, value: &[u8]) -> bool {
        let essence = value.split(|b| *b == b';').next().unwrap_or_default().trim_ascii();
        if essence.eq_ignore_ascii_case(EVENT_STREAM.as_bytes()) {
            return self.event_stream;
        }
        let starts = |prefix: &str| {
            essence.len() > prefix.len() && essence[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        };
        let ends = |suffix: &str| {
            essence.len() > suffix.len()
                && essence[essence.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
        };
        self.patterns.iter().any(|p| match p {
            Pattern::Exact(t) => essence.eq_ignore_ascii_case(t.as_bytes()),
            Pattern::Type(kind) => starts(kind),
            Pattern::Suffix(kind, suffix) => starts(kind) && ends(suffix) && essence.len() > kind.len() + suffix.len(),
        })
    }
}

/// gRPC and gRPC-Web answers are never compressed here: gRPC compresses per message.
pub(crate) fn is_grpc(value: &[u8]) -> bool {
    let prefix = b"application/grpc";
    value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_take_text_json_javascript_xml_svg_and_wasm_but_not_media_or_sse() {
        let t = ContentTypes::compile(&[]);
        for yes in [
            "text/html",
            "text/html; charset=utf-8",
            "TEXT/CSS",
            "application/json",
            "application/problem+json",
            "application/javascript; charset=utf-8",
            "application/atom+xml",
            "image/svg+xml",
            "application/wasm",
        ] {
            assert!(t.allows(yes.as_bytes()), "{yes}");
        }
        for no in ["image/png", "video/mp4", "application/octet-stream", "font/woff2", "text/event-stream", "text", ""]
        {
            assert!(!t.allows(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn a_listed_type_replaces_the_defaults_and_event_streams_need_their_own_name() {
        let t = ContentTypes::compile(&["Application/*+json".into(), "text/event-stream".into()]);
        assert!(t.allows(b"application/vnd.api+json"));
        assert!(!t.allows(b"application/json"), "no +json suffix");
        assert!(!t.allows(b"application/+json"));
        assert!(!t.allows(b"text/html"));
        assert!(t.allows(b"text/event-stream; charset=utf-8"));
        assert!(
            is_grpc(b"application/grpc+proto")
                && is_grpc(b"application/grpc-web-text")
                && !is_grpc(b"application/json")
        );
    }
}
