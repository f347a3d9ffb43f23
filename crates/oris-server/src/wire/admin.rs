//! API keys and the audit log.

use oris_core::store::{ApiKeyRecord, AuditRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::value;
use crate::auth::Role;
use crate::time::rfc3339;

/// `POST /v1/keys`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A human name (1–100 characters).
    pub name: String,
    /// `admin`, `operator`, `worker` or `viewer`.
    pub role: Role,
}

/// An API key (never its secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyView {
    /// Public id (the part of the token after `oris_`).
    pub key_id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
    /// When it was created.
    pub created_at: String,
    /// When it was revoked.
    pub revoked_at: Option<String>,
}

impl KeyView {
    /// The view of a record.
    pub fn of(r: &ApiKeyRecord) -> Self {
        KeyView {
            key_id: r.key_id.clone(),
            name: r.name.clone(),
            role: r.role.clone(),
            created_at: rfc3339(r.created_at),
            revoked_at: r.revoked_at.map(rfc3339),
        }
    }
}

/// A new key: the token is shown this once and cannot be read again.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The key.
    #[serde(flatten)]
    pub key: KeyView,
    /// `oris_<key_id>_<secret>`: send as `Authorization: Bearer <token>`.
    pub token: String,
}

/// Every key.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// Oldest first.
    pub keys: Vec<KeyView>,
}

/// One audit log entry.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditView {
    /// Position in the log (the cursor).
    pub id: u64,
    /// When.
    pub at: String,
    /// The caller's key id, or `anonymous`.
    pub actor: String,
    /// The caller's role (`none` when unauthenticated).
    pub role: String,
    /// What was attempted, e.g. `jobs.create`.
    pub action: String,
    /// What on (a thread, an interrupt, a key).
    pub target: Option<String>,
    /// The request's id.
    pub request_id: String,
    /// HTTP status of the answer.
    pub status: u16,
    /// `ok` or the error code.
    pub outcome: String,
    /// Method, path, idempotency key, replay flag.
    pub details: Option<Value>,
}

impl AuditView {
    /// The view of a record.
    pub fn of(r: &AuditRecord) -> Self {
        AuditView {
            id: r.id,
            at: rfc3339(r.at),
            actor: r.actor.clone(),
            role: r.role.clone(),
            action: r.action.clone(),
            target: r.target.clone(),
            request_id: r.request_id.clone(),
            status: r.status,
            outcome: r.outcome.clone(),
            details: r.details.as_ref().map(value),
        }
    }
}

/// A page of the audit log.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    /// Oldest first.
    pub entries: Vec<AuditView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}
