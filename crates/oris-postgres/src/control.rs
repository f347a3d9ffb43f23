//! The control-plane writes: claims, lease renewals and releases, the lease reaper, the
//! worker registry, idempotency records, API keys and the audit log. Each runs inside
//! [`Db::transact`](crate::conn::Db::transact) and decides with the core's pure rules
//! (`plan_claim`, `plan_renew`, `plan_release`, `plan_reap`, `plan_reservation`) on rows it
//! locked.

use std::time::Duration;

use oris_core::id::{RunId, Timestamp};
use oris_core::status::RunStatus;
use oris_core::store::{
    ApiKeyRecord, AuditRecord, ClaimRequest, Error, Fence, IdempotencyRecord, PendingRun,
    Reservation, RunRecord, StoredResponse, WorkerRecord, plan_claim, plan_reap, plan_release,
    plan_renew, plan_reservation,
};
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use crate::codec::{Fault, encode_status, opt, req};
use crate::conn::{Conn, Param};
use crate::queries::Sql;
use crate::read::{self, StoredRun};
use crate::write::notify;

/// Claims up to `request.limit` ready runs in one statement (see `claim_template!` in
/// `queries`), checks every claimed run against [`plan_claim`] on its row as it was before
/// (a disagreement rolls the claim back), and returns them in claim order.
pub(crate) async fn claim(
    conn: &Conn,
    sql: &Sql,
    request: &ClaimRequest,
) -> Result<Vec<RunRecord>, Fault> {
    if request.limit == 0 {
        return Ok(Vec::new());
    }
    let expires = request.now.plus(request.ttl);
    let (_, running) = encode_status(&RunStatus::Running).map_err(|e| {
        Fault::Store(Error::Incompatible(format!(
            "the running status does not serialize: {e}"
        )))
    })?;
    let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
    let (graphs, versions): (Vec<&str>, Vec<&str>) = request
        .graphs
        .iter()
        .map(|(g, v)| (g.as_str(), v.as_str()))
        .unzip();
    let mut params: Vec<Param<'_>> = vec![
        (&request.now.0, Type::INT8),
        (&limit, Type::INT8),
        (&request.worker_id, Type::TEXT),
        (&expires.0, Type::INT8),
        (&running, Type::TEXT),
    ];
    let text = if request.graphs.is_empty() {
        &sql.claim
    } else {
        params.push((&graphs, Type::TEXT_ARRAY));
        params.push((&versions, Type::TEXT_ARRAY));
        &sql.claim_graphs
    };
    let rows = conn.query(text, &params).await?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in &rows {
        let after = read::decode_run(row)?.record;
        let before = before_claim(row, &after).map_err(|f| {
            f.within(format!("run {} before its claim", after.run_id))
                .at(&after.thread_id, None)
        })?;
        match plan_claim(&before, request) {
            Some(planned) if planned == after => claimed.push((before, after)),
            planned => {
                return Err(Fault::Store(Error::Corrupt {
                    thread_id: after.thread_id.clone(),
                    seq: None,
                    detail: format!(
                        "the claim of run {} disagrees with plan_claim (the claim was rolled \
                         back): stored {after:?}, planned {planned:?}",
                        after.run_id
                    ),
                }));
            }
        }
    }
    claimed.sort_by(|(a, _), (b, _)| {
        b.priority
            .cmp(&a.priority)
            .then(a.ready_at.cmp(&b.ready_at))
            .then(a.run_id.cmp(&b.run_id))
    });
    Ok(claimed.into_iter().map(|(_, after)| after).collect())
}

/// The run of a claim row as it was before the claim: `after` with the columns the claim
/// changed (17…23, see `claim_template!`) as they were.
fn before_claim(row: &Row, after: &RunRecord) -> Result<RunRecord, Fault> {
    let mut r = after.clone();
    r.status = crate::codec::decode_status(
        &req::<String>(row, 17, "status")?,
        req(row, 18, "status_data")?,
    )?;
    r.updated_at = crate::codec::time(row, 19, "updated_at")?;
    r.ready_at = opt::<i64>(row, 20, "ready_at")?.map(Timestamp);
    r.lease_epoch = read::epoch(row, 21, "lease_epoch")?;
    r.lease = read::lease(row, 22, 23)?;
    Ok(r)
}

/// The fenced run, locked until the transaction ends.
async fn fenced_run(conn: &Conn, sql: &Sql, run_id: RunId) -> Result<StoredRun, Fault> {
    read::run(conn, sql, run_id, true)
        .await?
        .ok_or(Fault::Store(Error::RunNotFound { run_id }))
}

/// Writes a run's readiness and lease.
async fn write_lease(conn: &Conn, sql: &Sql, key: i64, run: &RunRecord) -> Result<(), Fault> {
    let ready_at = run.ready_at.map(|t| t.0);
    let epoch = i64::try_from(run.lease_epoch).map_err(|_| {
        Fault::Store(Error::Incompatible(format!(
            "lease epoch {} of run {} is out of range",
            run.lease_epoch, run.run_id
        )))
    })?;
    let worker = run.lease.as_ref().map(|l| l.worker_id.as_str());
    let expires = run.lease.as_ref().map(|l| l.expires_at.0);
    conn.execute(
        &sql.set_lease,
        &[
            (&key, Type::INT8),
            (&ready_at, Type::INT8),
            (&epoch, Type::INT8),
            (&worker, Type::TEXT),
            (&expires, Type::INT8),
        ],
    )
    .await?;
    Ok(())
}

/// Renews a lease ([`plan_renew`]) on the locked run.
pub(crate) async fn renew_lease(
    conn: &Conn,
    sql: &Sql,
    fence: &Fence,
    worker_id: &str,
    now: Timestamp,
    ttl: Duration,
) -> Result<RunRecord, Fault> {
    let stored = fenced_run(conn, sql, fence.run_id).await?;
    let next = plan_renew(&stored.record, fence, worker_id, now, ttl)?;
    write_lease(conn, sql, stored.key, &next).await?;
    Ok(next)
}

/// Releases a lease ([`plan_release`]) on the locked run; wakes listeners when the run is
/// ready at once.
pub(crate) async fn release_lease(
    conn: &Conn,
    sql: &Sql,
    fence: &Fence,
    now: Timestamp,
) -> Result<RunRecord, Fault> {
    let stored = fenced_run(conn, sql, fence.run_id).await?;
    let next = plan_release(&stored.record, fence, now)?;
    write_lease(conn, sql, stored.key, &next).await?;
    if next.ready_at.is_some_and(|t| t <= now) {
        notify(conn, sql, &next.thread_id).await?;
    }
    Ok(next)
}

/// Clears up to `limit` leases expired at `now` in one statement (see `reap_template!` in
/// `queries`), checks every reaped run against [`plan_reap`] on its row as it was before (a
/// disagreement rolls the reap back), wakes the listeners of the reaped runs' threads (they
/// are claimable), and returns the runs after, earliest expiry first.
pub(crate) async fn reap_leases(
    conn: &Conn,
    sql: &Sql,
    now: Timestamp,
    limit: usize,
) -> Result<Vec<RunRecord>, Fault> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = conn
        .query(
            &sql.reap_leases,
            &[(&now.0, Type::INT8), (&limit, Type::INT8)],
        )
        .await?;
    let mut reaped = Vec::with_capacity(rows.len());
    for row in &rows {
        let after = read::decode_run(row)?.record;
        let before = RunRecord {
            ready_at: opt::<i64>(row, 17, "ready_at")
                .map_err(|f| {
                    f.within(format!("run {} before the reap", after.run_id))
                        .at(&after.thread_id, None)
                })?
                .map(Timestamp),
            lease: read::lease(row, 18, 19).map_err(|f| {
                f.within(format!("run {} before the reap", after.run_id))
                    .at(&after.thread_id, None)
            })?,
            ..after.clone()
        };
        let expired_at = before.lease.as_ref().map(|l| l.expires_at);
        match plan_reap(&before, now) {
            Some(planned) if planned == after => reaped.push((expired_at, after)),
            planned => {
                return Err(Fault::Store(Error::Corrupt {
                    thread_id: after.thread_id.clone(),
                    seq: None,
                    detail: format!(
                        "the reap of run {} disagrees with plan_reap (the reap was rolled \
                         back): stored {after:?}, planned {planned:?}",
                        after.run_id
                    ),
                }));
            }
        }
    }
    reaped.sort_by(|(a, x), (b, y)| a.cmp(b).then(x.run_id.cmp(&y.run_id)));
    for (_, run) in &reaped {
        notify(conn, sql, &run.thread_id).await?;
    }
    Ok(reaped.into_iter().map(|(_, run)| run).collect())
}

/// Inserts a worker's record, or replaces every field of it but `registered_at`.
pub(crate) async fn register_worker(
    conn: &Conn,
    sql: &Sql,
    worker: &WorkerRecord,
) -> Result<(), Fault> {
    let graphs = serde_json::to_string(&worker.graphs).map_err(|e| {
        Fault::Store(Error::Incompatible(format!(
            "worker graphs do not serialize: {e}"
        )))
    })?;
    let capacity = i64::from(worker.capacity);
    let stopped = worker.stopped_at.map(|t| t.0);
    conn.execute(
        &sql.upsert_worker,
        &[
            (&worker.worker_id, Type::TEXT),
            (&graphs, Type::TEXT),
            (&capacity, Type::INT8),
            (&worker.registered_at.0, Type::INT8),
            (&worker.last_seen.0, Type::INT8),
            (&stopped, Type::INT8),
        ],
    )
    .await?;
    Ok(())
}

/// Moves a worker's `last_seen`; `false` when no such worker.
pub(crate) async fn touch_worker(
    conn: &Conn,
    sql: &Sql,
    worker_id: &str,
    now: Timestamp,
) -> Result<bool, Fault> {
    Ok(conn
        .execute(
            &sql.touch_worker,
            &[(&worker_id, Type::TEXT), (&now.0, Type::INT8)],
        )
        .await?
        == 1)
}

/// Stores a pending run at the next position of its thread and returns that position;
/// [`Error::AlreadyExists`] when its id is taken. A push that lost a race for a position
/// (another push on the thread took it first) tries the next one.
pub(crate) async fn push_pending(conn: &Conn, sql: &Sql, run: &PendingRun) -> Result<u64, Fault> {
    let id = run.run_id.as_uuid();
    let thread = run.thread_id.as_str();
    let request = run.request.json();
    for _ in 0..64 {
        let row = conn
            .query_opt(
                &sql.push_pending,
                &[
                    (&id, Type::UUID),
                    (&thread, Type::TEXT),
                    (&run.graph, Type::TEXT),
                    (&run.graph_version, Type::TEXT),
                    (&request, Type::TEXT),
                    (&run.created_at.0, Type::INT8),
                ],
            )
            .await?;
        if let Some(row) = row {
            let position: i64 = req(&row, 0, "position")?;
            return u64::try_from(position)
                .map_err(|_| Fault::Bad(format!("column `position`: {position} is negative")));
        }
        if conn
            .query_opt(&sql.pending_exists, &[(&id, Type::UUID)])
            .await?
            .is_some()
        {
            return Err(Fault::Store(Error::AlreadyExists {
                what: "pending run",
                id: run.run_id.to_string(),
            }));
        }
    }
    Err(Fault::Store(Error::Unavailable(format!(
        "pending run {}: no free position on thread `{}` after 64 attempts",
        run.run_id, run.thread_id
    ))))
}

/// Deletes a pending run; `false` when there is none with this id.
pub(crate) async fn remove_pending(conn: &Conn, sql: &Sql, run_id: RunId) -> Result<bool, Fault> {
    Ok(conn
        .execute(&sql.remove_pending, &[(&run_id.as_uuid(), Type::UUID)])
        .await?
        == 1)
}

/// Reserves an idempotency key: inserts the reservation unless the key has a record
/// (concurrent inserts of one key wait for each other on the primary key, and all but
/// one insert nothing), else decides with [`plan_reservation`] on the locked record.
pub(crate) async fn reserve_idempotency(
    conn: &Conn,
    sql: &Sql,
    candidate: &IdempotencyRecord,
    now: Timestamp,
) -> Result<Reservation, Fault> {
    let inserted = conn
        .query_opt(
            &sql.insert_idempotency,
            &[
                (&candidate.scope, Type::TEXT),
                (&candidate.key, Type::TEXT),
                (&candidate.request_hash, Type::TEXT),
                (&candidate.created_at.0, Type::INT8),
                (&candidate.expires_at.0, Type::INT8),
                (&candidate.locked_until.0, Type::INT8),
            ],
        )
        .await?;
    if inserted.is_some() {
        return Ok(plan_reservation(None, candidate, now).0);
    }
    // The record was deleted (released, purged) between the insert and this read: decide
    // again from the start.
    let existing = read::idempotency_locked(conn, sql, &candidate.scope, &candidate.key)
        .await?
        .ok_or(Fault::Retry)?;
    let (decision, write) = plan_reservation(Some(&existing), candidate, now);
    if let Some(r) = write {
        let status = r.response.as_ref().map(|s| i32::from(s.status));
        let body = r.response.as_ref().map(|s| s.body.as_str());
        conn.execute(
            &sql.update_idempotency,
            &[
                (&r.scope, Type::TEXT),
                (&r.key, Type::TEXT),
                (&r.request_hash, Type::TEXT),
                (&r.created_at.0, Type::INT8),
                (&r.expires_at.0, Type::INT8),
                (&r.locked_until.0, Type::INT8),
                (&status, Type::INT4),
                (&body, Type::TEXT),
            ],
        )
        .await?;
    }
    Ok(decision)
}

/// Stores the response of a reserved key.
pub(crate) async fn complete_idempotency(
    conn: &Conn,
    sql: &Sql,
    scope: &str,
    key: &str,
    response: &StoredResponse,
) -> Result<(), Fault> {
    conn.execute(
        &sql.complete_idempotency,
        &[
            (&scope, Type::TEXT),
            (&key, Type::TEXT),
            (&i32::from(response.status), Type::INT4),
            (&response.body, Type::TEXT),
        ],
    )
    .await?;
    Ok(())
}

/// Drops an unfinished reservation.
pub(crate) async fn release_idempotency(
    conn: &Conn,
    sql: &Sql,
    scope: &str,
    key: &str,
) -> Result<(), Fault> {
    conn.execute(
        &sql.release_idempotency,
        &[(&scope, Type::TEXT), (&key, Type::TEXT)],
    )
    .await?;
    Ok(())
}

/// Deletes expired idempotency records.
pub(crate) async fn purge_idempotency(
    conn: &Conn,
    sql: &Sql,
    now: Timestamp,
) -> Result<u64, Fault> {
    Ok(conn
        .execute(&sql.purge_idempotency, &[(&now.0, Type::INT8)])
        .await?)
}

/// Stores a new API key.
pub(crate) async fn create_api_key(
    conn: &Conn,
    sql: &Sql,
    key: &ApiKeyRecord,
) -> Result<(), Fault> {
    let revoked = key.revoked_at.map(|t| t.0);
    let inserted = conn
        .query_opt(
            &sql.insert_api_key,
            &[
                (&key.key_id, Type::TEXT),
                (&key.name, Type::TEXT),
                (&key.role, Type::TEXT),
                (&key.secret_hash, Type::TEXT),
                (&key.created_at.0, Type::INT8),
                (&revoked, Type::INT8),
            ],
        )
        .await?;
    match inserted {
        Some(_) => Ok(()),
        None => Err(Fault::Store(Error::AlreadyExists {
            what: "API key",
            id: key.key_id.clone(),
        })),
    }
}

/// Revokes an API key; `false` when it does not exist or was revoked already.
pub(crate) async fn revoke_api_key(
    conn: &Conn,
    sql: &Sql,
    key_id: &str,
    at: Timestamp,
) -> Result<bool, Fault> {
    Ok(conn
        .execute(
            &sql.revoke_api_key,
            &[(&key_id, Type::TEXT), (&at.0, Type::INT8)],
        )
        .await?
        == 1)
}

/// Appends an audit entry. Appends are serialized by a transaction-scoped advisory lock
/// held until `COMMIT`: ids are drawn and committed in the same order, so a reader paging
/// by id (`after`) never passes an id whose entry commits later.
pub(crate) async fn append_audit(
    conn: &Conn,
    sql: &Sql,
    record: &AuditRecord,
) -> Result<u64, Fault> {
    let lock_key = format!("{}:audit", sql.channel);
    conn.query(&sql.audit_lock, &[(&lock_key, Type::TEXT)])
        .await?;
    let details = record.details.as_ref().map(|d| d.json());
    let row = conn
        .query_opt(
            &sql.insert_audit,
            &[
                (&record.at.0, Type::INT8),
                (&record.actor, Type::TEXT),
                (&record.role, Type::TEXT),
                (&record.action, Type::TEXT),
                (&record.target, Type::TEXT),
                (&record.request_id, Type::TEXT),
                (&i32::from(record.status), Type::INT4),
                (&record.outcome, Type::TEXT),
                (&details, Type::TEXT),
            ],
        )
        .await?
        .ok_or_else(|| Fault::Bad("the audit insert returned no id".into()))?;
    let id: i64 = req(&row, 0, "id")?;
    u64::try_from(id).map_err(|_| Fault::Bad(format!("audit id {id} is negative")))
}
