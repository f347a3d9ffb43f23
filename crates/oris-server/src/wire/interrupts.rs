//! Interrupts.

use oris_core::store::InterruptRecord;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::value;
use crate::time::rfc3339;

/// An interrupt raised by a run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InterruptView {
    /// Its id.
    pub interrupt_id: String,
    /// The thread.
    pub thread_id: String,
    /// The run that raised it.
    pub run_id: String,
    /// The node that raised it.
    pub node: String,
    /// What the node asked.
    pub payload: Value,
    /// When it was raised.
    pub raised_at: String,
    /// `pending` (waiting for a value), `answered` (a value is recorded, the run has not
    /// applied it yet), `applied` (the run continued with it), `closed` (its run ended
    /// without it).
    pub status: String,
    /// The resume value, once answered.
    pub answer: Option<Value>,
    /// When it was answered.
    pub answered_at: Option<String>,
}

impl InterruptView {
    /// The view of a record; `run_ended` tells whether its run is finished.
    pub fn of(r: &InterruptRecord, run_ended: bool) -> Self {
        let status = if r.applied_seq.is_some() {
            "applied"
        } else if r.answer.is_some() {
            "answered"
        } else if run_ended {
            "closed"
        } else {
            "pending"
        };
        InterruptView {
            interrupt_id: r.interrupt_id.to_string(),
            thread_id: r.thread_id.to_string(),
            run_id: r.run_id.to_string(),
            node: r.node.clone(),
            payload: value(&r.payload),
            raised_at: rfc3339(r.raised_at),
            status: status.to_owned(),
            answer: r.answer.as_ref().map(|(v, _)| value(v)),
            answered_at: r.answer.as_ref().map(|(_, t)| rfc3339(*t)),
        }
    }
}

/// A page of interrupts.
#[derive(Debug, Serialize, ToSchema)]
pub struct InterruptList {
    /// Oldest first.
    pub interrupts: Vec<InterruptView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// `POST /v1/interrupts/{interrupt_id}/resume`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResumeInterrupt {
    /// The resume value (what `ctx.interrupt` returns in the node).
    pub value: Value,
}

/// `POST /v1/interrupts/{interrupt_id}/reject` (the body is optional).
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectInterrupt {
    /// Why; the run is cancelled with it. Default `interrupt rejected via API`.
    #[serde(default)]
    pub reason: Option<String>,
}
