//! Request and response transformation: header rules, query parameters, a regex path
//! rewrite, and JSON field edits on small bodies.
//!
//! JSON bodies are edited only when they are JSON by `Content-Type` and announce a
//! `Content-Length` within the cap: a streamed body is never buffered without a bound, and
//! a body that is not valid JSON passes unchanged.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Full};
use regex::Regex;
use serde_json::Value;
use vane_proto::config;

use super::stats::Ctx;
use crate::http::body::{Counting, InnerBody, local};
use crate::http::idle::BodyTimeout;
use crate::http::template::{HeaderRules, Vars};

const DEFAULT_MAX_BODY: u64 = 64 * 1024;

#[derive(Debug)]
pub(super) struct Transform {
    request_headers: HeaderRules,
    response_headers: HeaderRules,
    set_query: Box<[(String, String)]>,
    remove_query: Box<[String]>,
    path: Option<(Regex, String)>,
    request_json: Option<JsonEdits>,
    response_json: Option<JsonEdits>,
    max_body: u64,
}

#[derive(Debug)]
struct JsonEdits {
    set: Box<[(Vec<String>, Value)]>,
    remove: Box<[Vec<String>]>,
}

impl JsonEdits {
    fn compile(spec: &config::JsonEdits) -> Option<JsonEdits> {
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        let set: Box<[_]> =
            spec.set.iter().filter_map(|f| Some((path(&f.path), serde_json::from_str(&f.value).ok()?))).collect();
        let remove: Box<[_]> = spec.remove.iter().map(|p| path(p)).collect();
        (!set.is_empty() || !remove.is_empty()).then_some(JsonEdits { set, remove })
    }

    /// Applies the edits to a JSON document; `None` when the body is not a JSON object.
    fn apply(&self, body: &[u8]) -> Option<Vec<u8>> {
        let mut doc: Value = serde_json::from_slice(body).ok()?;
        doc.as_object()?;
        for (path, value) in self.set.iter() {
            let Some((last, parents)) = path.split_last() else { continue };
            let mut at = Some(&mut doc);
            for key in parents {
                at = match at {
                    Some(Value::Object(obj)) => {
                        Some(obj.entry(key.clone()).or_insert_with(|| Value::Object(Default::default())))
                    }
                    _ => None,
                };
            }
            if let Some(Value::Object(obj)) = at {
                obj.insert(last.clone(), value.clone());
            }
        }
        for path in self.remove.iter() {
            let Some((last, parents)) = path.split_last() else { continue };
            let mut at = Some(&mut doc);
            for key in parents {
                at = at.and_then(|v| v.as_object_mut()).and_then(|o| o.get_mut(key));
            }
            if let Some(obj) = at.and_then(|v| v.as_object_mut()) {
                obj.remove(last);
            }
        }
        serde_json::to_vec(&doc).ok()
    }
}

impl Transform {
    pub(super) fn compile(spec: &config::Transform) -> Transform {
        Transform {
            request_headers: HeaderRules::compile(spec.request_headers.as_ref()),
            response_headers: HeaderRules::compile(spec.response_headers.as_ref()),
            set_query: spec.set_query.iter().map(|q| (q.name.clone(), q.value.clone())).collect(),
            remove_query: spec.remove_query.clone().into(),
            path: spec.path_rewrite.as_ref().and_then(|r| Some((Regex::new(&r.pattern).ok()?, r.substitution.clone()))),
            request_json: spec.request_json.as_ref().and_then(JsonEdits::compile),
            response_json: spec.response_json.as_ref().and_then(JsonEdits::compile),
            max_body: if spec.max_body_bytes == 0 { DEFAULT_MAX_BODY } else { u64::from(spec.max_body_bytes) },
        }
    }

    /// The request side; a body that cannot be read whole for its JSON edits ends the
    /// request (408 when its client stopped sending it, 400 when it broke off).
    pub(super) async fn request(&self, req: &mut Request<InnerBody>, ctx: &Ctx<'_>) -> Result<(), Response<InnerBody>> {
        if !self.request_headers.is_empty() {
            let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned);
            let id = req.headers().get("x-request-id").cloned();
            let vars = Vars { client_ip: ctx.client_ip, request_id: id.as_ref(), host: host.as_deref(), params: &[] };
            self.request_headers.apply(req.headers_mut(), &vars);
        }
        if (self.path.is_some() || !self.set_query.is_empty() || !self.remove_query.is_empty())
            && let Some(uri) = self.rewrite_uri(req.uri())
        {
            *req.uri_mut() = uri;
        }
        if let Some(edits) = &self.request_json {
            edit_json(edits, self.max_body, req, Some(ctx.body_timeout)).await?;
        }
        Ok(())
    }

    pub(super) async fn response(&self, response: &mut Response<InnerBody>, ctx: &Ctx<'_>) {
        if !self.response_headers.is_empty() {
            let vars = Vars { client_ip: ctx.client_ip, request_id: None, host: None, params: &[] };
            self.response_headers.apply(response.headers_mut(), &vars);
        }
        if let Some(edits) = &self.response_json {
            // The upstream's pace is the route timeout's business; a body that breaks off
            // is sent on as the empty one it became (the status is already the upstream's).
            let _ = edit_json(edits, self.max_body, response, None).await;
        }
    }

    fn rewrite_uri(&self, uri: &Uri) -> Option<Uri> {
        let path = match &self.path {
            Some((re, with)) => re.replace_all(uri.path(), with.as_str()).into_owned(),
            None => uri.path().to_owned(),
        };
        let mut pairs: Vec<(String, String)> =
            uri.query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
        if !self.remove_query.is_empty() || !self.set_query.is_empty() {
            pairs.retain(|(k, _)| !self.remove_query.contains(k) && !self.set_query.iter().any(|(s, _)| s == k));
            pairs.extend(self.set_query.iter().cloned());
        }
        let query =
            (!pairs.is_empty()).then(|| form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish());
        let pq = match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(pq.parse().ok()?);
        Uri::from_parts(parts).ok()
    }
}

/// A request or a response: headers and a body that can be swapped.
trait Message {
    fn headers_mut(&mut self) -> &mut http::HeaderMap;
    fn body_mut(&mut self) -> &mut InnerBody;
}

impl Message for Request<InnerBody> {
    fn headers_mut(&mut self) -> &mut http::HeaderMap {
        Request::headers_mut(self)
    }
    fn body_mut(&mut self) -> &mut InnerBody {
        Request::body_mut(self)
    }
}

impl Message for Response<InnerBody> {
    fn headers_mut(&mut self) -> &mut http::HeaderMap {
        Response::headers_mut(self)
    }
    fn body_mut(&mut self) -> &mut InnerBody {
        Response::body_mut(self)
    }
}

/// Applies JSON edits to a message's body when it is JSON and announces a length within
/// `max`; the body is replaced by the edited one (or the original bytes when not an object).
/// A body that pauses longer than `idle` between two reads, or breaks off, is an error:
/// the answer to give instead (408 or 400).
async fn edit_json(
    edits: &JsonEdits,
    max: u64,
    message: &mut impl Message,
    idle: Option<Duration>,
) -> Result<(), Response<InnerBody>> {
    let headers = message.headers_mut();
    if !is_json(headers) || length(headers).is_none_or(|n| n > max) {
        return Ok(());
    }
    let body = std::mem::replace(message.body_mut(), Either::Right(Full::default()));
    let body = Counting::new(body, None, 0, None);
    let body = match idle {
        Some(idle) => body.with_idle_timeout(idle),
        None => body,
    };
    let collected = match body.collect().await {
        Ok(collected) => collected,
        Err(error) => {
            let (status, why) = match error.downcast_ref::<BodyTimeout>() {
                Some(_) => (StatusCode::REQUEST_TIMEOUT, "request body not received in time\n"),
                None => (StatusCode::BAD_REQUEST, "malformed request body\n"),
            };
            let mut answer = local(status, why);
            answer.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Err(answer);
        }
    };
    let bytes = collected.to_bytes();
    let out = edits.apply(&bytes).map_or(bytes, Bytes::from);
    message.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    *message.body_mut() = Either::Right(Full::new(out));
    Ok(())
}

fn is_json(headers: &http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
        let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        essence == "application/json" || essence.ends_with("+json")
    })
}

fn length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields_are_set_and_removed_by_dotted_path() {
        let edits = JsonEdits::compile(&config::JsonEdits {
            set: vec![
                config::JsonField { path: "user.role".into(), value: "\"admin\"".into() },
                config::JsonField { path: "version".into(), value: "2".into() },
            ],
            remove: vec!["user.password".into(), "missing.path".into()],
        })
        .unwrap();
        let out = edits.apply(br#"{"user":{"name":"a","password":"x"},"version":1}"#).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, serde_json::json!({"user": {"name": "a", "role": "admin"}, "version": 2}));
        assert!(edits.apply(b"not json").is_none());
    }

    #[test]
    fn query_and_path_are_rewritten() {
        let t = Transform::compile(&config::Transform {
            set_query: vec![config::QueryParam { name: "v".into(), value: "2".into() }],
            remove_query: vec!["debug".into()],
            path_rewrite: Some(config::RegexRewrite { pattern: "^/old/".into(), substitution: "/new/".into() }),
            ..Default::default()
        });
        let uri: Uri = "/old/x?debug=1&a=b&v=1".parse().unwrap();
        assert_eq!(t.rewrite_uri(&uri).unwrap(), "/new/x?a=b&v=2");
    }
}
