//! The storage conformance cases.
//!
//! Each case is a `pub async fn(Arc<dyn Store>)` that receives a fresh, empty store, drives
//! it through the [`Store`](oris_core::store::Store) trait only, and panics with a message
//! naming the broken rule. The rules themselves are those of
//! [`plan_commit`](oris_core::store::plan_commit) and the trait's documentation; the cases
//! check that a backend applies them, atomically, under concurrency, and that what it
//! stores reads back exactly (payload JSON byte for byte, timestamps to the millisecond).
//!
//! Cases by topic: lifecycle (creation, appends, the compare-and-set head, run
//! succession), validation (seqs, writers, run creation, status edges), endings (a terminal
//! status with its terminal event, last; no status change without an event), reads
//! (paging), snapshots (including whose run may write one), run listing, payloads (every
//! event variant, size, verbatim JSON), edges (thread ids, durabilities), atomicity,
//! concurrency, suspension (the `Interrupted` and `Waiting` statuses), interrupts (records,
//! answers, uniqueness), deliveries (buffering, consumption, idempotency keys), edits
//! (`StateUpdated` commits on an idle thread), and what a server keeps: claims (order,
//! eligibility, concurrent claimers), leases (fenced commits, renewals, releases),
//! reaping (the lease reaper, lease counts per graph), workers (the worker registry),
//! pending runs (the queue of the multitask strategy `enqueue`),
//! readiness (`ready_at` and the lease across status changes, answers and deliveries),
//! listing (run time ranges and metadata, interrupts across threads), idempotency records,
//! API keys and the audit log. [`CASES`] lists them all.

mod access;
mod atomicity;
mod claims;
mod concurrency;
mod deliveries;
mod edges;
mod edits;
mod endings;
mod idempotency;
mod interrupts;
mod leases;
mod lifecycle;
mod listing;
mod payloads;
mod pending;
mod readiness;
mod reads;
mod reaping;
mod retention;
mod runs;
mod snapshots;
mod suspension;
mod timers;
mod validation;
mod workers;

pub use access::*;
pub use atomicity::*;
pub use claims::*;
pub use concurrency::*;
pub use deliveries::*;
pub use edges::*;
pub use edits::*;
pub use endings::*;
pub use idempotency::*;
pub use interrupts::*;
pub use leases::*;
pub use lifecycle::*;
pub use listing::*;
pub use payloads::*;
pub use pending::*;
pub use readiness::*;
pub use reads::*;
pub use reaping::*;
pub use retention::*;
pub use runs::*;
pub use snapshots::*;
pub use suspension::*;
pub use timers::*;
pub use validation::*;
pub use workers::*;

/// The name of every case, in the order [`store_conformance!`](crate::store_conformance)
/// generates their tests.
pub const CASES: &[&str] = crate::__conformance_cases!(names);
