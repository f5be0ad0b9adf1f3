//! The gateway part of the validator: policies, consumers, and the references to them.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};

use super::check::{Validator, display_name, is_header_name};
use crate::config::{Config, Consumer, Policy, api_key};

/// Replaces every consumer API key given in clear by its SHA-256 (what the control plane
/// stores and shows).
pub fn hash_api_keys(config: &mut Config) {
    for c in &mut config.consumers {
        for k in &mut c.api_keys {
            if let Some(api_key::Value::Key(plain)) = &k.value {
                k.value = Some(api_key::Value::Sha256(hex::encode(Sha256::digest(plain.as_bytes()))));
            }
        }
    }
}

pub(crate) fn check(config: &Config, v: &mut Validator) {
    let policies = v.names("policy", config.policies.iter().map(|p| p.name.as_str()));
    v.names("consumer", config.consumers.iter().map(|c| c.name.as_str()));
    for (i, l) in config.listeners.iter().enumerate() {
        refs(v, "listener", &display_name(&l.name, i), &l.policies, &policies);
    }
    for (i, r) in config.routes.iter().enumerate() {
        refs(v, "route", &display_name(&r.name, i), &r.policies, &policies);
    }
    for (i, p) in config.policies.iter().enumerate() {
        policy(v, &display_name(&p.name, i), p);
    }
    consumers(v, &config.consumers);
}

fn refs(v: &mut Validator, kind: &'static str, name: &str, used: &[String], known: &HashSet<&str>) {
    for (j, p) in used.iter().enumerate() {
        if !known.contains(p.as_str()) {
            v.err(kind, name, &format!("policies[{j}]"), format!("unknown policy '{p}'"));
        }
    }
}

fn http_url(v: &mut Validator, name: &str, field: &str, url: &str) {
    let ok = url
        .parse::<http::Uri>()
        .is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty()));
    if !ok {
        v.err("policy", name, field, format!("'{url}' is not an http:// or https:// URL"));
    }
}

fn policy(v: &mut Validator, name: &str, p: &Policy) {
    if p.ip_filter.is_none() && p.cors.is_none() && p.auth.is_none() && p.rate_limit.is_none() && p.transform.is_none()
    {
        v.err("policy", name, "", "set at least one of ip_filter, cors, auth, rate_limit, transform".into());
    }
    if let Some(f) = &p.ip_filter {
        for (field, list) in [("ip_filter.allow", &f.allow), ("ip_filter.deny", &f.deny)] {
            for (j, c) in list.iter().enumerate() {
                if c.parse::<ipnet::IpNet>().is_err() && c.parse::<std::net::IpAddr>().is_err() {
                    v.err("policy", name, &format!("{field}[{j}]"), format!("'{c}' is not an address or CIDR"));
                }
            }
        }
    }
    if let Some(c) = &p.cors {
        if c.allow_origins.is_empty() {
            v.err("policy", name, "cors.allow_origins", "at least one origin is required".into());
        }
        for (j, o) in c.allow_origins.iter().enumerate() {
            let field = format!("cors.allow_origins[{j}]");
            if o == "*" {
                if c.allow_credentials {
                    v.err(
                        "policy",
                        name,
                        &field,
                        "'*' cannot be combined with allow_credentials (Fetch standard)".into(),
                    );
                }
                continue;
            }
            let ok = o.split_once("://").is_some_and(|(scheme, host)| {
                !scheme.is_empty()
                    && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
                    && !host.is_empty()
                    && !host.contains(['/', '?', '#', ' '])
            });
            if !ok {
                v.err(
                    "policy",
                    name,
                    &field,
                    format!("'{o}' is not an origin (scheme://host[:port], or scheme://*.suffix)"),
                );
            }
        }
        for (j, m) in c.allow_methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                v.err(
                    "policy",
                    name,
                    &format!("cors.allow_methods[{j}]"),
                    format!("'{m}' is not an upper-case method"),
                );
            }
        }
        for (field, list) in [("cors.allow_headers", &c.allow_headers), ("cors.expose_headers", &c.expose_headers)] {
            for (j, h) in list.iter().enumerate() {
                if h != "*" && !is_header_name(h) {
                    v.err("policy", name, &format!("{field}[{j}]"), format!("'{h}' is not a header name"));
                }
            }
        }
        v.duration("policy", name, "cors.max_age", c.max_age.as_ref());
    }
    if let Some(a) = &p.auth {
        let mechanisms = [a.api_key.is_some(), a.basic.is_some(), a.jwt.is_some(), a.introspection.is_some()];
        if !mechanisms.contains(&true) && a.ext_authz.is_none() {
            v.err("policy", name, "auth", "set at least one of api_key, basic, jwt, introspection, ext_authz".into());
        }
        if let Some(k) = &a.api_key
            && !k.header.is_empty()
            && !is_header_name(&k.header)
        {
            v.err("policy", name, "auth.api_key.header", format!("'{}' is not a header name", k.header));
        }
        if let Some(j) = &a.jwt {
            if j.jwks.is_empty() && j.jwks_uri.is_empty() && j.hmac_secrets.is_empty() {
                v.err("policy", name, "auth.jwt", "give keys: jwks, jwks_uri or hmac_secrets".into());
            }
            if !j.jwks.is_empty() {
                let parsed: Result<serde_json::Value, _> = serde_json::from_str(&j.jwks);
                if !parsed.as_ref().is_ok_and(|d| d.get("keys").is_some_and(serde_json::Value::is_array)) {
                    v.err("policy", name, "auth.jwt.jwks", "is not a JWKS document ({\"keys\": [...]})".into());
                }
            }
            if !j.jwks_uri.is_empty() {
                http_url(v, name, "auth.jwt.jwks_uri", &j.jwks_uri);
            }
            v.duration("policy", name, "auth.jwt.jwks_refresh", j.jwks_refresh.as_ref());
            if j.jwks_refresh.as_ref().is_some_and(|d| d.seconds < 1) {
                v.err("policy", name, "auth.jwt.jwks_refresh", "must be at least 1s".into());
            }
            if j.leeway.as_ref().is_some_and(|d| d.seconds < 0 || d.nanos < 0 || d.seconds > 86_400) {
                v.err("policy", name, "auth.jwt.leeway", "must be between 0 and 1 day".into());
            }
            for (k, c) in j.required_claims.iter().enumerate() {
                if c.is_empty() {
                    v.err("policy", name, &format!("auth.jwt.required_claims[{k}]"), "is empty".into());
                }
            }
            for (k, secret) in j.hmac_secrets.iter().enumerate() {
                if secret.len() < 16 {
                    v.err(
                        "policy",
                        name,
                        &format!("auth.jwt.hmac_secrets[{k}]"),
                        "at least 16 bytes are required".into(),
                    );
                }
            }
            for (k, c) in j.claims_to_headers.iter().enumerate() {
                if c.claim.is_empty() || !is_header_name(&c.header) {
                    v.err(
                        "policy",
                        name,
                        &format!("auth.jwt.claims_to_headers[{k}]"),
                        "needs a claim and a valid header name".into(),
                    );
                }
            }
        }
        if let Some(i) = &a.introspection {
            http_url(v, name, "auth.introspection.endpoint", &i.endpoint);
            v.duration("policy", name, "auth.introspection.cache_ttl", i.cache_ttl.as_ref());
            v.duration("policy", name, "auth.introspection.timeout", i.timeout.as_ref());
        }
        if let Some(e) = &a.ext_authz {
            http_url(v, name, "auth.ext_authz.url", &e.url);
            v.duration("policy", name, "auth.ext_authz.timeout", e.timeout.as_ref());
            for h in e.headers_to_send.iter().chain(&e.headers_to_upstream) {
                if !is_header_name(h) {
                    v.err("policy", name, "auth.ext_authz", format!("'{h}' is not a header name"));
                }
            }
        }
    }
    if let Some(r) = &p.rate_limit {
        if r.requests == 0 {
            v.err("policy", name, "rate_limit.requests", "must be at least 1".into());
        }
        v.duration("policy", name, "rate_limit.per", r.per.as_ref());
        for (j, k) in r.key.iter().enumerate() {
            match &k.part {
                None => v.err(
                    "policy",
                    name,
                    &format!("rate_limit.key[{j}]"),
                    "one of client_ip, header, consumer, route".into(),
                ),
                Some(crate::config::rate_limit_key::Part::Header(h)) if !is_header_name(h) => {
                    v.err(
                        "policy",
                        name,
                        &format!("rate_limit.key[{j}].header"),
                        format!("'{h}' is not a header name"),
                    );
                }
                Some(_) => {}
            }
        }
    }
    if let Some(t) = &p.transform {
        if let Some(rules) = &t.request_headers {
            v.header_rules("policy", name, "transform.request_headers", rules);
        }
        if let Some(rules) = &t.response_headers {
            v.header_rules("policy", name, "transform.response_headers", rules);
        }
        if let Some(r) = &t.path_rewrite {
            v.regex("policy", name, "transform.path_rewrite.pattern", &r.pattern);
        }
        for (field, edits) in
            [("transform.request_json", &t.request_json), ("transform.response_json", &t.response_json)]
        {
            let Some(edits) = edits else { continue };
            for (j, f) in edits.set.iter().enumerate() {
                if f.path.is_empty() || f.path.split('.').any(str::is_empty) {
                    v.err(
                        "policy",
                        name,
                        &format!("{field}.set[{j}].path"),
                        format!("'{}' is not a dotted path", f.path),
                    );
                }
                if serde_json::from_str::<serde_json::Value>(&f.value).is_err() {
                    v.err(
                        "policy",
                        name,
                        &format!("{field}.set[{j}].value"),
                        format!("'{}' is not JSON (strings need quotes)", f.value),
                    );
                }
            }
        }
    }
}

fn consumers(v: &mut Validator, consumers: &[Consumer]) {
    let mut keys: HashMap<String, &str> = HashMap::new();
    let mut users: HashMap<&str, &str> = HashMap::new();
    for (i, c) in consumers.iter().enumerate() {
        let name = display_name(&c.name, i);
        for (j, k) in c.api_keys.iter().enumerate() {
            let field = format!("api_keys[{j}]");
            let hash = match &k.value {
                Some(api_key::Value::Key(plain)) if plain.len() >= 8 => hex::encode(Sha256::digest(plain.as_bytes())),
                Some(api_key::Value::Key(_)) => {
                    v.err("consumer", &name, &field, "an API key needs at least 8 characters".into());
                    continue;
                }
                Some(api_key::Value::Sha256(h)) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    h.to_ascii_lowercase()
                }
                Some(api_key::Value::Sha256(_)) => {
                    v.err("consumer", &name, &field, "sha256 must be 64 hex digits".into());
                    continue;
                }
                None => {
                    v.err("consumer", &name, &field, "give key or sha256".into());
                    continue;
                }
            };
            if let Some(other) = keys.insert(hash, &c.name) {
                v.err("consumer", &name, &field, format!("the same key belongs to consumer '{other}'"));
            }
        }
        if let Some(b) = &c.basic_auth {
            if b.username.is_empty() || b.username.contains(':') {
                v.err("consumer", &name, "basic_auth.username", "is required and may not hold ':'".into());
            } else if let Some(other) = users.insert(&b.username, &c.name) {
                v.err("consumer", &name, "basic_auth.username", format!("already used by consumer '{other}'"));
            }
            let h = &b.password_hash;
            if !(h.starts_with("$2a$") || h.starts_with("$2b$") || h.starts_with("$2y$") || h.starts_with("$argon2")) {
                v.err(
                    "consumer",
                    &name,
                    "basic_auth.password_hash",
                    "must be a bcrypt ($2b$...) or argon2 ($argon2id$...) hash, never a password".into(),
                );
            }
        }
        for k in c.metadata.keys() {
            if !is_header_name(k) {
                v.err("consumer", &name, "metadata", format!("'{k}' cannot be a header name (x-consumer-{k})"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::validate::tests::errors;
    use crate::{Format, load};

    #[test]
    fn policies_and_consumers_are_checked() {
        let yaml = "listeners:\n  - {name: web, address: '127.0.0.1:80', policies: [nope]}\n\
                    policies:\n  - {name: empty}\n\
                    \x20 - {name: p, cors: {allow_origins: ['*', 'ftp//x'], allow_credentials: true}, \
                    auth: {jwt: {jwks: '{}'}}, rate_limit: {requests: 0}, \
                    transform: {request_json: {set: [{path: a, value: admin}]}}}\n\
                    consumers:\n  - {name: a, api_keys: [{key: short}], basic_auth: {username: u, password_hash: hunter2}}\n";
        assert_eq!(
            errors(yaml),
            vec![
                "listener 'web': policies[0]: unknown policy 'nope'",
                "policy 'empty': : set at least one of ip_filter, cors, auth, rate_limit, transform",
                "policy 'p': cors.allow_origins[0]: '*' cannot be combined with allow_credentials (Fetch standard)",
                "policy 'p': cors.allow_origins[1]: 'ftp//x' is not an origin (scheme://host[:port], or scheme://*.suffix)",
                "policy 'p': auth.jwt.jwks: is not a JWKS document ({\"keys\": [...]})",
                "policy 'p': rate_limit.requests: must be at least 1",
                "policy 'p': transform.request_json.set[0].value: 'admin' is not JSON (strings need quotes)",
                "consumer 'a': api_keys[0]: an API key needs at least 8 characters",
                "consumer 'a': basic_auth.password_hash: must be a bcrypt ($2b$...) or argon2 ($argon2id$...) hash, never a password",
            ]
        );
    }

    #[test]
    fn keys_are_hashed_for_storage() {
        let mut config = load("consumers:\n  - {name: a, api_keys: [{key: 'k-123456789'}]}\n", Format::Yaml).unwrap();
        super::hash_api_keys(&mut config);
        let shown = crate::render(&config, Format::Yaml);
        assert!(!shown.contains("k-123456789"), "{shown}");
        assert!(shown.contains("sha256:"), "{shown}");
    }
}
