//! Placeholder until the JWT module lands (same API).
#![allow(dead_code, unused_variables)]

use vane_proto::config::JwtAuth;

#[derive(Debug, Default)]
pub(crate) struct JwksRegistry;

impl JwksRegistry {
    pub(crate) fn new() -> Self {
        JwksRegistry
    }
}

#[derive(Debug)]
pub(crate) struct Jwt;

impl Jwt {
    pub(crate) fn compile(spec: &JwtAuth, registry: &JwksRegistry) -> Result<Jwt, String> {
        Err("not built yet".into())
    }
    pub(crate) fn token<'a>(&self, headers: &'a http::HeaderMap) -> Option<&'a str> {
        None
    }
    pub(crate) fn verify(&self, token: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        Err("not built yet".into())
    }
    pub(crate) fn consumer(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
        None
    }
    pub(crate) fn claim_headers(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Vec<(http::HeaderName, http::HeaderValue)> {
        vec![]
    }
}
