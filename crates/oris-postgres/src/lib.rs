//! The PostgreSQL storage backend of Oris: the production store, for many Oris processes
//! sharing one database.
//!
//! [`PostgresStore`] implements [`oris_core::store::Store`] with the same semantics as the
//! SQLite store (both pass the one conformance suite of `oris-testkit`), over a pool of
//! connections ([`deadpool_postgres`] over [`tokio_postgres`]).
//!
//! # Concurrency
//! Every write is one transaction on one pooled connection; there is no lock in the
//! process, so 32 concurrent runs use up to [`PostgresOptions::pool_size`] connections in
//! parallel. Two writers of one thread — in one process or in many — are serialized by a
//! row lock on the thread (`SELECT … FOR NO KEY UPDATE`), taken before the head is
//! compared: the second sees the first's head and fails with [`Error::Conflict`]; history
//! never forks. Every commit is validated by
//! [`plan_commit`](oris_core::store::plan_commit) on the rows read in its own transaction.
//! Serialization failures and deadlocks (`40001`, `40P01`) and a connection found broken
//! before `COMMIT` re-run the transaction a few times, then give [`Error::Unavailable`].
//!
//! Writers that touch a run lock its row (`FOR NO KEY UPDATE`), always after the thread's
//! row and before interrupt rows, so they do not deadlock each other: a commit changing a
//! run's status or fenced by its lease, a renewal or release, an answer to one of its
//! interrupts, a delivery to its thread. Readiness is therefore never lost to a race: an
//! answer (or delivery) and the commit suspending the run on it are serialized on the run's
//! row, and whichever comes second sees the other's write.
//!
//! # Claims and leases
//! [`Store::claim`] is one statement: a CTE takes the ready runs in claim order (priority,
//! then `ready_at`, then run id) from the partial index `runs_claim`, locks them `FOR NO KEY
//! UPDATE SKIP LOCKED` — concurrent claimers, in any number of processes, neither wait for
//! each other nor take the same run, and a run a commit holds is skipped, not waited for —
//! and an `UPDATE` applies the core's `plan_claim`. The statement returns each run before
//! and after; the transaction checks every pair against `plan_claim` and rolls the claim
//! back ([`Error::Corrupt`]) on any disagreement, so the SQL cannot drift from the rule.
//! A claim reads the index entries of ready runs plus, when fewer than `limit` are ready,
//! the entries of runs not ready yet (leased or sleeping) of the priorities it scans: an
//! idle poll costs one scan of the index entries of leased and sleeping runs, without
//! touching the table. A fenced commit checks its lease (`plan_commit`) on the run's
//! locked row in its own transaction; a lost lease writes nothing.
//!
//! [`Store::reap_leases`] is one statement like a claim: it locks the expired leases at the
//! head of the partial index `runs_leased` (`lease_expires, run_id` of leased runs only)
//! `FOR NO KEY UPDATE SKIP LOCKED` — a run a claim, renewal or commit holds is left for the
//! next reap — and clears them; the transaction checks every run against `plan_reap`.
//! [`Store::lease_counts`] reads the live leases at the index's tail. Remote workers are
//! rows of `workers` ([`Store::register_worker`], [`Store::touch_worker`],
//! [`Store::workers`]).
//!
//! # Durability
//! `Sync` and `Exit` commits return once PostgreSQL committed them with its configured
//! `synchronous_commit` (by default: WAL flushed). `Batched` commits run with
//! `synchronous_commit = off`: they return before the WAL flush, survive a crash of the
//! Oris process, and may be lost (never half-applied) if the PostgreSQL server crashes
//! within ~3× `wal_writer_delay`.
//!
//! Claims, renewals, releases, reaps, stored idempotent responses and API-key changes are
//! durable when they return (a claim lost in a server crash could hand its epoch out
//! twice). Idempotency reservations, their release and purge, audit entries, and worker
//! registrations and heartbeats run with `synchronous_commit = off`: the trait only asks
//! them to be durable with the next durable commit, which they are — the WAL is flushed in
//! order, so any later durable commit of any session flushes them too (and the work a
//! reservation guards makes one; a worker registers again with every poll).
//!
//! # Wake-ups
//! Every commit that creates a run (a queued run: ready at once) or changes its status,
//! every recorded interrupt answer, every new delivery, every released lease and every
//! reaped lease sends `NOTIFY oris_changed, '<thread_id>'` from inside its transaction, so
//! it is delivered at `COMMIT`, and never for a rolled-back write. The channel is
//! `oris_changed.<schema>` for a schema other than `public`; the payload is the thread id,
//! nothing else (listeners re-read what they need; a claimer simply claims). Claims and
//! renewals send nothing. A
//! server's workers can so sleep until a wake-up or their next due time instead of polling
//! often. [`PostgresStore::listen`] opens a dedicated `LISTEN` connection and yields the thread
//! ids; it reconnects after the server restarts and says so ([`Wake::Reconnected`]).
//!
//! # Migrations
//! The schema is versioned in `oris_schema_migrations (version, applied_at)`.
//! [`PostgresStore::connect`] applies pending migrations in one transaction under an
//! advisory lock (two processes starting together do not both migrate); a database of a
//! newer version is refused with [`Error::Incompatible`] naming both versions.
//! [`PostgresStore::migrate`] does the same explicitly.
//!
//! # Connection poolers and TLS
//! [`PostgresOptions::statement_cache`] = `false` sends every statement unnamed (one
//! Parse/Bind/Execute round trip, no server-side prepared statement), for PgBouncer in
//! transaction mode and similar poolers. Transactions hold no session state beyond
//! themselves (no `SET` outside `SET LOCAL`, advisory locks are transaction-scoped).
//! Connections are made **without TLS** (`NoTls`) in this version: use it on a trusted
//! network or through a local TLS-terminating proxy.
//!
//! # Layout
//! - `schema`: the tables, as versioned migrations.
//! - `queries`: every SQL statement, with the schema filled in at connect time.
//! - `codec`: event kind codes, status encoding, column decoding with validation, driver
//!   error classification, URL redaction.
//! - `conn`: the pooled connection, statements with or without the cache, the transaction
//!   runner and its retry rules.
//! - `read`: reading records back.
//! - `write`: commits, answers, deliveries, deletion and pruning.
//! - `control`: claims, lease renewals and releases, the lease reaper, the worker registry,
//!   idempotency records, API keys and the audit log.
//! - `listen`: the `LISTEN` connection.
//!
//! # Example
//! ```no_run
//! use oris_core::store::Store;
//! use oris_postgres::{PostgresOptions, PostgresStore};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PostgresStore::connect(
//!     "postgres://oris:secret@127.0.0.1:5432/oris",
//!     PostgresOptions { pool_size: 32, ..PostgresOptions::default() },
//! )
//! .await?;
//! let unfinished = store.runs(&oris_core::store::RunFilter::unfinished()).await?;
//! println!("{} runs to continue", unfinished.len());
//! # Ok(())
//! # }
//! ```

mod codec;
#[macro_use]
mod conn;
mod control;
mod listen;
mod queries;
mod read;
mod schema;
mod write;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use oris_core::event::{Durability, Event, Payload};
use oris_core::id::{InterruptId, RunId, Seq, ThreadId, Timestamp};
use oris_core::store::{
    Answer, ApiKeyRecord, AuditFilter, AuditRecord, ClaimRequest, Commit, Delivery, Error, Fence,
    IdempotencyRecord, InterruptFilter, InterruptRecord, PendingRun, Receipt, Reservation, Result,
    RunFilter, RunRecord, Snapshot, Store, StoredResponse, ThreadRecord, WorkerRecord,
};
use tokio_postgres::NoTls;
use tokio_postgres::types::Type;

pub use crate::codec::redact_url;
use crate::codec::{Fault, describe};
use crate::conn::Db;
pub use crate::listen::{Listener, Wake};
pub use crate::schema::LATEST as SCHEMA_VERSION;
/// The migrations, `{S}.` standing for the quoted schema: for tests that build a database
/// at an older version.
#[doc(hidden)]
pub use crate::schema::MIGRATIONS;

/// How a [`PostgresStore`] connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// The most connections the pool opens (at least 1); operations beyond this many wait
    /// for a free one. Default: 16.
    pub pool_size: usize,
    /// How long opening one connection may take. Default: 5 s.
    pub connect_timeout: Duration,
    /// How long an operation waits for a free pooled connection before failing with
    /// `Unavailable`. Default: 10 s.
    pub acquire_timeout: Duration,
    /// Whether to use named server-side prepared statements, prepared once per
    /// connection. `false` sends every statement unnamed, for poolers that reject
    /// prepared statements (PgBouncer in transaction mode). Default: `true`.
    pub statement_cache: bool,
    /// The schema holding the tables (created if missing). Default: `None`, i.e.
    /// `public`.
    pub schema: Option<String>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(10),
            statement_cache: true,
            schema: None,
        }
    }
}

/// A [`Store`] in a PostgreSQL database. See the [crate documentation](crate).
///
/// Cheap to clone (the clones share the pool).
#[derive(Clone)]
pub struct PostgresStore {
    db: Arc<Db>,
    config: tokio_postgres::Config,
    schema: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.db.pool.status();
        f.debug_struct("PostgresStore")
            .field("url", &self.db.url)
            .field("schema", &self.schema)
            .field("pool_size", &status.max_size)
            .field("connections", &status.size)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db` or the
    /// `key=value` form), checks that it is reachable, and brings the schema up to date.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the URL is malformed or the server cannot be reached
    /// (the message names the URL without its password); [`Error::Incompatible`] when the
    /// database was migrated by a newer Oris.
    pub async fn connect(url: &str, options: PostgresOptions) -> Result<PostgresStore> {
        let redacted = redact_url(url);
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| Error::Unavailable(format!("invalid PostgreSQL URL {redacted}: {e}")))?;
        config.connect_timeout(options.connect_timeout);
        config.keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("oris");
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                // A connection that broke (server restart) is noticed by its driver task
                // and dropped here; anything else fails its statement and the transaction
                // is re-run on a fresh connection.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.acquire_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| Error::Unavailable(format!("cannot build a pool for {redacted}: {e}")))?;
        let schema = options
            .schema
            .clone()
            .unwrap_or_else(|| "public".to_owned());
        let db = Arc::new(Db {
            pool,
            cached: options.statement_cache,
            sql: queries::Sql::new(&schema),
            url: redacted.clone(),
        });
        // Reachability, with a message naming the server.
        drop(db.conn().await.map_err(|e| match e {
            Error::Unavailable(m) => Error::Unavailable(format!(
                "cannot connect to PostgreSQL at {redacted}: {}",
                m.trim_start_matches(&format!("cannot get a connection to {redacted}: "))
            )),
            other => other,
        })?);
        let store = PostgresStore { db, config, schema };
        store.migrate().await?;
        tracing::debug!(url = %redacted, schema = %store.schema, "postgres store connected");
        Ok(store)
    }

    /// Brings the schema up to date: applies the pending migrations in one transaction,
    /// under an advisory lock keyed by the schema name, and returns the version the
    /// database is at. A no-op on an up-to-date database. [`connect`](Self::connect)
    /// calls it.
    ///
    /// # Errors
    /// [`Error::Incompatible`] when the database's version is newer than
    /// [`SCHEMA_VERSION`] (the message names both); [`Error::Unavailable`] on a database
    /// error (nothing was changed).
    pub async fn migrate(&self) -> Result<i32> {
        let db = &self.db;
        let schema = self.schema.clone();
        let where_ = format!("schema `{schema}` of {}", db.url);
        transact!(db, None, true, |conn| async {
            // Transaction-scoped: released at COMMIT, and pooler-safe.
            let lock_key = format!("oris_schema_migrations:{schema}");
            conn.query(
                "SELECT pg_advisory_xact_lock(hashtext($1))",
                &[(&lock_key, Type::TEXT)],
            )
            .await?;
            if schema != "public" {
                conn.batch(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {}",
                    queries::quote_ident(&schema)
                ))
                .await?;
            }
            conn.batch(&db.sql.fill(schema::PREPARE)).await?;
            let found: Option<i32> = conn
                .query_opt(&db.sql.version, &[])
                .await?
                .and_then(|r| r.get(0));
            let version = schema::check_version(found, &where_)?;
            for (i, step) in schema::MIGRATIONS.iter().enumerate().skip(version as usize) {
                conn.batch(&db.sql.fill(step)).await?;
                let v = i as i32 + 1;
                conn.execute(&db.sql.record_version, &[(&v, Type::INT4)])
                    .await?;
                tracing::info!(schema = %schema, version = v, "postgres schema migrated");
            }
            Ok::<_, Fault>(schema::LATEST)
        })
    }

    /// Opens a dedicated connection that listens for wake-ups (see the
    /// [crate documentation](crate#wake-ups)). Returns at once: the connection is opened
    /// in the background (and re-opened after it breaks), so commits made right after this
    /// returns may not be heard — use [`listen_ready`](Self::listen_ready) when that
    /// matters.
    pub fn listen(&self) -> Listener {
        listen::spawn(
            self.config.clone(),
            self.db.url.clone(),
            self.db.sql.channel.clone(),
        )
    }

    /// Like [`listen`](Self::listen), but waits until the first `LISTEN` took effect, so
    /// that every commit made after this returns is heard.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the listening connection cannot be opened within the
    /// connect timeout.
    pub async fn listen_ready(&self) -> Result<Listener> {
        let listener = self.listen();
        // Round trip a notification of our own through the server: once it arrives, the
        // LISTEN is in effect.
        let probe = format!("oris-listen-probe-{}", uuid::Uuid::now_v7().simple());
        let mut listener = listener;
        let deadline = tokio::time::Instant::now()
            + self
                .config
                .get_connect_timeout()
                .copied()
                .unwrap_or(Duration::from_secs(5))
                * 2;
        loop {
            let conn = self.db.conn().await?;
            conn.query(
                queries::NOTIFY,
                &[
                    (&self.db.sql.channel, Type::TEXT),
                    (&probe.as_str(), Type::TEXT),
                ],
            )
            .await
            .map_err(|e| Error::Unavailable(format!("postgres: {}", describe(&e))))?;
            drop(conn);
            match tokio::time::timeout(Duration::from_millis(100), listener.recv()).await {
                Ok(Some(Wake::Changed(t))) if t.as_str() == probe => return Ok(listener),
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => {
                    return Err(Error::Unavailable("postgres listener stopped".into()));
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Unavailable(format!(
                    "cannot listen for wake-ups on {}",
                    self.db.url
                )));
            }
        }
    }

    /// Bytes the store's tables take on disk, with their indexes and TOAST data
    /// (`pg_total_relation_size`).
    ///
    /// # Errors
    /// [`Error::Unavailable`] on a database error.
    pub async fn bytes_used(&self) -> Result<u64> {
        let schema = self.schema.clone();
        read!(self.db, |conn| async {
            let row = conn
                .query_opt(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND c.relkind = 'r'",
                    &[(&schema, Type::TEXT)],
                )
                .await?;
            Ok::<_, Fault>(row.map_or(0, |r| r.get::<_, i64>(0)).max(0) as u64)
        })
    }

    /// Drops the store's schema and everything in it, for tests and benchmarks that use
    /// a schema of their own. Refuses the `public` schema.
    ///
    /// # Errors
    /// [`Error::Incompatible`] for `public`; [`Error::Unavailable`] on a database error.
    pub async fn drop_schema(self) -> Result<()> {
        if self.schema == "public" {
            return Err(Error::Incompatible(
                "refusing to drop the `public` schema".into(),
            ));
        }
        let sql = format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            queries::quote_ident(&self.schema)
        );
        transact!(self.db, None, true, |conn| async {
            conn.batch(&sql).await?;
            Ok::<_, Fault>(())
        })
    }

    /// The text of the reaper's statement (see [`Store::reap_leases`]), for tests that check
    /// its query plan.
    #[doc(hidden)]
    pub fn reap_statement(&self) -> &str {
        &self.db.sql.reap_leases
    }

    /// The text of the claim statement (see [`Store::claim`]), with or without the graph
    /// filter, for tests that check its query plan.
    #[doc(hidden)]
    pub fn claim_statement(&self, with_graphs: bool) -> &str {
        if with_graphs {
            &self.db.sql.claim_graphs
        } else {
            &self.db.sql.claim
        }
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The pool's state: `(connections open, connections idle, pool size)`.
    pub fn pool_status(&self) -> (usize, usize, usize) {
        let s = self.db.pool.status();
        (s.size, s.available, s.max_size)
    }

    /// Runs a write on a task of its own, so that dropping the caller's future cannot cut
    /// a transaction short: once called, the write is carried out (or fails) entirely.
    async fn spawn_write<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        match tokio::spawn(f).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(Error::Unavailable(format!(
                "postgres write task failed: {e}"
            ))),
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    /// One transaction: lock the thread row, validate with `plan_commit`, write.
    ///
    /// Cancel safety: dropping the future does not withdraw the commit; it may still land.
    async fn commit(&self, commit: Commit) -> Result<Receipt> {
        let db = self.db.clone();
        self.spawn_write(async move {
            let sync = commit.durability != Durability::Batched;
            let tid = Some(&commit.thread_id);
            transact!(db, tid, sync, |conn| write::commit(conn, &db.sql, &commit))
        })
        .await
    }

    async fn thread(&self, thread_id: &ThreadId) -> Result<Option<ThreadRecord>> {
        read!(self.db, |conn| async {
            let t = read::thread(conn, &self.db.sql, thread_id, read::Lock::None).await?;
            Ok(t.map(|t| t.record))
        })
    }

    async fn run(&self, run_id: RunId) -> Result<Option<RunRecord>> {
        read!(self.db, |conn| async {
            Ok(read::run(conn, &self.db.sql, run_id, false)
                .await?
                .map(|r| r.record))
        })
    }

    async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        read!(self.db, |conn| read::runs(conn, &self.db.sql, filter))
    }

    async fn due_runs(&self, now: Timestamp, limit: usize) -> Result<Vec<RunRecord>> {
        read!(self.db, |conn| read::due_runs(
            conn,
            &self.db.sql,
            now,
            limit
        ))
    }

    async fn events(&self, thread_id: &ThreadId, after: Seq, limit: usize) -> Result<Vec<Event>> {
        read!(self.db, |conn| read::events(
            conn,
            &self.db.sql,
            thread_id,
            after,
            limit
        ))
    }

    async fn snapshot(&self, thread_id: &ThreadId, at_or_before: Seq) -> Result<Option<Snapshot>> {
        read!(self.db, |conn| read::snapshot(
            conn,
            &self.db.sql,
            thread_id,
            at_or_before
        ))
    }

    async fn delete_snapshots(&self, thread_id: &ThreadId) -> Result<u64> {
        let (db, thread_id) = (self.db.clone(), thread_id.clone());
        self.spawn_write(async move {
            let tid = Some(&thread_id);
            transact!(db, tid, true, |conn| write::delete_snapshots(
                conn, &db.sql, &thread_id
            ))
        })
        .await
    }

    async fn interrupt(&self, interrupt_id: InterruptId) -> Result<Option<InterruptRecord>> {
        read!(self.db, |conn| async {
            let i = read::interrupt(conn, &self.db.sql, interrupt_id, false).await?;
            Ok(i.map(|i| i.record))
        })
    }

    async fn interrupts(&self, thread_id: &ThreadId) -> Result<Vec<InterruptRecord>> {
        read!(self.db, |conn| read::interrupts(
            conn,
            &self.db.sql,
            thread_id
        ))
    }

    /// One transaction: lock the interrupt row, decide with `plan_answer`, record.
    async fn answer_interrupt(
        &self,
        interrupt_id: InterruptId,
        value: Payload,
        at: Timestamp,
    ) -> Result<(Answer, InterruptRecord)> {
        let db = self.db.clone();
        self.spawn_write(async move {
            transact!(db, None, true, |conn| write::answer_interrupt(
                conn,
                &db.sql,
                interrupt_id,
                &value,
                at
            ))
        })
        .await
    }

    async fn deliver(
        &self,
        thread_id: &ThreadId,
        name: &str,
        payload: Payload,
        key: Option<String>,
        at: Timestamp,
    ) -> Result<(Delivery, bool)> {
        let (db, thread_id, name) = (self.db.clone(), thread_id.clone(), name.to_owned());
        self.spawn_write(async move {
            let tid = Some(&thread_id);
            transact!(db, tid, true, |conn| write::deliver(
                conn,
                &db.sql,
                &thread_id,
                &name,
                &payload,
                key.as_deref(),
                at
            ))
        })
        .await
    }

    async fn delete_thread(&self, thread_id: &ThreadId) -> Result<()> {
        let (db, thread_id) = (self.db.clone(), thread_id.clone());
        self.spawn_write(async move {
            let tid = Some(&thread_id);
            transact!(db, tid, true, |conn| write::delete_thread(
                conn, &db.sql, &thread_id
            ))
        })
        .await
    }

    async fn prune(&self, thread_id: &ThreadId, base: Event) -> Result<u64> {
        let (db, thread_id) = (self.db.clone(), thread_id.clone());
        self.spawn_write(async move {
            let tid = Some(&thread_id);
            transact!(db, tid, true, |conn| write::prune(
                conn, &db.sql, &thread_id, &base
            ))
        })
        .await
    }

    async fn deliveries(&self, thread_id: &ThreadId, pending_only: bool) -> Result<Vec<Delivery>> {
        read!(self.db, |conn| read::deliveries(
            conn,
            &self.db.sql,
            thread_id,
            pending_only
        ))
    }

    async fn list_interrupts(&self, filter: &InterruptFilter) -> Result<Vec<InterruptRecord>> {
        read!(self.db, |conn| read::list_interrupts(
            conn,
            &self.db.sql,
            filter
        ))
    }

    /// One statement: ready runs in claim order from an index, locked with `SKIP LOCKED`
    /// (concurrent claimers neither wait for each other nor take the same run) and updated
    /// as `plan_claim` says. Durable when it returns.
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<RunRecord>> {
        let (db, request) = (self.db.clone(), request.clone());
        self.spawn_write(async move {
            transact!(db, None, true, |conn| control::claim(
                conn, &db.sql, &request
            ))
        })
        .await
    }

    async fn renew_lease(
        &self,
        fence: &Fence,
        worker_id: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<RunRecord> {
        let (db, fence, worker_id) = (self.db.clone(), *fence, worker_id.to_owned());
        self.spawn_write(async move {
            transact!(db, None, true, |conn| control::renew_lease(
                conn, &db.sql, &fence, &worker_id, now, ttl
            ))
        })
        .await
    }

    async fn release_lease(&self, fence: &Fence, now: Timestamp) -> Result<RunRecord> {
        let (db, fence) = (self.db.clone(), *fence);
        self.spawn_write(async move {
            transact!(db, None, true, |conn| control::release_lease(
                conn, &db.sql, &fence, now
            ))
        })
        .await
    }

    async fn reap_leases(&self, now: Timestamp, limit: usize) -> Result<Vec<RunRecord>> {
        let db = self.db.clone();
        self.spawn_write(async move {
            transact!(db, None, true, |conn| control::reap_leases(
                conn, &db.sql, now, limit
            ))
        })
        .await
    }

    async fn lease_counts(&self, now: Timestamp) -> Result<Vec<(String, u64)>> {
        read!(self.db, |conn| read::lease_counts(conn, &self.db.sql, now))
    }

    /// `synchronous_commit = off`: a registration is refreshed by the worker's every poll.
    async fn register_worker(&self, worker: &WorkerRecord) -> Result<()> {
        let (db, worker) = (self.db.clone(), worker.clone());
        self.spawn_write(async move {
            transact!(db, None, false, |conn| control::register_worker(
                conn, &db.sql, &worker
            ))
        })
        .await
    }

    /// `synchronous_commit = off`, like a registration.
    async fn touch_worker(&self, worker_id: &str, now: Timestamp) -> Result<bool> {
        let (db, worker_id) = (self.db.clone(), worker_id.to_owned());
        self.spawn_write(async move {
            transact!(db, None, false, |conn| control::touch_worker(
                conn, &db.sql, &worker_id, now
            ))
        })
        .await
    }

    async fn workers(&self) -> Result<Vec<WorkerRecord>> {
        read!(self.db, |conn| read::workers(conn, &self.db.sql))
    }

    /// Durable when it returns.
    async fn push_pending(&self, run: &PendingRun) -> Result<u64> {
        let (db, run) = (self.db.clone(), run.clone());
        self.spawn_write(async move {
            let tid = Some(&run.thread_id);
            transact!(db, tid, true, |conn| control::push_pending(
                conn, &db.sql, &run
            ))
        })
        .await
    }

    async fn pending_runs(&self, thread_id: &ThreadId) -> Result<Vec<PendingRun>> {
        read!(self.db, |conn| read::pending_runs(
            conn,
            &self.db.sql,
            thread_id
        ))
    }

    async fn pending_threads(&self, limit: usize) -> Result<Vec<ThreadId>> {
        read!(self.db, |conn| read::pending_threads(
            conn,
            &self.db.sql,
            limit
        ))
    }

    /// `synchronous_commit = off`: it follows the durable commit that started the run; a
    /// removal lost in a crash is repaired by the next sweep (the run exists).
    async fn remove_pending(&self, run_id: RunId) -> Result<bool> {
        let db = self.db.clone();
        self.spawn_write(async move {
            transact!(db, None, false, |conn| control::remove_pending(
                conn, &db.sql, run_id
            ))
        })
        .await
    }

    /// `synchronous_commit = off`: durable with the next durable commit of any session
    /// (the WAL is flushed in order), which the work the reservation guards makes.
    async fn reserve_idempotency(
        &self,
        candidate: &IdempotencyRecord,
        now: Timestamp,
    ) -> Result<Reservation> {
        let (db, candidate) = (self.db.clone(), candidate.clone());
        self.spawn_write(async move {
            transact!(db, None, false, |conn| control::reserve_idempotency(
                conn, &db.sql, &candidate, now
            ))
        })
        .await
    }

    /// Durable when it returns: a stored response must outlive a server crash, or a
    /// replay would redo the work.
    async fn complete_idempotency(
        &self,
        scope: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<()> {
        let (db, scope, key, response) = (
            self.db.clone(),
            scope.to_owned(),
            key.to_owned(),
            response.clone(),
        );
        self.spawn_write(async move {
            transact!(db, None, true, |conn| control::complete_idempotency(
                conn, &db.sql, &scope, &key, &response
            ))
        })
        .await
    }

    async fn release_idempotency(&self, scope: &str, key: &str) -> Result<()> {
        let (db, scope, key) = (self.db.clone(), scope.to_owned(), key.to_owned());
        self.spawn_write(async move {
            transact!(db, None, false, |conn| control::release_idempotency(
                conn, &db.sql, &scope, &key
            ))
        })
        .await
    }

    async fn purge_idempotency(&self, now: Timestamp) -> Result<u64> {
        let db = self.db.clone();
        self.spawn_write(async move {
            transact!(db, None, false, |conn| control::purge_idempotency(
                conn, &db.sql, now
            ))
        })
        .await
    }

    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        let (db, key) = (self.db.clone(), key.clone());
        self.spawn_write(async move {
            transact!(db, None, true, |conn| control::create_api_key(
                conn, &db.sql, &key
            ))
        })
        .await
    }

    async fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>> {
        read!(self.db, |conn| read::api_key(conn, &self.db.sql, key_id))
    }

    async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        read!(self.db, |conn| read::api_keys(conn, &self.db.sql))
    }

    async fn revoke_api_key(&self, key_id: &str, at: Timestamp) -> Result<bool> {
        let (db, key_id) = (self.db.clone(), key_id.to_owned());
        self.spawn_write(async move {
            transact!(db, None, true, |conn| control::revoke_api_key(
                conn, &db.sql, &key_id, at
            ))
        })
        .await
    }

    /// `synchronous_commit = off`: durable with the next durable commit of any session.
    async fn append_audit(&self, record: &AuditRecord) -> Result<u64> {
        let (db, record) = (self.db.clone(), record.clone());
        self.spawn_write(async move {
            transact!(db, None, false, |conn| control::append_audit(
                conn, &db.sql, &record
            ))
        })
        .await
    }

    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        read!(self.db, |conn| read::audit(conn, &self.db.sql, filter))
    }
}
