//! API keys and roles.
//!
//! A token is `oris_<key_id>_<secret>`: `key_id` is 12 lowercase letters and digits (public,
//! shown in the audit log), `secret` 40 letters and digits (≈ 238 bits). The store keeps only
//! `HMAC-SHA256(hash_key, secret)` in hex; a presented secret is checked with the MAC's
//! constant-time comparison. `hash_key` defaults to [`DEFAULT_HASH_KEY`], a public
//! domain-separation constant (the secrets are random, so the hash needs no secret key to
//! resist guessing); a deployment may set its own with
//! [`ServerBuilder::hash_key`](crate::ServerBuilder::hash_key) so that a leaked key table is
//! useless without the server's configuration too.
//!
//! Roles nest: `admin` ⊃ `operator` ⊃ `viewer`. `worker` is for remote workers: only
//! the worker protocol routes (`/v1/workers/…`, which admin may use too) and reads of
//! graphs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use hmac::{Hmac, Mac};
use oris_core::id::Timestamp;
use oris_core::store::{ApiKeyRecord, Store};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorCode};

/// The default key of the secret hash (domain separation, not a secret).
pub const DEFAULT_HASH_KEY: &[u8] = b"oris.api-key.v1";

/// How long a key record read from the store is reused before it is read again. A key
/// revoked through this server stops working at once; one revoked by another server on the
/// same store, within this time.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

const KEY_ID_LEN: usize = 12;
const SECRET_LEN: usize = 40;

/// Whether the API checks credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Auth {
    /// No credentials needed: every caller is `anonymous` with the admin role. For local
    /// development only; the server says so loudly in its log.
    Disabled,
    /// `Authorization: Bearer oris_…` required (the default).
    #[default]
    Keys,
}

/// A key's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including keys and the audit log.
    Admin,
    /// Reads, and runs: create, resume, cancel, replay, fork, edit state.
    Operator,
    /// Remote workers: worker routes and reads of graphs.
    Worker,
    /// Reads.
    Viewer,
}

impl Role {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Worker => "worker",
            Role::Viewer => "viewer",
        }
    }

    /// Parses a stable name.
    pub fn parse(s: &str) -> Option<Role> {
        [Role::Admin, Role::Operator, Role::Worker, Role::Viewer]
            .into_iter()
            .find(|r| r.as_str() == s)
    }

    /// Whether this role may use a route requiring `access`.
    pub fn allows(self, access: Access) -> bool {
        match access {
            Access::Public => true,
            Access::Graphs => true,
            Access::Read => matches!(self, Role::Admin | Role::Operator | Role::Viewer),
            Access::Operate => matches!(self, Role::Admin | Role::Operator),
            Access::Worker => matches!(self, Role::Admin | Role::Worker),
            Access::Admin => self == Role::Admin,
        }
    }
}

/// What a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No credentials (`/healthz`, `/readyz`, `/metrics`, `/v1/openapi.json`).
    Public,
    /// Any key (reads of graphs: every role, worker included).
    Graphs,
    /// viewer, operator or admin.
    Read,
    /// operator or admin.
    Operate,
    /// worker or admin (the remote worker protocol).
    Worker,
    /// admin.
    Admin,
}

impl Access {
    /// The roles allowed, for documentation.
    pub fn roles(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Graphs => "viewer, worker",
            Access::Read => "viewer",
            Access::Operate => "operator",
            Access::Worker => "worker",
            Access::Admin => "admin",
        }
    }
}

/// Who is calling: a key id (or `anonymous`) and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key id, or `anonymous`.
    pub key_id: String,
    /// The role.
    pub role: Role,
}

impl Caller {
    /// The caller without credentials when auth is disabled.
    pub(crate) fn anonymous_admin() -> Self {
        Caller {
            key_id: "anonymous".into(),
            role: Role::Admin,
        }
    }
}

/// A parsed token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub key_id: String,
    pub secret: String,
}

impl Token {
    /// Parses `oris_<key_id>_<secret>`.
    pub fn parse(s: &str) -> Option<Token> {
        let rest = s.strip_prefix("oris_")?;
        let (key_id, secret) = rest.split_once('_')?;
        let key_ok = (1..=64).contains(&key_id.len())
            && key_id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let secret_ok =
            (16..=128).contains(&secret.len()) && secret.bytes().all(|b| b.is_ascii_alphanumeric());
        (key_ok && secret_ok).then(|| Token {
            key_id: key_id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// A new random token.
    pub fn generate() -> Token {
        const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let mut pick = |set: &[u8], n: usize| -> String {
            (0..n)
                .map(|_| set[rng.random_range(0..set.len())] as char)
                .collect()
        };
        Token {
            key_id: pick(LOWER, KEY_ID_LEN),
            secret: pick(ALNUM, SECRET_LEN),
        }
    }

    /// The token's text.
    pub fn render(&self) -> String {
        format!("oris_{}_{}", self.key_id, self.secret)
    }
}

/// Hashes and checks secrets.
#[derive(Clone)]
pub(crate) struct Hasher {
    key: Arc<[u8]>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher(..)")
    }
}

impl Hasher {
    pub fn new(key: &[u8]) -> Self {
        Hasher { key: key.into() }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length.
        Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length")
    }

    pub fn hash(&self, secret: &str) -> String {
        let mut m = self.mac();
        m.update(secret.as_bytes());
        hex(&m.finalize().into_bytes())
    }

    /// Constant-time check of `secret` against a stored hex hash.
    pub fn verify(&self, secret: &str, stored_hex: &str) -> bool {
        let Some(expected) = unhex(stored_hex) else {
            return false;
        };
        let mut m = self.mac();
        m.update(secret.as_bytes());
        m.verify_slice(&expected).is_ok()
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Checks credentials against the store's keys.
#[derive(Debug)]
pub(crate) struct Authenticator {
    pub mode: Auth,
    pub hasher: Hasher,
    store: Arc<dyn Store>,
    cache: Mutex<HashMap<String, (ApiKeyRecord, Instant)>>,
}

impl Authenticator {
    pub fn new(mode: Auth, hasher: Hasher, store: Arc<dyn Store>) -> Self {
        Authenticator {
            mode,
            hasher,
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The caller of a request.
    ///
    /// # Errors
    /// 401 `unauthorized` without a valid token; 503/500 when the store fails.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        if self.mode == Auth::Disabled {
            return Ok(Caller::anonymous_admin());
        }
        let unauthorized = |m: &str| ApiError::new(ErrorCode::Unauthorized, m.to_owned());
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized(
                "missing `Authorization: Bearer oris_…` header",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .and_then(|t| Token::parse(t.trim()))
            .ok_or_else(|| {
                unauthorized("malformed bearer token (expected `oris_<key_id>_<secret>`)")
            })?;
        let record = self.key(&token.key_id).await?;
        match record {
            Some(r)
                if r.revoked_at.is_none() && self.hasher.verify(&token.secret, &r.secret_hash) =>
            {
                let role = Role::parse(&r.role).ok_or_else(|| {
                    ApiError::internal(&format!(
                        "key {} has an unknown role `{}`",
                        r.key_id, r.role
                    ))
                })?;
                Ok(Caller {
                    key_id: r.key_id,
                    role,
                })
            }
            _ => Err(unauthorized("invalid or revoked API key")),
        }
    }

    async fn key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, ApiError> {
        if let Some((r, at)) = self.lock().get(key_id)
            && at.elapsed() < KEY_CACHE_TTL
        {
            return Ok(Some(r.clone()));
        }
        let r = self.store.api_key(key_id).await?;
        let mut cache = self.lock();
        match &r {
            Some(rec) => {
                if cache.len() > 10_000 {
                    cache.clear();
                }
                cache.insert(key_id.to_owned(), (rec.clone(), Instant::now()));
            }
            None => {
                cache.remove(key_id);
            }
        }
        Ok(r)
    }

    /// Forgets a cached key (after a revocation here).
    pub fn forget(&self, key_id: &str) {
        self.lock().remove(key_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (ApiKeyRecord, Instant)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new key record for `token`.
    pub fn record(&self, token: &Token, name: &str, role: Role) -> ApiKeyRecord {
        ApiKeyRecord {
            key_id: token.key_id.clone(),
            name: name.to_owned(),
            role: role.as_str().to_owned(),
            secret_hash: self.hasher.hash(&token.secret),
            created_at: Timestamp::now(),
            revoked_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let t = Token::generate();
        assert_eq!(t.key_id.len(), KEY_ID_LEN);
        assert_eq!(t.secret.len(), SECRET_LEN);
        assert_eq!(Token::parse(&t.render()), Some(t.clone()));
        for bad in [
            "",
            "oris_",
            "oris_abc",
            "oris__secretsecretsecret",
            "oris_ABC_secretsecretsecret",
            "oris_abc_short",
            "xoris_abc_secretsecretsecret",
            "oris_abc_secret-secret-secret",
        ] {
            assert_eq!(Token::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn hash_verifies_only_the_right_secret_and_key() {
        let h = Hasher::new(DEFAULT_HASH_KEY);
        let stored = h.hash("s3cretS3cretS3cret");
        assert_eq!(stored.len(), 64);
        assert!(h.verify("s3cretS3cretS3cret", &stored));
        assert!(!h.verify("s3cretS3cretS3creT", &stored));
        assert!(!h.verify("s3cretS3cretS3cret", "zz"));
        assert!(!Hasher::new(b"other").verify("s3cretS3cretS3cret", &stored));
    }

    #[test]
    fn roles_nest() {
        use Access::*;
        let table = [
            (Role::Admin, [true, true, true, true, true, true]),
            (Role::Operator, [true, true, true, true, false, false]),
            (Role::Viewer, [true, true, true, false, false, false]),
            (Role::Worker, [true, true, false, false, true, false]),
        ];
        for (role, expect) in table {
            for (access, want) in [Public, Graphs, Read, Operate, Worker, Admin]
                .into_iter()
                .zip(expect)
            {
                assert_eq!(role.allows(access), want, "{role:?} {access:?}");
            }
        }
    }
}
