//! What a route does besides choosing a cluster: path and host rewrites, redirects,
//! direct responses, and header edits whose values may use request variables. All of it
//! is compiled once per snapshot; a request only fills in its variables.

use bytes::Bytes;
use http::header::HeaderValue;
use http::{StatusCode, Uri};
use regex::Regex;
use tracing::warn;
use vane_proto::config::{self, route_match};

pub(crate) use crate::http::template::{HeaderRules, Vars};

/// How the upstream path is derived from the request's.
#[derive(Debug, Default)]
pub(crate) enum PathRewrite {
    #[default]
    Keep,
    /// Replace the matched prefix.
    Prefix {
        matched: Box<str>,
        replacement: Box<str>,
    },
    Regex {
        re: Regex,
        substitution: Box<str>,
    },
    /// `/v2/users/{id}`: literal segments and captures.
    Template(Box<[TemplatePart]>),
}

#[derive(Debug)]
pub(crate) enum TemplatePart {
    Literal(Box<str>),
    Param(Box<str>),
}

fn matched_prefix(m: &config::RouteMatch) -> Option<&str> {
    match &m.path {
        Some(route_match::Path::Prefix(p) | route_match::Path::PathSeparatedPrefix(p)) => Some(p),
        _ => None,
    }
}

impl PathRewrite {
    pub(crate) fn compile(m: &config::RouteMatch, f: &config::Forward) -> PathRewrite {
        if !f.prefix_rewrite.is_empty()
            && let Some(matched) = matched_prefix(m)
        {
            return PathRewrite::Prefix { matched: matched.into(), replacement: f.prefix_rewrite.as_str().into() };
        }
        if let Some(rr) = &f.regex_rewrite {
            match Regex::new(&rr.pattern) {
                Ok(re) => return PathRewrite::Regex { re, substitution: rr.substitution.as_str().into() },
                Err(error) => warn!(%error, "regex rewrite dropped"),
            }
        }
        if !f.template_rewrite.is_empty() {
            let mut parts = Vec::new();
            let mut rest = f.template_rewrite.as_str();
            while let Some(start) = rest.find('{') {
                let Some(len) = rest[start..].find('}') else { break };
                if start > 0 {
                    parts.push(TemplatePart::Literal(rest[..start].into()));
                }
                parts.push(TemplatePart::Param(rest[start + 1..start + len].trim_start_matches('*').into()));
                rest = &rest[start + len + 1..];
            }
            if !rest.is_empty() {
                parts.push(TemplatePart::Literal(rest.into()));
            }
            return PathRewrite::Template(parts.into());
        }
        PathRewrite::Keep
    }

    /// The new path (without query), or `None` to keep the request's.
    pub(crate) fn apply(&self, path: &str, vars: &Vars<'_>) -> Option<String> {
        match self {
            PathRewrite::Keep => None,
            PathRewrite::Prefix { matched, replacement } => {
                let rest = path.get(matched.len()..).unwrap_or("");
                // `/api` -> `/` on `/api/x` must not give `//x`.
                if replacement.ends_with('/') && rest.starts_with('/') {
                    Some(format!("{replacement}{}", &rest[1..]))
                } else {
                    Some(format!("{replacement}{rest}"))
                }
            }
            PathRewrite::Regex { re, substitution } => Some(re.replace_all(path, &**substitution).into_owned()),
            PathRewrite::Template(parts) => {
                let mut out = String::new();
                for part in &**parts {
                    match part {
                        TemplatePart::Literal(l) => out.push_str(l),
                        TemplatePart::Param(name) => out.push_str(vars.param(name)),
                    }
                }
                Some(out)
            }
        }
    }
}

/// A compiled redirect.
#[derive(Debug)]
pub(crate) struct Redirect {
    scheme: Option<Box<str>>,
    host: Option<Box<str>>,
    port: u16,
    path: PathRewrite,
    fixed_path: Option<Box<str>>,
    pub(crate) code: StatusCode,
    strip_query: bool,
}

impl Redirect {
    pub(crate) fn compile(m: &config::RouteMatch, r: &config::Redirect) -> Redirect {
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.into());
        let path = match (matched_prefix(m), r.prefix_rewrite.is_empty()) {
            (Some(matched), false) => {
                PathRewrite::Prefix { matched: matched.into(), replacement: r.prefix_rewrite.as_str().into() }
            }
            _ => PathRewrite::Keep,
        };
        Redirect {
            scheme: nonempty(&r.scheme),
            host: nonempty(&r.host),
            port: u16::try_from(r.port).unwrap_or(0),
            path,
            fixed_path: nonempty(&r.path),
            code: StatusCode::from_u16(u16::try_from(r.code).unwrap_or(302))
                .ok()
                .filter(|c| c.is_redirection())
                .unwrap_or(StatusCode::FOUND),
            strip_query: r.strip_query,
        }
    }

    /// The `Location` for a request to `uri` with host `host` (port included).
    pub(crate) fn location(&self, uri: &Uri, host: Option<&str>, vars: &Vars<'_>) -> Option<HeaderValue> {
        let scheme = self.scheme.as_deref().unwrap_or("http");
        let (req_host, req_port) = match host {
            Some(h) if !h.starts_with('[') => h.rsplit_once(':').map_or((h, None), |(h, p)| (h, Some(p))),
            Some(h) => (h, None),
            None => ("", None),
        };
        let host = self.host.as_deref().unwrap_or(req_host);
        let port = if self.port != 0 {
            Some(self.port.to_string())
        } else if self.host.is_some() || self.scheme.is_some() {
            None
        } else {
            req_port.map(str::to_owned)
        };
        let path = match (&self.fixed_path, self.path.apply(uri.path(), vars)) {
            (Some(p), _) => p.to_string(),
            (None, Some(p)) => p,
            (None, None) => uri.path().to_owned(),
        };
        let mut location = format!("{scheme}://{host}");
        if let Some(port) = port {
            location.push(':');
            location.push_str(&port);
        }
        location.push_str(&path);
        if let (false, Some(q)) = (self.strip_query, uri.query()) {
            location.push('?');
            location.push_str(q);
        }
        HeaderValue::from_str(&location).ok()
    }
}

/// Why a try failed, as retry conditions name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RetryOn {
    ConnectFailure,
    Reset,
    /// A 5xx answer.
    ServerError,
    /// One of the configured retriable statuses.
    Status,
    Timeout,
}

/// A compiled retry policy.
#[derive(Debug)]
pub(crate) struct RetryPolicy {
    pub(crate) num_retries: u32,
    on: Vec<RetryOn>,
    statuses: Box<[u16]>,
    pub(crate) per_try_timeout: std::time::Duration,
    backoff: std::time::Duration,
}

impl RetryPolicy {
    /// The policy of a forward: its own, or the default when it sets none (one retry of
    /// a connect failure, at once: nothing reached the upstream, and the retry goes to
    /// another endpoint); `None` when it turns retries off (`num_retries: 0`).
    pub(crate) fn of(p: Option<&config::RetryPolicy>, route_timeout: std::time::Duration) -> Option<RetryPolicy> {
        match p {
            None => Some(RetryPolicy {
                num_retries: 1,
                on: vec![RetryOn::ConnectFailure],
                statuses: Box::new([]),
                per_try_timeout: route_timeout,
                backoff: std::time::Duration::ZERO,
            }),
            Some(p) if p.num_retries == Some(0) => None,
            Some(p) => Some(RetryPolicy::compile(p, route_timeout)),
        }
    }

    fn compile(p: &config::RetryPolicy, route_timeout: std::time::Duration) -> RetryPolicy {
        let mut on: Vec<RetryOn> = p
            .retry_on
            .iter()
            .filter_map(|c| match c.as_str() {
                "connect-failure" => Some(RetryOn::ConnectFailure),
                "reset" => Some(RetryOn::Reset),
                "5xx" => Some(RetryOn::ServerError),
                "retriable-status" => Some(RetryOn::Status),
                "timeout" => Some(RetryOn::Timeout),
                _ => None,
            })
            .collect();
        if on.is_empty() {
            on.push(RetryOn::ConnectFailure);
        }
        RetryPolicy {
            num_retries: p.num_retries.unwrap_or(1),
            on,
            statuses: p.retriable_statuses.iter().filter_map(|s| u16::try_from(*s).ok()).collect(),
            per_try_timeout: crate::support::duration_or(p.per_try_timeout.as_ref(), route_timeout),
            backoff: crate::support::duration_or(p.backoff.as_ref(), std::time::Duration::from_millis(25)),
        }
    }

    /// The condition an answer meets, if any retry condition could apply to it.
    pub(crate) fn on_status(&self, status: StatusCode) -> Option<RetryOn> {
        if self.statuses.contains(&status.as_u16()) && self.on.contains(&RetryOn::Status) {
            Some(RetryOn::Status)
        } else if status.is_server_error() {
            Some(RetryOn::ServerError)
        } else {
            None
        }
    }

    pub(crate) fn retries_on(&self, cause: RetryOn) -> bool {
        self.on.contains(&cause)
    }

    /// Whether it retries a request the upstream received (not only failed connects,
    /// which give the request back untouched).
    pub(crate) fn retries_received(&self) -> bool {
        self.num_retries > 0 && self.on.iter().any(|c| *c != RetryOn::ConnectFailure)
    }

    /// Full-jitter exponential backoff: up to base * 2^(attempt-1), at most 10x base.
    pub(crate) fn backoff_for(&self, attempt: u32) -> std::time::Duration {
        let ceiling = self.backoff.saturating_mul(1 << attempt.saturating_sub(1).min(8)).min(self.backoff * 10);
        ceiling.mul_f64(rand::random::<f64>())
    }
}

/// A compiled direct response.
#[derive(Debug)]
pub(crate) struct Direct {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
    pub(crate) content_type: Option<HeaderValue>,
}

impl Direct {
    pub(crate) fn compile(d: &config::DirectResponse) -> Direct {
        let content_type = if !d.content_type.is_empty() {
            HeaderValue::from_str(&d.content_type).ok()
        } else if d.body.is_empty() {
            None
        } else {
            Some(HeaderValue::from_static("text/plain; charset=utf-8"))
        };
        Direct {
            status: StatusCode::from_u16(u16::try_from(d.status).unwrap_or(200)).unwrap_or(StatusCode::OK),
            body: Bytes::from(d.body.clone()),
            content_type,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::template::ValueTemplate;

    fn vars<'a>(params: &'a [(Box<str>, Box<str>)], id: Option<&'a HeaderValue>) -> Vars<'a> {
        Vars { client_ip: "192.0.2.7".parse().unwrap(), request_id: id, host: Some("shop.example"), params }
    }

    #[test]
    fn header_templates_fill_variables() {
        let id = HeaderValue::from_static("rid-1");
        let params = [("id".into(), "42".into())];
        let v = vars(&params, Some(&id));
        let t = ValueTemplate::parse("ip=${client_ip} id=${request_id} host=${host} user=${param.id} ${other}");
        assert_eq!(t.render(&v).unwrap(), "ip=192.0.2.7 id=rid-1 host=shop.example user=42 ${other}");
    }

    #[test]
    fn rewrites() {
        let params = [("id".into(), "42".into())];
        let v = vars(&params, None);
        let prefix = PathRewrite::Prefix { matched: "/api".into(), replacement: "/".into() };
        assert_eq!(prefix.apply("/api/users", &v).as_deref(), Some("/users"));
        assert_eq!(prefix.apply("/api", &v).as_deref(), Some("/"));
        let prefix = PathRewrite::Prefix { matched: "/old".into(), replacement: "/new".into() };
        assert_eq!(prefix.apply("/old/x", &v).as_deref(), Some("/new/x"));
        let re = PathRewrite::Regex { re: Regex::new("^/v([0-9]+)/").unwrap(), substitution: "/api/v$1/".into() };
        assert_eq!(re.apply("/v2/items", &v).as_deref(), Some("/api/v2/items"));
        let m =
            config::RouteMatch { path: Some(route_match::Path::Template("/users/{id}".into())), ..Default::default() };
        let f = config::Forward { template_rewrite: "/v2/people/{id}/profile".into(), ..Default::default() };
        assert_eq!(PathRewrite::compile(&m, &f).apply("/users/42", &v).as_deref(), Some("/v2/people/42/profile"));
    }

    #[test]
    fn redirect_locations() {
        let v = vars(&[], None);
        let uri: Uri = "/old/page?x=1".parse().unwrap();
        let m = config::RouteMatch { path: Some(route_match::Path::Prefix("/old".into())), ..Default::default() };
        let https =
            Redirect::compile(&m, &config::Redirect { scheme: "https".into(), code: 301, ..Default::default() });
        assert_eq!(https.location(&uri, Some("shop.example:8080"), &v).unwrap(), "https://shop.example/old/page?x=1");
        assert_eq!(https.code, StatusCode::MOVED_PERMANENTLY);
        let moved = Redirect::compile(
            &m,
            &config::Redirect { prefix_rewrite: "/new".into(), strip_query: true, ..Default::default() },
        );
        assert_eq!(moved.location(&uri, Some("shop.example:8080"), &v).unwrap(), "http://shop.example:8080/new/page");
        assert_eq!(moved.code, StatusCode::FOUND);
    }
}
