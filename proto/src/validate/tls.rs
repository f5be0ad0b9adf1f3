//! The TLS part of the validator: certificates, HTTPS listeners, upstream TLS, SNI and
//! client-name route matches. Inline PEM is checked fully here (both planes); files are
//! only known to the node, which checks them when it compiles a snapshot.

use super::check::{Validator, display_name, host_pattern};
use crate::config::{ClientAuth, Config, DataSource, client_auth, data_source::Specifier, listener::Protocol};
use crate::tls;

pub(crate) fn check(config: &Config, v: &mut Validator) {
    let certificates = v.names("certificate", config.certificates.iter().map(|c| c.name.as_str()));
    for (i, c) in config.certificates.iter().enumerate() {
        let name = display_name(&c.name, i);
        let chain = inline(v, &name, "certificate_chain", c.certificate_chain.as_ref());
        let key = inline(v, &name, "private_key", c.private_key.as_ref());
        match (chain, key) {
            (Some(chain), Some(key)) => {
                if let Err((field, reason)) = tls::certified_key(chain, key) {
                    v.err("certificate", &name, field, reason);
                }
            }
            (Some(chain), None) => {
                if let Err(reason) = tls::parse_certificates(chain) {
                    v.err("certificate", &name, "certificate_chain", reason);
                }
            }
            _ => {}
        }
    }

    for (i, l) in config.listeners.iter().enumerate() {
        let name = display_name(&l.name, i);
        let https = l.protocol == Protocol::Https as i32;
        let tls = l.protocol == Protocol::Tls as i32;
        match (&l.tls, https || tls) {
            (None, true) => {
                let kind = if tls { "a TLS" } else { "an HTTPS" };
                v.err("listener", &name, "tls", format!("{kind} listener needs tls.certificates"));
            }
            (Some(_), false) => v.err("listener", &name, "tls", "only HTTPS and TLS listeners terminate TLS".into()),
            (Some(t), true) => {
                if t.certificates.is_empty() {
                    v.err("listener", &name, "tls.certificates", "at least one certificate is required".into());
                }
                for (j, c) in t.certificates.iter().enumerate() {
                    if !certificates.contains(c.as_str()) {
                        v.err(
                            "listener",
                            &name,
                            &format!("tls.certificates[{j}]"),
                            format!("unknown certificate '{c}'"),
                        );
                    }
                }
                if !t.default_certificate.is_empty() && !t.certificates.contains(&t.default_certificate) {
                    v.err(
                        "listener",
                        &name,
                        "tls.default_certificate",
                        format!("'{}' is not among tls.certificates", t.default_certificate),
                    );
                }
                if crate::config::TlsVersion::try_from(t.min_version).is_err() {
                    v.err("listener", &name, "tls.min_version", format!("unknown version {}", t.min_version));
                }
                if let Some(auth) = &t.client_auth {
                    client_auth_check(v, &name, auth);
                    if tls && !auth.forward_header.is_empty() {
                        v.err(
                            "listener",
                            &name,
                            "tls.client_auth.forward_header",
                            "a TLS listener forwards bytes, not headers (HTTPS listeners only)".into(),
                        );
                    }
                }
            }
            (None, false) => {}
        }
        if l.https_redirect_port != 0 {
            if https {
                v.err("listener", &name, "https_redirect_port", "only HTTP listeners redirect to HTTPS".into());
            }
            if l.https_redirect_port > u32::from(u16::MAX) {
                v.err("listener", &name, "https_redirect_port", "must be a port (1-65535)".into());
            }
        }
    }

    for (i, c) in config.clusters.iter().enumerate() {
        let Some(t) = &c.tls else { continue };
        let name = display_name(&c.name, i);
        if !t.sni.is_empty()
            && t.sni.parse::<std::net::IpAddr>().is_err()
            && (t.sni.starts_with("*.") || host_pattern(&t.sni).is_err())
        {
            v.err("cluster", &name, "tls.sni", format!("'{}' is not a host name or IP address", t.sni));
        }
        if t.ca.is_some() {
            ca_bundle(v, "cluster", &name, "tls.ca", t.ca.as_ref());
        }
        if c.health_check.as_ref().is_some_and(|h| h.grpc_service.is_some()) {
            v.err(
                "cluster",
                &name,
                "health_check.grpc_service",
                "gRPC health checks over TLS are not supported yet; use http_path or a TCP check".into(),
            );
        }
        if !t.client_certificate.is_empty() && !certificates.contains(t.client_certificate.as_str()) {
            v.err(
                "cluster",
                &name,
                "tls.client_certificate",
                format!("unknown certificate '{}'", t.client_certificate),
            );
        }
    }

    for (i, r) in config.routes.iter().enumerate() {
        let Some(m) = &r.r#match else { continue };
        let name = display_name(&r.name, i);
        for (j, s) in m.sni.iter().enumerate() {
            if let Err(reason) = host_pattern(s) {
                v.err("route", &name, &format!("match.sni[{j}]"), format!("'{s}' {reason}"));
            }
        }
        for (j, n) in m.client_names.iter().enumerate() {
            if n.is_empty() || n.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                v.err("route", &name, &format!("match.client_names[{j}]"), format!("'{n}' is not a certificate name"));
            }
        }
    }
}

fn client_auth_check(v: &mut Validator, name: &str, auth: &ClientAuth) {
    match client_auth::Mode::try_from(auth.mode) {
        Err(_) => v.err("listener", name, "tls.client_auth.mode", format!("unknown mode {}", auth.mode)),
        Ok(client_auth::Mode::None) => {}
        Ok(_) => ca_bundle(v, "listener", name, "tls.client_auth.ca", auth.ca.as_ref()),
    }
    let h = &auth.forward_header;
    if !h.is_empty() && http_header_name(h).is_err() {
        v.err("listener", name, "tls.client_auth.forward_header", format!("'{h}' is not a header name"));
    }
}

fn http_header_name(h: &str) -> Result<(), ()> {
    let ok = h.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok { Ok(()) } else { Err(()) }
}

/// A CA bundle: required; inline PEM must hold certificates.
fn ca_bundle(v: &mut Validator, kind: &'static str, name: &str, field: &str, source: Option<&DataSource>) {
    if let Some(pem) = inline_of(v, kind, name, field, source)
        && let Err(reason) = tls::parse_certificates(pem)
    {
        v.err(kind, name, field, reason);
    }
}

/// The inline text of a certificate's source (None for files, after checking the path).
fn inline<'a>(v: &mut Validator, name: &str, field: &str, source: Option<&'a DataSource>) -> Option<&'a str> {
    inline_of(v, "certificate", name, field, source)
}

fn inline_of<'a>(
    v: &mut Validator,
    kind: &'static str,
    name: &str,
    field: &str,
    source: Option<&'a DataSource>,
) -> Option<&'a str> {
    match source.and_then(|s| s.specifier.as_ref()) {
        None => {
            v.err(kind, name, field, "is required (inline_string or filename)".into());
            None
        }
        Some(Specifier::Filename(path)) => {
            if !path.starts_with('/') {
                v.err(kind, name, &format!("{field}.filename"), format!("'{path}' must be an absolute path"));
            }
            None
        }
        Some(Specifier::InlineString(pem)) => Some(pem.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use crate::validate::tests::errors;

    const CERT: &str = "certificates:\n  - {name: site, certificate_chain: {filename: /etc/vane/site.pem}, \
                        private_key: {filename: /etc/vane/site.key}}\n";

    #[test]
    fn https_listeners_need_known_certificates_and_a_ca_for_client_auth() {
        let ok = format!(
            "{CERT}listeners:\n  - {{name: web, address: '127.0.0.1:8443', protocol: HTTPS, \
             tls: {{certificates: [site], client_auth: {{mode: OPTIONAL, ca: {{filename: /etc/vane/ca.pem}}}}}}}}\n"
        );
        assert!(errors(&ok).is_empty(), "{:?}", errors(&ok));
        let bad = format!(
            "{CERT}listeners:\n  - {{name: web, address: '127.0.0.1:8443', protocol: HTTPS, \
             tls: {{certificates: [site, nope], default_certificate: other, client_auth: {{mode: REQUIRE}}}}}}\n\
             \x20 - {{name: plain, address: '127.0.0.1:8080', tls: {{certificates: [site]}}, https_redirect_port: 70000}}\n"
        );
        assert_eq!(
            errors(&bad),
            vec![
                "listener 'web': tls.certificates[1]: unknown certificate 'nope'",
                "listener 'web': tls.default_certificate: 'other' is not among tls.certificates",
                "listener 'web': tls.client_auth.ca: is required (inline_string or filename)",
                "listener 'plain': tls: only HTTPS and TLS listeners terminate TLS",
                "listener 'plain': https_redirect_port: must be a port (1-65535)",
            ]
        );
    }

    #[test]
    fn certificates_clusters_and_routes_are_checked() {
        let bad = "certificates:\n  - {name: inline, certificate_chain: {inline_string: nonsense}, \
                   private_key: {filename: relative.key}}\n  - {name: empty}\n\
                   clusters:\n  - {name: c, endpoints: [{address: '127.0.0.1:1'}], \
                   tls: {sni: '*.wild', client_certificate: missing, ca: {inline_string: nope}}}\n\
                   routes:\n  - {name: r, match: {prefix: /, sni: [Bad.Host], client_names: ['']}, \
                   forward: {clusters: [{name: c}]}}\n";
        assert_eq!(
            errors(bad),
            vec![
                "certificate 'inline': private_key.filename: 'relative.key' must be an absolute path",
                "certificate 'inline': certificate_chain: holds no PEM certificate",
                "certificate 'empty': certificate_chain: is required (inline_string or filename)",
                "certificate 'empty': private_key: is required (inline_string or filename)",
                "cluster 'c': tls.sni: '*.wild' is not a host name or IP address",
                "cluster 'c': tls.ca: holds no PEM certificate",
                "cluster 'c': tls.client_certificate: unknown certificate 'missing'",
                "route 'r': match.sni[0]: 'Bad.Host' must be lower case",
                "route 'r': match.client_names[0]: '' is not a certificate name",
            ]
        );
    }
}
