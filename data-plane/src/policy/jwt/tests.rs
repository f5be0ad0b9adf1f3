//! Verification end to end: real tokens of every algorithm, JWKS served over HTTP.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{EncodingKey, Header, encode};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, EcdsaSigningAlgorithm,
    Ed25519KeyPair, KeyPair,
};
use serde_json::json;
use tokio::net::TcpListener;
use vane_proto::config::ClaimToHeader;

use super::*;

/// A fixed 2048-bit RSA test key (`openssl genpkey -algorithm RSA`), used for nothing else.
const RSA_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCZgvJGHZkQQpGq
bWi+E2ELuKiHgJRFckfabL7uUU5GQfXPxy75v6ISnkMmg/2CokOTXjN0JPYUsLHg
A32TgfkrJEgoJNjuHBRvFO3zbfNTcbGb5JL6aozzGVd+tTvn8D5EAGYZ2snS/u+d
2mw5Vpb1UWFoX6DRrMGhArOKsGWBPXQXI0Yz1aKsfOoEN/fFT9D+X92brunULBsY
lpwnaNygMwYRT+loA10/W1OauPgIxmhpT3EyOdrUFj/NPCsZy8MswliDKvkhgnDX
J2WyLnIAUS83wx7saMxo9V2W3I1boHNXx/MxJWtEGqJ2lI/GyVOQ69zGH67Ohp00
YUyyixEdAgMBAAECggEAOSekbY+ajA/E7UfD/jT35mXPtXedfMfCUeQ4KEH0Wzs2
urAF4O3E+ZqcFMyCyC8C6uzhSmZyipyI9YdHK3LyYuokxXGGpQymXP9VYtN2i4Ri
pNCzGnIuXVp7lY0Dq2TqweXGHe00RI8vhr2qmqSPGvI8SqCEH1zrULfRQhtQB5BW
puCQax+8SJzn+hgha3nt77D98wK4JWNUYoOc6ljDJHE/RWHSmaJ1HEPRA1Wn4jF9
uA/pL3HfQJOePgzw5qW2IX9MODsZHOt6nuA0a5sAEXKYVayAVK7ZoYL0sOmZ+YRs
lT8ARijUGroEHENNcp23FnuuatdeNTGCGbq+FcOA3wKBgQDMe9kwj83/XQFKhCD9
bCOrbjRMig/2o5kf9UtW+rE07xRyHGkFvef2+uM9KA+aWRzU5hMjeYmmRwRXlq2U
inFIlPnvxSiWGRZ+Z6MLAXEOOM41jL/ezleQkRoJisXLIs9fwqWa6ZiXHkc5gZkb
cCUepjjibLICJvFHucucl/g/fwKBgQDAL6YPqe9bKqp6P/2CavkXIB7q5yznncwN
aR2V2EzbJU3wo1LWY0hv8uiDO8ye40LoDaT8byLsaVOTab+vG/9LJyq5Omed1+L5
QbUS93WNUkLbs4M6D9a9Z797RCMbxDLSAMrvGCntTlZ7rSBTLj3qtSxomu39xQqc
bPvozjb9YwKBgQCA/G6YT13mA0jZNFeLBDfL34xl64D+V1wz6ItJpoE5nsYK5Rjq
Ykx8Yu4MmcSd3DBvq2HPMs89b/axOX7tABdNbYvrTza218R0n/Mc8h/alMKezNYL
OaXKr3z5H+x8osyk3yePfGKgkJzlDXcC8862cqvXSDFRYjc4w15IvSP/CQKBgQCg
dmhBhdJqnRoPzmPdQ3HMpC4MVY6BqJfZzp08IogxJVmJBOTCSc0OY5NNF13Gf9u6
IsJRXn2bRGnamB3KmCa02fPrCd+/w6QoF3uXZXQJ1dgq1hxIGzdhl0EiK4bgxRTl
kHHf5Z4EHDdLNgbaTK63zCNTB6CUFLPCXaCLBbqWHwKBgB7DAMl7GvBYcjC3s3Hk
wnkVmKErteuL96rSal4rEAaHr+6zqaeXdxsP+8bojjygDA8KUrDRRGgladmdWLzF
MmuZy8FsrS/I0ZNpT/8a3h3mqi0vM/i//WKzIg52Y7FUmn+eEF2S2GO3ImGPjhSj
QAkQpl5eWE2ik2Rjkc4nNr9M
-----END PRIVATE KEY-----
";
/// Its public modulus and exponent, base64url.
const RSA_N: &str = "mYLyRh2ZEEKRqm1ovhNhC7ioh4CURXJH2my-7lFORkH1z8cu-b-iEp5DJoP9gqJDk14zdCT2FLCx4AN9k4H5KyRIKCTY7hwUbxTt823zU3Gxm-SS-mqM8xlXfrU75_A-RABmGdrJ0v7vndpsOVaW9VFhaF-g0azBoQKzirBlgT10FyNGM9WirHzqBDf3xU_Q_l_dm67p1CwbGJacJ2jcoDMGEU_paANdP1tTmrj4CMZoaU9xMjna1BY_zTwrGcvDLMJYgyr5IYJw1ydlsi5yAFEvN8Me7GjMaPVdltyNW6BzV8fzMSVrRBqidpSPxslTkOvcxh-uzoadNGFMsosRHQ";
const RSA_E: &str = "AQAB";
const SECRET: &str = "a test secret that is long enough";
const ISSUER: &str = "https://issuer.test";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// A signing key and its public JWK.
struct Signer {
    key: EncodingKey,
    jwk: Value,
}

fn rsa(kid: &str) -> Signer {
    Signer {
        key: EncodingKey::from_rsa_pem(RSA_PEM.as_bytes()).unwrap(),
        jwk: json!({"kty": "RSA", "kid": kid, "n": RSA_N, "e": RSA_E}),
    }
}

fn ec(alg: &'static EcdsaSigningAlgorithm, crv: &str, kid: &str) -> Signer {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
    let point = pair.public_key().as_ref();
    let half = (point.len() - 1) / 2;
    Signer {
        key: EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({"kty": "EC", "crv": crv, "kid": kid, "x": b64(&point[1..=half]), "y": b64(&point[half + 1..])}),
    }
}

fn p256(kid: &str) -> Signer {
    ec(&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", kid)
}

fn ed25519(kid: &str) -> Signer {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    Signer {
        key: EncodingKey::from_ed_der(pkcs8.as_ref()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(pair.public_key().as_ref())}),
    }
}

fn jwks(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

fn claims() -> Value {
    json!({"sub": "alice", "iss": ISSUER, "aud": "api", "exp": now() + 600, "scope": "read"})
}

fn spec() -> JwtAuth {
    JwtAuth {
        issuer: ISSUER.into(),
        audiences: vec!["api".into(), "other".into()],
        hmac_secrets: vec!["another secret".into(), SECRET.into()],
        ..Default::default()
    }
}

fn compile(spec: &JwtAuth) -> Jwt {
    Jwt::compile(spec, &JwksRegistry::new()).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(Algorithm::HS256, None, &EncodingKey::from_secret(SECRET.as_bytes()), claims)
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    if let Some(map) = claims.as_object_mut() {
        map.remove(key);
    }
    claims
}

#[test]
fn valid_token_gives_its_claims() {
    let jwt = compile(&spec());
    let claims = jwt.verify(&hs256(&claims())).unwrap();
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["scope"], "read");
}

#[test]
fn time_claims_are_checked_with_leeway() {
    let jwt = compile(&spec());
    let t = now();
    assert_eq!(jwt.verify(&hs256(&with(claims(), "exp", json!(t - 120)))).unwrap_err(), "expired");
    assert!(jwt.verify(&hs256(&with(claims(), "exp", json!(t - 30)))).is_ok(), "within the default 60s leeway");
    assert_eq!(jwt.verify(&hs256(&with(claims(), "nbf", json!(t + 600)))).unwrap_err(), "not yet valid");
    assert!(jwt.verify(&hs256(&with(claims(), "nbf", json!(t + 30)))).is_ok());
    assert!(jwt.verify(&hs256(&with(claims(), "nbf", json!(t - 30)))).is_ok());
    assert_eq!(jwt.verify(&hs256(&with(claims(), "nbf", json!("soon")))).unwrap_err(), "invalid claim 'nbf'");

    let strict = compile(&JwtAuth { leeway: Some(pbjson_types::Duration { seconds: 0, nanos: 0 }), ..spec() });
    assert_eq!(strict.verify(&hs256(&with(claims(), "exp", json!(t - 30)))).unwrap_err(), "expired");
}

#[test]
fn exp_is_required() {
    let jwt = compile(&spec());
    let reason = jwt.verify(&hs256(&without(claims(), "exp"))).unwrap_err();
    assert!(reason.contains("'exp'") && reason.contains("must expire"), "{reason}");
    let reason = jwt.verify(&hs256(&with(claims(), "exp", json!("tomorrow")))).unwrap_err();
    assert!(reason.contains("'exp'"), "{reason}");
}

#[test]
fn wrong_signature_is_refused() {
    let jwt = compile(&spec());
    let forged = sign(Algorithm::HS256, None, &EncodingKey::from_secret(b"not the secret"), &claims());
    assert_eq!(jwt.verify(&forged).unwrap_err(), "bad signature");
    // A valid signature over other claims does not carry over.
    let (good, other) = (hs256(&claims()), hs256(&with(claims(), "sub", json!("mallory"))));
    let good: Vec<&str> = good.split('.').collect();
    let other: Vec<&str> = other.split('.').collect();
    let spliced = format!("{}.{}.{}", good[0], other[1], good[2]);
    assert_eq!(jwt.verify(&spliced).unwrap_err(), "bad signature");
    // Claim problems of an unsigned token are not told.
    let forged = sign(Algorithm::HS256, None, &EncodingKey::from_secret(b"x"), &with(claims(), "exp", json!(1)));
    assert_eq!(jwt.verify(&forged).unwrap_err(), "bad signature");
}

#[test]
fn issuer_and_audience_are_checked() {
    let jwt = compile(&spec());
    assert_eq!(
        jwt.verify(&hs256(&with(claims(), "iss", json!("https://evil.test")))).unwrap_err(),
        "issuer not accepted"
    );
    assert_eq!(jwt.verify(&hs256(&without(claims(), "iss"))).unwrap_err(), "missing claim 'iss'");
    assert_eq!(jwt.verify(&hs256(&with(claims(), "iss", json!(7)))).unwrap_err(), "missing claim 'iss'");
    assert_eq!(jwt.verify(&hs256(&with(claims(), "aud", json!("elsewhere")))).unwrap_err(), "audience not accepted");
    assert_eq!(jwt.verify(&hs256(&with(claims(), "aud", json!(["a", "b"])))).unwrap_err(), "audience not accepted");
    assert_eq!(jwt.verify(&hs256(&without(claims(), "aud"))).unwrap_err(), "missing claim 'aud'");
    assert!(jwt.verify(&hs256(&with(claims(), "aud", json!(["elsewhere", "other"])))).is_ok());

    // Neither configured: neither checked, whatever the token says.
    let open = compile(&JwtAuth { issuer: String::new(), audiences: vec![], ..spec() });
    assert!(open.verify(&hs256(&with(claims(), "aud", json!("elsewhere")))).is_ok());
    assert!(open.verify(&hs256(&without(without(claims(), "aud"), "iss"))).is_ok());
}

#[test]
fn required_claims_must_be_present() {
    let jwt = compile(&JwtAuth { required_claims: vec!["scope".into(), "tenant".into()], ..spec() });
    assert_eq!(jwt.verify(&hs256(&claims())).unwrap_err(), "missing claim 'tenant'");
    assert_eq!(jwt.verify(&hs256(&with(claims(), "tenant", Value::Null))).unwrap_err(), "missing claim 'tenant'");
    assert!(jwt.verify(&hs256(&with(claims(), "tenant", json!("acme")))).is_ok());
    assert!(jwt.verify(&hs256(&with(claims(), "tenant", json!({"id": 1})))).is_ok());
}

#[test]
fn every_algorithm_is_accepted_with_a_fitting_key() {
    let (rsa, p256, p384, ed) =
        (rsa("rsa"), p256("p256"), ec(&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", "p384"), ed25519("ed"));
    let jwt = compile(&JwtAuth { jwks: jwks(&[&rsa, &p256, &p384, &ed]), ..spec() });
    let secret = EncodingKey::from_secret(SECRET.as_bytes());
    let cases = [
        (Algorithm::HS256, &secret),
        (Algorithm::HS384, &secret),
        (Algorithm::HS512, &secret),
        (Algorithm::RS256, &rsa.key),
        (Algorithm::RS384, &rsa.key),
        (Algorithm::RS512, &rsa.key),
        (Algorithm::PS256, &rsa.key),
        (Algorithm::PS384, &rsa.key),
        (Algorithm::PS512, &rsa.key),
        (Algorithm::ES256, &p256.key),
        (Algorithm::ES384, &p384.key),
        (Algorithm::EdDSA, &ed.key),
    ];
    for (alg, key) in cases {
        // With and without a kid: without one, every key of a fitting type is tried.
        let kid = match alg {
            Algorithm::ES256 => Some("p256"),
            Algorithm::ES384 => Some("p384"),
            Algorithm::EdDSA => Some("ed"),
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Some("ignored for hmac"),
            _ => Some("rsa"),
        };
        for kid in [kid, None] {
            let token = sign(alg, kid, key, &claims());
            assert_eq!(jwt.verify(&token).map(|c| c["sub"].clone()), Ok(json!("alice")), "{alg:?} kid {kid:?}");
        }
    }
}

#[test]
fn kid_selects_the_key() {
    let (a, b) = (p256("a"), p256("b"));
    let jwt = compile(&JwtAuth { jwks: jwks(&[&a, &b]), ..spec() });
    assert!(jwt.verify(&sign(Algorithm::ES256, Some("b"), &b.key, &claims())).is_ok());
    assert!(jwt.verify(&sign(Algorithm::ES256, None, &b.key, &claims())).is_ok());
    // Key b's signature under kid a is checked against a only.
    assert_eq!(jwt.verify(&sign(Algorithm::ES256, Some("a"), &b.key, &claims())).unwrap_err(), "bad signature");
    assert_eq!(jwt.verify(&sign(Algorithm::ES256, Some("c"), &b.key, &claims())).unwrap_err(), "unknown key");
    let stranger = p256("x");
    assert_eq!(jwt.verify(&sign(Algorithm::ES256, None, &stranger.key, &claims())).unwrap_err(), "bad signature");
}

#[test]
fn alg_none_and_algorithm_confusion_are_refused() {
    let rsa = rsa("rsa");
    let jwt = compile(&JwtAuth { jwks: jwks(&[&rsa]), hmac_secrets: vec![], ..spec() });
    let payload = b64(claims().to_string().as_bytes());
    for alg in ["none", "None", "NONE"] {
        let header = b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
        assert_eq!(jwt.verify(&format!("{header}.{payload}.")).unwrap_err(), "alg none not accepted");
    }
    let header = b64(br#"{"alg":"ES512"}"#);
    assert_eq!(jwt.verify(&format!("{header}.{payload}.c2ln")).unwrap_err(), "algorithm not supported");
    // HS256 "signed" with the public key's material, as the classic confusion attack does.
    for material in [RSA_N.as_bytes(), rsa.jwk.to_string().as_bytes()] {
        let token = sign(Algorithm::HS256, Some("rsa"), &EncodingKey::from_secret(material), &claims());
        assert_eq!(jwt.verify(&token).unwrap_err(), "algorithm not accepted");
    }
    // An EC token cannot be checked with the RSA key.
    let ec = p256("rsa");
    assert_eq!(
        jwt.verify(&sign(Algorithm::ES256, Some("rsa"), &ec.key, &claims())).unwrap_err(),
        "algorithm not accepted for this key"
    );
    assert_eq!(jwt.verify(&sign(Algorithm::ES256, None, &ec.key, &claims())).unwrap_err(), "no key for this algorithm");
}

#[test]
fn a_jwk_alg_restricts_the_key() {
    let mut rsa = rsa("rsa");
    rsa.jwk["alg"] = json!("RS256");
    let jwt = compile(&JwtAuth { jwks: jwks(&[&rsa]), ..spec() });
    assert!(jwt.verify(&sign(Algorithm::RS256, Some("rsa"), &rsa.key, &claims())).is_ok());
    assert_eq!(
        jwt.verify(&sign(Algorithm::PS256, Some("rsa"), &rsa.key, &claims())).unwrap_err(),
        "algorithm not accepted for this key"
    );
    assert_eq!(
        jwt.verify(&sign(Algorithm::RS512, None, &rsa.key, &claims())).unwrap_err(),
        "no key for this algorithm"
    );
}

#[test]
fn unusable_jwks_keys_are_skipped() {
    let good = p256("good");
    let doc = json!({"keys": [
        {"kty": "EC", "crv": "P-521", "kid": "p521", "x": "AA", "y": "AA"},
        {"kty": "EC", "crv": "P-256", "kid": "es512", "alg": "ES512", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N, "e": RSA_E},
        {"kty": "RSA", "kid": "oaep", "alg": "RSA-OAEP", "n": RSA_N, "e": RSA_E},
        {"kty": "RSA", "kid": "small", "n": b64(&[0xc5; 128]), "e": RSA_E},
        {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},
        {"kty": "EC", "crv": "P-256", "kid": "short", "x": "AAAA", "y": "AAAA"},
        {"kty": "RSA", "kid": "sign-only", "key_ops": ["sign"], "n": RSA_N, "e": RSA_E},
        {"kty": "RSA", "kid": "mismatch", "alg": "ES256", "n": RSA_N, "e": RSA_E},
        {"kty": "XYZ"},
        "not even an object",
        good.jwk,
    ]});
    let (set, skipped) = parse_jwks(doc.to_string().as_bytes()).unwrap();
    assert_eq!(set.keys.len(), 1, "{skipped:?}");
    assert_eq!(skipped.len(), 11, "{skipped:?}");
    let jwt = compile(&JwtAuth { jwks: doc.to_string(), ..spec() });
    assert!(jwt.verify(&sign(Algorithm::ES256, Some("good"), &good.key, &claims())).is_ok());
    assert!(parse_jwks(b"{\"keys\": 5}").is_err());
    assert!(parse_jwks(b"<html>").is_err());
}

#[test]
fn compile_errors_name_the_field() {
    let registry = JwksRegistry::new();
    let err = |spec: JwtAuth| Jwt::compile(&spec, &registry).unwrap_err();
    assert!(err(JwtAuth { jwks: "{".into(), ..spec() }).starts_with("jwks: not JSON"));
    assert!(
        err(JwtAuth { jwks: r#"{"keys":[{"kty":"oct","k":"AA"}]}"#.into(), ..spec() })
            .starts_with("jwks: no usable key")
    );
    assert!(err(JwtAuth::default()).starts_with("no keys"));
    assert!(err(JwtAuth { jwks_uri: "ftp://x/jwks".into(), ..spec() }).starts_with("jwks_uri:"));
    assert!(err(JwtAuth { jwks_uri: "/jwks.json".into(), ..spec() }).starts_with("jwks_uri:"));
    assert!(err(JwtAuth { hmac_secrets: vec![String::new()], ..spec() }).starts_with("hmac_secrets[0]"));
    assert!(err(JwtAuth { required_claims: vec![String::new()], ..spec() }).starts_with("required_claims[0]"));
    let bad_header = vec![ClaimToHeader { claim: "sub".into(), header: "x user".into() }];
    assert!(err(JwtAuth { claims_to_headers: bad_header, ..spec() }).starts_with("claims_to_headers[0].header"));
    let negative = Some(pbjson_types::Duration { seconds: -1, nanos: 0 });
    assert!(err(JwtAuth { leeway: negative, ..spec() }).starts_with("leeway"));
    assert!(err(JwtAuth { jwks_refresh: negative, ..spec() }).starts_with("jwks_refresh"));
    let long = Some(pbjson_types::Duration { seconds: i64::MAX, nanos: 0 });
    assert!(err(JwtAuth { leeway: long, ..spec() }).starts_with("leeway"));
    // Outside a runtime, a jwks_uri is an error rather than a panic.
    assert!(err(JwtAuth { jwks_uri: "http://127.0.0.1:9/jwks".into(), ..spec() }).contains("runtime"));
}

#[test]
fn tokens_come_from_bearer_then_cookie() {
    let jwt = compile(&JwtAuth { cookie: "session".into(), ..spec() });
    let headers = |pairs: &[(&str, &str)]| {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        map
    };
    assert_eq!(jwt.token(&headers(&[("authorization", "Bearer abc.def.ghi")])), Some("abc.def.ghi"));
    assert_eq!(jwt.token(&headers(&[("authorization", "bEaReR   abc ")])), Some("abc"));
    assert_eq!(jwt.token(&headers(&[("authorization", "Bearer")])), None);
    assert_eq!(jwt.token(&headers(&[("authorization", "Basic dXNlcjpwdw==")])), None);
    let both = headers(&[("authorization", "Basic x"), ("authorization", "Bearer t1"), ("cookie", "session=t2")]);
    assert_eq!(jwt.token(&both), Some("t1"));
    let cookies = headers(&[("cookie", "a=1; sessionx=no"), ("cookie", "b=2; session=\"t2\"; c=3")]);
    assert_eq!(jwt.token(&cookies), Some("t2"));
    assert_eq!(jwt.token(&headers(&[("cookie", "session=")])), None);
    assert_eq!(compile(&spec()).token(&headers(&[("cookie", "session=t2")])), None);
}

#[test]
fn claims_become_headers_and_the_consumer() {
    let jwt = compile(&JwtAuth {
        claims_to_headers: ["sub", "roles", "org", "missing", "nothing", "bad", "name"]
            .iter()
            .map(|c| ClaimToHeader { claim: (*c).into(), header: format!("X-Claim-{c}") })
            .collect(),
        consumer_claim: "client_id".into(),
        ..spec()
    });
    let token = hs256(
        &claims()
            .as_object()
            .cloned()
            .map(|mut m| {
                m.insert("client_id".into(), json!("app-7"));
                m.insert("roles".into(), json!(["admin", "dev"]));
                m.insert("org".into(), json!({"id": 42}));
                m.insert("nothing".into(), Value::Null);
                m.insert("bad".into(), json!("line\r\nx-injected: 1"));
                m.insert("name".into(), json!("Zoë"));
                Value::Object(m)
            })
            .unwrap(),
    );
    let claims = jwt.verify(&token).unwrap();
    let headers: Vec<(String, Vec<u8>)> =
        jwt.claim_headers(&claims).into_iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect();
    assert_eq!(
        headers,
        vec![
            ("x-claim-sub".to_owned(), b"alice".to_vec()),
            ("x-claim-roles".to_owned(), br#"["admin","dev"]"#.to_vec()),
            ("x-claim-org".to_owned(), br#"{"id":42}"#.to_vec()),
            ("x-claim-name".to_owned(), "Zoë".as_bytes().to_vec()),
        ]
    );
    assert_eq!(jwt.header_names().count(), 7);
    assert_eq!(jwt.consumer(&claims).as_deref(), Some("app-7"));
    assert_eq!(compile(&spec()).consumer(&claims).as_deref(), Some("alice"));
    let numeric = with(Value::Object((*claims).clone()), "client_id", json!(7));
    assert_eq!(jwt.consumer(numeric.as_object().unwrap()), None);
}

#[test]
fn garbage_never_panics() {
    let jwt = compile(&JwtAuth { jwks: jwks(&[&p256("a")]), ..spec() });
    let long = "a".repeat(MAX_TOKEN_LEN + 1);
    let inputs = [
        "",
        ".",
        "..",
        "...",
        "a.b.c",
        "a.b",
        "e30.e30.",
        "eyJhbGciOiJIUzI1NiJ9.!!!.sig",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
        "eyJhbGciOiJFUzI1NiJ9.e30.AAAA",
        "eyJhbGciOiJSUzI1NiJ9.e30.AAAA",
        "eyJhbGci.e30.AAAA",
        "\u{0}\u{1}.é.ü",
        &long,
    ];
    for input in inputs {
        assert!(jwt.verify(input).is_err(), "{input}");
    }
    assert_eq!(jwt.verify(&long).unwrap_err(), "token too large");
    // A token whose claims are not an object, correctly signed.
    let token = sign(Algorithm::HS256, None, &EncodingKey::from_secret(SECRET.as_bytes()), &json!([1, 2]));
    assert_eq!(jwt.verify(&token).unwrap_err(), "malformed token");
}

/// A local JWKS server whose document and status can be changed, counting requests.
struct JwksServer {
    addr: SocketAddr,
    doc: Arc<Mutex<(u16, String)>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(status: u16, doc: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let doc = Arc::new(Mutex::new((status, doc)));
        let hits = Arc::new(AtomicUsize::new(0));
        let (d, h) = (doc.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (d, h) = (d.clone(), h.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = d.lock().unwrap().clone();
                        async move {
                            http::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        JwksServer { addr, doc, hits }
    }

    fn uri(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn serve(&self, status: u16, doc: String) {
        *self.doc.lock().unwrap() = (status, doc);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Polls `verify` until it accepts `token` or the deadline passes: the interval is a
/// poll period, not a synchronisation.
async fn until_accepted(jwt: &Jwt, token: &str, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        match jwt.verify(token) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn hour() -> Option<pbjson_types::Duration> {
    Some(pbjson_types::Duration { seconds: 3600, nanos: 0 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_is_picked_up_by_an_unknown_kid() {
    let (a, b) = (p256("key-a"), ed25519("key-b"));
    let server = JwksServer::start(200, jwks(&[&a])).await;
    let jwt = compile(&JwtAuth { jwks_uri: server.uri(), jwks_refresh: hour(), hmac_secrets: vec![], ..spec() });
    let token_a = sign(Algorithm::ES256, Some("key-a"), &a.key, &claims());
    until_accepted(&jwt, &token_a, Duration::from_secs(10)).await.unwrap();
    assert_eq!(server.hits(), 1);

    // The issuer rotates to key B. With an hourly refresh, only the unknown kid can
    // make the node fetch again.
    server.serve(200, jwks(&[&b]));
    let token_b = sign(Algorithm::EdDSA, Some("key-b"), &b.key, &claims());
    assert_eq!(jwt.verify(&token_b).unwrap_err(), "unknown key");
    until_accepted(&jwt, &token_b, Duration::from_secs(10)).await.unwrap();
    assert_eq!(server.hits(), 2);

    // Key A is gone now; asking again within 10s does not refetch.
    assert_eq!(jwt.verify(&token_a).unwrap_err(), "unknown key");
    let made_up = sign(Algorithm::EdDSA, Some("key-z"), &b.key, &claims());
    for _ in 0..100 {
        assert_eq!(jwt.verify(&made_up).unwrap_err(), "unknown key");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.hits(), 2, "early refreshes are rate limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_never_waits_for_a_dead_jwks_server() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let a = p256("a");
    let jwt = compile(&JwtAuth { jwks_uri: format!("http://{addr}/jwks"), jwks: jwks(&[&p256("inline")]), ..spec() });
    // Measured while the first fetch hangs on the server.
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the fetcher never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let token = sign(Algorithm::ES256, Some("a"), &a.key, &claims());
    let started = Instant::now();
    for _ in 0..1000 {
        assert_eq!(jwt.verify(&token).unwrap_err(), "keys not yet fetched");
    }
    // Inline keys and secrets work meanwhile.
    assert!(jwt.verify(&hs256(&claims())).is_ok());
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_urls_are_fetched_over_tls() {
    // A server that records the first byte a client sends: 0x16 opens a TLS handshake.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut first = [0u8; 1];
        let _ = tokio::io::AsyncReadExt::read_exact(&mut stream, &mut first).await;
        let _ = tx.send(first[0]);
    });
    let jwt = compile(&JwtAuth { jwks_uri: format!("https://localhost:{}/jwks", addr.port()), ..spec() });
    let first = tokio::time::timeout(Duration::from_secs(10), rx).await.unwrap().unwrap();
    assert_eq!(first, 0x16);
    // The handshake fails (no certificate): still no keys, and no waiting.
    let a = p256("a");
    assert_eq!(jwt.verify(&sign(Algorithm::ES256, Some("a"), &a.key, &claims())).unwrap_err(), "keys not yet fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetchers_are_shared_and_end_when_unused() {
    let a = p256("a");
    let server = JwksServer::start(200, jwks(&[&a])).await;
    let registry = JwksRegistry::new();
    let spec = JwtAuth { jwks_uri: server.uri(), jwks_refresh: hour(), ..spec() };
    let first = Jwt::compile(&spec, &registry).unwrap();
    let token = sign(Algorithm::ES256, Some("a"), &a.key, &claims());
    until_accepted(&first, &token, Duration::from_secs(10)).await.unwrap();

    // A new snapshot with the same URL: same fetcher, keys there at once, no refetch.
    let second = Jwt::compile(&spec, &registry).unwrap();
    assert!(Arc::ptr_eq(first.remote.as_ref().unwrap(), second.remote.as_ref().unwrap()));
    drop(first);
    assert!(second.verify(&token).is_ok());
    assert_eq!(server.hits(), 1);
    assert_eq!(registry.live(), 1);

    // The last user gone, the task ends (it held the only other reference to `wake`).
    let wake = Arc::downgrade(&second.remote.as_ref().unwrap().wake);
    drop(second);
    assert_eq!(registry.live(), 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while wake.upgrade().is_some() {
        assert!(Instant::now() < deadline, "fetch task still running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fetches_are_retried_and_keep_the_keys_held() {
    let a = p256("a");
    let server = JwksServer::start(503, "down".into()).await;
    let spec = JwtAuth {
        jwks_uri: server.uri(),
        jwks_refresh: Some(pbjson_types::Duration { seconds: 1, nanos: 0 }),
        ..spec()
    };
    let jwt = compile(&spec);
    let token = sign(Algorithm::ES256, Some("a"), &a.key, &claims());
    assert_eq!(jwt.verify(&token).unwrap_err(), "keys not yet fetched");
    // The failure is retried after the backoff, and the keys arrive.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.hits() < 1 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.serve(200, jwks(&[&a]));
    until_accepted(&jwt, &token, Duration::from_secs(10)).await.unwrap();

    // A broken document or a failing server afterwards keeps the keys held.
    server.serve(200, "not json".into());
    let seen = server.hits();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.hits() < seen + 2 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(jwt.verify(&token).is_ok());
}
