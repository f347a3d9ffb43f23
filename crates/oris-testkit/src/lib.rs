//! Test support for Oris.
//!
//! The heart of it is the storage conformance suite: every [`Store`](oris_core::store::Store)
//! backend (memory, SQLite, later PostgreSQL) must pass the same cases, written once as
//! generic async functions in [`conformance`] and instantiated per backend by
//! [`store_conformance!`]. Each case gets a fresh store, runs on a multi-thread Tokio
//! runtime, and panics with a message naming the broken rule.
//!
//! # Layout
//! - [`conformance`]: the cases, one `pub async fn(Arc<dyn Store>)` each, by topic.
//! - [`store_conformance!`]: expands to one `#[test]` per case in the calling test file.
//! - [`build`]: terse, pure constructors for ids, events, run records, snapshots, commits.
//! - [`writer`]: [`Writer`](writer::Writer), which drives a thread through valid commits.
//! - [`check`]: assertions over a store (`ok`, `err`, `ThreadView` before/after).
//! - [`counting`]: [`CountingStore`](counting::CountingStore), a store wrapper counting calls
//!   by method (tests bounding store calls, benchmarks).
//!
//! # Example
//! In `tests/conformance.rs` of a backend crate:
//! ```ignore
//! use oris_core::store::MemoryStore;
//!
//! oris_testkit::store_conformance!(|| async { MemoryStore::new() });
//! ```
//! A case can also be called directly:
//! ```
//! use std::sync::Arc;
//! use oris_core::store::MemoryStore;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! oris_testkit::conformance::first_commit_creates_thread(Arc::new(MemoryStore::new())).await;
//! # });
//! ```

pub mod build;
pub mod check;
pub mod conformance;
pub mod counting;
#[cfg(feature = "postgres")]
pub mod database;
mod macros;
pub mod sim;
pub mod writer;

#[doc(hidden)]
pub use macros::__private;

/// How long one conformance case may take before it fails as hung.
pub const CASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
