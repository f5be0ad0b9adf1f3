//! Header values and edits whose values may use request variables (`${client_ip}`,
//! `${request_id}`, `${host}`, `${param.NAME}`): compiled once per snapshot; a request
//! only fills in its [`Vars`]. Used by route actions and by transform policies alike.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use vane_proto::config;

/// Values a request contributes to header templates and rewrites.
#[derive(Debug)]
pub(crate) struct Vars<'a> {
    pub(crate) client_ip: IpAddr,
    pub(crate) request_id: Option<&'a HeaderValue>,
    pub(crate) host: Option<&'a str>,
    /// Captures of a template path match.
    pub(crate) params: &'a [(Box<str>, Box<str>)],
}

impl Vars<'_> {
    pub(crate) fn param(&self, name: &str) -> &str {
        self.params.iter().find(|(k, _)| &**k == name).map_or("", |(_, v)| v)
    }
}

/// A value with `${client_ip}`, `${request_id}`, `${host}`, `${param.NAME}` in it.
#[derive(Debug)]
enum Part {
    Literal(Box<str>),
    ClientIp,
    RequestId,
    Host,
    Param(Box<str>),
}

#[derive(Debug)]
pub(crate) struct ValueTemplate(Box<[Part]>);

impl ValueTemplate {
    pub(crate) fn parse(text: &str) -> ValueTemplate {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            let Some(len) = rest[start..].find('}') else { break };
            if start > 0 {
                parts.push(Part::Literal(rest[..start].into()));
            }
            let var = &rest[start + 2..start + len];
            parts.push(match var {
                "client_ip" => Part::ClientIp,
                "request_id" => Part::RequestId,
                "host" => Part::Host,
                _ => match var.strip_prefix("param.") {
                    Some(name) => Part::Param(name.into()),
                    // Unknown variables stay literal, visible to whoever reads the header.
                    None => Part::Literal(rest[start..=start + len].into()),
                },
            });
            rest = &rest[start + len + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.into()));
        }
        ValueTemplate(parts.into())
    }

    pub(crate) fn render(&self, vars: &Vars<'_>) -> Option<HeaderValue> {
        if let [Part::Literal(l)] = &*self.0 {
            return HeaderValue::from_str(l).ok();
        }
        let mut out = String::new();
        for part in &*self.0 {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::ClientIp => out.push_str(&vars.client_ip.to_string()),
                Part::RequestId => out.push_str(vars.request_id.and_then(|v| v.to_str().ok()).unwrap_or("")),
                Part::Host => out.push_str(vars.host.unwrap_or("")),
                Part::Param(name) => out.push_str(vars.param(name)),
            }
        }
        HeaderValue::from_str(&out).ok()
    }
}

/// Header edits: remove, then set, then add.
#[derive(Debug, Default)]
pub(crate) struct HeaderRules {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, ValueTemplate)]>,
    add: Box<[(HeaderName, ValueTemplate)]>,
}

impl HeaderRules {
    pub(crate) fn compile(rules: Option<&config::HeaderRules>) -> HeaderRules {
        let Some(rules) = rules else { return HeaderRules::default() };
        let name = |n: &str| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok();
        let pairs = |list: &[config::HeaderValue]| -> Box<[(HeaderName, ValueTemplate)]> {
            list.iter().filter_map(|h| Some((name(&h.name)?, ValueTemplate::parse(&h.value)))).collect()
        };
        HeaderRules {
            remove: rules.remove.iter().filter_map(|n| name(n)).collect(),
            set: pairs(&rules.set),
            add: pairs(&rules.add),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub(crate) fn apply(&self, headers: &mut HeaderMap, vars: &Vars<'_>) {
        for name in &*self.remove {
            headers.remove(name);
        }
        for (name, value) in &*self.set {
            if let Some(v) = value.render(vars) {
                headers.insert(name.clone(), v);
            }
        }
        for (name, value) in &*self.add {
            if let Some(v) = value.render(vars) {
                headers.append(name.clone(), v);
            }
        }
    }
}
