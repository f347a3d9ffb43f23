//! The pure core of Oris.
//!
//! Everything here is deterministic and free of any async runtime or database driver: ids,
//! the typed state and its reducers, the graph topology and the planner that computes each
//! superstep's tasks, the event model, the run-status state machine, the storage traits and
//! the in-memory store. Backends (`oris-sqlite`, later PostgreSQL) implement [`store::Store`];
//! the runtime (`oris-runtime`) drives runs and performs effects only after a commit
//! succeeded.
//!
//! # Layout
//! - [`id`]: `ThreadId` (caller-chosen, validated), `RunId`, `CheckpointId`, `Seq`, `Timestamp`.
//! - [`state`]: the [`State`](state::State) trait, reducers, state hashing.
//! - [`graph`]: graph topology, validation, Mermaid rendering, superstep planning.
//! - [`event`]: the events of a thread's append-only log.
//! - [`status`]: the run-status state machine.
//! - [`store`]: storage traits, commit batches, records, and [`store::MemoryStore`].
//! - [`protocol`]: the messages of the remote worker protocol.
//!
//! # Example
//! ```
//! use oris_core::id::ThreadId;
//!
//! let thread = ThreadId::new("order-42").unwrap();
//! assert_eq!(thread.as_str(), "order-42");
//! assert!(ThreadId::new("").is_err());
//! ```

pub mod state;

#[doc(hidden)]
pub mod __private {
    pub use serde;
}
pub mod event;
pub mod graph;
pub mod id;
pub mod protocol;
pub mod status;
pub mod store;
