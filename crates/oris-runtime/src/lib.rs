//! The Oris runtime: build a graph over a typed state, run it durably on a store, recover
//! it after a crash.
//!
//! # Layout
//! - [`graph`](StateGraph): the typed builder and [`CompiledGraph`].
//! - [`node`](Context): node functions, [`NodeError`], [`Context`].
//! - [`retry`](RetryPolicy): per-node retry policies.
//! - [`engine`](Engine): [`Engine`], [`GraphHandle`], options, recovery, cancellation, reads.
//! - `api`: the engine at the JSON level for a server — [`GraphInfo`], [`Engine::enqueue`],
//!   [`Engine::answer`], [`StateView`].
//! - `lease`: [`Engine::execute`], a worker's execution of a claimed run under its lease.
//! - `driver`: the superstep loop and the commit protocol (see `ARCHITECTURE.md`).
//! - `erased`: registered graphs without their state type.
//! - `replay`: the fold of a thread's log into typed state.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use oris_core::graph::{END, START};
//! use oris_core::store::MemoryStore;
//! use oris_runtime::{Engine, NodeError, StateGraph};
//!
//! #[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize)]
//! struct Count { n: i64 }
//! impl oris_core::state::State for Count {
//!     type Update = Option<i64>;
//!     fn apply(&mut self, ups: Vec<(&str, Option<i64>)>) -> Result<(), oris_core::state::ReduceError> {
//!         for (_, u) in ups { if let Some(n) = u { self.n = n } }
//!         Ok(())
//!     }
//!     fn into_update(self) -> Option<i64> { Some(self.n) }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let graph = StateGraph::<Count>::new("count", "1")
//!     .node("inc", |s: Count, _ctx| async move { Ok::<_, NodeError>(Some(s.n + 1)) })
//!     .edge(START, "inc")
//!     .edge("inc", END)
//!     .compile()
//!     .unwrap();
//! let engine = Engine::new(Arc::new(MemoryStore::new()));
//! let count = engine.register(graph);
//! let out = count.start("thread-1", Count { n: 41 }).await.unwrap();
//! assert_eq!(out.expect_completed().n, 42);
//! # });
//! ```

mod api;
mod clock;
mod driver;
mod engine;
mod erased;
mod error;
mod graph;
mod lease;
mod node;
mod outcome;
mod record;
mod replay;
mod retry;

pub use api::{
    EdgeInfo, EdgeKind, Enqueue, EnqueueOptions, GraphInfo, LeaseView, RunRecordView, StateField,
    StateView, VerifyReport,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use engine::{
    Engine, EngineOptions, GraphHandle, Observer, RecoveryReport, ReplayOptions, RunOptions,
    WAIT_POLL_MAX, WAIT_POLL_MIN,
};
pub use error::Error;
pub use graph::{CompiledGraph, NodePolicy, Route, StateGraph};
pub use lease::{Executed, LeaseOptions, Stop};
pub use node::{BoxFuture, Context, NodeError, NodeOutput};
pub use outcome::{CheckpointInfo, RunOutcome, ThreadState, Verification};
pub use retry::RetryPolicy;
