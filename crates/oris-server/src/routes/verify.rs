//! `GET /v1/jobs/{thread_id}/verify`: a thread's state re-derived from its log alone and
//! compared with its stored checkpoint state and its current state.

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::query;
use crate::error::{ApiError, Json, Path};
use crate::state::AppState;

/// What verifying a thread found. A mismatch is a finding, not an error: the answer is 200
/// with `consistent: false` and `mismatch` naming the first disagreement.
#[derive(Debug, Serialize, ToSchema)]
pub struct Verification {
    /// The thread.
    pub thread_id: String,
    /// Its graph.
    pub graph: String,
    /// The graph version it was verified with (that of the thread's latest run).
    pub graph_version: String,
    /// Seq of the last event of the thread's log.
    pub head: u64,
    /// Hash of the state folded from the whole log, ignoring snapshots.
    pub replayed_hash: String,
    /// Hash of the state the engine uses: the latest snapshot plus the events after it.
    pub current_hash: String,
    /// Whether the log, the stored checkpoint state and the current state agree.
    pub consistent: bool,
    /// The first disagreement found (`null` when consistent).
    pub mismatch: Option<String>,
}

/// Re-derives the thread's state from its event log alone (ignoring snapshots) and compares
/// it with the latest stored checkpoint state and the current state.
#[utoipa::path(get, path = "/v1/jobs/{thread_id}/verify", tag = "jobs",
    params(("thread_id" = String, Path, description = "The thread")),
    responses((status = 200, description = "The verification, consistent or not", body = Verification),
        (status = 404, description = "`thread_not_found`", body = crate::error::ErrorEnvelope),
        (status = 409, description = "`graph_version_missing`", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn verify(
    State(app): State<AppState>,
    Path(thread_id): Path<String>,
) -> Result<Json<Verification>, ApiError> {
    let t = query::thread(&thread_id)?;
    let r = app.engine.verify_json(&t).await?;
    if !r.consistent {
        tracing::warn!(thread_id = %r.thread_id, mismatch = ?r.mismatch, "thread does not verify");
    }
    Ok(Json(Verification {
        thread_id: r.thread_id.to_string(),
        graph: r.graph,
        graph_version: r.graph_version,
        head: r.head.0,
        replayed_hash: r.replayed_hash,
        current_hash: r.current_hash,
        consistent: r.consistent,
        mismatch: r.mismatch,
    }))
}
