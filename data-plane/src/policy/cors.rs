//! CORS as the Fetch standard expects it of a server: preflights (OPTIONS with `Origin` and
//! `Access-Control-Request-Method`) answered here with 204 and the allow headers, or 403
//! without them when the origin, method or headers are not allowed; actual requests from
//! an allowed origin get `Access-Control-Allow-Origin` (and credentials/expose headers) on
//! their response; every answer that depends on the origin says `Vary: Origin`.

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use vane_proto::config;

use crate::http::body::InnerBody;

#[derive(Debug)]
enum OriginRule {
    Any,
    Exact(String),
    /// `https://*.example.com`: scheme, then any one-or-more labels, then the suffix.
    Wildcard {
        scheme: String,
        suffix: String,
    },
}

#[derive(Debug)]
pub(super) struct Cors {
    origins: Box<[OriginRule]>,
    methods: Box<[Method]>,
    methods_value: HeaderValue,
    /// Lower case; `None`: any header.
    headers: Option<Box<[String]>>,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

pub(super) enum CorsOutcome {
    /// No `Origin`: not a CORS request.
    NotCors,
    /// A preflight, answered.
    Preflight(Response<InnerBody>),
    PreflightRefused(Response<InnerBody>),
    /// An allowed cross-origin request: these headers go on its response.
    Actual(Vec<(HeaderName, HeaderValue)>),
    /// A cross-origin request from an origin not allowed: served without CORS headers, so
    /// the browser withholds the response from the page.
    OriginRefused,
}

impl Cors {
    pub(super) fn compile(spec: &config::Cors) -> Cors {
        let origins = spec
            .allow_origins
            .iter()
            .map(|o| {
                if o == "*" {
                    return OriginRule::Any;
                }
                match o.split_once("://*.") {
                    Some((scheme, suffix)) => OriginRule::Wildcard {
                        scheme: scheme.to_ascii_lowercase(),
                        suffix: format!(".{}", suffix.to_ascii_lowercase()),
                    },
                    None => OriginRule::Exact(o.to_ascii_lowercase()),
                }
            })
            .collect();
        let mut methods: Vec<Method> = spec.allow_methods.iter().filter_map(|m| m.parse().ok()).collect();
        if methods.is_empty() {
            methods = vec![Method::GET, Method::HEAD, Method::POST];
        }
        let joined = methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ");
        let headers = if spec.allow_headers.iter().any(|h| h == "*") {
            None
        } else {
            Some(spec.allow_headers.iter().map(|h| h.to_ascii_lowercase()).collect())
        };
        Cors {
            origins,
            methods_value: HeaderValue::from_str(&joined).unwrap_or(HeaderValue::from_static("GET, HEAD, POST")),
            methods: methods.into(),
            headers,
            expose: (!spec.expose_headers.is_empty())
                .then(|| HeaderValue::from_str(&spec.expose_headers.join(", ")).ok())
                .flatten(),
            credentials: spec.allow_credentials,
            max_age: spec.max_age.as_ref().map(|d| HeaderValue::from(d.seconds.max(0))),
        }
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        self.origins.iter().any(|rule| match rule {
            OriginRule::Any => true,
            OriginRule::Exact(o) => *o == origin,
            OriginRule::Wildcard { scheme, suffix } => origin
                .strip_prefix(scheme.as_str())
                .and_then(|rest| rest.strip_prefix("://"))
                .is_some_and(|host| host.len() > suffix.len() && host.ends_with(suffix.as_str())),
        })
    }

    /// `Access-Control-Allow-Origin` (+ credentials): the origin itself, or `*` for any
    /// origin without credentials (the Fetch standard forbids `*` with credentials).
    fn allow_origin(&self, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let any = self.origins.iter().any(|r| matches!(r, OriginRule::Any));
        let mut out = Vec::with_capacity(4);
        if any && !self.credentials {
            out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*")));
        } else {
            out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
            out.push((header::VARY, HeaderValue::from_static("Origin")));
        }
        if self.credentials {
            out.push((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true")));
        }
        out
    }

    pub(super) fn request(&self, req: &Request<InnerBody>) -> CorsOutcome {
        let Some(origin) = req.headers().get(header::ORIGIN) else { return CorsOutcome::NotCors };
        let allowed = origin.to_str().is_ok_and(|o| self.origin_allowed(o));
        let preflight =
            req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if !preflight {
            return if allowed {
                let mut headers = self.allow_origin(origin);
                if let Some(expose) = &self.expose {
                    headers.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone()));
                }
                CorsOutcome::Actual(headers)
            } else {
                CorsOutcome::OriginRefused
            };
        }
        let method_ok = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| m.to_str().ok())
            .and_then(|m| m.parse::<Method>().ok())
            .is_some_and(|m| self.methods.contains(&m));
        let requested: Vec<String> = req
            .headers()
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let headers_ok = match &self.headers {
            None => true,
            Some(allowed) => requested.iter().all(|h| allowed.contains(h)),
        };
        let mut response = crate::http::body::local(StatusCode::NO_CONTENT, "");
        *response.body_mut() = http_body_util::Either::Right(http_body_util::Full::default());
        response.headers_mut().remove(header::CONTENT_TYPE);
        let h = response.headers_mut();
        h.insert(
            header::VARY,
            HeaderValue::from_static("Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        );
        if !(allowed && method_ok && headers_ok) {
            *response.status_mut() = StatusCode::FORBIDDEN;
            return CorsOutcome::PreflightRefused(response);
        }
        for (name, value) in self.allow_origin(origin) {
            if name != header::VARY {
                h.insert(name, value);
            }
        }
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, self.methods_value.clone());
        if !requested.is_empty()
            && let Ok(v) = HeaderValue::from_str(&requested.join(", "))
        {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if let Some(max_age) = &self.max_age {
            h.insert(header::ACCESS_CONTROL_MAX_AGE, max_age.clone());
        }
        CorsOutcome::Preflight(response)
    }
}
