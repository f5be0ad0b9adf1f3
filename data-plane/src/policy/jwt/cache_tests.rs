//! The verified-token cache: hits, expiry, and keys changing under it.

use super::*;

fn hs256_token(secret: &[u8], exp: u64) -> String {
    let claims = serde_json::json!({ "sub": "cached", "exp": exp });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

#[test]
fn repeats_are_answered_from_the_cache_until_expiry() {
    let secret = "cache-test-secret-0123456789";
    let spec = JwtAuth { hmac_secrets: vec![secret.into()], leeway: Some(Default::default()), ..Default::default() };
    let jwt = Jwt::compile(&spec, &JwksRegistry::new()).unwrap();
    let now = unix_now();
    let token = hs256_token(secret.as_bytes(), now + 100);
    let first = jwt.verify_at(&token, now).unwrap();
    let again = jwt.verify_at(&token, now + 50).unwrap();
    assert!(Arc::ptr_eq(&first, &again), "a repeat is a cache hit");
    // Past `exp` in the cache's eyes: checked again, not answered from the cache.
    let later = jwt.verify_at(&token, now + 101).unwrap();
    assert!(!Arc::ptr_eq(&first, &later));
    // A token that fails is never cached, and a different token is checked on its own.
    assert!(jwt.verify(&hs256_token(b"wrong-secret-0123456789", now + 100)).is_err());
    assert!(jwt.verify(&format!("{token}x")).is_err());
}
