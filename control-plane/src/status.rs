//! gRPC statuses as the admin API sends them: bounded, escaped, with standard details.
//!
//! A status travels in HTTP/2 headers (`grpc-message` percent-encoded,
//! `grpc-status-details-bin` base64), and hyper, grpc-go and others refuse a header block
//! over 16 KiB by default: a status over it reaches the client as `h2 protocol error`
//! instead of its reason (seen with 3,000 routes naming a deleted cluster). So every
//! message is cut to [`MAX_MESSAGE`] bytes, at worst 6 KiB once percent-encoded, and the
//! details to [`MAX_DETAILS`] bytes, 8 KiB in base64, with a count of what was left out.
//!
//! The details are a standard `google.rpc.Status` (what `grpc_status.rpc_status.from_call`
//! in Python, `status.FromError` in Go and `tonic_types` read) holding:
//! - a `google.rpc.BadRequest`, one field violation per problem, the field as a path in the
//!   request (`config.routes[0].forward.clusters[0].name`);
//! - a `vane.admin.v1.ValidateResponse` (type URL [`VALIDATE_RESPONSE_TYPE_URL`]): the
//!   same problems as Vane's own messages (kind, name, field, reason), with
//!   `more_errors` counting those left out. The CLI prints from it.

use prost::Message;
use tonic::{Code, Status};
use tonic_types::pb::{self, bad_request::FieldViolation};
use vane_proto::ConfigError;
use vane_proto::admin::ValidateResponse;
use vane_proto::config::Config;
use vane_proto::text::{escape_controls, truncate};

/// Largest status message, in bytes (before percent-encoding).
pub(crate) const MAX_MESSAGE: usize = 2048;
/// Largest encoded `google.rpc.Status` in the details, in bytes (before base64).
pub(crate) const MAX_DETAILS: usize = 6144;
/// Type URL of Vane's own detail.
pub(crate) const VALIDATE_RESPONSE_TYPE_URL: &str = "type.googleapis.com/vane.admin.v1.ValidateResponse";
const BAD_REQUEST_TYPE_URL: &str = "type.googleapis.com/google.rpc.BadRequest";

/// A status whose message is escaped and bounded.
pub(crate) fn bounded(code: Code, message: &str) -> Status {
    Status::new(code, bounded_message(message))
}

/// `message` with control characters escaped, cut to [`MAX_MESSAGE`] bytes.
pub(crate) fn bounded_message(message: &str) -> String {
    truncate(&escape_controls(message), MAX_MESSAGE).into_owned()
}

/// `INVALID_ARGUMENT` for a refused config: as many problems as fit in the message, then
/// `(and N more problems)`; the details as the module docs say. `paths` are the field
/// paths of the first problems (see [`field_paths`]).
pub(crate) fn invalid_config(errors: &[ConfigError], paths: &[String]) -> Status {
    let message = listed("invalid config: ", errors.iter().map(ToString::to_string), errors.len(), "problems");
    let head = pb::Status { code: Code::InvalidArgument as i32, message: message.clone(), details: vec![] };
    // Room for the two lists, each problem appearing in both.
    let mut room = MAX_DETAILS.saturating_sub(head.encoded_len() + 2 * 64);
    let mut violations = Vec::new();
    let mut shown = Vec::new();
    for (i, e) in errors.iter().enumerate() {
        let violation = FieldViolation {
            field: paths.get(i).cloned().unwrap_or_else(|| list_path(e)),
            description: format!("{} '{}': {}", e.kind, e.name, e.message),
            ..Default::default()
        };
        let error = vane_proto::config::ValidationError::from(e.clone());
        // Each entry costs its length, a tag and a length prefix in its list.
        let cost = violation.encoded_len() + error.encoded_len() + 8;
        if cost > room {
            break;
        }
        room -= cost;
        violations.push(violation);
        shown.push(error);
    }
    let more_errors = u32::try_from(errors.len() - shown.len()).unwrap_or(u32::MAX);
    let vane_detail = ValidateResponse { valid: false, errors: shown, more_errors };
    let details = pb::Status {
        details: vec![
            any(BAD_REQUEST_TYPE_URL, pb::BadRequest { field_violations: violations }.encode_to_vec()),
            any(VALIDATE_RESPONSE_TYPE_URL, vane_detail.encode_to_vec()),
        ],
        ..head
    };
    Status::with_details(Code::InvalidArgument, message, details.encode_to_vec().into())
}

fn any(type_url: &str, value: Vec<u8>) -> prost_types::Any {
    prost_types::Any { type_url: type_url.to_owned(), value }
}

/// `intro` and the items joined with `; `, as many as fit in [`MAX_MESSAGE`], then
/// `(and N more WHAT)` when some did not.
pub(crate) fn listed(intro: &str, items: impl Iterator<Item = String>, total: usize, what: &str) -> String {
    // Room for the tail `; (and 4294967295 more problems)`.
    let budget = MAX_MESSAGE - 48;
    let mut message = intro.to_owned();
    let mut count = 0;
    for item in items {
        let item = escape_controls(&item).into_owned();
        let sep = if count == 0 { "" } else { "; " };
        if message.len() + sep.len() + item.len() > budget {
            break;
        }
        message.push_str(sep);
        message.push_str(&item);
        count += 1;
    }
    if count < total {
        let sep = if count == 0 { "" } else { " " };
        message.push_str(&format!("{sep}(and {} more {what})", total - count));
    }
    message
}

/// More field paths than ever fit in [`MAX_DETAILS`]; the rest are not worked out.
const MAX_PATHS: usize = 100;

/// The field paths of the first problems, inside the request: `prefix` is the request
/// field that carries `config` (`config` for Apply; empty when the config is the result
/// of a change, as for Put and Delete).
pub(crate) fn field_paths(errors: &[ConfigError], config: &Config, prefix: &str) -> Vec<String> {
    errors.iter().take(MAX_PATHS).map(|e| field_path(config, prefix, e)).collect()
}

/// A path that names the list only, for a problem whose resource was not looked up.
fn list_path(e: &ConfigError) -> String {
    field_path(&Config::default(), "", e)
}

/// The path of the field `e` names: `config.routes[3].forward.clusters[0].name`. The
/// resource is found by its name (or its `#index` when it has none).
fn field_path(config: &Config, prefix: &str, e: &ConfigError) -> String {
    fn index<T>(items: &[T], name: &str, get: impl Fn(&T) -> &str) -> Option<usize> {
        match name.strip_prefix('#').and_then(|i| i.parse::<usize>().ok()) {
            Some(i) if items.get(i).is_some_and(|r| get(r).is_empty()) => Some(i),
            _ => items.iter().position(|r| get(r) == name),
        }
    }
    let (list, at) = match e.kind {
        "listener" => ("listeners", index(&config.listeners, &e.name, |r| &r.name)),
        "route" => ("routes", index(&config.routes, &e.name, |r| &r.name)),
        "cluster" => ("clusters", index(&config.clusters, &e.name, |r| &r.name)),
        "certificate" => ("certificates", index(&config.certificates, &e.name, |r| &r.name)),
        "policy" => ("policies", index(&config.policies, &e.name, |r| &r.name)),
        "consumer" => ("consumers", index(&config.consumers, &e.name, |r| &r.name)),
        "cache" => ("caches", index(&config.caches, &e.name, |r| &r.name)),
        "compression" => ("compressions", index(&config.compressions, &e.name, |r| &r.name)),
        _ => ("", None),
    };
    let resource = match at {
        Some(i) => format!("{list}[{i}]"),
        None if list.is_empty() => e.kind.to_owned(),
        None => list.to_owned(),
    };
    let mut path = if prefix.is_empty() { resource } else { format!("{prefix}.{resource}") };
    if !e.field.is_empty() {
        path.push('.');
        path.push_str(&e.field);
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;
    use vane_proto::config::Route;

    fn error(i: usize) -> ConfigError {
        ConfigError {
            kind: "route",
            name: format!("r{i}"),
            field: "forward.clusters[0].name".into(),
            message: format!("unknown cluster 'c{i}'"),
        }
    }

    #[test]
    fn a_refused_config_carries_a_google_rpc_status_with_both_details() {
        let config = Config {
            routes: vec![
                Route { name: "a".into(), ..Default::default() },
                Route { name: "r1".into(), ..Default::default() },
            ],
            ..Default::default()
        };
        let status = invalid_config(&[error(1)], &field_paths(&[error(1)], &config, "config"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "invalid config: route 'r1': forward.clusters[0].name: unknown cluster 'c1'");
        let bad = status.get_details_bad_request().expect("a BadRequest");
        assert_eq!(bad.field_violations[0].field, "config.routes[1].forward.clusters[0].name");
        assert_eq!(bad.field_violations[0].description, "route 'r1': unknown cluster 'c1'");
        let rpc = pb::Status::decode(status.details()).unwrap();
        assert_eq!(rpc.code, Code::InvalidArgument as i32);
        let ours = rpc.details.iter().find(|a| a.type_url == VALIDATE_RESPONSE_TYPE_URL).expect("vane's detail");
        let ours = ValidateResponse::decode(ours.value.as_slice()).unwrap();
        assert_eq!((ours.errors.len(), ours.more_errors), (1, 0));
    }

    #[test]
    fn thousands_of_problems_give_a_bounded_status_that_counts_the_rest() {
        let errors: Vec<ConfigError> = (0..3000).map(error).collect();
        let status = invalid_config(&errors, &field_paths(&errors, &Config::default(), "config"));
        assert!(status.message().len() <= MAX_MESSAGE, "{}", status.message().len());
        assert!(status.message().ends_with("more problems)"), "{}", status.message());
        assert!(status.details().len() <= MAX_DETAILS, "{}", status.details().len());
        let rpc = pb::Status::decode(status.details()).unwrap();
        let ours = rpc.details.iter().find(|a| a.type_url == VALIDATE_RESPONSE_TYPE_URL).unwrap();
        let ours = ValidateResponse::decode(ours.value.as_slice()).unwrap();
        assert!(!ours.errors.is_empty());
        assert_eq!(ours.errors.len() + ours.more_errors as usize, 3000);
        let bad = status.get_details_bad_request().unwrap();
        assert_eq!(bad.field_violations.len(), ours.errors.len());
        assert_eq!(bad.field_violations[0].field, "config.routes.forward.clusters[0].name", "unknown index: the list");
    }

    #[test]
    fn messages_are_escaped_and_bounded() {
        let status = bounded(Code::NotFound, &format!("route '\u{1b}[2J{}' not found", "x".repeat(10_000)));
        assert!(status.message().starts_with("route '\\u{1b}[2Jxxx"), "{}", status.message());
        assert!(status.message().len() <= MAX_MESSAGE);
    }
}
