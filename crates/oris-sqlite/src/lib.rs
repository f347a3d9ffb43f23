//! The embedded SQLite storage backend of Oris: the default store, one file, nothing to
//! install.
//!
//! [`SqliteStore`] implements [`oris_core::store::Store`]. The database runs in WAL mode
//! with a busy timeout, so readers never block the writer nor each other, and several
//! processes may open the same file.
//!
//! # Writes: group commit, served by the callers themselves
//! Inside a process all writes go through **one write connection**, fed by one queue and
//! applied in groups: whoever serves the queue takes every request queued (up to
//! [`SqliteOptions::max_group`]) and applies them in one transaction, each in its own
//! savepoint, so many concurrent runs share one fsync and a commit that fails validation (a
//! conflict, a refused status change) is rolled back alone.
//!
//! Who serves: on a multi-thread Tokio runtime, a caller that finds nobody serving becomes
//! the *leader* and writes the group — its own commit first, plus whatever else is queued
//! — on its own thread, inside [`tokio::task::block_in_place`] (which hands the worker's
//! other tasks to another thread meanwhile). Callers arriving while a group is being
//! written queue their request and wait; when the leader is done and requests are left,
//! it hands them to the store's **writer thread**, which serves the queue until it is empty.
//! So a sequential caller — one run committing superstep after superstep — pays no hop
//! between threads per commit, while concurrent callers are grouped as before. On a
//! current-thread runtime (where `block_in_place` is not allowed) every request is served by
//! the writer thread. Reads likewise run inline inside `block_in_place` on a multi-thread
//! runtime when a read connection is free, and on Tokio's blocking pool otherwise: nothing
//! blocks an async worker thread outside `block_in_place`.
//!
//! Short reads by key — a thread, a run, an interrupt, the first 64 events of
//! a page — run on the **write connection when nobody is writing**: its page cache holds
//! what the last commits wrote, while a read connection starts over after every commit
//! (SQLite drops a connection's cache when the WAL changed) and reads each page again. A
//! run reading back what it just committed pays microseconds instead; a commit arriving
//! meanwhile waits for the read, as it would for another commit. While the writer is busy,
//! or serves concurrent writers (its last group held more than one commit, or a commit had
//! to wait for a read), these reads go to the read pool: many runs in flight keep the write
//! connection for their groups.
//!
//! # Durability
//! Per commit, by [`Durability`](oris_core::event::Durability):
//! - `Sync` and `Exit`: `commit` returns once the transaction is fsynced
//!   (`synchronous=FULL`). Survives a process crash and a power loss.
//! - `Batched`: `commit` returns once the transaction is in the WAL, not fsynced
//!   (`synchronous=NORMAL`). Survives a process crash; a power loss or an OS crash can lose
//!   the last commits (never half of one: the WAL is checksummed).
//!
//! A group holding at least one `Sync`/`Exit` commit is fsynced as a whole, and every
//! caller in it — leader or not — is answered only after that group's `COMMIT` (and so its
//! fsync) returned: no caller hears of its commit before the fsync that contains it. A
//! failure of the database itself (I/O error, disk full, lock timeout) refuses every
//! commit of the group with [`Error::Unavailable`], and none is applied.
//!
//! # Backup and restore
//! [`SqliteStore::backup_to`] writes a consistent copy while the store keeps serving
//! (`VACUUM INTO` on a read-only connection of its own: one read transaction, which in WAL
//! mode blocks no commit); [`SqliteStore::restore_from`] validates a backup and puts it in
//! place for a store that is not open. `docs/storage.md` has the procedure.
//!
//! # Layout
//! - `schema`: the tables, as versioned migrations applied on open (`PRAGMA user_version`).
//! - `queries`: every SQL statement.
//! - `codec`: event kind codes, snapshot state encoding, column decoding with validation.
//! - `read`: reading threads, runs, events, snapshots, interrupts, deliveries, idempotency
//!   records, API keys and audit entries back.
//! - `writer`: the queue, group commit, the leader and the writer thread.
//! - `control`: claims, leases, idempotency records, API keys and the audit log on the
//!   write connection.
//! - `backup`: online backup (`VACUUM INTO`) and restore.
//!
//! Stored per thread: a `threads` row, its `runs`, the `events` log (one row per event,
//! about 25 bytes beyond its JSON: a 100-superstep run of 90-byte updates takes ~14 KB), at
//! most one `snapshots` row (the latest replaces the previous one; state over
//! [`SqliteOptions::compress_snapshots_over`] bytes is LZ4-compressed), its `interrupts`
//! and its `deliveries`. Everything read back is validated: a row that does not decode is
//! [`Error::Corrupt`] naming the thread, the seq and the column, never a default.
//!
//! # Interrupts and deliveries
//! Interrupt rows are written by the commits that raise and apply them
//! ([`interrupt_effects`](oris_core::store::interrupt_effects)), and deliveries are marked
//! consumed by the commits that receive them
//! ([`consumed_deliveries`](oris_core::store::consumed_deliveries)), in the commit's own
//! transaction. [`Store::answer_interrupt`] and [`Store::deliver`] are writes too: they go
//! through the same queue and write connection as commits, read and decide
//! ([`plan_answer`](oris_core::store::plan_answer),
//! [`check_redelivery`](oris_core::store::check_redelivery)) inside the group transaction,
//! so they are atomic and serialized with commits — of concurrent answers to one interrupt
//! exactly one is `Recorded` — and they are fsynced before they return.
//!
//! # Leases, workers, idempotency, API keys, audit
//! What a server keeps beside the threads (schema versions 2 and 3). Every run has a `priority`,
//! optional `metadata` (a JSON object of strings, stored as sent), a `ready_at` — when a
//! worker may claim it — and its lease: the fencing epoch of the latest claim and the
//! current holder with its expiry. The store maintains `ready_at` by the rules of
//! `oris_core::store` ([`plan_commit`](oris_core::store::plan_commit) from the status, and
//! in the same transaction [`ready_on_answer`](oris_core::store::ready_on_answer) for a run
//! that suspends with its answers already recorded or whose last open interrupt gets
//! answered, and the earliest pending matching delivery for a run that starts waiting or
//! [`ready_on_delivery`](oris_core::store::ready_on_delivery) when one arrives).
//!
//! - [`Store::claim`], [`Store::renew_lease`] and [`Store::release_lease`] are write
//!   requests of their own in the writer's queue, decided by
//!   [`plan_claim`](oris_core::store::plan_claim) and its siblings on rows read in the group
//!   transaction: no run is claimed twice, even by concurrent claimers or by another process
//!   on the file (`BEGIN IMMEDIATE`). A claim reads the partial index `runs_ready`
//!   (`priority, ready_at, run_id` of runs with a `ready_at`): it seeks the highest priority
//!   present, takes that priority's runs ready by now in order, and moves to the next
//!   priority only if it needs more — it never scans the runs.
//! - [`Store::reap_leases`] is a write request too: it reads the expired leases at the head
//!   of the partial index `runs_leased` (`lease_expires, run_id` of leased runs only) and
//!   clears them by [`plan_reap`](oris_core::store::plan_reap); [`Store::lease_counts`]
//!   reads the live leases at its tail. Neither scans the runs.
//! - The worker registry (`workers`, one row per worker id, its graph versions as a JSON
//!   array): [`Store::register_worker`] and [`Store::touch_worker`] are write requests,
//!   [`Store::workers`] a read.
//! - A commit with a [`fence`](oris_core::store::Commit::fence) reads the fenced run in its
//!   own transaction and is refused with [`Error::LeaseLost`] (writing nothing) unless the
//!   lease is current and unexpired by the store's clock.
//! - Idempotency records (`idempotency`, keyed by scope and key, purged by an index on
//!   expiry), API keys (`api_keys`, the secret's hash only) and the audit log (`audit`, ids
//!   from `AUTOINCREMENT`, never reused) are written through the same queue; listings of
//!   interrupts, keys and audit entries are reads on the read connections.
//!
//! Durability: claims, renewals, releases, reaps, worker registrations and heartbeats,
//! idempotency records and audit entries do not ask for an fsync of their own. Once one returned, its transaction is in the WAL (written
//! to the operating system with `synchronous=NORMAL`), so killing the process cannot lose
//! it; the next fsync of the sequential WAL — the store's next durable commit — makes it
//! survive a power loss as well. A power loss can undo only the unfsynced tail: a claim or
//! renewal (the lease ends early; the process's workers died with it), a release (the run
//! stays leased until expiry), an audit entry, or an idempotency response (a retry runs the
//! request again once its lock expires). API key creation and revocation are fsynced
//! before they return.
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
//!         settings: RunSettings { durability: Durability::Sync, deadline: None, superstep_limit: 25, interrupt_before: vec![], interrupt_after: vec![] },
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
//!             priority: 0,
//!             metadata: None,
//!             ready_at: None,
//!             lease_epoch: 0,
//!             lease: None,
//!         })),
//!         snapshot: None,
//!         durability: Durability::Sync,
//!         fence: None,
//!     })
//!     .await?;
//! assert_eq!(receipt.head, Seq(1));
//! assert_eq!(store.events(&thread_id, Seq::ZERO, 100).await?, vec![started]);
//! assert_eq!(store.thread(&thread_id).await?.unwrap().active_run, Some(run_id));
//! # Ok(())
//! # }
//! ```

mod backup;
mod codec;
mod control;
mod queries;
mod read;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use oris_core::event::{Event, Payload};
use oris_core::id::{InterruptId, RunId, Seq, ThreadId, Timestamp};
use oris_core::store::{
    Answer, ApiKeyRecord, AuditFilter, AuditRecord, ClaimRequest, Commit, Delivery, Error, Fence,
    IdempotencyRecord, InterruptFilter, InterruptRecord, PendingRun, Receipt, Reservation, Result,
    RunFilter, RunRecord, Snapshot, Store, StoredResponse, ThreadRecord, WorkerRecord,
};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::{Semaphore, oneshot};

use crate::codec::Fault;
use crate::writer::{Counters, Request, Role, Shared, Write, Writer};

pub use crate::schema::LATEST as SCHEMA_VERSION;

/// The most events [`Store::events`] reads as a point read.
const POINT_EVENTS: usize = 64;

/// The default [`SqliteOptions::page_size`].
pub const DEFAULT_PAGE_SIZE: u32 = 2048;

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
    /// The page size of a database file this store creates: a power of two from 512 to
    /// 65,536 bytes. A file that exists keeps the page size it was created with. Default:
    /// 2,048 bytes — Oris' rows are small, and a commit writes every page it touches to the
    /// WAL whole, so smaller pages mean fewer bytes per fsync (see `docs/storage.md`).
    pub page_size: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: Duration::from_secs(5),
            read_connections: 2,
            max_group: 256,
            compress_snapshots_over: 512,
            page_size: DEFAULT_PAGE_SIZE,
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
    /// Requests taken into the group being written and not yet answered (a gauge).
    pub in_group: u64,
}

/// A [`Store`] in one SQLite file. See the [crate documentation](crate).
///
/// Dropping it closes the read connections, lets the writer thread finish the requests
/// still queued (possible only if a waiting caller's future was dropped), and waits for it
/// to close the last connection — which checkpoints the
/// WAL into the database file and removes it (typically a few milliseconds).
pub struct SqliteStore {
    path: PathBuf,
    shared: Arc<Shared>,
    /// `None` only while dropping.
    writer: Option<JoinHandle<()>>,
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
        if !(512..=65_536).contains(&options.page_size) || !options.page_size.is_power_of_two() {
            return Err(Error::Incompatible(format!(
                "page size {} is not a power of two from 512 to 65536",
                options.page_size
            )));
        }
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
        // Takes effect only on a file without tables yet: before the WAL switch below
        // writes the file's header, or on an empty file. An existing database keeps its own.
        conn.pragma_update(None, "page_size", options.page_size)
            .map_err(context)?;
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

        let writer = Writer {
            conn,
            counters: Arc::new(Counters::default()),
            compress_over: options.compress_snapshots_over,
            full_sync: Some(true),
        };
        let shared = Arc::new(Shared::new(writer, options.max_group));
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("oris-sqlite-writer".into())
            .spawn(move || thread_shared.run_writer_thread())
            .map_err(|e| Error::Unavailable(format!("cannot start the writer thread: {e}")))?;
        tracing::debug!(path = %path.display(), "sqlite store opened");
        Ok(SqliteStore {
            path,
            shared,
            writer: Some(handle),
            readers,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The writer's counters.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            transactions: c.transactions.load(Ordering::Relaxed),
            synced_transactions: c.synced_transactions.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            queue_depth: c.queued.load(Ordering::Relaxed),
            in_group: c.in_group.load(Ordering::Relaxed),
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

    /// Writes a consistent copy of the database to `path` while the store keeps serving:
    /// `VACUUM INTO` on a read-only connection of its own, on Tokio's blocking pool.
    ///
    /// The copy holds exactly the commits that had returned when its read transaction
    /// began (for `Batched` commits: those in the WAL, fsynced or not) and nothing later;
    /// reads and commits go on meanwhile — in WAL mode a reader blocks neither. It is one
    /// compact, self-contained file (no `-wal`, free pages dropped), fsynced before this
    /// returns, that [`SqliteStore::open`] opens directly or [`SqliteStore::restore_from`]
    /// puts in place. While it runs, the WAL cannot be checkpointed past the copy's start,
    /// so it grows with the commits made meanwhile (afterwards it is reused from its
    /// start; the file keeps its size).
    ///
    /// Why not SQLite's online backup API: it copies a few pages per step and starts over
    /// whenever another connection writes between steps, which under a steady workload
    /// may be always; `VACUUM INTO` reads everything in one transaction.
    ///
    /// Cancel safety: dropping the future does not stop the copy already started on the
    /// blocking pool; the file is then still written (or removed if the copy fails).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when `path` already exists (a backup never overwrites a
    /// file), is not valid UTF-8, or the copy fails (disk full, I/O error); a partial copy
    /// is removed.
    ///
    /// # Example
    /// ```
    /// use oris_sqlite::{SqliteOptions, SqliteStore};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let store = SqliteStore::open(dir.path().join("oris.db"), SqliteOptions::default()).await?;
    /// // … the store serves runs meanwhile …
    /// store.backup_to(dir.path().join("oris-backup.db")).await?;
    /// assert!(store.backup_to(dir.path().join("oris-backup.db")).await.is_err()); // exists
    /// drop(store); // restore only onto a database nobody has open
    ///
    /// SqliteStore::restore_from(dir.path().join("oris-backup.db"), dir.path().join("oris.db")).await?;
    /// let store = SqliteStore::open(dir.path().join("oris.db"), SqliteOptions::default()).await?;
    /// # drop(store);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn backup_to(&self, path: impl AsRef<Path>) -> Result<()> {
        let (source, dest) = (self.path.clone(), path.as_ref().to_path_buf());
        let busy_timeout = self.readers.busy_timeout;
        tokio::task::spawn_blocking(move || backup::backup(&source, &dest, busy_timeout))
            .await
            .map_err(|e| Error::Unavailable(format!("the backup task failed: {e}")))?
    }

    /// Puts the backup at `backup` in place as the database at `target`, for a store that
    /// is **not open** — by no process, this one included: a process with `target` open
    /// keeps using the file it opened (and its WAL), not the restored one, and may damage
    /// the restored one when it closes. Runs on Tokio's blocking pool.
    ///
    /// Steps: the backup is copied next to `target` (the backup itself is never modified)
    /// and the copy is validated — `PRAGMA integrity_check` must report `ok`, it must hold
    /// an Oris schema no newer than this build's ([`SCHEMA_VERSION`]), and pending
    /// migrations are applied as on [`SqliteStore::open`]; then the copy is fsynced, the
    /// old database's `-wal`, `-shm` and `-journal` files are removed (they belong to the
    /// replaced file and would be replayed onto the restored one), and the copy is renamed
    /// over `target` (atomic: `target` is either the old file or the restored one) and the
    /// directory fsynced. An existing `target` is **replaced**: move it aside first to keep
    /// it. Restoring takes the store back to the instant of the backup; runs that were
    /// unfinished then are unfinished again and recovery continues them.
    ///
    /// As a safeguard it refuses when it can see that `target` is open (SQLite's exclusive
    /// lock on the file cannot be taken); that check cannot see a process that opens the
    /// file after it, nor locks on file systems that lack them (some network file systems).
    ///
    /// # Errors
    /// [`Error::Incompatible`] when the backup is not a sound SQLite database, holds no
    /// Oris schema, or has a newer schema than this build — the message names the backup
    /// and the problem, and `target` is left as it was. [`Error::Unavailable`] when
    /// `target` is open, the backup cannot be read, or the copy or rename fails.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub async fn restore_from(backup: impl AsRef<Path>, target: impl AsRef<Path>) -> Result<()> {
        let (backup, target) = (backup.as_ref().to_path_buf(), target.as_ref().to_path_buf());
        let busy_timeout = SqliteOptions::default().busy_timeout;
        tokio::task::spawn_blocking(move || backup::restore(&backup, &target, busy_timeout))
            .await
            .map_err(|e| Error::Unavailable(format!("the restore task failed: {e}")))?
    }

    /// Queues a request for the write connection and waits for its reply.
    ///
    /// On a multi-thread runtime, a caller that finds nobody serving the queue serves it
    /// itself, on its own thread inside [`tokio::task::block_in_place`] (one group: its
    /// request and whatever else is queued), so a lone caller's commit costs no hand-off
    /// between threads. Otherwise the request waits for the serving caller or the writer
    /// thread to reply.
    ///
    /// Cancel safety: once queued, the request is carried out even if the future is
    /// dropped.
    async fn send<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let stopped = || Error::Unavailable("the sqlite writer stopped without answering".into());
        let (reply, response) = oneshot::channel();
        match self.shared.submit(request(reply), can_block_in_place()) {
            Ok(Role::Lead) => tokio::task::block_in_place(|| self.shared.lead()),
            Ok(Role::Wait) => {}
            Err(_) => return Err(stopped()),
        }
        response.await.map_err(|_| stopped())?
    }

    /// Runs a short read — a few rows found by key — on the write connection when nobody
    /// is writing and the caller may block its thread (inside
    /// [`tokio::task::block_in_place`]), and otherwise like [`SqliteStore::read`].
    async fn point_read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Fault> + Send + 'static,
    {
        match self.read_on_writer(f) {
            Ok(out) => out,
            Err(f) => self.read(f).await,
        }
    }

    /// Runs `f` on the write connection if it is idle, writes come one at a time and the
    /// caller may block; gives `f` back, not run, otherwise. The write connection's page
    /// cache holds what the last commits wrote; a read connection re-reads every page it
    /// touches after each commit (SQLite resets its cache when the WAL changed), so a
    /// sequential caller's read of what it just wrote costs far less here. Writers arriving
    /// meanwhile queue for the few microseconds it takes.
    fn read_on_writer<T, F>(&self, f: F) -> std::result::Result<Result<T>, F>
    where
        F: FnOnce(&Connection) -> Result<T, Fault>,
    {
        if !(can_block_in_place() && self.shared.reads_here()) {
            return Err(f);
        }
        tokio::task::block_in_place(|| self.shared.try_read(f))
            .map(|out| out.map_err(Fault::into_error))
    }

    /// Runs `f` on a pooled read connection: on a multi-thread runtime with a connection
    /// free, on the caller's thread inside [`tokio::task::block_in_place`] (a read takes
    /// microseconds; a hop to another thread and back costs more); otherwise on Tokio's
    /// blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, Fault> + Send + 'static,
    {
        if can_block_in_place()
            && let Ok(_permit) = self.readers.permits.try_acquire()
        {
            return tokio::task::block_in_place(|| self.readers.with_connection(f))
                .map_err(Fault::into_error);
        }
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
            pool.with_connection(f)
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
        // The writer thread serves what is still queued, closes the connection and stops.
        self.shared.close();
        if let Some(handle) = self.writer.take()
            && handle.join().is_err()
        {
            tracing::error!("the sqlite writer thread panicked");
        }
    }
}

/// Whether the current task may block its thread in [`tokio::task::block_in_place`]:
/// only on a multi-thread runtime (it panics on a current-thread one).
fn can_block_in_place() -> bool {
    Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread)
}

/// Settings shared by the writer and the readers.
fn configure(conn: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(busy_timeout)?;
    // The query planner stability guarantee: plans do not depend on bound values. Without
    // it, every statement touching `runs` (which has a partial index) is re-prepared each
    // time a parameter is rebound, because the planner checks whether the bound value
    // matches the index's predicate — a parse per execution on the commit path.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // The write connection runs the commit path's statements and the point reads'; a
    // statement evicted from the cache is parsed again on its next use.
    conn.set_prepared_statement_cache_capacity(64);
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

    /// Runs `f` on an idle connection (the caller holds a permit, so there is one, unless
    /// one was lost to a panic: then a new one is opened).
    fn with_connection<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, Fault>,
    ) -> Result<T, Fault> {
        let conn = match self.take() {
            Some(conn) => conn,
            None => self.connect()?,
        };
        let out = f(&conn);
        self.put(conn);
        out
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
    /// Queues the commit and waits for its group to be written (and fsynced, for
    /// `Sync`/`Exit`) — by this caller itself when nobody else is writing and the runtime is
    /// multi-threaded (see the [crate documentation](crate)).
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
        self.point_read(move |conn| Ok(read::thread(conn, &thread_id)?.map(|t| t.record)))
            .await
    }

    async fn run(&self, run_id: RunId) -> Result<Option<RunRecord>> {
        self.point_read(move |conn| Ok(read::run(conn, run_id)?.map(|r| r.record)))
            .await
    }

    async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let filter = filter.clone();
        self.read(move |conn| read::runs(conn, &filter)).await
    }

    async fn due_runs(&self, now: Timestamp, limit: usize) -> Result<Vec<RunRecord>> {
        self.read(move |conn| read::due_runs(conn, now, limit))
            .await
    }

    /// Up to `POINT_EVENTS` (64) events — a short log, or the first page of a long one — are
    /// read on the idle write connection and the rest of a longer page on a read
    /// connection, so that a long read never holds up commits; the whole page on a read
    /// connection when the write connection is not free.
    async fn events(&self, thread_id: &ThreadId, after: Seq, limit: usize) -> Result<Vec<Event>> {
        let head = limit.min(POINT_EVENTS);
        let tid = thread_id.clone();
        let first = self.read_on_writer(move |conn| read::events(conn, &tid, after, head));
        let tid = thread_id.clone();
        let mut events = match first {
            Ok(events) => events?,
            Err(_) => {
                return self
                    .read(move |conn| read::events(conn, &tid, after, limit))
                    .await;
            }
        };
        if let Some(last) = events.last().map(|e| e.seq)
            && events.len() == head
            && head < limit
        {
            let rest = limit - head;
            events.extend(
                self.read(move |conn| read::events(conn, &tid, last, rest))
                    .await?,
            );
        }
        Ok(events)
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

    async fn delete_thread(&self, thread_id: &ThreadId) -> Result<()> {
        let thread_id = thread_id.clone();
        self.send(|reply| Request::Write(Write::DeleteThread { thread_id, reply }))
            .await
    }

    async fn prune(&self, thread_id: &ThreadId, base: Event) -> Result<u64> {
        let thread_id = thread_id.clone();
        let base = Box::new(base);
        self.send(|reply| {
            Request::Write(Write::Prune {
                thread_id,
                base,
                reply,
            })
        })
        .await
    }

    async fn interrupt(&self, interrupt_id: InterruptId) -> Result<Option<InterruptRecord>> {
        self.point_read(move |conn| {
            Ok(read::interrupt(conn, interrupt_id, false)?.map(|i| i.record))
        })
        .await
    }

    async fn interrupts(&self, thread_id: &ThreadId) -> Result<Vec<InterruptRecord>> {
        let thread_id = thread_id.clone();
        self.read(move |conn| read::interrupts(conn, &thread_id))
            .await
    }

    /// A write like a commit: decided and recorded on the write connection, in a group
    /// transaction that is fsynced before this returns.
    async fn answer_interrupt(
        &self,
        interrupt_id: InterruptId,
        value: Payload,
        at: Timestamp,
    ) -> Result<(Answer, InterruptRecord)> {
        self.send(|reply| {
            Request::Write(Write::AnswerInterrupt {
                interrupt_id,
                value,
                at,
                reply,
            })
        })
        .await
    }

    /// A write like a commit: decided and recorded on the write connection, in a group
    /// transaction that is fsynced before this returns.
    async fn deliver(
        &self,
        thread_id: &ThreadId,
        name: &str,
        payload: Payload,
        key: Option<String>,
        at: Timestamp,
    ) -> Result<(Delivery, bool)> {
        let (thread_id, name) = (thread_id.clone(), name.to_owned());
        self.send(|reply| {
            Request::Write(Write::Deliver {
                thread_id,
                name,
                payload,
                key,
                at,
                reply,
            })
        })
        .await
    }

    async fn deliveries(&self, thread_id: &ThreadId, pending_only: bool) -> Result<Vec<Delivery>> {
        let thread_id = thread_id.clone();
        self.read(move |conn| read::deliveries(conn, &thread_id, pending_only))
            .await
    }

    async fn list_interrupts(&self, filter: &InterruptFilter) -> Result<Vec<InterruptRecord>> {
        let filter = filter.clone();
        self.read(move |conn| read::list_interrupts(conn, &filter))
            .await
    }

    /// A write on the write connection, in a group transaction; durable with the store's
    /// next durable commit (a process kill cannot lose it once it returned; see
    /// [the durability of control-plane writes](crate#leases-idempotency-api-keys-audit)).
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<RunRecord>> {
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        let request = Box::new(request.clone());
        self.send(|reply| Request::Write(Write::Claim { request, reply }))
            .await
    }

    async fn renew_lease(
        &self,
        fence: &Fence,
        worker_id: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<RunRecord> {
        let (fence, worker_id) = (*fence, worker_id.to_owned());
        self.send(|reply| {
            Request::Write(Write::RenewLease {
                fence,
                worker_id,
                now,
                ttl,
                reply,
            })
        })
        .await
    }

    async fn release_lease(&self, fence: &Fence, now: Timestamp) -> Result<RunRecord> {
        let fence = *fence;
        self.send(|reply| Request::Write(Write::ReleaseLease { fence, now, reply }))
            .await
    }

    async fn reap_leases(&self, now: Timestamp, limit: usize) -> Result<Vec<RunRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.send(|reply| Request::Write(Write::ReapLeases { now, limit, reply }))
            .await
    }

    async fn lease_counts(&self, now: Timestamp) -> Result<Vec<(String, u64)>> {
        self.read(move |conn| read::lease_counts(conn, now)).await
    }

    async fn register_worker(&self, worker: &WorkerRecord) -> Result<()> {
        let worker = Box::new(worker.clone());
        self.send(|reply| Request::Write(Write::RegisterWorker { worker, reply }))
            .await
    }

    async fn touch_worker(&self, worker_id: &str, now: Timestamp) -> Result<bool> {
        let worker_id = worker_id.to_owned();
        self.send(|reply| {
            Request::Write(Write::TouchWorker {
                worker_id,
                now,
                reply,
            })
        })
        .await
    }

    async fn workers(&self) -> Result<Vec<WorkerRecord>> {
        self.read(read::workers).await
    }

    /// Fsynced before it returns.
    async fn push_pending(&self, run: &PendingRun) -> Result<u64> {
        let run = Box::new(run.clone());
        self.send(|reply| Request::Write(Write::PushPending { run, reply }))
            .await
    }

    async fn pending_runs(&self, thread_id: &ThreadId) -> Result<Vec<PendingRun>> {
        let thread_id = thread_id.clone();
        self.read(move |conn| read::pending_runs(conn, &thread_id))
            .await
    }

    async fn pending_threads(&self, limit: usize) -> Result<Vec<ThreadId>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(move |conn| read::pending_threads(conn, limit))
            .await
    }

    /// Durable with the store's next durable commit.
    async fn remove_pending(&self, run_id: RunId) -> Result<bool> {
        self.send(|reply| Request::Write(Write::RemovePending { run_id, reply }))
            .await
    }

    async fn reserve_idempotency(
        &self,
        candidate: &IdempotencyRecord,
        now: Timestamp,
    ) -> Result<Reservation> {
        let candidate = Box::new(candidate.clone());
        self.send(|reply| {
            Request::Write(Write::ReserveIdempotency {
                candidate,
                now,
                reply,
            })
        })
        .await
    }

    async fn complete_idempotency(
        &self,
        scope: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<()> {
        let (scope, key, response) = (scope.to_owned(), key.to_owned(), response.clone());
        self.send(|reply| {
            Request::Write(Write::CompleteIdempotency {
                scope,
                key,
                response,
                reply,
            })
        })
        .await
    }

    async fn release_idempotency(&self, scope: &str, key: &str) -> Result<()> {
        let (scope, key) = (scope.to_owned(), key.to_owned());
        self.send(|reply| Request::Write(Write::ReleaseIdempotency { scope, key, reply }))
            .await
    }

    async fn purge_idempotency(&self, now: Timestamp) -> Result<u64> {
        self.send(|reply| Request::Write(Write::PurgeIdempotency { now, reply }))
            .await
    }

    /// Fsynced before it returns.
    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        let key = Box::new(key.clone());
        self.send(|reply| Request::Write(Write::CreateApiKey { key, reply }))
            .await
    }

    async fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>> {
        let key_id = key_id.to_owned();
        self.read(move |conn| read::api_key(conn, &key_id)).await
    }

    async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        self.read(read::api_keys).await
    }

    /// Fsynced before it returns.
    async fn revoke_api_key(&self, key_id: &str, at: Timestamp) -> Result<bool> {
        let key_id = key_id.to_owned();
        self.send(|reply| Request::Write(Write::RevokeApiKey { key_id, at, reply }))
            .await
    }

    async fn append_audit(&self, record: &AuditRecord) -> Result<u64> {
        let record = Box::new(record.clone());
        self.send(|reply| Request::Write(Write::AppendAudit { record, reply }))
            .await
    }

    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let filter = filter.clone();
        self.read(move |conn| read::audit(conn, &filter)).await
    }
}
