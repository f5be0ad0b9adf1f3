//! Keys: JWKS documents and HMAC secrets parsed once, at compile time, into typed keys
//! that each verify only the algorithms of their kind (no algorithm confusion).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::AtomicUsize;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// Which algorithms a public key can verify, from its type and curve: the guard against
/// algorithm confusion, since a token's `alg` only chooses among keys that fit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    fn allows(self, alg: Algorithm) -> bool {
        match self {
            KeyKind::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            KeyKind::P256 => alg == Algorithm::ES256,
            KeyKind::P384 => alg == Algorithm::ES384,
            KeyKind::Ed25519 => alg == Algorithm::EdDSA,
        }
    }
}

/// One public key of a JWKS, checked and ready to verify.
pub(super) struct Key {
    pub(super) kid: Option<String>,
    /// The JWK's `alg`: when set, the only algorithm this key verifies.
    alg: Option<Algorithm>,
    kind: KeyKind,
    pub(super) key: DecodingKey,
}

impl Key {
    pub(super) fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.allows(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

// By hand: `DecodingKey` has no Debug, and key material has no place in logs anyway.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key").field("kid", &self.kid).field("alg", &self.alg).field("kind", &self.kind).finish()
    }
}

/// The usable keys of one JWKS document.
#[derive(Debug, Default)]
pub(super) struct KeySet {
    pub(super) keys: Vec<Key>,
    /// Set when the document is stored: tells the token cache that the keys changed.
    pub(super) generation: usize,
}

/// Numbers stored key sets (from 2: 0 and 1 mean "no fetched keys" to the token cache).
pub(super) static KEY_SET_GENERATION: AtomicUsize = AtomicUsize::new(2);

/// Parses a JWKS document. It fails only when the text is not a JSON object with a `keys`
/// array: keys that cannot be used (encryption keys, unsupported types or curves, broken
/// material) are skipped, with why, so that an issuer publishing one exotic key does not
/// lock out the tokens signed with its other keys.
pub(super) fn parse_jwks(text: &[u8]) -> Result<(KeySet, Vec<String>), String> {
    let doc: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
        return Err("not a JWKS: no 'keys' array".into());
    };
    let mut set = KeySet::default();
    let mut skipped = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        match parse_key(entry) {
            Ok(key) => set.keys.push(key),
            Err(why) => {
                let kid = entry.get("kid").and_then(Value::as_str).map(|k| format!(" (kid '{k}')")).unwrap_or_default();
                skipped.push(format!("key {i}{kid}: {why}"));
            }
        }
    }
    Ok((set, skipped))
}

/// One JWK as a verification key, or why it cannot be one.
pub(super) fn parse_key(entry: &Value) -> Result<Key, String> {
    // Looked at before the typed parse, whose errors on an unknown `alg` or `kty` are vague.
    if let Some(alg) = entry.get("alg").and_then(Value::as_str)
        && Algorithm::from_str(alg).is_err()
    {
        return Err(format!("algorithm '{alg}' not supported"));
    }
    if entry.get("kty").and_then(Value::as_str) == Some("oct") {
        return Err("symmetric key: HMAC secrets come from hmac_secrets only".into());
    }
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| format!("not a usable JWK: {e}"))?;
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Err("an encryption key (use: enc)".into());
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("key_ops does not include verify".into());
    }
    let alg = match jwk.common.key_algorithm {
        Some(a) => Some(Algorithm::from_str(&a.to_string()).map_err(|_| format!("algorithm '{a}' not supported"))?),
        None => None,
    };
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            // ring verifies RSA signatures of 2048 to 8192 bits only: say so now.
            let n = URL_SAFE_NO_PAD.decode(&p.n).map_err(|_| "modulus is not base64url")?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if !(2048..=8192).contains(&bits) {
                return Err(format!("RSA modulus of about {bits} bits (2048 to 8192 supported)"));
            }
            KeyKind::Rsa
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (kind, len) = match p.curve {
                EllipticCurve::P256 => (KeyKind::P256, 32),
                EllipticCurve::P384 => (KeyKind::P384, 48),
                ref other => return Err(format!("curve {other:?} not supported")),
            };
            for c in [&p.x, &p.y] {
                if URL_SAFE_NO_PAD.decode(c).map(|b| b.len()).ok() != Some(len) {
                    return Err("malformed curve point".into());
                }
            }
            kind
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 {
                return Err(format!("curve {:?} not supported", p.curve));
            }
            if URL_SAFE_NO_PAD.decode(&p.x).map(|b| b.len()).ok() != Some(32) {
                return Err("malformed Ed25519 key".into());
            }
            KeyKind::Ed25519
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric key: HMAC secrets come from hmac_secrets only".into());
        }
    };
    if let Some(a) = alg
        && !kind.allows(a)
    {
        return Err(format!("alg {a:?} does not fit a {kind:?} key"));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unusable key material: {e}"))?;
    Ok(Key { kid: jwk.common.key_id, alg, kind, key })
}
