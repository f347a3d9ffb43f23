//! Oris: durable execution for graph workflows.
//!
//! Define a graph of async Rust functions over a typed state; Oris runs it superstep by
//! superstep, records every node's update in the thread's event log, and continues from
//! the last durable point after a crash — without running completed nodes again.
//!
//! # Layout
//! - [`State`] (trait and derive), [`state`]: typed state and reducers.
//! - [`StateGraph`], [`CompiledGraph`], [`START`], [`END`], [`Route`]: building graphs.
//! - [`Engine`], [`GraphHandle`], [`RunOutcome`]: running them.
//! - [`store`]: storage traits and backends; [`open_store`] picks one from a URL.
//! - `server` (feature `server`): the control-plane server, `oris::server::Server`.
//! - `worker` (feature `worker`): remote workers, `oris::worker::Worker`.
//!
//! # Example
//! ```
//! use oris::{END, Engine, NodeError, START, State, StateGraph};
//!
//! #[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, State)]
//! struct Doc {
//!     counter: i64,
//!     #[reducer(append)]
//!     log: Vec<String>,
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let graph = StateGraph::<Doc>::new("doc", "1")
//!     .node("a", |s: Doc, _ctx| async move {
//!         Ok::<_, NodeError>(DocUpdate::default().counter(s.counter + 1).log(vec!["a".into()]))
//!     })
//!     .node("b", |s: Doc, _ctx| async move {
//!         Ok(DocUpdate::default().counter(s.counter + 1).log(vec!["b".into()]))
//!     })
//!     .edge(START, "a")
//!     .edge("a", "b")
//!     .edge("b", END)
//!     .compile()?;
//! let dir = tempfile::tempdir()?;
//! let store = oris::open_store(&format!("sqlite://{}/oris.db", dir.path().display())).await?;
//! let engine = Engine::new(store);
//! let doc = engine.register(graph);
//! let out = doc.start("doc-1", Doc::default()).await?.expect_completed();
//! assert_eq!(out.counter, 2);
//! assert_eq!(out.log, ["a", "b"]);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use std::sync::Arc;

pub use oris_core::event::{Durability, Failure, FailureKind};
pub use oris_core::graph::{END, START};
pub use oris_core::id::{CheckpointId, DeliveryId, InterruptId, RunId, Seq, ThreadId, Timestamp};
pub use oris_core::state::State;
pub use oris_core::status::{PendingInterrupt, RunStatus, StatusKind};
pub use oris_core::{event, graph, id, state, status};
pub use oris_derive::State;
pub use oris_runtime::{
    CheckpointInfo, Clock, CompiledGraph, Context, EdgeInfo, EdgeKind, Engine, EngineOptions,
    Enqueue, EnqueueOptions, Error, Executed, GraphHandle, GraphInfo, LeaseOptions, LeaseView,
    ManualClock, NodeError, NodePolicy, Observer, RecoveryReport, ReplayOptions, RetryPolicy,
    Route, RunOptions, RunOutcome, RunRecordView, StateField, StateGraph, StateView, Stop,
    SystemClock, ThreadState, Verification, WAIT_POLL_MAX, WAIT_POLL_MIN,
};

/// Storage: the traits, the in-memory store, (feature `sqlite`) the SQLite store and
/// (feature `postgres`) the PostgreSQL store.
pub mod store {
    pub use oris_core::store::*;
    #[cfg(feature = "postgres")]
    pub use oris_postgres::{Listener, PostgresOptions, PostgresStore, Wake, redact_url};
    #[cfg(feature = "sqlite")]
    pub use oris_sqlite::{SqliteOptions, SqliteStore};
}

/// The control-plane server (feature `server`): graphs registered in code, an embedded
/// worker pool, the HTTP API. See [`server::Server`] and `docs/api.md`.
#[cfg(feature = "server")]
pub mod server {
    pub use oris_server::*;

    /// Wake-ups of a server's worker pool for runs made ready by other processes (see
    /// [`ServerBuilder::wake_on`]).
    pub type Wakes = std::pin::Pin<Box<dyn futures_util::Stream<Item = ()> + Send>>;

    /// Opens a server's store from a URL, like [`open_store`](crate::open_store). On
    /// PostgreSQL (feature `postgres`) it also returns the store's change notifications as
    /// wake-ups for [`ServerBuilder::wake_on`]: a run made ready by another process (a
    /// resume through another server, a released lease) then starts here within
    /// milliseconds instead of at the pool's next poll. Other stores: no wake-ups.
    ///
    /// # Errors
    /// [`OpenError`](crate::OpenError) naming the URL, for PostgreSQL without its password.
    pub async fn open_store(
        url: &str,
    ) -> Result<(std::sync::Arc<dyn crate::store::Store>, Option<Wakes>), crate::OpenError> {
        #[cfg(feature = "postgres")]
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            use crate::store::{PostgresOptions, PostgresStore};
            let pg = PostgresStore::connect(url, PostgresOptions::default())
                .await
                .map_err(|source| crate::OpenError::Store {
                    url: oris_postgres::redact_url(url),
                    source,
                })?;
            let wakes = futures_util::stream::unfold(pg.listen(), |mut listener| async move {
                // Any wake-up (a thread changed, or the listener reconnected and may have
                // missed some) means: claim again.
                listener.recv().await.map(|_| ((), listener))
            });
            return Ok((std::sync::Arc::new(pg), Some(Box::pin(wakes))));
        }
        Ok((crate::open_store(url).await?, None))
    }
}

/// Remote workers (feature `worker`): a process that registers graphs and pulls work from a
/// server over HTTP. See [`worker::Worker`] and `docs/workers.md`.
#[cfg(feature = "worker")]
pub mod worker {
    pub use oris_worker::*;
}

/// The guarantees of each durability mode, steps, interrupts, timers, events and time
/// travel — `docs/durable-execution.md`, whose examples are compiled and run as doc tests.
#[doc = include_str!("../../../docs/durable-execution.md")]
pub mod durable_execution {}

/// State, reducers, nodes, edges, breakpoints and validation — `docs/graphs.md`, whose
/// example is compiled and run as a doc test.
#[doc = include_str!("../../../docs/graphs.md")]
pub mod graphs_guide {}

/// SQLite or PostgreSQL: choosing, URLs, migrations, sharing a database, leases, backup and
/// restore — `docs/storage.md`, whose example is compiled and run as a doc test (it needs
/// the `sqlite` feature, on by default).
#[cfg(feature = "sqlite")]
#[doc = include_str!("../../../docs/storage.md")]
pub mod storage_guide {}

/// The project's `README.md`: its Rust examples are complete programs, compiled (and the
/// one that writes nothing outside memory, run) as doc tests.
#[doc = include_str!("../../../README.md")]
pub mod readme {}

#[doc(hidden)]
pub mod __private {
    pub use serde;
}

/// A store URL that cannot be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The URL's scheme is not supported by this build.
    #[error(
        "unsupported store URL `{0}`: expected sqlite://PATH, postgres://… (with the \
         `postgres` feature) or memory://"
    )]
    Unsupported(String),
    /// The store failed to open.
    #[error("cannot open store `{url}`: {source}")]
    Store {
        /// The URL.
        url: String,
        /// Why.
        source: oris_core::store::Error,
    },
}

/// Opens a store from a URL:
/// - `sqlite://PATH` (relative or absolute; created if missing; feature `sqlite`, on by
///   default);
/// - `postgres://USER:PASSWORD@HOST:PORT/DB` or `postgresql://…` (feature `postgres`):
///   connects with the default [`PostgresOptions`](store::PostgresOptions) (a pool of 16
///   connections, the `public` schema, no TLS) and migrates the schema;
/// - `memory://` (nothing persists).
///
/// # Errors
/// [`OpenError`] naming the URL — for PostgreSQL without its password.
pub async fn open_store(url: &str) -> Result<Arc<dyn store::Store>, OpenError> {
    if url == "memory://" || url == "memory:" {
        return Ok(Arc::new(store::MemoryStore::new()));
    }
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let s = store::PostgresStore::connect(url, store::PostgresOptions::default())
            .await
            .map_err(|source| OpenError::Store {
                url: oris_postgres::redact_url(url),
                source,
            })?;
        return Ok(Arc::new(s));
    }
    #[cfg(feature = "sqlite")]
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let s = store::SqliteStore::open(path, store::SqliteOptions::default())
            .await
            .map_err(|source| OpenError::Store {
                url: url.to_owned(),
                source,
            })?;
        return Ok(Arc::new(s));
    }
    Err(OpenError::Unsupported(url.to_owned()))
}
