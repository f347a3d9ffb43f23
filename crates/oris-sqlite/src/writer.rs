//! Group commit on the one write connection: the queue, the leader and the writer thread.
//!
//! Requests (commits, snapshot deletions, interrupt answers, deliveries, claims and lease
//! changes, idempotency records, API keys, audit entries, size measures) go into one queue. Whoever serves it takes everything queued (up to `max_group`) and
//! applies the writes in one `BEGIN IMMEDIATE … COMMIT`, so N concurrent runs share one
//! fsync. Each write runs inside
//! its own `SAVEPOINT`: one that fails validation (a conflict, a refused transition) is
//! rolled back alone and the others still land. A write alone in its group needs no
//! savepoint: if refused, the whole transaction is rolled back instead. A driver error
//! (I/O, disk full, lock timeout) aborts the whole group: every request in it gets
//! [`Error::Unavailable`] and nothing of the group is applied.
//!
//! Who serves ([`Queue`]'s invariant: a non-empty queue always has a server):
//! - A caller that queues a request while nobody serves, on a multi-thread runtime,
//!   becomes the **leader** ([`Role::Lead`]): it writes one group on its own thread (inside
//!   `block_in_place`, see `SqliteStore::send`). Its request is first in that group, since
//!   the queue was empty when it was queued. Then, if requests arrived meanwhile, it hands
//!   the queue to the writer thread; otherwise it releases it.
//! - A caller that finds a server at work, or cannot block its thread (current-thread
//!   runtime; the writer thread is woken then), waits for its reply ([`Role::Wait`]).
//! - The **writer thread** serves the queue until it is empty whenever it is handed over;
//!   at close it serves what is left and closes the connection.
//!
//! Replies are sent after the group's `COMMIT` returned, so a caller hears of its commit
//! only once it is durable at the level it asked for.
//!
//! Durability: a group that contains a `Sync` or `Exit` commit runs with
//! `synchronous=FULL` (the WAL is fsynced at `COMMIT`); a group of `Batched` commits only
//! runs with `synchronous=NORMAL` (the WAL is written, not fsynced: it survives a process
//! crash, not a power loss). Other writes decide by [`Write::needs_fsync`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use oris_core::event::{Durability, Event, EventRow, Payload};
use oris_core::id::{DeliveryId, InterruptId, RunId, Seq, ThreadId, Timestamp};
use oris_core::status::RunStatus;
use oris_core::store::{
    Answer, ApiKeyRecord, AuditRecord, ClaimRequest, Commit, Delivery, Error, Fence,
    IdempotencyRecord, InterruptRecord, PendingRun, Receipt, Reservation, RunRecord, RunWrite,
    StoredResponse, WorkerRecord, check_prune, check_redelivery, consumed_deliveries,
    driven_by_workers, interrupt_effects, plan_answer, plan_commit, ready_on_answer,
    ready_on_delivery, wake_at,
};
use rusqlite::{Connection, ErrorCode, params};
use tokio::sync::oneshot;

use crate::codec::{
    Fault, MAX_SEQ, delivery_id_blob, encode_state, encode_status, event_id, interrupt_id_blob,
    invalid, kind_code, run_id_blob, seq_value, unavailable, unknown_thread,
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

/// A write, applied in a group transaction.
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
    /// Delete a thread.
    DeleteThread {
        thread_id: ThreadId,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// Prune a thread's history.
    Prune {
        thread_id: ThreadId,
        base: Box<Event>,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    /// Record a resume value for an interrupt (decided with [`plan_answer`] on the rows
    /// read in the same transaction).
    AnswerInterrupt {
        interrupt_id: InterruptId,
        value: Payload,
        at: Timestamp,
        reply: oneshot::Sender<Result<(Answer, InterruptRecord), Error>>,
    },
    /// Buffer an external event for a thread.
    Deliver {
        thread_id: ThreadId,
        name: String,
        payload: Payload,
        key: Option<String>,
        at: Timestamp,
        reply: oneshot::Sender<Result<(Delivery, bool), Error>>,
    },
    /// Claim ready runs for a worker.
    Claim {
        request: Box<ClaimRequest>,
        reply: oneshot::Sender<Result<Vec<RunRecord>, Error>>,
    },
    /// Extend a lease.
    RenewLease {
        fence: Fence,
        worker_id: String,
        now: Timestamp,
        ttl: Duration,
        reply: oneshot::Sender<Result<RunRecord, Error>>,
    },
    /// Hand a leased run back.
    ReleaseLease {
        fence: Fence,
        now: Timestamp,
        reply: oneshot::Sender<Result<RunRecord, Error>>,
    },
    /// Clear expired leases.
    ReapLeases {
        now: Timestamp,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<RunRecord>, Error>>,
    },
    /// Insert or update a worker's record.
    RegisterWorker {
        worker: Box<WorkerRecord>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// Move a worker's `last_seen`.
    TouchWorker {
        worker_id: String,
        now: Timestamp,
        reply: oneshot::Sender<Result<bool, Error>>,
    },
    /// Store a pending run.
    PushPending {
        run: Box<PendingRun>,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    /// Delete a pending run.
    RemovePending {
        run_id: RunId,
        reply: oneshot::Sender<Result<bool, Error>>,
    },
    /// Reserve an idempotency key.
    ReserveIdempotency {
        candidate: Box<IdempotencyRecord>,
        now: Timestamp,
        reply: oneshot::Sender<Result<Reservation, Error>>,
    },
    /// Store the response of a reserved idempotency key.
    CompleteIdempotency {
        scope: String,
        key: String,
        response: StoredResponse,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// Drop an unfinished reservation.
    ReleaseIdempotency {
        scope: String,
        key: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// Delete expired idempotency records.
    PurgeIdempotency {
        now: Timestamp,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    /// Store a new API key.
    CreateApiKey {
        key: Box<ApiKeyRecord>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// Revoke an API key.
    RevokeApiKey {
        key_id: String,
        at: Timestamp,
        reply: oneshot::Sender<Result<bool, Error>>,
    },
    /// Append to the audit log.
    AppendAudit {
        record: Box<AuditRecord>,
        reply: oneshot::Sender<Result<u64, Error>>,
    },
}

/// What a write did, before it is sent to its caller.
#[derive(Debug)]
enum Done {
    /// A commit's new head.
    Head(Seq),
    /// Snapshots or events deleted.
    Deleted(u64),
    /// Done, nothing to report.
    Unit,
    /// An answer's outcome.
    Answered(Answer, InterruptRecord),
    /// A delivery, and whether it is new.
    Delivered(Delivery, bool),
    /// Claimed (or reaped) runs.
    Claimed(Vec<RunRecord>),
    /// A run after a lease change.
    Run(Box<RunRecord>),
    /// A reservation's outcome.
    Reserved(Reservation),
    /// Whether something changed.
    Flag(bool),
    /// An assigned id.
    Id(u64),
}

impl Write {
    /// The thread named in the error of a write the schema refused, if the write names one.
    fn thread_id(&self) -> Option<&ThreadId> {
        match self {
            Write::Commit { commit, .. } => Some(&commit.thread_id),
            Write::DeleteSnapshots { thread_id, .. }
            | Write::Deliver { thread_id, .. }
            | Write::DeleteThread { thread_id, .. }
            | Write::Prune { thread_id, .. } => Some(thread_id),
            Write::AnswerInterrupt { .. }
            | Write::Claim { .. }
            | Write::RenewLease { .. }
            | Write::ReleaseLease { .. }
            | Write::ReapLeases { .. }
            | Write::RegisterWorker { .. }
            | Write::TouchWorker { .. }
            | Write::PushPending { .. }
            | Write::RemovePending { .. }
            | Write::ReserveIdempotency { .. }
            | Write::CompleteIdempotency { .. }
            | Write::ReleaseIdempotency { .. }
            | Write::PurgeIdempotency { .. }
            | Write::CreateApiKey { .. }
            | Write::RevokeApiKey { .. }
            | Write::AppendAudit { .. } => None,
        }
    }

    /// Whether the group holding this write must be fsynced at commit. Answers and
    /// deliveries are durable before their callers hear of them: something acts on them.
    fn needs_fsync(&self) -> bool {
        match self {
            Write::Commit { commit, .. } => match commit.durability {
                Durability::Sync | Durability::Exit => true,
                Durability::Batched => false,
            },
            Write::DeleteSnapshots { .. } => false,
            Write::DeleteThread { .. } | Write::Prune { .. } => true,
            // An answer is acted on at once by the same caller, whose next commit (the
            // `InterruptResumed` that applies it) is fsynced — and the WAL is sequential, so
            // that fsync makes the answer durable too, before `resume` returns. Its own fsync
            // would be a second one for the same acknowledgement.
            Write::AnswerInterrupt { .. } => false,
            // A delivery is acknowledged to its sender before anything else is written.
            Write::Deliver { .. } => true,
            // Leases, the worker registry, idempotency records and the audit log ride on
            // the group's transaction: once `COMMIT` returned they are in the WAL (a
            // process kill cannot lose them), and the next fsync of the sequential WAL —
            // the next durable commit — makes them survive a power loss too. See
            // `crate::control`.
            Write::Claim { .. }
            | Write::RenewLease { .. }
            | Write::ReleaseLease { .. }
            | Write::ReapLeases { .. }
            | Write::RegisterWorker { .. }
            | Write::TouchWorker { .. }
            | Write::ReserveIdempotency { .. }
            | Write::CompleteIdempotency { .. }
            | Write::ReleaseIdempotency { .. }
            | Write::PurgeIdempotency { .. }
            | Write::AppendAudit { .. } => false,
            // Rare, and a revoked key must stay revoked whatever happens next.
            Write::CreateApiKey { .. } | Write::RevokeApiKey { .. } => true,
            // A pending run is acknowledged (202) right after it is stored. Its removal
            // follows the durable commit that started it; a removal lost in a crash is
            // repaired by the next sweep (the run exists: the row is just deleted again).
            Write::PushPending { .. } => true,
            Write::RemovePending { .. } => false,
        }
    }

    /// Sends the outcome to the caller.
    fn reply(self, outcome: Result<Done, Error>) {
        // The outcome always comes from applying this very write, so its kind matches; a
        // mismatch would be a bug in this module, answered as an error rather than a panic.
        fn mismatch<T>(o: Done) -> Result<T, Error> {
            Err(Error::Unavailable(format!(
                "internal error in oris-sqlite: unexpected outcome {o:?}"
            )))
        }
        // A caller that stopped waiting (its future was dropped) is not an error here.
        macro_rules! answer {
            ($reply:ident, $pattern:pat => $value:expr) => {{
                let _ = $reply.send(outcome.and_then(|o| match o {
                    $pattern => Ok($value),
                    o => mismatch(o),
                }));
            }};
        }
        match self {
            Write::Commit { reply, .. } => answer!(reply, Done::Head(head) => Receipt { head }),
            Write::DeleteSnapshots { reply, .. } => answer!(reply, Done::Deleted(n) => n),
            Write::DeleteThread { reply, .. } => answer!(reply, Done::Unit => ()),
            Write::Prune { reply, .. } => answer!(reply, Done::Deleted(n) => n),
            Write::AnswerInterrupt { reply, .. } => {
                answer!(reply, Done::Answered(a, r) => (a, r))
            }
            Write::Deliver { reply, .. } => answer!(reply, Done::Delivered(d, new) => (d, new)),
            Write::Claim { reply, .. } | Write::ReapLeases { reply, .. } => {
                answer!(reply, Done::Claimed(runs) => runs)
            }
            Write::RegisterWorker { reply, .. } => answer!(reply, Done::Unit => ()),
            Write::TouchWorker { reply, .. } => answer!(reply, Done::Flag(b) => b),
            Write::PushPending { reply, .. } => answer!(reply, Done::Id(p) => p),
            Write::RemovePending { reply, .. } => answer!(reply, Done::Flag(b) => b),
            Write::RenewLease { reply, .. } | Write::ReleaseLease { reply, .. } => {
                answer!(reply, Done::Run(run) => *run)
            }
            Write::ReserveIdempotency { reply, .. } => answer!(reply, Done::Reserved(r) => r),
            Write::CompleteIdempotency { reply, .. }
            | Write::ReleaseIdempotency { reply, .. }
            | Write::CreateApiKey { reply, .. } => answer!(reply, Done::Unit => ()),
            Write::PurgeIdempotency { reply, .. } => answer!(reply, Done::Deleted(n) => n),
            Write::RevokeApiKey { reply, .. } => answer!(reply, Done::Flag(b) => b),
            Write::AppendAudit { reply, .. } => answer!(reply, Done::Id(id) => id),
        }
    }
}

/// The packed ids of a thread's events with seqs `from ..= to`.
fn event_range(thread_id: &ThreadId, key: i64, from: u64, to: u64) -> Result<(i64, i64), Fault> {
    match (event_id(key, from), event_id(key, to)) {
        (Some(low), Some(high)) => Ok((low, high)),
        _ => Err(invalid(
            thread_id,
            format!("thread key {key} is out of range"),
        )),
    }
}

/// Inserts one event row of a thread, written by `run`.
fn insert_event(
    conn: &Connection,
    tid: &ThreadId,
    thread_key: i64,
    run: &RunRef,
    row: &EventRow,
) -> Result<(), Fault> {
    let id = event_id(thread_key, row.seq.0).ok_or_else(|| {
        invalid(
            tid,
            format!("seq {} exceeds the limit of this store", row.seq),
        )
    })?;
    let at = row
        .at
        .0
        .checked_sub(run.created_at.0)
        .ok_or_else(|| invalid(tid, format!("event {} has an impossible time", row.seq)))?;
    let kind = kind_code(row.kind).ok_or_else(|| {
        invalid(
            tid,
            format!(
                "event kind `{}` has no storage code in this version of oris-sqlite",
                row.kind.as_str()
            ),
        )
    })?;
    conn.prepare_cached(queries::INSERT_EVENT)?
        .execute(params![
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
    Ok(())
}

/// Counters shared between the writer and [`SqliteStore::stats`](crate::SqliteStore::stats).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub transactions: AtomicU64,
    pub synced_transactions: AtomicU64,
    pub commits: AtomicU64,
    pub queued: AtomicU64,
    pub in_group: AtomicU64,
}

/// The queue of requests and who serves it.
///
/// Invariant: while `requests` is not empty, `busy` is set, and the server holding it (a
/// leading caller or the writer thread) serves the queue until it is empty or hands it to
/// the writer thread (`handoff`). So no request is ever left in the queue unserved.
#[derive(Debug, Default)]
struct Queue {
    requests: VecDeque<Request>,
    /// A server owns the write connection and will serve (or hand off) the queue.
    busy: bool,
    /// The writer thread is asked to serve the queue until it is empty.
    handoff: bool,
    /// Writes come one at a time: the last group held a single request, and none had to
    /// wait for a read since. Only then do reads use the write connection
    /// ([`Shared::try_read`]): under concurrent writes it belongs to the groups.
    solo: bool,
    /// The store is closing: the writer thread serves what is left and stops.
    closed: bool,
}

/// What the store, its callers and the writer thread share.
#[derive(Debug)]
pub(crate) struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer thread (`handoff` or `closed` was set).
    wake: Condvar,
    /// The write connection. Only the holder of `Queue::busy` locks it, so it is never
    /// contended; `None` once the writer thread has closed it.
    writer: Mutex<Option<Writer>>,
    pub counters: Arc<Counters>,
    max_group: usize,
}

/// Calls [`Shared::release`] when dropped.
struct Release<'a>(&'a Shared);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// How [`Shared::submit`] wants the caller to go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Serve the first group yourself ([`Shared::lead`]): it holds your request.
    Lead,
    /// Wait for the reply: a leader or the writer thread will send it.
    Wait,
}

impl Shared {
    pub(crate) fn new(writer: Writer, max_group: usize) -> Shared {
        Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            counters: writer.counters.clone(),
            writer: Mutex::new(Some(writer)),
            max_group: max_group.max(1),
        }
    }

    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        // The queue's state is consistent at every unlock; a panic cannot tear it.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a request. With `may_lead` (the caller can block its thread) and nobody
    /// serving, the caller becomes the leader; otherwise it waits, and if nobody was serving
    /// the writer thread is woken.
    pub(crate) fn submit(&self, request: Request, may_lead: bool) -> Result<Role, Request> {
        let mut q = self.lock_queue();
        if q.closed {
            return Err(request);
        }
        q.requests.push_back(request);
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        if q.busy {
            return Ok(Role::Wait);
        }
        q.busy = true;
        if may_lead {
            Ok(Role::Lead)
        } else {
            q.handoff = true;
            self.wake.notify_one();
            Ok(Role::Wait)
        }
    }

    /// Serves one group on the calling thread — the leader's own request is first in the
    /// queue, since nobody was serving when it was queued — then either releases the
    /// connection or, if more requests arrived meanwhile, hands them to the writer thread.
    /// Blocks for the whole group (its fsync included).
    pub(crate) fn lead(&self) {
        if let Some(batch) = self.take_batch() {
            self.serve(batch);
            self.release();
        }
    }

    /// Whether [`Shared::try_read`] would run a read now: a cheap look, so that a caller
    /// bound for the read pool does not block its thread first.
    pub(crate) fn reads_here(&self) -> bool {
        let q = self.lock_queue();
        !q.busy && !q.closed && q.solo
    }

    /// Runs the read `f` on the write connection if nobody is serving the queue and writes
    /// come one at a time (`Queue::solo`), holding the queue as a leader does (requests
    /// arriving meanwhile wait, and are handed to the writer thread afterwards). Gives `f`
    /// back, not called, when the connection is busy, shared by concurrent writers, or
    /// closed.
    pub(crate) fn try_read<T, F: FnOnce(&Connection) -> T>(&self, f: F) -> Result<T, F> {
        {
            let mut q = self.lock_queue();
            if q.busy || q.closed || !q.solo {
                return Err(f);
            }
            q.busy = true;
        }
        // Released even if `f` panics, so that the queue is never left without a server.
        let _release = Release(self);
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        match writer.as_ref() {
            Some(w) => Ok(f(&w.conn)),
            None => Err(f),
        }
    }

    /// Ends a caller's turn at the connection: frees it, or hands the requests that arrived
    /// meanwhile to the writer thread.
    fn release(&self) {
        let mut q = self.lock_queue();
        if q.requests.is_empty() {
            q.busy = false;
        } else {
            // Writes arrived meanwhile (after a group, or during a read): no more reads
            // here until writes come one at a time again.
            q.solo = false;
            q.handoff = true;
            self.wake.notify_one();
        }
    }

    /// Takes up to `max_group` requests; `None` (and `busy` cleared) when the queue is empty.
    fn take_batch(&self) -> Option<Vec<Request>> {
        let mut q = self.lock_queue();
        if q.requests.is_empty() {
            q.busy = false;
            return None;
        }
        let n = q.requests.len().min(self.max_group);
        let batch: Vec<Request> = q.requests.drain(..n).collect();
        q.solo = n == 1;
        drop(q);
        self.counters.queued.fetch_sub(n as u64, Ordering::Relaxed);
        self.counters.in_group.store(n as u64, Ordering::Relaxed);
        Some(batch)
    }

    /// Serves one batch on the write connection. A panic is contained here: the batch's
    /// reply channels are dropped (their callers get [`Error::Unavailable`]) and the
    /// connection serves the next batch.
    fn serve(&self, batch: Vec<Request>) {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        // `None` once closed: dropping the batch answers every caller with "stopped".
        if let Some(writer) = writer.as_mut() {
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                writer.serve(batch);
            }));
            if served.is_err() {
                tracing::error!("the sqlite writer panicked; its group's commits were refused");
            }
        }
        self.counters.in_group.store(0, Ordering::Relaxed);
    }

    /// The writer thread's loop: serves the queue whenever a caller that cannot block hands
    /// it over or a leader leaves requests behind; on close, serves what is left, then
    /// closes the connection (which checkpoints the WAL into the file).
    pub(crate) fn run_writer_thread(&self) {
        loop {
            {
                let mut q = self.lock_queue();
                while !q.handoff && !q.closed {
                    q = self.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                }
                if q.handoff {
                    q.handoff = false;
                } else if q.requests.is_empty() {
                    // Closed, with nothing left and (the store being dropped) no leader.
                    break;
                } else {
                    q.busy = true;
                }
            }
            while let Some(batch) = self.take_batch() {
                self.serve(batch);
            }
        }
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(writer);
        tracing::debug!("sqlite writer stopped");
    }

    /// Tells the writer thread to finish the queue and stop.
    pub(crate) fn close(&self) {
        self.lock_queue().closed = true;
        self.wake.notify_one();
    }
}

/// The write connection and its settings.
#[derive(Debug)]
pub(crate) struct Writer {
    pub conn: Connection,
    pub compress_over: usize,
    /// The `synchronous` setting in force: `Some(true)` for FULL, `Some(false)` for NORMAL.
    pub full_sync: Option<bool>,
    pub counters: Arc<Counters>,
}

impl Writer {
    /// Serves one batch: its writes as one group transaction, then its measures.
    fn serve(&mut self, batch: Vec<Request>) {
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
    ) -> rusqlite::Result<Vec<Result<Done, Error>>> {
        if !self.conn.is_autocommit() {
            // Left open by a panic in an earlier group.
            self.conn.execute_batch(queries::ROLLBACK)?;
        }
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
            // A lone write that was refused rolled the whole transaction back already.
            if !self.conn.is_autocommit() {
                self.exec(queries::COMMIT)?;
            }
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

    /// Applies each write in its own savepoint — except a lone write, the usual case of a
    /// sequential caller, which needs none: if it is refused, the whole transaction is
    /// rolled back instead (two statements fewer per commit).
    fn apply_all(&mut self, batch: &[Write]) -> rusqlite::Result<Vec<Result<Done, Error>>> {
        let alone = batch.len() == 1;
        let mut outcomes = Vec::with_capacity(batch.len());
        for write in batch {
            if !alone {
                self.exec(queries::SAVEPOINT)?;
            }
            let result = match write {
                Write::Commit { commit, .. } => {
                    self.apply_commit(commit).map(|r| Done::Head(r.head))
                }
                Write::DeleteSnapshots { thread_id, .. } => {
                    self.delete_snapshots(thread_id).map(Done::Deleted)
                }
                Write::DeleteThread { thread_id, .. } => {
                    self.delete_thread(thread_id).map(|()| Done::Unit)
                }
                Write::Prune {
                    thread_id, base, ..
                } => self.prune(thread_id, base).map(Done::Deleted),
                Write::AnswerInterrupt {
                    interrupt_id,
                    value,
                    at,
                    ..
                } => self
                    .answer_interrupt(*interrupt_id, value, *at)
                    .map(|(a, r)| Done::Answered(a, r)),
                Write::Deliver {
                    thread_id,
                    name,
                    payload,
                    key,
                    at,
                    ..
                } => self
                    .deliver(thread_id, name, payload, key.as_deref(), *at)
                    .map(|(d, new)| Done::Delivered(d, new)),
                Write::Claim { request, .. } => self.claim(request).map(Done::Claimed),
                Write::RenewLease {
                    fence,
                    worker_id,
                    now,
                    ttl,
                    ..
                } => self
                    .renew_lease(fence, worker_id, *now, *ttl)
                    .map(|r| Done::Run(Box::new(r))),
                Write::ReleaseLease { fence, now, .. } => self
                    .release_lease(fence, *now)
                    .map(|r| Done::Run(Box::new(r))),
                Write::ReapLeases { now, limit, .. } => {
                    self.reap_leases(*now, *limit).map(Done::Claimed)
                }
                Write::RegisterWorker { worker, .. } => {
                    self.register_worker(worker).map(|()| Done::Unit)
                }
                Write::TouchWorker { worker_id, now, .. } => {
                    self.touch_worker(worker_id, *now).map(Done::Flag)
                }
                Write::PushPending { run, .. } => self.push_pending(run).map(Done::Id),
                Write::RemovePending { run_id, .. } => self.remove_pending(*run_id).map(Done::Flag),
                Write::ReserveIdempotency { candidate, now, .. } => self
                    .reserve_idempotency(candidate, *now)
                    .map(Done::Reserved),
                Write::CompleteIdempotency {
                    scope,
                    key,
                    response,
                    ..
                } => self
                    .complete_idempotency(scope, key, response)
                    .map(|()| Done::Unit),
                Write::ReleaseIdempotency { scope, key, .. } => {
                    self.release_idempotency(scope, key).map(|()| Done::Unit)
                }
                Write::PurgeIdempotency { now, .. } => {
                    self.purge_idempotency(*now).map(Done::Deleted)
                }
                Write::CreateApiKey { key, .. } => self.create_api_key(key).map(|()| Done::Unit),
                Write::RevokeApiKey { key_id, at, .. } => {
                    self.revoke_api_key(key_id, *at).map(Done::Flag)
                }
                Write::AppendAudit { record, .. } => self.append_audit(record).map(Done::Id),
            };
            match result {
                Ok(value) => {
                    if !alone {
                        self.exec(queries::RELEASE)?;
                    }
                    outcomes.push(Ok(value));
                }
                // A constraint failure is about this write's data, not the database:
                // refuse it alone.
                Err(Fault::Sql(e)) if !is_data_error(&e) => return Err(e),
                Err(fault) => {
                    if alone {
                        self.exec(queries::ROLLBACK)?;
                    } else {
                        self.exec(queries::ROLLBACK_TO)?;
                        self.exec(queries::RELEASE)?;
                    }
                    let error = match fault {
                        Fault::Sql(e) => Error::InvalidCommit {
                            thread_id: write.thread_id().cloned().unwrap_or_else(unknown_thread),
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
        // The run whose status changes, or else the one the commit is fenced on.
        let load = match &c.run {
            Some(RunWrite::SetStatus { run_id, .. }) => Some(*run_id),
            _ => c.fence.map(|f| f.run_id),
        };
        let stored_run = match load {
            Some(id) => read::run(conn, id)?,
            None => None,
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
        let seq =
            |s: Seq| seq_value(s).ok_or_else(|| invalid(tid, format!("seq {s} is out of range")));

        // The interrupts it raises and applies, the deliveries it consumes. An interrupt id
        // is unique across threads: raising one that is stored refuses the commit
        // (`plan_commit` refused one raised twice in the commit).
        let effects = interrupt_effects(c);
        let consumed = consumed_deliveries(c);
        for r in &effects.raised {
            if read::interrupt_exists(conn, r.interrupt_id)? {
                return Err(invalid(
                    tid,
                    format!("interrupt {} already exists", r.interrupt_id),
                ));
            }
        }

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
                    run.updated_at.0,
                    wake_at(&run.status).map(|t| t.0),
                    run.priority,
                    run.metadata.as_ref().map(Payload::json),
                    run.ready_at.map(|t| t.0)
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
                // Only an end writes `ended` (and with it `runs_unfinished`).
                let sql = if run.status.is_terminal() {
                    queries::END_RUN
                } else {
                    queries::UPDATE_RUN_STATUS
                };
                conn.prepare_cached(sql)?.execute(params![
                    key,
                    kind,
                    data,
                    run.updated_at.0,
                    wake_at(&run.status).map(|t| t.0),
                    run.ready_at.map(|t| t.0),
                    run.lease.as_ref().map(|l| l.worker_id.as_str()),
                    run.lease.as_ref().map(|l| l.expires_at.0)
                ])?;
                Some(RunRef {
                    key,
                    id: run.run_id,
                    created_at: run.created_at,
                })
            }
            _ => match (stored.as_ref().and_then(|s| s.active), c.events.first()) {
                (Some(active), _) => Some(active),
                // An operator edit of an idle thread, written by its last run (which
                // `plan_commit` checked every event names).
                (None, Some(e)) => match read::run_ref(conn, e.run_id)? {
                    Some((run, key)) if key == thread_key => Some(run),
                    _ => {
                        return Err(invalid(
                            tid,
                            format!("run {} of the edit is not the thread's", e.run_id),
                        ));
                    }
                },
                (None, None) => None,
            },
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
            for row in &rows {
                insert_event(conn, tid, thread_key, &run, row)?;
            }
        }

        for r in &effects.raised {
            let run = run_key(conn, tid, r.run_id, writer, stored.as_ref(), thread_key)?;
            conn.prepare_cached(queries::INSERT_INTERRUPT)?
                .execute(params![
                    interrupt_id_blob(r.interrupt_id),
                    thread_key,
                    run,
                    r.node,
                    r.payload.json(),
                    seq(r.raised_seq)?,
                    r.raised_at.0
                ])?;
        }
        for (id, at_seq, value) in &effects.applied {
            conn.prepare_cached(queries::APPLY_INTERRUPT)?
                .execute(params![
                    interrupt_id_blob(*id),
                    seq(*at_seq)?,
                    value.json(),
                    now.0
                ])?;
        }
        for (id, at_seq) in consumed {
            conn.prepare_cached(queries::CONSUME_DELIVERY)?
                .execute(params![delivery_id_blob(id), thread_key, seq(at_seq)?])?;
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

        // A run driven by workers that suspends becomes ready at once when what it waits
        // for already arrived (an answer or a delivery that raced the suspension), read
        // after this commit's own interrupt and delivery rows. A run driven by the library
        // never becomes ready: nothing to read.
        if let (Some(RunWrite::SetStatus { .. }), Some(run), Some(w)) = (&c.run, &plan.run, writer)
            && driven_by_workers(run)
        {
            let ready = match &run.status {
                RunStatus::Interrupted { .. } => {
                    // Ready since the latest of the answers, if all are in.
                    let open =
                        read::open_interrupts_of_run(conn, thread_key, tid, w.key, run.first_seq)?;
                    open.iter()
                        .filter_map(|i| i.answer.as_ref().map(|(_, at)| *at))
                        .max()
                        .and_then(|at| ready_on_answer(run, &open, at))
                }
                RunStatus::Waiting { events, .. } if !events.is_empty() => {
                    read::earliest_pending_delivery(conn, thread_key, tid, events)?
                        .map(|at| run.ready_at.map_or(at, |r| r.min(at)))
                }
                _ => None,
            };
            if let Some(at) = ready.filter(|at| Some(*at) != run.ready_at) {
                conn.prepare_cached(queries::SET_READY)?
                    .execute(params![w.key, at.0])?;
            }
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

    /// Deletes a thread and all its rows, unless a run of it is unfinished.
    fn delete_thread(&mut self, thread_id: &ThreadId) -> Result<(), Fault> {
        let conn = &self.conn;
        let stored = read::thread(conn, thread_id)?.ok_or_else(|| {
            Fault::Store(Error::ThreadNotFound {
                thread_id: thread_id.clone(),
            })
        })?;
        if let Some(run_id) = stored.record.active_run {
            return Err(Fault::Store(Error::RunActive {
                thread_id: thread_id.clone(),
                run_id,
            }));
        }
        let (low, high) = event_range(thread_id, stored.key, 0, MAX_SEQ)?;
        conn.prepare_cached(queries::DELETE_EVENTS_RANGE)?
            .execute(params![low, high])?;
        for sql in queries::DELETE_THREAD {
            conn.prepare_cached(sql)?.execute(params![stored.key])?;
        }
        Ok(())
    }

    /// Replaces the event at `base.seq` with `base` and deletes the events before it (see
    /// [`check_prune`]).
    fn prune(&mut self, thread_id: &ThreadId, base: &Event) -> Result<u64, Fault> {
        let conn = &self.conn;
        let stored = read::thread(conn, thread_id)?.ok_or_else(|| {
            Fault::Store(Error::ThreadNotFound {
                thread_id: thread_id.clone(),
            })
        })?;
        let active_first = match &stored.active {
            Some(r) => read::run(conn, r.id)?.map(|r| r.record.first_seq),
            None => None,
        };
        let at = base.seq;
        let replaced = read::events(conn, thread_id, Seq(at.0.saturating_sub(1)), 1)?
            .into_iter()
            .next()
            .filter(|e| e.seq == at)
            .ok_or_else(|| invalid(thread_id, format!("no event at seq {at} (already pruned?)")))?;
        check_prune(&stored.record, active_first, base, &replaced)?;
        let (run, _) = read::run_ref(conn, replaced.run_id)?
            .ok_or_else(|| invalid(thread_id, format!("run {} is missing", replaced.run_id)))?;
        let (low, high) = event_range(thread_id, stored.key, 0, at.0)?;
        let deleted = conn
            .prepare_cached(queries::DELETE_EVENTS_RANGE)?
            .execute(params![low, high])?;
        let mut row = EventRow::from_event(base)
            .map_err(|e| invalid(thread_id, format!("the prune base does not serialize: {e}")))?;
        // The base keeps the replaced event's run and time.
        row.run_id = replaced.run_id;
        row.at = replaced.at;
        insert_event(conn, thread_id, stored.key, &run, &row)?;
        let at_value = seq_value(at).ok_or_else(|| invalid(thread_id, "seq out of range"))?;
        conn.prepare_cached(queries::PRUNE_INTERRUPTS)?
            .execute(params![stored.key, at_value])?;
        conn.prepare_cached(queries::PRUNE_DELIVERIES)?
            .execute(params![stored.key, at_value])?;
        Ok((deleted as u64).saturating_sub(1))
    }

    /// Decides an answer with [`plan_answer`] on the interrupt and run status read in this
    /// transaction, and records it: of concurrent answers, exactly one is `Recorded`.
    fn answer_interrupt(
        &mut self,
        interrupt_id: InterruptId,
        value: &Payload,
        at: Timestamp,
    ) -> Result<(Answer, InterruptRecord), Fault> {
        let conn = &self.conn;
        let stored = read::interrupt(conn, interrupt_id, true)?
            .ok_or(Error::InterruptNotFound { interrupt_id })?;
        let tid = &stored.record.thread_id;
        let status = stored.run_status.as_ref().ok_or_else(|| Error::Corrupt {
            thread_id: tid.clone(),
            seq: None,
            detail: format!("interrupt {interrupt_id}: its run's status was not read"),
        })?;
        match plan_answer(&stored.record, status, value, at)? {
            None => Ok((Answer::AlreadyAnswered, stored.record)),
            Some(updated) => {
                conn.prepare_cached(queries::ANSWER_INTERRUPT)?
                    .execute(params![stored.key, value.json(), at.0])
                    .map_err(|e| refused(e, tid))?;
                // The last open interrupt answered makes a run driven by workers claimable
                // (a run driven by the library never is: nothing to read).
                if matches!(status, RunStatus::Interrupted { .. })
                    && stored.run_epoch.is_some_and(|e| e > 0)
                    && let Some(run) = read::run(conn, updated.run_id)?
                {
                    let open = read::open_interrupts_of_run(
                        conn,
                        stored.thread_key,
                        tid,
                        stored.run_key,
                        run.record.first_seq,
                    )?;
                    if let Some(ready) = ready_on_answer(&run.record, &open, at)
                        && Some(ready) != run.record.ready_at
                    {
                        conn.prepare_cached(queries::SET_READY)?
                            .execute(params![run.key, ready.0])?;
                    }
                }
                Ok((Answer::Recorded, updated))
            }
        }
    }

    /// Buffers a delivery, or returns the one recorded earlier with the same idempotency
    /// key (read in this transaction, so concurrent senders of one key record it once).
    fn deliver(
        &mut self,
        thread_id: &ThreadId,
        name: &str,
        payload: &Payload,
        key: Option<&str>,
        at: Timestamp,
    ) -> Result<(Delivery, bool), Fault> {
        let conn = &self.conn;
        let stored = read::thread(conn, thread_id)?.ok_or_else(|| Error::ThreadNotFound {
            thread_id: thread_id.clone(),
        })?;
        let thread_key = stored.key;
        if let Some(k) = key
            && let Some(existing) = read::delivery_by_idem_key(conn, thread_key, thread_id, k)?
        {
            check_redelivery(&existing, name, payload)?;
            return Ok((existing, false));
        }
        let delivery = Delivery {
            delivery_id: DeliveryId::generate(),
            thread_id: thread_id.clone(),
            name: name.to_owned(),
            payload: payload.clone(),
            key: key.map(str::to_owned),
            sent_at: at,
            consumed_seq: None,
        };
        conn.prepare_cached(queries::INSERT_DELIVERY)?
            .execute(params![
                delivery_id_blob(delivery.delivery_id),
                thread_key,
                name,
                payload.json(),
                key,
                at.0
            ])?;
        // A run waiting for this event becomes claimable.
        if let Some(active) = stored.active
            && let Some(run) = read::run(conn, active.id)?
            && let Some(ready) = ready_on_delivery(&run.record, name, at)
            && Some(ready) != run.record.ready_at
        {
            conn.prepare_cached(queries::SET_READY)?
                .execute(params![run.key, ready.0])?;
        }
        Ok((delivery, true))
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

/// A driver error of a write to `thread_id`: a refusal by the schema names the thread, any
/// other error stays a driver error (it fails the group).
fn refused(e: rusqlite::Error, thread_id: &ThreadId) -> Fault {
    if is_data_error(&e) {
        invalid(thread_id, format!("refused by the schema: {e}"))
    } else {
        Fault::Sql(e)
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
