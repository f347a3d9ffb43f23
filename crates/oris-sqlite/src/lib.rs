//! The embedded SQLite storage backend of Oris: the default store, one file, nothing to
//! install.
//!
//! [`SqliteStore`] implements [`oris_core::store::Store`]. The database runs in WAL mode
//! with a busy timeout, so readers never block the writer nor each other, and several
//! processes may open the same file. Inside a process all writes go through **one writer
//! thread** that applies commits in groups: it takes every commit queued while the previous
//! group was being written and applies them in one transaction, each in its own savepoint,
//! so many concurrent runs share one fsync and a commit that fails validation (a conflict,
//! a refused status change) is rolled back alone. Reads use a small pool of read-only
//! connections on Tokio's blocking threads; nothing blocks an async worker thread.
//!
//! # Durability
//! Per commit, by [`Durability`](oris_core::event::Durability):
//! - `Sync` and `Exit`: `commit` returns once the transaction is fsynced
//!   (`synchronous=FULL`). Survives a process crash and a power loss.
//! - `Batched`: `commit` returns once the transaction is in the WAL, not fsynced
//!   (`synchronous=NORMAL`). Survives a process crash; a power loss or an OS crash can lose
//!   the last commits (never half of one: the WAL is checksummed).
//!
//! A group holding at least one `Sync`/`Exit` commit is fsynced as a whole. A failure of the
//! database itself (I/O error, disk full, lock timeout) refuses every commit of the group
//! with [`Error::Unavailable`], and none is applied.
//!
//! # Layout
//! - `schema`: the tables, as versioned migrations applied on open (`PRAGMA user_version`).
//! - `queries`: every SQL statement.
//! - `codec`: event kind codes, snapshot state encoding, column decoding with validation.
//! - `read`: reading threads, runs, events and snapshots back.
//! - `writer`: the writer thread and group commit.
//!
//! Stored per thread: a `threads` row, its `runs`, the `events` log (one row per event,
//! about 25 bytes beyond its JSON: a 100-superstep run of 90-byte updates takes ~14 KB) and at most one `snapshots` row (the latest replaces the
//! previous one; state over [`SqliteOptions::compress_snapshots_over`] bytes is
//! LZ4-compressed). Everything read back is validated: a row that does not decode is
//! [`Error::Corrupt`] naming the thread, the seq and the
//! column, never a default.
//!
//! # Example
//! ```
//! use oris_core::event::{Boundary, Durability, Event, EventBody, Payload, RunSettings, Task};
//! use oris_core::id::{RunId, Seq, ThreadId, Timestamp};
//! use oris_core::status::RunStatus;
//! use oris_core::store::{Commit, RunRecord, RunWrite, Store};
//! use oris_sqlite::{SqliteOptions, SqliteStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = SqliteStore::open(dir.path().join("oris.db"), SqliteOptions::default()).await?;
//!
//! // Start a run on a new thread: the run record and its first event, in one commit.
//! let thread_id = ThreadId::new("order-42")?;
//! let run_id = RunId::generate();
//! let now = Timestamp::now();
//! let started = Event {
//!     seq: Seq(1),
//!     run_id,
//!     at: now,
//!     body: EventBody::RunStarted {
//!         graph: "orders".into(),
//!         graph_version: "1".into(),
//!         input: Payload::from_json(r#"{"items":3}"#.into())?,
//!         settings: RunSettings { durability: Durability::Sync, deadline: None, superstep_limit: 25 },
//!         boundary: Boundary { next: vec![Task::Node("check".into())], ..Default::default() },
//!     },
//! };
//! let receipt = store
//!     .commit(Commit {
//!         thread_id: thread_id.clone(),
//!         expected_head: Seq::ZERO,
//!         events: vec![started.clone()],
//!         run: Some(RunWrite::Create(RunRecord {
//!             run_id,
//!             thread_id: thread_id.clone(),
//!             graph: "orders".into(),
//!             graph_version: "1".into(),
//!             status: RunStatus::Running,
//!             first_seq: Seq(1),
//!             created_at: now,
//!             updated_at: now,
//!         })),
//!         snapshot: None,
//!         durability: Durability::Sync,
//!     })
//!     .await?;
//! assert_eq!(receipt.head, Seq(1));
//! assert_eq!(store.events(&thread_id, Seq::ZERO, 100).await?, vec![started]);
//! assert_eq!(store.thread(&thread_id).await?.unwrap().active_run, Some(run_id));
//! # Ok(())
//! # }
//! ```

mod codec;
mod queries;
mod read;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use oris_core::event::Event;
use oris_core::id::{RunId, Seq, ThreadId};
use oris_core::store::{
    Commit, Error, Receipt, Result, RunFilter, RunRecord, Snapshot, Store, ThreadRecord,
};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Semaphore, oneshot};

use crate::codec::Fault;
use crate::writer::{Counters, Request, Write, Writer};

pub use crate::schema::LATEST as SCHEMA_VERSION;

/// How a [`SqliteStore`] is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// How long a connection waits for a lock held by another connection or process
    /// before giving up with [`Error::Unavailable`]. Default: 5 s.
    pub busy_timeout: Duration,
    /// Read-only connections in the read pool, at least 1; reads beyond this many wait
    /// for a free connection. Default: 2.
    pub read_connections: usize,
    /// The most commits applied in one group transaction (one fsync), at least 1.
    /// Default: 256.
    pub max_group: usize,
    /// Snapshot states longer than this many bytes of JSON are stored LZ4-compressed
    /// (when that makes them smaller). Default: 512 bytes.
    pub compress_snapshots_over: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: Duration::from_secs(5),
            read_connections: 2,
            max_group: 256,
            compress_snapshots_over: 512,
        }
    }
}

/// Counters of the writer, since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Group transactions that applied at least one write.
    pub transactions: u64,
    /// Of those, the ones fsynced at commit (they held a `Sync` or `Exit` commit).
    pub synced_transactions: u64,
    /// Commits applied. `commits / synced_transactions` is the number of commits per fsync.
    pub commits: u64,
    /// Requests sent to the writer and not yet taken into a group (a gauge).
    pub queue_depth: u64,
}

/// A [`Store`] in one SQLite file. See the [crate documentation](crate).
///
/// Dropping it closes the read connections, lets the writer thread finish the requests
/// already queued, and waits for it to close the last connection — which checkpoints the
/// WAL into the database file and removes it (typically a few milliseconds).
pub struct SqliteStore {
    path: PathBuf,
    /// `None` only while dropping.
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    readers: Arc<ReadPool>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating it and its directory if missing) the database at `path`, brings
    /// its schema up to date and starts the writer thread. The blocking work runs on
    /// Tokio's blocking pool.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the file cannot be created or opened, is not a database,
    /// or was written by a newer Oris (the message names both schema versions).
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub async fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, options))
            .await
            .map_err(|e| Error::Unavailable(format!("opening the database failed: {e}")))?
    }

    fn open_blocking(path: PathBuf, options: SqliteOptions) -> Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Unavailable(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        let context =
            |e: rusqlite::Error| Error::Unavailable(format!("cannot open {}: {e}", path.display()));
        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(context)?;
        configure(&conn, options.busy_timeout).map_err(context)?;
        let mode: String = conn
            .query_row(queries::JOURNAL_WAL, [], |r| r.get(0))
            .map_err(context)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Unavailable(format!(
                "cannot open {}: WAL mode refused (journal mode is {mode})",
                path.display()
            )));
        }
        conn.execute_batch(queries::WRITER_SETUP).map_err(context)?;
        schema::migrate(&mut conn, &path)?;

        let readers = Arc::new(ReadPool {
            path: path.clone(),
            busy_timeout: options.busy_timeout,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(options.read_connections.max(1))),
        });
        for _ in 0..options.read_connections.max(1) {
            let reader = readers.connect().map_err(Fault::into_error)?;
            readers.put(reader);
        }

        let counters = Arc::new(Counters::default());
        let (requests, receiver) = mpsc::channel();
        let writer = Writer {
            conn,
            requests: receiver,
            counters: counters.clone(),
            max_group: options.max_group.max(1),
            compress_over: options.compress_snapshots_over,
            full_sync: Some(true),
        };
        let handle = std::thread::Builder::new()
            .name("oris-sqlite-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| Error::Unavailable(format!("cannot start the writer thread: {e}")))?;
        tracing::debug!(path = %path.display(), "sqlite store opened");
        Ok(SqliteStore {
            path,
            requests: Some(requests),
            writer: Some(handle),
            counters,
            readers,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The writer's counters.
    pub fn stats(&self) -> Stats {
        Stats {
            transactions: self.counters.transactions.load(Ordering::Relaxed),
            synced_transactions: self.counters.synced_transactions.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
            queue_depth: self.counters.queued.load(Ordering::Relaxed),
        }
    }

    /// Bytes in the database's used pages, after moving the WAL into the file
    /// (`PRAGMA wal_checkpoint(TRUNCATE)`): `(page_count − freelist_count) × page_size`.
    /// Runs on the writer thread, after the writes queued before it.
    ///
    /// # Errors
    /// [`Error::Unavailable`] on an SQLite failure.
    pub async fn bytes_used(&self) -> Result<u64> {
        self.send(|reply| Request::BytesUsed { reply }).await
    }

    /// Sends a request to the writer and waits for its reply.
    ///
    /// Cancel safety: once sent, the request is carried out even if the future is dropped.
    async fn send<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let stopped = || Error::Unavailable("the sqlite writer thread has stopped".into());
        let (reply, response) = oneshot::channel();
        let requests = self.requests.as_ref().ok_or_else(stopped)?;
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        if requests.send(request(reply)).is_err() {
            self.counters.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(stopped());
        }
        response.await.map_err(|_| stopped())?
    }

    /// Runs `f` on a pooled read connection on Tokio's blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Fault> + Send + 'static,
    {
        let permit = self
            .readers
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Unavailable("the read pool is closed".into()))?;
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // A connection lost to a panic is replaced here.
            let conn = match pool.take() {
                Some(conn) => conn,
                None => pool.connect()?,
            };
            let out = f(&conn);
            pool.put(conn);
            out
        })
        .await
        .map_err(|e| Error::Unavailable(format!("read task failed: {e}")))?
        .map_err(Fault::into_error)
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Readers close first so that the writer's connection is the last one: SQLite then
        // checkpoints the WAL into the file and removes it (a read-only connection cannot),
        // leaving one self-contained file.
        self.readers
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        // Closing the channel ends the writer's loop once the queue is drained.
        drop(self.requests.take());
        if let Some(handle) = self.writer.take()
            && handle.join().is_err()
        {
            tracing::error!("the sqlite writer thread panicked");
        }
    }
}

/// Settings shared by the writer and the readers.
fn configure(conn: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(busy_timeout)?;
    // The query planner stability guarantee: plans do not depend on bound values. Without
    // it, every statement touching `runs` (which has a partial index) is re-prepared each
    // time a parameter is rebound, because the planner checks whether the bound value
    // matches the index's predicate — a parse per execution on the commit path.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(())
}

/// Read-only connections, at most `permits` in use at once.
#[derive(Debug)]
struct ReadPool {
    path: PathBuf,
    busy_timeout: Duration,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReadPool {
    fn connect(&self) -> Result<Connection, Fault> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&conn, self.busy_timeout)?;
        Ok(conn)
    }

    fn take(&self) -> Option<Connection> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn put(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
    }
}

#[async_trait]
impl Store for SqliteStore {
    /// Queues the commit for the writer thread and waits for its group to be written
    /// (and fsynced, for `Sync`/`Exit`).
    ///
    /// Cancel safety: dropping the future does not withdraw the commit; it may still land.
    async fn commit(&self, commit: Commit) -> Result<Receipt> {
        self.send(|reply| {
            Request::Write(Write::Commit {
                commit: Box::new(commit),
                reply,
            })
        })
        .await
    }

    async fn thread(&self, thread_id: &ThreadId) -> Result<Option<ThreadRecord>> {
        let thread_id = thread_id.clone();
        self.read(move |conn| Ok(read::thread(conn, &thread_id)?.map(|t| t.record)))
            .await
    }

    async fn run(&self, run_id: RunId) -> Result<Option<RunRecord>> {
        self.read(move |conn| Ok(read::run(conn, run_id)?.map(|r| r.record)))
            .await
    }

    async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let filter = filter.clone();
        self.read(move |conn| read::runs(conn, &filter)).await
    }

    async fn events(&self, thread_id: &ThreadId, after: Seq, limit: usize) -> Result<Vec<Event>> {
        let thread_id = thread_id.clone();
        self.read(move |conn| read::events(conn, &thread_id, after, limit))
            .await
    }

    async fn snapshot(&self, thread_id: &ThreadId, at_or_before: Seq) -> Result<Option<Snapshot>> {
        let thread_id = thread_id.clone();
        self.read(move |conn| read::snapshot(conn, &thread_id, at_or_before))
            .await
    }

    async fn delete_snapshots(&self, thread_id: &ThreadId) -> Result<u64> {
        let thread_id = thread_id.clone();
        self.send(|reply| Request::Write(Write::DeleteSnapshots { thread_id, reply }))
            .await
    }
}
