//! The audit log: every state-changing call, allowed or not.

use oris_core::event::Payload;
use oris_core::id::Timestamp;
use oris_core::store::AuditRecord;
use serde_json::Value;

use crate::auth::Caller;
use crate::state::AppState;

/// What to record about one call.
#[derive(Debug)]
pub(crate) struct Entry<'a> {
    pub caller: Option<&'a Caller>,
    pub action: &'static str,
    pub target: Option<String>,
    pub request_id: String,
    pub status: u16,
    pub outcome: String,
    pub details: Value,
}

/// Appends an entry. A failure to record is logged as an error (an operator must look),
/// not turned into a failed request: the action itself already happened or was refused.
pub(crate) async fn record(app: &AppState, e: Entry<'_>) {
    let rec = AuditRecord {
        id: 0,
        at: Timestamp::now(),
        actor: e
            .caller
            .map_or_else(|| "anonymous".to_owned(), |c| c.key_id.clone()),
        role: e.caller.map_or("none", |c| c.role.as_str()).to_owned(),
        action: e.action.to_owned(),
        target: e.target,
        request_id: e.request_id,
        status: e.status,
        outcome: e.outcome,
        details: Payload::encode(&e.details).ok(),
    };
    if let Err(err) = app.store.append_audit(&rec).await {
        tracing::error!(error = %err, action = rec.action, "audit entry not recorded");
    }
}
