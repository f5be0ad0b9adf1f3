//! Bearer tokens for the admin API and the discovery stream.
//!
//! The token file (`--admin-token-file`) holds one token per line, hashed:
//! `NAME ROLE SHA256HEX` (`#` starts a comment). Roles: `read` (reads only), `write`
//! (reads and changes), `node` (the discovery stream only). Tokens are random and long,
//! so a plain SHA-256 is enough at rest; the token itself is never stored or logged.
//! With no file, every call is allowed and the control plane refuses non-loopback
//! addresses (see the CLI).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tonic::Status;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Read,
    Write,
    Node,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "node" => Some(Role::Node),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Node => "node",
        }
    }

    /// Whether a token of this role may make a call that needs `need`.
    fn allows(self, need: Role) -> bool {
        matches!(
            (self, need),
            (Role::Write, Role::Read | Role::Write) | (Role::Read, Role::Read) | (Role::Node, Role::Node)
        )
    }
}

/// A token file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file line {line}: {reason}")]
    Syntax { line: usize, reason: String },
}

/// The known tokens, by hash. Empty: authentication is off.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], (String, Role)>,
}

/// Hex SHA-256 of a token, as the token file holds it.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: `vane_` and 64 hex characters (256 bits).
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("vane_{}", hex::encode(bytes))
}

impl Tokens {
    /// Reads a token file.
    pub fn load(path: &Path) -> Result<Tokens, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read { path: path.to_owned(), source })?;
        Tokens::parse(&text)
    }

    /// Parses token file text.
    pub fn parse(text: &str) -> Result<Tokens, AuthError> {
        let mut by_hash = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let syntax = |reason: String| AuthError::Syntax { line: i + 1, reason };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, hash] = fields[..] else {
                return Err(syntax("expected `NAME ROLE SHA256HEX`".into()));
            };
            let role =
                Role::parse(role).ok_or_else(|| syntax(format!("unknown role '{role}' (read, write or node)")))?;
            let digest: [u8; 32] = hex::decode(hash)
                .ok()
                .and_then(|d| d.try_into().ok())
                .ok_or_else(|| syntax("the hash must be 64 hex characters (vane token new prints it)".into()))?;
            if by_hash.insert(digest, (name.to_owned(), role)).is_some() {
                return Err(syntax("the same token hash is listed twice".into()));
            }
        }
        Ok(Tokens { by_hash })
    }

    /// Whether authentication is off (no tokens configured).
    pub fn is_open(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The token's name when `request` carries a token allowed to do `need`.
    pub(crate) fn authorize<T>(&self, request: &tonic::Request<T>, need: Role) -> Result<String, Status> {
        self.check(request.metadata().get("authorization").map(|v| v.as_bytes()), need)
    }

    /// The token's name when `authorization` (the header's value) holds a token allowed to
    /// do `need`. The gate (see `gate`) calls this before a request body is read.
    pub(crate) fn check(&self, authorization: Option<&[u8]>, need: Role) -> Result<String, Status> {
        if self.is_open() {
            return Ok("anonymous".into());
        }
        let header = authorization.ok_or_else(|| Status::unauthenticated("a bearer token is required"))?;
        let token = std::str::from_utf8(header)
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .ok_or_else(|| Status::unauthenticated("the authorization header must be `Bearer TOKEN`"))?;
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        let (name, role) = self.by_hash.get(&digest).ok_or_else(|| Status::unauthenticated("unknown token"))?;
        if !role.allows(need) {
            return Err(Status::permission_denied(format!(
                "token '{name}' has role {} and may not do what needs {}",
                role.as_str(),
                need.as_str()
            )));
        }
        Ok(name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: Option<&str>) -> tonic::Request<()> {
        let mut r = tonic::Request::new(());
        if let Some(t) = token {
            r.metadata_mut().insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }

    #[test]
    fn roles_gate_calls() {
        let (w, r, n) = (generate_token(), generate_token(), generate_token());
        let file = format!(
            "# team tokens\nalice write {}\nbot read {}  # ci\nedge node {}\n",
            hash_token(&w),
            hash_token(&r),
            hash_token(&n)
        );
        let tokens = Tokens::parse(&file).unwrap();
        assert_eq!(tokens.authorize(&request(Some(&w)), Role::Write).unwrap(), "alice");
        assert_eq!(tokens.authorize(&request(Some(&r)), Role::Read).unwrap(), "bot");
        assert_eq!(
            tokens.authorize(&request(Some(&r)), Role::Write).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(tokens.authorize(&request(Some(&n)), Role::Read).unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(tokens.authorize(&request(Some(&w)), Role::Node).unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(
            tokens.authorize(&request(Some("nope")), Role::Read).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(tokens.authorize(&request(None), Role::Read).unwrap_err().code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn bad_lines_name_their_number() {
        let err = Tokens::parse("\nalice admin 00\n").unwrap_err().to_string();
        assert_eq!(err, "token file line 2: unknown role 'admin' (read, write or node)");
        let err = Tokens::parse("alice write abc\n").unwrap_err().to_string();
        assert!(err.starts_with("token file line 1: the hash must be 64 hex"), "{err}");
    }

    #[test]
    fn no_tokens_means_open() {
        let tokens = Tokens::parse("# nobody\n").unwrap();
        assert!(tokens.is_open());
        assert_eq!(tokens.authorize(&request(None), Role::Write).unwrap(), "anonymous");
    }
}
