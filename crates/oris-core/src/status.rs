//! The run-status state machine.
//!
//! ```text
//!   Queued ──► Running ──► Completed
//!     │        ▲  │ ├────► Failed
//!     │        │  ▼ └────► Cancelled
//!     │      Interrupted / Waiting ─► Cancelled
//!     └──────────────────► Cancelled
//! ```
//! Terminal statuses never change. Every status write goes through
//! [`RunStatus::check_transition`], in every backend.

use serde::{Deserialize, Serialize};

use crate::event::Failure;
use crate::id::{CheckpointId, InterruptId, Timestamp};

/// An interrupt a suspended run waits on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingInterrupt {
    /// Its identity; answer it with a resume value.
    pub interrupt_id: InterruptId,
    /// The node that raised it.
    pub node: String,
    /// What the node asked.
    pub payload: serde_json::Value,
}

/// Where a run is. Carries the data of its state (never a string plus optional fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunStatus {
    /// Recorded, not started yet.
    Queued,
    /// Executing (or waiting to be recovered after a crash).
    Running,
    /// Paused until its interrupts are answered.
    Interrupted {
        /// The interrupts raised in the paused superstep.
        interrupts: Vec<PendingInterrupt>,
    },
    /// Paused on a durable timer or an external event; holds no task or thread.
    Waiting {
        /// When it wakes up (earliest timer or wait timeout).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<Timestamp>,
        /// The external events it waits for.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        events: Vec<String>,
    },
    /// Reached END; the output is the state at `checkpoint`.
    Completed {
        /// The checkpoint holding the final state.
        checkpoint: CheckpointId,
    },
    /// Failed for good.
    Failed {
        /// Why.
        error: Failure,
    },
    /// Cancelled.
    Cancelled {
        /// Why.
        reason: String,
    },
}

/// The status without its data, for filters, columns and CHECK constraints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StatusKind {
    /// See [`RunStatus::Queued`].
    Queued,
    /// See [`RunStatus::Running`].
    Running,
    /// See [`RunStatus::Interrupted`].
    Interrupted,
    /// See [`RunStatus::Waiting`].
    Waiting,
    /// See [`RunStatus::Completed`].
    Completed,
    /// See [`RunStatus::Failed`].
    Failed,
    /// See [`RunStatus::Cancelled`].
    Cancelled,
}

impl StatusKind {
    /// All kinds.
    pub const ALL: [StatusKind; 7] = [
        StatusKind::Queued,
        StatusKind::Running,
        StatusKind::Interrupted,
        StatusKind::Waiting,
        StatusKind::Completed,
        StatusKind::Failed,
        StatusKind::Cancelled,
    ];

    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusKind::Queued => "queued",
            StatusKind::Running => "running",
            StatusKind::Interrupted => "interrupted",
            StatusKind::Waiting => "waiting",
            StatusKind::Completed => "completed",
            StatusKind::Failed => "failed",
            StatusKind::Cancelled => "cancelled",
        }
    }

    /// Parses a stable name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether a run in this status is finished for good.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StatusKind::Completed | StatusKind::Failed | StatusKind::Cancelled
        )
    }
}

/// A status change that the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a run cannot go from {from} to {to}")]
pub struct TransitionError {
    /// Current status.
    pub from: &'static str,
    /// Requested status.
    pub to: &'static str,
}

impl RunStatus {
    /// The status without data.
    pub fn kind(&self) -> StatusKind {
        match self {
            RunStatus::Queued => StatusKind::Queued,
            RunStatus::Running => StatusKind::Running,
            RunStatus::Interrupted { .. } => StatusKind::Interrupted,
            RunStatus::Waiting { .. } => StatusKind::Waiting,
            RunStatus::Completed { .. } => StatusKind::Completed,
            RunStatus::Failed { .. } => StatusKind::Failed,
            RunStatus::Cancelled { .. } => StatusKind::Cancelled,
        }
    }

    /// Whether the run is finished for good.
    pub fn is_terminal(&self) -> bool {
        self.kind().is_terminal()
    }

    /// Whether `self → next` is an allowed edge.
    pub fn can_transition_to(&self, next: &RunStatus) -> bool {
        use StatusKind::*;
        matches!(
            (self.kind(), next.kind()),
            (Queued, Running | Cancelled)
                | (
                    Running,
                    Interrupted | Waiting | Completed | Failed | Cancelled
                )
                | (Interrupted | Waiting, Running | Cancelled)
        )
    }

    /// Checks `self → next`.
    ///
    /// # Errors
    /// [`TransitionError`] naming both statuses.
    pub fn check_transition(&self, next: &RunStatus) -> Result<(), TransitionError> {
        if self.can_transition_to(next) {
            Ok(())
        } else {
            Err(TransitionError {
                from: self.kind().as_str(),
                to: next.kind().as_str(),
            })
        }
    }
}

/// The two columns a SQL backend stores a status in: its kind (for filters and a CHECK
/// constraint) and its JSON (the data). The one conversion every backend uses.
impl RunStatus {
    /// `(status, status_data)`.
    ///
    /// # Errors
    /// Only if the status does not serialize, which its types rule out in practice.
    pub fn to_columns(&self) -> Result<(&'static str, String), String> {
        let data = serde_json::to_string(self).map_err(|e| e.to_string())?;
        Ok((self.kind().as_str(), data))
    }

    /// Rebuilds a status from its two columns, checking they agree.
    ///
    /// # Errors
    /// A message naming the column: an unknown status, JSON that does not decode (with the
    /// field path), or a kind that disagrees with the data.
    pub fn from_columns(status: &str, data: String) -> Result<RunStatus, String> {
        let kind = StatusKind::parse(status)
            .ok_or_else(|| format!("column `status`: unknown status {status:?}"))?;
        let payload = crate::event::Payload::from_json(data)
            .map_err(|e| format!("column `status_data` is not JSON: {e}"))?;
        let decoded: RunStatus = payload
            .decode()
            .map_err(|e| format!("column `status_data` {e}"))?;
        if decoded.kind() != kind {
            return Err(format!(
                "column `status` says {status} but `status_data` holds {}",
                decoded.kind().as_str()
            ));
        }
        Ok(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::FailureKind;
    use crate::id::Seq;
    use proptest::prelude::*;

    fn status(k: StatusKind) -> RunStatus {
        match k {
            StatusKind::Queued => RunStatus::Queued,
            StatusKind::Running => RunStatus::Running,
            StatusKind::Interrupted => RunStatus::Interrupted {
                interrupts: vec![PendingInterrupt {
                    interrupt_id: InterruptId::generate(),
                    node: "b".into(),
                    payload: serde_json::json!("approve?"),
                }],
            },
            StatusKind::Waiting => RunStatus::Waiting {
                until: Some(Timestamp(5)),
                events: vec!["paid".into()],
            },
            StatusKind::Completed => RunStatus::Completed {
                checkpoint: CheckpointId(Seq(3)),
            },
            StatusKind::Failed => RunStatus::Failed {
                error: Failure::new(FailureKind::NodeError, "x"),
            },
            StatusKind::Cancelled => RunStatus::Cancelled { reason: "r".into() },
        }
    }

    #[test]
    fn allowed_edges_table() {
        use StatusKind::*;
        let allowed = [
            (Queued, Running),
            (Queued, Cancelled),
            (Running, Interrupted),
            (Running, Completed),
            (Running, Failed),
            (Running, Cancelled),
            (Running, Waiting),
            (Interrupted, Running),
            (Interrupted, Cancelled),
            (Waiting, Running),
            (Waiting, Cancelled),
        ];
        for from in StatusKind::ALL {
            for to in StatusKind::ALL {
                assert_eq!(
                    status(from).can_transition_to(&status(to)),
                    allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
    }

    #[test]
    fn column_round_trip_and_disagreement() {
        for k in StatusKind::ALL {
            let s = status(k);
            let (kind, data) = s.to_columns().unwrap();
            assert_eq!(RunStatus::from_columns(kind, data).unwrap(), s);
        }
        let (_, data) = RunStatus::Running.to_columns().unwrap();
        assert!(
            RunStatus::from_columns("queued", data.clone())
                .unwrap_err()
                .contains("says queued")
        );
        assert!(
            RunStatus::from_columns("paused", data)
                .unwrap_err()
                .contains("unknown status")
        );
        assert!(
            RunStatus::from_columns("running", "{".into())
                .unwrap_err()
                .contains("not JSON")
        );
    }

    #[test]
    fn json_round_trip() {
        for k in StatusKind::ALL {
            let s = status(k);
            let json = serde_json::to_string(&s).unwrap();
            assert!(json.contains(k.as_str()));
            assert_eq!(serde_json::from_str::<RunStatus>(&json).unwrap(), s);
        }
        assert!(serde_json::from_str::<RunStatus>(r#"{"status":"paused"}"#).is_err());
    }

    proptest! {
        /// Walking random requested transitions, the machine only ever takes allowed
        /// edges, never leaves a terminal status, and reaches a terminal status at most once.
        #[test]
        fn random_walks_only_take_allowed_edges(steps in proptest::collection::vec(0usize..7, 0..40)) {
            let mut current = RunStatus::Queued;
            let mut terminal_reached = 0;
            for i in steps {
                let next = status(StatusKind::ALL[i]);
                let was_terminal = current.is_terminal();
                match current.check_transition(&next) {
                    Ok(()) => {
                        prop_assert!(!was_terminal);
                        prop_assert_ne!(current.kind(), next.kind());
                        if next.is_terminal() { terminal_reached += 1; }
                        current = next;
                    }
                    Err(e) => prop_assert_eq!(e.from, current.kind().as_str()),
                }
            }
            prop_assert!(terminal_reached <= 1);
        }
    }
}
