//! Cookie session affinity. Each endpoint's cookie value is an HMAC-SHA256 of its address
//! under the cluster's secret: the same on every node, and not forgeable by a client that
//! wants a particular endpoint. A request whose cookie names an available endpoint goes
//! there; otherwise the balancer picks and a new cookie is set on the response.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use http::header::HeaderValue;
use sha2::Sha256;
use vane_proto::config;

use crate::support::duration_or;

#[derive(Debug)]
pub(crate) struct Sticky {
    cookie: Box<str>,
    /// `; Path=/; Max-Age=N; HttpOnly; SameSite=Lax`
    attributes: Box<str>,
    /// Cookie value per endpoint, in endpoint order.
    tokens: Box<[Box<str>]>,
}

impl Sticky {
    pub(crate) fn compile(st: Option<&config::StickySession>, addresses: &[String]) -> Option<Sticky> {
        let st = st?;
        let tokens = addresses
            .iter()
            .map(|a| {
                // Any key length is accepted by HMAC; the validator asks for 16+ characters.
                let mut mac = Hmac::<Sha256>::new_from_slice(st.secret.as_bytes()).ok()?;
                mac.update(a.as_bytes());
                Some(hex::encode(&mac.finalize().into_bytes()[..12]).into_boxed_str())
            })
            .collect::<Option<Box<[_]>>>()?;
        let mut attributes = format!("; Path={}", if st.path.is_empty() { "/" } else { &st.path });
        if st.ttl.is_some() {
            let ttl = duration_or(st.ttl.as_ref(), std::time::Duration::ZERO).as_secs();
            attributes.push_str(&format!("; Max-Age={ttl}"));
        }
        attributes.push_str("; HttpOnly; SameSite=Lax");
        Some(Sticky {
            cookie: if st.cookie.is_empty() { "vane_affinity".into() } else { st.cookie.as_str().into() },
            attributes: attributes.into(),
            tokens,
        })
    }

    /// The endpoint a request's cookie names, if it is a valid one.
    pub(crate) fn endpoint(&self, headers: &HeaderMap) -> Option<usize> {
        let value = headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| kv.trim().strip_prefix(&*self.cookie)?.strip_prefix('='))?;
        self.tokens.iter().position(|t| **t == *value)
    }

    /// `Set-Cookie` naming endpoint `index`.
    pub(crate) fn set_cookie(&self, index: usize) -> Option<HeaderValue> {
        let token = self.tokens.get(index)?;
        HeaderValue::from_str(&format!("{}={token}{}", self.cookie, self.attributes)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_name_endpoints_and_cannot_be_forged() {
        let st = config::StickySession { secret: "0123456789abcdef".into(), ..Default::default() };
        let addrs = vec!["10.0.0.1:80".to_owned(), "10.0.0.2:80".to_owned()];
        let s = Sticky::compile(Some(&st), &addrs).unwrap();
        let set = s.set_cookie(1).unwrap();
        let set = set.to_str().unwrap();
        assert!(set.starts_with("vane_affinity=") && set.ends_with("; Path=/; HttpOnly; SameSite=Lax"), "{set}");
        let value = set.split(';').next().unwrap();
        let mut h = HeaderMap::new();
        h.insert(http::header::COOKIE, format!("a=b; {value}").parse().unwrap());
        assert_eq!(s.endpoint(&h), Some(1));
        h.insert(http::header::COOKIE, "vane_affinity=10.0.0.1:80".parse().unwrap());
        assert_eq!(s.endpoint(&h), None);
        let other = Sticky::compile(Some(&config::StickySession { secret: "another-secret-key".into(), ..st }), &addrs)
            .unwrap();
        assert_ne!(other.set_cookie(1), s.set_cookie(1), "the secret matters");
    }
}
