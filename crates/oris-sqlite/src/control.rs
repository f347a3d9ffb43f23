//! The writes of a server's control plane on the write connection: claims and leases, the
//! lease reaper, the worker registry, idempotency records, API keys and the audit log.
//!
//! Each is a request of its own in the writer's queue, applied in the group transaction
//! like a commit (in its own savepoint), so it is atomic and serialized with every other
//! write of the process — and, through `BEGIN IMMEDIATE`, with other processes on the file.
//! The decisions are the pure rules of `oris_core::store` ([`plan_claim`], [`plan_renew`],
//! [`plan_release`], [`plan_reap`], [`plan_reservation`]) applied to the rows read in that
//! transaction.
//!
//! # Durability
//! None of these forces an fsync of its own except API key changes. The store runs in WAL
//! mode; a group of them is committed with `synchronous=NORMAL` unless it also holds a
//! `Sync`/`Exit` commit. Once `COMMIT` returned, the transaction is in the WAL file (written
//! to the operating system, not fsynced): a process kill (SIGKILL, panic, OOM) cannot lose
//! an acknowledged claim, renewal, release, reservation, response or audit entry — the next
//! open replays the WAL. A power loss or OS crash can lose the ones written since the last
//! fsync; since the WAL is sequential, the next durable commit (any `Sync`/`Exit` commit,
//! delivery, deletion, API key change) fsyncs them too. So each is durable at the latest
//! with the store's next durable commit, like an interrupt answer. What a power loss can
//! undo is harmless for leases (a lost claim or renewal only ends a lease early, and the
//! workers of this process died with it; a lost release leaves the run leased until its
//! expiry) and for the audit log; a lost idempotency response after a power loss makes a
//! retry of that request run again once its lock expires.
//!
//! API key creation and revocation are fsynced before they return: they are rare, and a
//! revoked key must not come back.
//!
//! # Claims
//! A claim never scans the runs: the partial index `runs_ready` on
//! `(priority, ready_at, run_id) WHERE ready_at IS NOT NULL` holds only claimable-or-leased
//! unfinished runs. The claim seeks the highest priority present, reads that priority's
//! runs ready by `now` in `(ready_at, run_id)` order — stopping as soon as it has `limit` —
//! then seeks the next lower priority, and so on. Runs of graph versions the worker does
//! not accept are read and skipped.
//!
//! # The reaper
//! The reaper reads the expired leases as the head of the partial index `runs_leased` on
//! `(lease_expires, run_id) WHERE lease_worker IS NOT NULL` — only leased runs are in it —
//! up to its limit, and clears each ([`plan_reap`]) in the writer's transaction, like a
//! release: a claim, renewal or fenced commit queued behind it sees the lease gone.

use std::time::Duration;

use oris_core::id::{RunId, Timestamp};
use oris_core::store::{
    ApiKeyRecord, AuditRecord, ClaimRequest, Error, Fence, IdempotencyRecord, PendingRun,
    Reservation, RunRecord, StoredResponse, WorkerRecord, plan_claim, plan_reap, plan_release,
    plan_renew, plan_reservation,
};
use rusqlite::{OptionalExtension, params};

use crate::codec::{Fault, encode_status, run_id_blob, text};
use crate::queries;
use crate::read;
use crate::writer::Writer;

fn out_of_range(what: &str) -> Fault {
    Fault::Store(Error::Unavailable(format!(
        "internal error in oris-sqlite: {what} is out of range"
    )))
}

impl Writer {
    /// Claims up to `request.limit` ready runs ([`plan_claim`]), highest priority first,
    /// then by `ready_at` and run id.
    pub(crate) fn claim(&mut self, request: &ClaimRequest) -> Result<Vec<RunRecord>, Fault> {
        let conn = &self.conn;
        let mut picked: Vec<(i64, RunRecord)> = Vec::new();
        let mut below = i64::MAX;
        while picked.len() < request.limit {
            let Some(priority) = conn
                .prepare_cached(queries::NEXT_READY_PRIORITY)?
                .query_row(params![below], |r| r.get::<_, i64>(0))
                .optional()?
            else {
                break;
            };
            let mut stmt = conn.prepare_cached(queries::READY_RUNS)?;
            let mut rows = stmt.query(params![priority, request.now.0])?;
            while picked.len() < request.limit
                && let Some(row) = rows.next()?
            {
                // Skip the versions this worker cannot drive before decoding the rest.
                if let (Ok(graph), Ok(version)) =
                    (text(row, 4, "graph"), text(row, 5, "graph_version"))
                    && !request.accepts(&graph, &version)
                {
                    continue;
                }
                let run = read::decode_run(row)?;
                if let Some(claimed) = plan_claim(&run.record, request) {
                    picked.push((run.key, claimed));
                }
            }
            below = priority;
        }
        // Written after reading: updating `ready_at` moves the row within the index being
        // read.
        for (key, run) in &picked {
            let (kind, data) = encode_status(&run.status).map_err(|e| {
                Fault::Store(Error::Corrupt {
                    thread_id: run.thread_id.clone(),
                    seq: None,
                    detail: format!("run {}: the status does not serialize: {e}", run.run_id),
                })
            })?;
            let epoch = i64::try_from(run.lease_epoch).map_err(|_| out_of_range("lease epoch"))?;
            self.conn
                .prepare_cached(queries::CLAIM_RUN)?
                .execute(params![
                    key,
                    kind,
                    data,
                    run.updated_at.0,
                    run.ready_at.map(|t| t.0),
                    epoch,
                    run.lease.as_ref().map(|l| l.worker_id.as_str()),
                    run.lease.as_ref().map(|l| l.expires_at.0)
                ])?;
        }
        Ok(picked.into_iter().map(|(_, run)| run).collect())
    }

    /// Extends a lease ([`plan_renew`]).
    pub(crate) fn renew_lease(
        &mut self,
        fence: &Fence,
        worker_id: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<RunRecord, Fault> {
        let run = read::run(&self.conn, fence.run_id)?.ok_or(Error::RunNotFound {
            run_id: fence.run_id,
        })?;
        let after = plan_renew(&run.record, fence, worker_id, now, ttl)?;
        self.set_lease(run.key, &after)?;
        Ok(after)
    }

    /// Hands a leased run back ([`plan_release`]).
    pub(crate) fn release_lease(
        &mut self,
        fence: &Fence,
        now: Timestamp,
    ) -> Result<RunRecord, Fault> {
        let run = read::run(&self.conn, fence.run_id)?.ok_or(Error::RunNotFound {
            run_id: fence.run_id,
        })?;
        let after = plan_release(&run.record, fence, now)?;
        self.set_lease(run.key, &after)?;
        Ok(after)
    }

    /// Clears up to `limit` leases expired at `now` ([`plan_reap`]), earliest expiry first.
    pub(crate) fn reap_leases(
        &mut self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<RunRecord>, Fault> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut picked: Vec<(i64, RunRecord)> = Vec::new();
        {
            let mut stmt = self.conn.prepare_cached(queries::EXPIRED_LEASES)?;
            let mut rows = stmt.query(params![now.0, i64::try_from(limit).unwrap_or(i64::MAX)])?;
            while let Some(row) = rows.next()? {
                let run = read::decode_run(row)?;
                if let Some(reaped) = plan_reap(&run.record, now) {
                    picked.push((run.key, reaped));
                }
            }
        }
        // Written after reading: clearing the lease removes the row from the index read.
        for (key, run) in &picked {
            self.set_lease(*key, run)?;
        }
        Ok(picked.into_iter().map(|(_, run)| run).collect())
    }

    /// Inserts a worker's record, or replaces every field of it but `registered_at`.
    pub(crate) fn register_worker(&mut self, worker: &WorkerRecord) -> Result<(), Fault> {
        let graphs = serde_json::to_string(&worker.graphs)
            .map_err(|e| Fault::Store(Error::Unavailable(format!("worker graphs: {e}"))))?;
        self.conn
            .prepare_cached(queries::UPSERT_WORKER)?
            .execute(params![
                worker.worker_id,
                graphs,
                i64::from(worker.capacity),
                worker.registered_at.0,
                worker.last_seen.0,
                worker.stopped_at.map(|t| t.0)
            ])?;
        Ok(())
    }

    /// Moves a worker's `last_seen`; `false` when no such worker.
    pub(crate) fn touch_worker(&mut self, worker_id: &str, now: Timestamp) -> Result<bool, Fault> {
        let n = self
            .conn
            .prepare_cached(queries::TOUCH_WORKER)?
            .execute(params![worker_id, now.0])?;
        Ok(n == 1)
    }

    fn set_lease(&self, key: i64, run: &RunRecord) -> Result<(), Fault> {
        self.conn
            .prepare_cached(queries::SET_LEASE)?
            .execute(params![
                key,
                run.ready_at.map(|t| t.0),
                run.lease.as_ref().map(|l| l.worker_id.as_str()),
                run.lease.as_ref().map(|l| l.expires_at.0)
            ])?;
        Ok(())
    }

    /// Decides a reservation ([`plan_reservation`]) against the record read in this
    /// transaction and stores the new or taken-over one: of concurrent identical requests
    /// exactly one is `Reserved`.
    pub(crate) fn reserve_idempotency(
        &mut self,
        candidate: &IdempotencyRecord,
        now: Timestamp,
    ) -> Result<Reservation, Fault> {
        let existing = read::idempotency(&self.conn, &candidate.scope, &candidate.key)?;
        let (decision, write) = plan_reservation(existing.as_ref(), candidate, now);
        if let Some(r) = write {
            self.conn
                .prepare_cached(queries::UPSERT_IDEMPOTENCY)?
                .execute(params![
                    r.scope,
                    r.key,
                    r.request_hash,
                    r.created_at.0,
                    r.expires_at.0,
                    r.locked_until.0,
                    r.response.as_ref().map(|s| s.status),
                    r.response.as_ref().map(|s| s.body.as_str())
                ])?;
        }
        Ok(decision)
    }

    /// Stores the response of a reserved key (nothing when the key is not stored).
    pub(crate) fn complete_idempotency(
        &mut self,
        scope: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<(), Fault> {
        self.conn
            .prepare_cached(queries::COMPLETE_IDEMPOTENCY)?
            .execute(params![scope, key, response.status, response.body])?;
        Ok(())
    }

    /// Drops an unfinished reservation; a completed record stays.
    pub(crate) fn release_idempotency(&mut self, scope: &str, key: &str) -> Result<(), Fault> {
        self.conn
            .prepare_cached(queries::RELEASE_IDEMPOTENCY)?
            .execute(params![scope, key])?;
        Ok(())
    }

    /// Deletes the records expired at `now`.
    pub(crate) fn purge_idempotency(&mut self, now: Timestamp) -> Result<u64, Fault> {
        let n = self
            .conn
            .prepare_cached(queries::PURGE_IDEMPOTENCY)?
            .execute(params![now.0])?;
        Ok(n as u64)
    }

    /// Stores a new API key; [`Error::AlreadyExists`] when its id is taken.
    pub(crate) fn create_api_key(&mut self, key: &ApiKeyRecord) -> Result<(), Fault> {
        if read::api_key_exists(&self.conn, &key.key_id)? {
            return Err(Fault::Store(Error::AlreadyExists {
                what: "api key",
                id: key.key_id.clone(),
            }));
        }
        self.conn
            .prepare_cached(queries::INSERT_API_KEY)?
            .execute(params![
                key.key_id,
                key.name,
                key.role,
                key.secret_hash,
                key.created_at.0,
                key.revoked_at.map(|t| t.0)
            ])?;
        Ok(())
    }

    /// Stores a pending run at the next position of its thread and returns that position;
    /// [`Error::AlreadyExists`] when its id is taken.
    pub(crate) fn push_pending(&mut self, run: &PendingRun) -> Result<u64, Fault> {
        let id = run_id_blob(run.run_id);
        let exists = self
            .conn
            .prepare_cached(queries::PENDING_EXISTS)?
            .exists(params![id])?;
        if exists {
            return Err(Fault::Store(Error::AlreadyExists {
                what: "pending run",
                id: run.run_id.to_string(),
            }));
        }
        let highest: Option<i64> = self
            .conn
            .prepare_cached(queries::MAX_PENDING_POSITION)?
            .query_row(params![run.thread_id.as_str()], |r| r.get(0))?;
        let position = highest.unwrap_or(0) + 1;
        self.conn
            .prepare_cached(queries::INSERT_PENDING)?
            .execute(params![
                id,
                run.thread_id.as_str(),
                position,
                run.graph,
                run.graph_version,
                run.request.json(),
                run.created_at.0
            ])?;
        u64::try_from(position).map_err(|_| out_of_range("pending position"))
    }

    /// Deletes a pending run; `false` when there is none with this id.
    pub(crate) fn remove_pending(&mut self, run_id: RunId) -> Result<bool, Fault> {
        let n = self
            .conn
            .prepare_cached(queries::DELETE_PENDING)?
            .execute(params![run_id_blob(run_id)])?;
        Ok(n == 1)
    }

    /// Revokes a key; `false` when it does not exist or was revoked before.
    pub(crate) fn revoke_api_key(&mut self, key_id: &str, at: Timestamp) -> Result<bool, Fault> {
        let n = self
            .conn
            .prepare_cached(queries::REVOKE_API_KEY)?
            .execute(params![key_id, at.0])?;
        Ok(n == 1)
    }

    /// Appends an audit entry and returns its id (the record's own id is ignored).
    pub(crate) fn append_audit(&mut self, record: &AuditRecord) -> Result<u64, Fault> {
        self.conn
            .prepare_cached(queries::INSERT_AUDIT)?
            .execute(params![
                record.at.0,
                record.actor,
                record.role,
                record.action,
                record.target,
                record.request_id,
                record.status,
                record.outcome,
                record.details.as_ref().map(|d| d.json())
            ])?;
        u64::try_from(self.conn.last_insert_rowid()).map_err(|_| out_of_range("audit id"))
    }
}
