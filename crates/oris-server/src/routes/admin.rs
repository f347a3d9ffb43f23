//! `/v1/keys` and `/v1/audit` (admin).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use oris_core::id::Timestamp;
use oris_core::store::AuditFilter;
use serde_json::json;

use super::query::{MAX_LIMIT, Params};
use crate::auth::{Role, Token};
use crate::error::{ApiError, ErrorCode, Json, Path, Query};
use crate::guard::AuditTarget;
use crate::state::AppState;
use crate::wire::{AuditList, AuditView, CreateKey, CreatedKey, KeyList, KeyView};

/// Create an API key; the token is in this response only.
#[utoipa::path(post, path = "/v1/keys", tag = "admin",
    request_body = CreateKey,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes the call safe to repeat (a replay returns the same token)")),
    responses((status = 201, description = "The key and its token", body = CreatedKey),
        (status = 400, description = "`invalid_input`", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn create_key(
    State(app): State<AppState>,
    Json(body): Json<CreateKey>,
) -> Result<Response, ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(
            ApiError::invalid("name must be 1–100 characters").details(json!({ "field": "name" }))
        );
    }
    let token = Token::generate();
    let rec = app.auth.record(&token, name, body.role);
    app.store.create_api_key(&rec).await?;
    tracing::info!(key_id = %rec.key_id, role = %rec.role, "API key created");
    let mut resp = (
        StatusCode::CREATED,
        Json(CreatedKey {
            key: KeyView::of(&rec),
            token: token.render(),
        }),
    )
        .into_response();
    resp.extensions_mut().insert(AuditTarget(rec.key_id));
    Ok(resp)
}

/// Every API key (never the secrets).
#[utoipa::path(get, path = "/v1/keys", tag = "admin",
    responses((status = 200, description = "Keys, oldest first", body = KeyList)))]
pub(crate) async fn list_keys(State(app): State<AppState>) -> Result<Json<KeyList>, ApiError> {
    let keys = app.store.api_keys().await?;
    Ok(Json(KeyList {
        keys: keys.iter().map(KeyView::of).collect(),
    }))
}

/// Revoke an API key (it stops working at once on this server).
#[utoipa::path(delete, path = "/v1/keys/{key_id}", tag = "admin",
    params(("key_id" = String, Path, description = "The key id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the call safe to repeat")),
    responses((status = 200, description = "The key, revoked", body = KeyView),
        (status = 404, description = "`not_found`", body = crate::error::ErrorEnvelope),
        (status = 409, description = "`conflict`: already revoked, or the last admin key", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn revoke_key(
    State(app): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    let keys = app.store.api_keys().await?;
    let Some(key) = keys.iter().find(|k| k.key_id == key_id) else {
        return Err(
            ApiError::new(ErrorCode::NotFound, format!("no API key `{key_id}`"))
                .details(json!({ "key_id": key_id })),
        );
    };
    if key.revoked_at.is_some() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("API key `{key_id}` is already revoked"),
        )
        .details(json!({ "key_id": key_id })));
    }
    let admin = Role::Admin.as_str();
    let other_admins = keys
        .iter()
        .filter(|k| k.key_id != key_id && k.role == admin && k.revoked_at.is_none())
        .count();
    if key.role == admin && other_admins == 0 {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "this is the last active admin key; create another admin key first",
        )
        .details(json!({ "key_id": key_id })));
    }
    app.store.revoke_api_key(&key_id, Timestamp::now()).await?;
    app.auth.forget(&key_id);
    tracing::info!(key_id = %key_id, "API key revoked");
    let rec = app
        .store
        .api_key(&key_id)
        .await?
        .ok_or_else(|| ApiError::internal(&"a revoked key vanished"))?;
    Ok(Json(KeyView::of(&rec)))
}

/// The audit log: who did what, when, with which result.
#[utoipa::path(get, path = "/v1/audit", tag = "admin",
    params(
        ("actor" = Option<String>, Query, description = "Key id, or `anonymous`"),
        ("action" = Option<String>, Query, description = "E.g. `jobs.create`"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<usize>, Query, description = "Page size, 1–500, default 50"),
    ),
    responses((status = 200, description = "Entries, oldest first", body = AuditList)))]
pub(crate) async fn audit(
    State(app): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<AuditList>, ApiError> {
    let p = Params::new(pairs, &["actor", "action", "cursor", "limit"])?;
    let limit = p.limit(MAX_LIMIT)?;
    let filter = AuditFilter {
        after: p.parsed::<u64>("cursor")?,
        actor: p.get("actor").map(str::to_owned),
        action: p.get("action").map(str::to_owned),
        limit: limit + 1,
    };
    let mut entries = app.store.audit(&filter).await?;
    let more = entries.len() > limit;
    entries.truncate(limit);
    Ok(Json(AuditList {
        next_cursor: more
            .then(|| entries.last().map(|e| e.id.to_string()))
            .flatten(),
        entries: entries.iter().map(AuditView::of).collect(),
    }))
}
