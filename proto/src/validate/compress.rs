//! Response compression: the resources' names and fields, and the routes that refer to
//! them.

use std::collections::HashSet;

use crate::config::{Compression, Config};

use super::check::{Validator, display_name};

/// The content codings a compression may offer (their `Content-Encoding` tokens), in
/// the default order of preference.
pub const COMPRESSION_ENCODINGS: [&str; 3] = ["zstd", "br", "gzip"];
/// Levels a compression applies when it sets none: gzip, brotli, zstd.
pub const COMPRESSION_DEFAULT_LEVELS: [u32; 3] = [6, 4, 3];
/// The smallest body compressed when a compression sets no `min_length`.
pub const COMPRESSION_DEFAULT_MIN_LENGTH: u64 = 256;
use COMPRESSION_ENCODINGS as ENCODINGS;

/// Most media types one compression may list.
const MAX_CONTENT_TYPES: usize = 256;

pub(crate) fn check(config: &Config, v: &mut Validator) {
    let compressions = v.names("compression", config.compressions.iter().map(|c| c.name.as_str()));
    for (i, r) in config.routes.iter().enumerate() {
        if !r.compression.is_empty() && !compressions.contains(r.compression.as_str()) {
            v.err(
                "route",
                &display_name(&r.name, i),
                "compression",
                format!("unknown compression '{}'", r.compression),
            );
        }
    }
    for (i, c) in config.compressions.iter().enumerate() {
        fields(v, &display_name(&c.name, i), c);
    }
    for (i, r) in config.routes.iter().enumerate() {
        if let Some(p) = json_editor(config, r) {
            v.err(
                "route",
                &display_name(&r.name, i),
                "compression",
                format!(
                    "policy '{p}' edits this route's responses as JSON (transform.response_json), which it \
                     cannot do to a compressed body: drop the compression or the edit"
                ),
            );
        }
    }
}

/// The first policy applied to compressed route `r` (its own, or a listener's it is
/// attached to) that edits response bodies as JSON.
fn json_editor<'a>(config: &'a Config, r: &'a crate::config::Route) -> Option<&'a str> {
    if r.compression.is_empty() {
        return None;
    }
    let edits_json = |name: &str| {
        config.policies.iter().any(|p| {
            p.name == name
                && p.transform
                    .as_ref()
                    .and_then(|t| t.response_json.as_ref())
                    .is_some_and(|j| !j.set.is_empty() || !j.remove.is_empty())
        })
    };
    let listeners = config.listeners.iter().filter(|l| r.listeners.is_empty() || r.listeners.contains(&l.name));
    r.policies.iter().chain(listeners.flat_map(|l| l.policies.iter())).map(String::as_str).find(|p| edits_json(p))
}

fn fields(v: &mut Validator, name: &str, c: &Compression) {
    let mut seen = HashSet::new();
    for (j, e) in c.encodings.iter().enumerate() {
        let field = format!("encodings[{j}]");
        if !ENCODINGS.contains(&e.as_str()) {
            v.err("compression", name, &field, format!("unknown encoding '{e}' (zstd, br or gzip)"));
        } else if !seen.insert(e.as_str()) {
            v.err("compression", name, &field, format!("'{e}' is listed twice"));
        }
    }
    for (field, level, range) in [
        ("gzip_level", c.gzip_level, 1..=9),
        ("brotli_level", c.brotli_level, 0..=11),
        ("zstd_level", c.zstd_level, 1..=19),
    ] {
        if let Some(level) = level
            && !range.contains(&level)
        {
            v.err(
                "compression",
                name,
                field,
                format!("{level} is out of range ({} to {})", range.start(), range.end()),
            );
        }
    }
    if c.content_types.len() > MAX_CONTENT_TYPES {
        v.err("compression", name, "content_types", format!("more than {MAX_CONTENT_TYPES} media types"));
    }
    for (j, t) in c.content_types.iter().enumerate() {
        if let Err(why) = media_pattern(t) {
            v.err("compression", name, &format!("content_types[{j}]"), format!("'{t}' {why}"));
        }
    }
}

/// Checks a media type pattern: `type/subtype`, `type/*` or `type/*+suffix`, each part an
/// RFC 9110 token, no parameters.
pub(crate) fn media_pattern(pattern: &str) -> Result<(), &'static str> {
    const SYNTAX: &str = "is not a media type (type/subtype, type/* or type/*+suffix, without parameters)";
    let token =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    let Some((kind, sub)) = pattern.split_once('/') else { return Err(SYNTAX) };
    if !token(kind) || kind.contains('*') || !token(sub) {
        return Err(SYNTAX);
    }
    match sub.strip_prefix('*') {
        None if sub.contains('*') => Err(SYNTAX),
        None => Ok(()),
        Some("") => Ok(()),
        Some(rest) => match rest.strip_prefix('+') {
            Some(suffix) if !suffix.is_empty() && !suffix.contains(['*', '+']) => Ok(()),
            _ => Err(SYNTAX),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::errors;

    fn with(fields: &str) -> Vec<String> {
        errors(&format!(
            "compressions:\n  - {{name: web{fields}}}\nroutes:\n  - name: r\n    match: {{prefix: /}}\n    \
             direct_response: {{status: 200}}\n    compression: web\n"
        ))
    }

    #[test]
    fn a_compression_with_defaults_or_sane_fields_is_accepted() {
        assert_eq!(with(""), Vec::<String>::new());
        assert_eq!(
            with(
                ", encodings: [gzip, br], gzip_level: 9, brotli_level: 0, zstd_level: 19, min_length: 0, \
                 content_types: [text/html, 'text/*', 'application/*+json', image/svg+xml]"
            ),
            Vec::<String>::new()
        );
    }

    #[test]
    fn encodings_levels_and_media_types_are_checked_by_field() {
        assert_eq!(
            with(", encodings: [gzip, deflate, gzip], gzip_level: 0, brotli_level: 12, zstd_level: 22"),
            vec![
                "compression 'web': encodings[1]: unknown encoding 'deflate' (zstd, br or gzip)",
                "compression 'web': encodings[2]: 'gzip' is listed twice",
                "compression 'web': gzip_level: 0 is out of range (1 to 9)",
                "compression 'web': brotli_level: 12 is out of range (0 to 11)",
                "compression 'web': zstd_level: 22 is out of range (1 to 19)",
            ]
        );
        let bad = ["text", "*/*", "text/html; charset=utf-8", "application/json+*", "text/*+", "a b/c", "text/x*y"];
        for t in bad {
            let errs = with(&format!(", content_types: ['{t}']"));
            assert_eq!(
                errs,
                vec![format!(
                    "compression 'web': content_types[0]: '{t}' is not a media type (type/subtype, type/* or \
                     type/*+suffix, without parameters)"
                )],
                "{t}"
            );
        }
    }

    #[test]
    fn a_route_naming_an_unknown_compression_is_refused() {
        let errs = errors(
            "routes:\n  - name: r\n    match: {prefix: /}\n    direct_response: {status: 200}\n    compression: nope\n",
        );
        assert_eq!(errs, vec!["route 'r': compression: unknown compression 'nope'"]);
    }

    #[test]
    fn a_compressed_route_whose_responses_a_policy_edits_as_json_is_refused() {
        let config = |listener_policies: &str, route_policies: &str, compression: &str| {
            format!(
                "listeners:\n  - {{name: web, address: '127.0.0.1:80', policies: [{listener_policies}]}}\n\
                 policies:\n  - {{name: mask, transform: {{response_json: {{remove: [secret]}}}}}}\n\
                 \x20 - {{name: tag, transform: {{response_headers: {{set: [{{name: x-a, value: b}}]}}}}}}\n\
                 compressions:\n  - {{name: z}}\n\
                 routes:\n  - {{name: r, match: {{prefix: /}}, direct_response: {{status: 200}}, \
                 policies: [{route_policies}]{compression}}}\n"
            )
        };
        let refused = "route 'r': compression: policy 'mask' edits this route's responses as JSON \
                       (transform.response_json), which it cannot do to a compressed body: drop the compression or the edit";
        assert_eq!(errors(&config("", "tag, mask", ", compression: z")), vec![refused]);
        assert_eq!(errors(&config("mask", "tag", ", compression: z")), vec![refused], "a listener's policy too");
        assert!(errors(&config("tag", "tag", ", compression: z")).is_empty(), "header edits are fine");
        assert!(errors(&config("mask", "mask", "")).is_empty(), "without compression the edit is fine");
    }
}
