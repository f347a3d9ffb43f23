//! A remote Oris worker: a process of your own that executes runs of your graphs for an
//! Oris server, over HTTP.
//!
//! The server records runs and hands them out; a worker polls it (`POST /v1/workers/poll`,
//! a long-poll), receives attempts — a claimed run with its lease and an image of its
//! thread (latest snapshot and the log after it, interrupts, deliveries) — and executes each
//! with the ordinary engine ([`oris_runtime::Engine::execute`]) on a local copy of that
//! image. Every commit the engine makes is sent back as a report, fenced by the lease, and
//! applied locally only once the server accepted it; heartbeats renew the lease; an ack
//! ends the attempt. The server refuses anything from a worker whose lease is gone (it
//! expired, another worker claimed the run, the run was cancelled): that worker stops the
//! run at once and writes nothing more, and whoever holds the run now continues it from
//! its last reported step. Completed nodes and recorded steps are never executed again;
//! a node that was running when its worker died runs again (side effects belong in
//! recorded steps).
//!
//! Runs are dispatched only to workers registered for their graph's exact version, so
//! register every version whose runs may still be unfinished. The server must have the
//! graphs too (it validates inputs against them): build it with the same graph
//! definitions and `workers(0)` to leave execution to remote workers.
//!
//! Transport: HTTP or HTTPS (`https://` URLs: rustls with the `ring` provider, installed as
//! the process default when the process has none; server certificates are checked against
//! the built-in Mozilla roots, plus the CA certificates given with
//! [`WorkerBuilder::ca_cert`] for a server whose certificate a private CA signed).
//!
//! Tracing: a span `worker` (`worker_id`) around the loop and `attempt` (`worker_id`,
//! `attempt_id`, `thread_id`, `run_id`) around each execution, inside which the engine's
//! own spans and events appear.
//!
//! # Layout
//! - `worker`: [`Worker`], [`WorkerBuilder`] — the poll loop, attempts, graceful shutdown.
//! - `remote`: the engine's store on a worker: local copies, writes sent to the server.
//! - `client`: the protocol's HTTP calls.
//! - `backoff`: jittered exponential back-off.
//! - `error`: [`Error`].
//!
//! # Example
//! ```no_run
//! use oris_runtime::{NodeError, StateGraph};
//! use oris_core::graph::{END, START};
//! use oris_worker::{CancellationToken, Worker};
//!
//! #[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, oris_derive::State)]
//! #[oris(crate = "::oris_core")] // the `oris` facade's users leave this out
//! struct Count {
//!     n: i64,
//! }
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let graph = StateGraph::<Count>::new("count", "1")
//!     .node("inc", |s: Count, _ctx| async move {
//!         Ok::<_, NodeError>(CountUpdate::default().n(s.n + 1))
//!     })
//!     .edge(START, "inc")
//!     .edge("inc", END)
//!     .compile()?;
//! let worker = Worker::builder("http://127.0.0.1:8080")
//!     .token(std::env::var("ORIS_TOKEN")?)
//!     .capacity(8)
//!     .graph(graph)
//!     .build()?;
//! let shutdown = CancellationToken::new();
//! // Cancel `shutdown` on SIGTERM: running nodes finish, runs are handed back, `run` returns.
//! worker.run(shutdown).await?;
//! # Ok(())
//! # }
//! ```

mod backoff;
mod client;
mod error;
mod remote;
mod worker;

pub use error::Error;
pub use oris_core::protocol::{GraphRef, PROTOCOL_VERSION};
/// The shutdown signal [`Worker::run`] takes (re-exported from `tokio-util`).
pub use tokio_util::sync::CancellationToken;
pub use worker::{MAX_CAPACITY, Worker, WorkerBuilder};
