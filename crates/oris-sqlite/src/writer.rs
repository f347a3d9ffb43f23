//! The writer: one OS thread owning the only write connection, applying commits in groups.
//!
//! It blocks for the first request, drains whatever else is queued (up to `max_group`), and
//! applies them all in one `BEGIN IMMEDIATE … COMMIT`, so N concurrent runs share one fsync.
//! Each request runs inside its own `SAVEPOINT`: one that fails validation (a conflict, a
//! refused transition) is rolled back alone and the others still land. A driver error
//! (I/O, disk full, lock timeout) aborts the whole group: every request in it gets
//! [`Error::Unavailable`] and nothing of the group is applied.
//!
//! Durability: a group that contains a `Sync` or `Exit` commit runs with
//! `synchronous=FULL` (the WAL is fsynced at `COMMIT`); a group of `Batched` commits only
//! runs with `synchronous=NORMAL` (the WAL is written, not fsynced: it survives a process
//! crash, not a power loss).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use oris_core::event::{Durability, EventRow};
use oris_core::id::{RunId, Seq, ThreadId, Timestamp};
use oris_core::store::{Commit, Error, Receipt, RunWrite, plan_commit};
use rusqlite::{Connection, ErrorCode, params};
use tokio::sync::oneshot;

use crate::codec::{
    Fault, encode_state, encode_status, event_id, invalid, kind_code, run_id_blob, unavailable,
};
use crate::queries;
use crate::read::{self, RunRef, StoredThread};

/// A request to the writer thread.
#[derive(Debug)]
pub(crate) enum Request {
    /// A write, applied in a group transaction.
    Write(Write),
    /// Checkpoint the WAL and count the bytes in used pages (outside any transaction).
    BytesUsed {
        reply: oneshot::Sender<Result<u64, Error>>,
    },
}

/// A write to one thread.
#[derive(Debug)]
pub(crate) enum Write {
    /// Apply a commit.
    Commit {
        /// Boxed: a commit is large, the other requests are small.
        commit: Box<Commit>,
        reply: oneshot::Sender<Result<Receipt, Error>>,
    },
    /// Delete a thread's snapshot.
    DeleteSnapshots {
        thread_id: ThreadId,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
}

impl Write {
    fn thread_id(&self) -> &ThreadId {
        match self {
            Write::Commit { commit, .. } => &commit.thread_id,
            Write::DeleteSnapshots { thread_id, .. } => thread_id,
        }
    }

    /// Whether the group holding this write must be fsynced at commit.
    fn needs_fsync(&self) -> bool {
        match self {
            Write::Commit { commit, .. } => match commit.durability {
                Durability::Sync | Durability::Exit => true,
                Durability::Batched => false,
            },
            Write::DeleteSnapshots { .. } => false,
        }
    }

    /// Sends the outcome (the new head, or the number deleted).
    fn reply(self, outcome: Result<u64, Error>) {
        // A caller that stopped waiting (its future was dropped) is not an error here.
        match self {
            Write::Commit { reply, .. } => {
                let _ = reply.send(outcome.map(|head| Receipt { head: Seq(head) }));
            }
            Write::DeleteSnapshots { reply, .. } => {
                let _ = reply.send(outcome);
            }
        }
    }
}

/// Counters shared between the writer and [`SqliteStore::stats`](crate::SqliteStore::stats).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub transactions: AtomicU64,
    pub synced_transactions: AtomicU64,
    pub commits: AtomicU64,
    pub queued: AtomicU64,
}

/// The writer thread's state.
#[derive(Debug)]
pub(crate) struct Writer {
    pub conn: Connection,
    pub requests: mpsc::Receiver<Request>,
    pub counters: Arc<Counters>,
    pub max_group: usize,
    pub compress_over: usize,
    /// The `synchronous` setting in force: `Some(true)` for FULL, `Some(false)` for NORMAL.
    pub full_sync: Option<bool>,
}

impl Writer {
    /// Serves requests until every sender is dropped (the store was dropped).
    pub(crate) fn run(mut self) {
        while let Ok(first) = self.requests.recv() {
            let mut batch = vec![first];
            while batch.len() < self.max_group {
                match self.requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.counters
                .queued
                .fetch_sub(batch.len() as u64, Ordering::Relaxed);
            let mut writes = Vec::with_capacity(batch.len());
            let mut measures = Vec::new();
            for request in batch {
                match request {
                    Request::Write(w) => writes.push(w),
                    Request::BytesUsed { reply } => measures.push(reply),
                }
            }
            if !writes.is_empty() {
                self.group(writes);
            }
            for reply in measures {
                let _ = reply.send(self.bytes_used());
            }
        }
        tracing::debug!("sqlite writer stopped");
    }

    /// Applies a group of write requests in one transaction and replies to each.
    fn group(&mut self, batch: Vec<Write>) {
        let started = Instant::now();
        let full = batch.iter().any(Write::needs_fsync);
        match self.transact(&batch, full) {
            Ok(outcomes) => {
                let applied = outcomes.iter().filter(|o| o.is_ok()).count();
                let commits = batch
                    .iter()
                    .zip(&outcomes)
                    .filter(|(w, o)| matches!(w, Write::Commit { .. }) && o.is_ok())
                    .count();
                if applied > 0 {
                    self.counters.transactions.fetch_add(1, Ordering::Relaxed);
                    if full {
                        self.counters
                            .synced_transactions
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.counters
                    .commits
                    .fetch_add(commits as u64, Ordering::Relaxed);
                tracing::debug!(
                    size = batch.len(),
                    applied,
                    fsync = full,
                    micros = started.elapsed().as_micros() as u64,
                    "sqlite group committed"
                );
                for (request, outcome) in batch.into_iter().zip(outcomes) {
                    request.reply(outcome);
                }
            }
            Err(e) => {
                tracing::warn!(
                    size = batch.len(),
                    error = %e,
                    "sqlite group transaction failed; none of its commits was applied"
                );
                let error = unavailable(e);
                for request in batch {
                    request.reply(Err(error.clone()));
                }
            }
        }
    }

    /// Runs the group's transaction; an `Err` means nothing was applied.
    fn transact(
        &mut self,
        batch: &[Write],
        full: bool,
    ) -> rusqlite::Result<Vec<Result<u64, Error>>> {
        if self.full_sync != Some(full) {
            // Cannot change inside a transaction; it applies to the next COMMIT.
            self.conn.execute_batch(if full {
                queries::SYNC_FULL
            } else {
                queries::SYNC_NORMAL
            })?;
            self.full_sync = Some(full);
        }
        self.exec(queries::BEGIN)?;
        let outcome = self.apply_all(batch).and_then(|o| {
            self.exec(queries::COMMIT)?;
            Ok(o)
        });
        if outcome.is_err()
            && !self.conn.is_autocommit()
            && let Err(e) = self.conn.execute_batch(queries::ROLLBACK)
        {
            tracing::error!(error = %e, "sqlite rollback failed");
        }
        outcome
    }

    fn apply_all(&mut self, batch: &[Write]) -> rusqlite::Result<Vec<Result<u64, Error>>> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for write in batch {
            self.exec(queries::SAVEPOINT)?;
            let result = match write {
                Write::Commit { commit, .. } => self.apply_commit(commit).map(|r| r.head.0),
                Write::DeleteSnapshots { thread_id, .. } => self.delete_snapshots(thread_id),
            };
            match result {
                Ok(value) => {
                    self.exec(queries::RELEASE)?;
                    outcomes.push(Ok(value));
                }
                // A constraint failure is about this write's data, not the database:
                // refuse it alone.
                Err(Fault::Sql(e)) if !is_data_error(&e) => return Err(e),
                Err(fault) => {
                    self.exec(queries::ROLLBACK_TO)?;
                    self.exec(queries::RELEASE)?;
                    let error = match fault {
                        Fault::Sql(e) => Error::InvalidCommit {
                            thread_id: write.thread_id().clone(),
                            detail: format!("refused by the schema: {e}"),
                        },
                        other => other.into_error(),
                    };
                    outcomes.push(Err(error));
                }
            }
        }
        Ok(outcomes)
    }

    fn exec(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    /// Validates a commit against the stored records with [`plan_commit`] and writes it.
    fn apply_commit(&mut self, c: &Commit) -> Result<Receipt, Fault> {
        let conn = &self.conn;
        let tid = &c.thread_id;
        let stored = read::thread(conn, tid)?;
        let stored_run = match &c.run {
            Some(RunWrite::SetStatus { run_id, .. }) => read::run(conn, *run_id)?,
            _ => None,
        };
        let now = Timestamp::now();
        let plan = plan_commit(
            c,
            stored.as_ref().map(|s| &s.record),
            stored_run.as_ref().map(|r| &r.record),
            now,
        )?;

        // Encode everything fallible before the first write.
        let rows = c
            .events
            .iter()
            .map(EventRow::from_event)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(tid, format!("an event does not serialize: {e}")))?;
        let status = plan
            .run
            .as_ref()
            .map(|r| encode_status(&r.status))
            .transpose()
            .map_err(|e| invalid(tid, format!("the run status does not serialize: {e}")))?;
        let head = i64::try_from(plan.thread.head.0)
            .map_err(|_| invalid(tid, format!("head {} is out of range", plan.thread.head)))?;

        let thread_key = match &stored {
            Some(s) => s.key,
            None => {
                conn.prepare_cached(queries::INSERT_THREAD)?
                    .execute(params![
                        tid.as_str(),
                        plan.thread.graph,
                        plan.thread.created_at.0
                    ])?;
                conn.last_insert_rowid()
            }
        };

        // The run that writes this commit's events, if any.
        let writer: Option<RunRef> = match (&c.run, &plan.run, status) {
            (Some(RunWrite::Create(_)), Some(run), Some((kind, data))) => {
                if read::run_ref(conn, run.run_id)?.is_some() {
                    return Err(invalid(tid, format!("run {} already exists", run.run_id)));
                }
                let first_seq = i64::try_from(run.first_seq.0)
                    .map_err(|_| invalid(tid, "first_seq is out of range"))?;
                conn.prepare_cached(queries::INSERT_RUN)?.execute(params![
                    run_id_blob(run.run_id),
                    thread_key,
                    run.graph,
                    run.graph_version,
                    kind,
                    data,
                    first_seq,
                    run.created_at.0,
                    run.updated_at.0
                ])?;
                Some(RunRef {
                    key: conn.last_insert_rowid(),
                    id: run.run_id,
                    created_at: run.created_at,
                })
            }
            (Some(RunWrite::SetStatus { .. }), Some(run), Some((kind, data))) => {
                let key = stored_run
                    .as_ref()
                    .map(|r| r.key)
                    .expect("invariant: plan_commit accepted a status change of a stored run");
                conn.prepare_cached(queries::UPDATE_RUN_STATUS)?
                    .execute(params![key, kind, data, run.updated_at.0])?;
                Some(RunRef {
                    key,
                    id: run.run_id,
                    created_at: run.created_at,
                })
            }
            _ => stored.as_ref().and_then(|s| s.active),
        };

        let active_key = plan
            .thread
            .active_run
            .map(|id| run_key(conn, tid, id, writer, stored.as_ref(), thread_key))
            .transpose()?;
        let last_key = plan
            .thread
            .last_run
            .map(|id| run_key(conn, tid, id, writer, stored.as_ref(), thread_key))
            .transpose()?;
        conn.prepare_cached(queries::UPDATE_THREAD)?
            .execute(params![
                thread_key,
                head,
                active_key,
                last_key,
                plan.thread.updated_at.0
            ])?;

        if !rows.is_empty() {
            let run = writer.ok_or_else(|| invalid(tid, "events without a writing run"))?;
            let mut insert = conn.prepare_cached(queries::INSERT_EVENT)?;
            for row in rows {
                let id = event_id(thread_key, row.seq.0).ok_or_else(|| {
                    invalid(
                        tid,
                        format!("seq {} exceeds the limit of this store", row.seq),
                    )
                })?;
                let at = row.at.0.checked_sub(run.created_at.0).ok_or_else(|| {
                    invalid(tid, format!("event {} has an impossible time", row.seq))
                })?;
                let kind = kind_code(row.kind).ok_or_else(|| {
                    invalid(
                        tid,
                        format!(
                            "event kind `{}` has no storage code in this version of oris-sqlite",
                            row.kind.as_str()
                        ),
                    )
                })?;
                insert.execute(params![
                    id,
                    run.key,
                    at,
                    kind,
                    row.superstep,
                    row.task,
                    row.node,
                    row.attempt,
                    row.data,
                    row.extra
                ])?;
            }
        }

        if let Some(s) = &c.snapshot {
            let key = run_key(conn, tid, s.run_id, writer, stored.as_ref(), thread_key)?;
            let boundary = serde_json::to_string(&s.boundary).map_err(|e| {
                invalid(
                    tid,
                    format!("the snapshot boundary does not serialize: {e}"),
                )
            })?;
            let at_seq = i64::try_from(s.at_seq.0)
                .map_err(|_| invalid(tid, "snapshot seq is out of range"))?;
            conn.prepare_cached(queries::UPSERT_SNAPSHOT)?
                .execute(params![
                    thread_key,
                    at_seq,
                    key,
                    s.next_superstep,
                    encode_state(&s.state, self.compress_over),
                    boundary,
                    s.created_at.0
                ])?;
        }
        Ok(Receipt {
            head: plan.thread.head,
        })
    }

    fn delete_snapshots(&mut self, thread_id: &ThreadId) -> Result<u64, Fault> {
        let key = read::thread_key(&self.conn, thread_id)?.ok_or_else(|| {
            Fault::Store(Error::ThreadNotFound {
                thread_id: thread_id.clone(),
            })
        })?;
        let deleted = self
            .conn
            .prepare_cached(queries::DELETE_SNAPSHOTS)?
            .execute(params![key])?;
        Ok(deleted as u64)
    }

    fn bytes_used(&mut self) -> Result<u64, Error> {
        let conn = &self.conn;
        let count = || -> rusqlite::Result<u64> {
            // Result: (busy, WAL frames, frames checkpointed). Busy only means a reader kept
            // some frames in the WAL; the page counts below include them either way.
            conn.query_row(queries::CHECKPOINT, [], |_| Ok(()))?;
            let (pages, page_size): (i64, i64) =
                conn.query_row(queries::BYTES_USED, [], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok(u64::try_from(pages.saturating_mul(page_size)).unwrap_or(0))
        };
        count().map_err(unavailable)
    }
}

/// The key of a run this commit refers to: the writing run, or one of the thread's stored
/// runs, or (never in practice) looked up — and it must belong to the thread.
fn run_key(
    conn: &Connection,
    tid: &ThreadId,
    id: RunId,
    writer: Option<RunRef>,
    stored: Option<&StoredThread>,
    thread_key: i64,
) -> Result<i64, Fault> {
    if let Some(w) = writer.filter(|w| w.id == id) {
        return Ok(w.key);
    }
    if let Some(s) = stored {
        if let Some(a) = s.active.filter(|a| a.id == id) {
            return Ok(a.key);
        }
        if let (Some(last), Some(key)) = (s.record.last_run, s.last_key)
            && last == id
        {
            return Ok(key);
        }
    }
    match read::run_ref(conn, id)? {
        Some((run, key)) if key == thread_key => Ok(run.key),
        Some(_) => Err(invalid(tid, format!("run {id} belongs to another thread"))),
        None => Err(invalid(tid, format!("run {id} does not exist"))),
    }
}

/// Whether an SQLite error is about the data of one commit (refuse it alone) rather than
/// the database (fail the group).
fn is_data_error(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ErrorCode::ConstraintViolation | ErrorCode::TooBig)
    )
}
