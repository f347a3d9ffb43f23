//! Reading records back, shared by plain reads and the write transactions (which read the
//! stored thread and run, locked, before deciding).

use oris_core::event::{Event, EventKind, EventRow};
use oris_core::id::{DeliveryId, InterruptId, RunId, Seq, ThreadId, Timestamp};
use oris_core::status::RunStatus;
use oris_core::store::{
    ApiKeyRecord, AuditFilter, AuditRecord, Delivery, Error, IdempotencyRecord, InterruptFilter,
    InterruptRecord, LeaseHolder, PendingRun, RunFilter, RunRecord, Snapshot, StoredResponse,
    ThreadRecord, WorkerRecord,
};
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use crate::codec::{
    Fault, decode_boundary, decode_status, kind_from_code, opt, opt_payload, opt_seq, opt_u32,
    payload, req, seq, thread_id as thread_id_col, time, u32_col, unknown_thread,
};
use crate::conn::{Conn, Param};
use crate::queries::{self, Sql};

/// A thread record with its keys.
#[derive(Debug, Clone)]
pub(crate) struct StoredThread {
    pub key: i64,
    pub record: ThreadRecord,
    /// Key of the active run.
    pub active_key: Option<i64>,
    /// Key of the last run.
    pub last_key: Option<i64>,
}

/// A run record with its keys.
#[derive(Debug, Clone)]
pub(crate) struct StoredRun {
    pub key: i64,
    pub record: RunRecord,
}

/// How to read a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lock {
    /// A plain read.
    None,
    /// Locked against other commits until the transaction ends.
    Write,
    /// Locked exclusively (deleting it).
    Delete,
}

/// Reads a thread with the keys and ids of its runs.
pub(crate) async fn thread(
    conn: &Conn,
    sql: &Sql,
    id: &ThreadId,
    lock: Lock,
) -> Result<Option<StoredThread>, Fault> {
    let text = match lock {
        Lock::None => &sql.thread,
        Lock::Write => &sql.thread_for_update,
        Lock::Delete => &sql.thread_for_delete,
    };
    let Some(row) = conn.query_opt(text, &[(&id.as_str(), Type::TEXT)]).await? else {
        return Ok(None);
    };
    decode_thread(&row, id)
        .map(Some)
        .map_err(|f| f.within("thread record").at(id, None))
}

fn decode_thread(row: &Row, id: &ThreadId) -> Result<StoredThread, Fault> {
    let run_of = |key_col: usize, id_col: usize, name: &str| -> Result<_, Fault> {
        match opt::<i64>(row, key_col, name)? {
            None => Ok((None, None)),
            Some(key) => {
                let run: uuid::Uuid = opt(row, id_col, "run_id")?.ok_or_else(|| {
                    Fault::Bad(format!("column `{name}`: run key {key} does not exist"))
                })?;
                Ok((Some(key), Some(RunId::from_uuid(run))))
            }
        }
    };
    let (active_key, active_run) = run_of(3, 4, "active_run_key")?;
    let (last_key, last_run) = run_of(5, 6, "last_run_key")?;
    Ok(StoredThread {
        key: req(row, 0, "key")?,
        record: ThreadRecord {
            thread_id: id.clone(),
            graph: req(row, 1, "graph")?,
            head: seq(row, 2, "head")?,
            active_run,
            last_run,
            created_at: time(row, 7, "created_at")?,
            updated_at: time(row, 8, "updated_at")?,
        },
        active_key,
        last_key,
    })
}

/// A run's key and its thread's key.
pub(crate) async fn run_ref(
    conn: &Conn,
    sql: &Sql,
    id: RunId,
) -> Result<Option<(i64, i64)>, Fault> {
    let uuid = id.as_uuid();
    let Some(row) = conn.query_opt(&sql.run_ref, &[(&uuid, Type::UUID)]).await? else {
        return Ok(None);
    };
    Ok(Some((req(&row, 0, "key")?, req(&row, 1, "thread_key")?)))
}

/// Reads a run; `lock` locks it against other writers until the transaction ends.
pub(crate) async fn run(
    conn: &Conn,
    sql: &Sql,
    id: RunId,
    lock: bool,
) -> Result<Option<StoredRun>, Fault> {
    let uuid = id.as_uuid();
    let text = if lock { &sql.run_for_update } else { &sql.run };
    match conn.query_opt(text, &[(&uuid, Type::UUID)]).await? {
        None => Ok(None),
        Some(row) => decode_run(&row).map(Some),
    }
}

/// Reads a run by key, locked against other writers until the transaction ends.
pub(crate) async fn run_by_key_locked(
    conn: &Conn,
    sql: &Sql,
    key: i64,
) -> Result<Option<StoredRun>, Fault> {
    match conn
        .query_opt(&sql.run_by_key_for_update, &[(&key, Type::INT8)])
        .await?
    {
        None => Ok(None),
        Some(row) => decode_run(&row).map(Some),
    }
}

/// Lists runs.
pub(crate) async fn runs(
    conn: &Conn,
    sql: &Sql,
    filter: &RunFilter,
) -> Result<Vec<RunRecord>, Fault> {
    let text = queries::runs(sql, filter);
    let thread = filter.thread_id.as_ref().map(|t| t.as_str());
    let after = filter.after.map(|r| r.as_uuid());
    let limit = limit_param(filter.limit);
    let times: Vec<i64> = [
        filter.created_from,
        filter.created_to,
        filter.updated_from,
        filter.updated_to,
    ]
    .into_iter()
    .flatten()
    .map(|t| t.0)
    .collect();
    let mut params: Vec<Param<'_>> = Vec::new();
    if let Some(t) = &thread {
        params.push((t, Type::TEXT));
    }
    if let Some(g) = &filter.graph {
        params.push((g, Type::TEXT));
    }
    if let Some(a) = &after {
        params.push((a, Type::UUID));
    }
    for t in &times {
        params.push((t, Type::INT8));
    }
    for (k, v) in &filter.metadata {
        params.push((k, Type::TEXT));
        params.push((v, Type::TEXT));
    }
    params.push((&limit, Type::INT8));
    let rows = conn.query(&text, &params).await?;
    rows.iter()
        .map(|row| decode_run(row).map(|r| r.record))
        .collect()
}

/// Waiting runs due at `now`, earliest first.
pub(crate) async fn due_runs(
    conn: &Conn,
    sql: &Sql,
    now: Timestamp,
    limit: usize,
) -> Result<Vec<RunRecord>, Fault> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = conn
        .query(&sql.due_runs, &[(&now.0, Type::INT8), (&limit, Type::INT8)])
        .await?;
    rows.iter()
        .map(|row| decode_run(row).map(|r| r.record))
        .collect()
}

/// The `LIMIT` of a listing: 0 means none.
fn limit_param(limit: usize) -> i64 {
    if limit == 0 {
        i64::MAX
    } else {
        i64::try_from(limit).unwrap_or(i64::MAX)
    }
}

/// Decodes a row of `run_select!`; errors are [`Fault::Store`] with their thread.
pub(crate) fn decode_run(row: &Row) -> Result<StoredRun, Fault> {
    let id = req::<uuid::Uuid>(row, 1, "run_id")
        .map(RunId::from_uuid)
        .map_err(|f| f.within("run record").at(&unknown_thread(), None))?;
    let thread_id = thread_id_col(row, 3, "thread_id")
        .map_err(|f| f.within(format!("run {id}")).at(&unknown_thread(), None))?;
    let decode = || -> Result<StoredRun, Fault> {
        let status = decode_status(
            &req::<String>(row, 6, "status")?,
            req(row, 7, "status_data")?,
        )?;
        Ok(StoredRun {
            key: req(row, 0, "key")?,
            record: RunRecord {
                run_id: id,
                thread_id: thread_id.clone(),
                graph: req(row, 4, "graph")?,
                graph_version: req(row, 5, "graph_version")?,
                status,
                first_seq: seq(row, 8, "first_seq")?,
                created_at: time(row, 9, "created_at")?,
                updated_at: time(row, 10, "updated_at")?,
                priority: req(row, 11, "priority")?,
                metadata: opt_payload(row, 12, "metadata")?,
                ready_at: opt::<i64>(row, 13, "ready_at")?.map(Timestamp),
                lease_epoch: epoch(row, 14, "lease_epoch")?,
                lease: lease(row, 15, 16)?,
            },
        })
    };
    decode().map_err(|f| f.within(format!("run {id}")).at(&thread_id, None))
}

/// A NOT NULL `bigint` holding a lease epoch.
pub(crate) fn epoch(row: &Row, i: usize, col: &str) -> Result<u64, Fault> {
    let v: i64 = req(row, i, col)?;
    u64::try_from(v).map_err(|_| Fault::Bad(format!("column `{col}`: {v} is not an epoch")))
}

/// The lease holder from its worker and expiry columns (both null, or neither).
pub(crate) fn lease(
    row: &Row,
    worker_col: usize,
    expires_col: usize,
) -> Result<Option<LeaseHolder>, Fault> {
    match (
        opt::<String>(row, worker_col, "lease_worker")?,
        opt::<i64>(row, expires_col, "lease_expires")?,
    ) {
        (None, None) => Ok(None),
        (Some(worker_id), Some(at)) => Ok(Some(LeaseHolder {
            worker_id,
            expires_at: Timestamp(at),
        })),
        (Some(_), None) => Err(Fault::Bad(
            "column `lease_expires` is null but `lease_worker` is not".into(),
        )),
        (None, Some(_)) => Err(Fault::Bad(
            "column `lease_worker` is null but `lease_expires` is not".into(),
        )),
    }
}

/// Reads up to `limit` events after `after`, checking the log has no gap.
pub(crate) async fn events(
    conn: &Conn,
    sql: &Sql,
    thread_id: &ThreadId,
    after: Seq,
    limit: usize,
) -> Result<Vec<Event>, Fault> {
    // Seqs are stored as `bigint`: nothing lies beyond i64::MAX.
    let Ok(after_value) = i64::try_from(after.0) else {
        return Ok(Vec::new());
    };
    if limit == 0 || after_value == i64::MAX {
        return Ok(Vec::new());
    }
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = conn
        .query(
            &sql.events,
            &[
                (&thread_id.as_str(), Type::TEXT),
                (&after_value, Type::INT8),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    let mut out: Vec<Event> = Vec::with_capacity(rows.len());
    for row in &rows {
        let seq = seq(row, 0, "seq").map_err(|f| f.at(thread_id, None))?;
        let expected = out.last().map_or(Seq(after.0 + 1), |e| e.seq.next());
        // A pruned log starts at its `history_pruned` base, not at seq 1.
        let pruned_start = out.is_empty()
            && seq > expected
            && opt::<i16>(row, 4, "kind")
                .ok()
                .flatten()
                .and_then(kind_from_code)
                == Some(EventKind::HistoryPruned);
        if seq != expected && !pruned_start {
            return Err(Fault::Bad(format!(
                "the event log has a gap: seq {expected} is missing (next stored is {seq})"
            ))
            .at(thread_id, Some(expected)));
        }
        out.push(decode_event(row, seq).map_err(|f| f.at(thread_id, Some(seq)))?);
    }
    Ok(out)
}

fn decode_event(row: &Row, seq: Seq) -> Result<Event, Fault> {
    let run_key: i64 = req(row, 1, "run_key")?;
    let run_id = opt::<uuid::Uuid>(row, 2, "run_id")?
        .map(RunId::from_uuid)
        .ok_or_else(|| {
            Fault::Bad(format!(
                "column `run_key`: run key {run_key} does not exist"
            ))
        })?;
    let code: i16 = req(row, 4, "kind")?;
    let kind = kind_from_code(code)
        .ok_or_else(|| Fault::Bad(format!("column `kind`: unknown event kind code {code}")))?;
    let event_row = EventRow {
        seq,
        run_id,
        at: time(row, 3, "at")?,
        kind,
        superstep: opt_u32(row, 5, "superstep")?,
        task: opt_u32(row, 6, "task")?,
        node: opt(row, 7, "node")?,
        attempt: opt_u32(row, 8, "attempt")?,
        data: opt(row, 9, "data")?,
        extra: opt(row, 10, "extra")?,
    };
    event_row
        .into_event()
        .map_err(|e| Fault::Bad(format!("{} event: {}", e.kind, e.detail)))
}

/// Reads the thread's snapshot if it stands at or before `at_or_before`.
pub(crate) async fn snapshot(
    conn: &Conn,
    sql: &Sql,
    thread_id: &ThreadId,
    at_or_before: Seq,
) -> Result<Option<Snapshot>, Fault> {
    let bound = i64::try_from(at_or_before.0).unwrap_or(i64::MAX);
    let Some(row) = conn
        .query_opt(
            &sql.snapshot,
            &[(&thread_id.as_str(), Type::TEXT), (&bound, Type::INT8)],
        )
        .await?
    else {
        return Ok(None);
    };
    let at_seq = seq(&row, 0, "at_seq").map_err(|f| f.within("snapshot").at(thread_id, None))?;
    let decode = || -> Result<Snapshot, Fault> {
        let run_key: i64 = req(&row, 1, "run_key")?;
        Ok(Snapshot {
            at_seq,
            run_id: opt::<uuid::Uuid>(&row, 2, "run_id")?
                .map(RunId::from_uuid)
                .ok_or_else(|| {
                    Fault::Bad(format!(
                        "column `run_key`: run key {run_key} does not exist"
                    ))
                })?,
            next_superstep: u32_col(&row, 3, "next_superstep")?,
            state: payload(&row, 4, "state")?,
            boundary: decode_boundary(req(&row, 5, "boundary")?)?,
            created_at: time(&row, 6, "created_at")?,
        })
    };
    decode().map(Some).map_err(|f| {
        f.within(format!("snapshot at seq {at_seq}"))
            .at(thread_id, None)
    })
}

/// An interrupt record with its key and its run's status.
#[derive(Debug, Clone)]
pub(crate) struct StoredInterrupt {
    pub key: i64,
    pub record: InterruptRecord,
    pub run_status: RunStatus,
}

/// Reads an interrupt by id; `lock` locks it until the transaction ends.
pub(crate) async fn interrupt(
    conn: &Conn,
    sql: &Sql,
    id: InterruptId,
    lock: bool,
) -> Result<Option<StoredInterrupt>, Fault> {
    let text = if lock {
        &sql.interrupt_for_update
    } else {
        &sql.interrupt
    };
    let uuid = id.as_uuid();
    let Some(row) = conn.query_opt(text, &[(&uuid, Type::UUID)]).await? else {
        return Ok(None);
    };
    let thread_key: i64 = req(&row, 2, "thread_key").map_err(|f| {
        f.within(format!("interrupt {id}"))
            .at(&unknown_thread(), None)
    })?;
    let thread_id = opt::<String>(&row, 3, "thread_id")
        .and_then(|t| {
            t.ok_or_else(|| {
                Fault::Bad(format!(
                    "column `thread_key`: thread key {thread_key} does not exist"
                ))
            })
        })
        .and_then(|raw| {
            ThreadId::new(&raw)
                .map_err(|e| Fault::Bad(format!("column `thread_id` holds {raw:?}: {e}")))
        })
        .map_err(|f| {
            f.within(format!("interrupt {id}"))
                .at(&unknown_thread(), None)
        })?;
    decode_interrupt(&row, &thread_id).map(Some)
}

/// Reads a run's (by key) interrupts, in raised order.
pub(crate) async fn interrupts_of_run(
    conn: &Conn,
    sql: &Sql,
    run_key: i64,
    thread_id: &ThreadId,
) -> Result<Vec<InterruptRecord>, Fault> {
    let rows = conn
        .query(&sql.interrupts_of_run, &[(&run_key, Type::INT8)])
        .await?;
    rows.iter()
        .map(|row| decode_interrupt(row, thread_id).map(|i| i.record))
        .collect()
}

/// Lists interrupts across threads.
pub(crate) async fn list_interrupts(
    conn: &Conn,
    sql: &Sql,
    filter: &InterruptFilter,
) -> Result<Vec<InterruptRecord>, Fault> {
    let text = queries::interrupts(sql, filter);
    let thread = filter.thread_id.as_ref().map(|t| t.as_str());
    let after = filter.after.map(|i| i.as_uuid());
    let limit = limit_param(filter.limit);
    let mut params: Vec<Param<'_>> = Vec::new();
    if let Some(t) = &thread {
        params.push((t, Type::TEXT));
    }
    if let Some(g) = &filter.graph {
        params.push((g, Type::TEXT));
    }
    if let Some(a) = &after {
        params.push((a, Type::UUID));
    }
    params.push((&limit, Type::INT8));
    let rows = conn.query(&text, &params).await?;
    rows.iter()
        .map(|row| {
            let thread_id = thread_id_col(row, 3, "thread_id")
                .map_err(|f| f.within("interrupt record").at(&unknown_thread(), None))?;
            decode_interrupt(row, &thread_id).map(|i| i.record)
        })
        .collect()
}

/// Reads a thread's interrupts, in raised order.
pub(crate) async fn interrupts(
    conn: &Conn,
    sql: &Sql,
    thread_id: &ThreadId,
) -> Result<Vec<InterruptRecord>, Fault> {
    let rows = conn
        .query(
            &sql.interrupts_of_thread,
            &[(&thread_id.as_str(), Type::TEXT)],
        )
        .await?;
    rows.iter()
        .map(|row| decode_interrupt(row, thread_id).map(|i| i.record))
        .collect()
}

fn decode_interrupt(row: &Row, thread_id: &ThreadId) -> Result<StoredInterrupt, Fault> {
    let id = req::<uuid::Uuid>(row, 1, "interrupt_id")
        .map(InterruptId::from_uuid)
        .map_err(|f| f.within("interrupt record").at(thread_id, None))?;
    let decode = || -> Result<StoredInterrupt, Fault> {
        let run_key: i64 = req(row, 4, "run_key")?;
        let run_id = opt::<uuid::Uuid>(row, 5, "run_id")?
            .map(RunId::from_uuid)
            .ok_or_else(|| {
                Fault::Bad(format!(
                    "column `run_key`: run key {run_key} does not exist"
                ))
            })?;
        let answer = match (
            opt_payload(row, 10, "answer")?,
            opt::<i64>(row, 11, "answered_at")?,
        ) {
            (Some(value), Some(at)) => Some((value, Timestamp(at))),
            (None, None) => None,
            (Some(_), None) => {
                return Err(Fault::Bad(
                    "column `answered_at` is null but `answer` is not".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(Fault::Bad(
                    "column `answer` is null but `answered_at` is not".into(),
                ));
            }
        };
        let run_status = decode_status(
            &req::<String>(row, 13, "status")?,
            req(row, 14, "status_data")?,
        )
        .map_err(|f| f.within(format!("run {run_id}")))?;
        Ok(StoredInterrupt {
            key: req(row, 0, "key")?,
            record: InterruptRecord {
                interrupt_id: id,
                thread_id: thread_id.clone(),
                run_id,
                node: req(row, 6, "node")?,
                payload: payload(row, 7, "payload")?,
                raised_seq: seq(row, 8, "raised_seq")?,
                raised_at: time(row, 9, "raised_at")?,
                answer,
                applied_seq: opt_seq(row, 12, "applied_seq")?,
            },
            run_status,
        })
    };
    decode().map_err(|f| f.within(format!("interrupt {id}")).at(thread_id, None))
}

/// Reads a thread's deliveries in arrival order; only unconsumed ones if `pending_only`.
pub(crate) async fn deliveries(
    conn: &Conn,
    sql: &Sql,
    thread_id: &ThreadId,
    pending_only: bool,
) -> Result<Vec<Delivery>, Fault> {
    let text = if pending_only {
        &sql.pending_deliveries_of_thread
    } else {
        &sql.deliveries_of_thread
    };
    let rows = conn
        .query(text, &[(&thread_id.as_str(), Type::TEXT)])
        .await?;
    rows.iter()
        .map(|row| decode_delivery(row, thread_id))
        .collect()
}

/// Reads the delivery of the thread (by key) with idempotency key `idem_key`.
pub(crate) async fn delivery_by_idem_key(
    conn: &Conn,
    sql: &Sql,
    thread_key: i64,
    thread_id: &ThreadId,
    idem_key: &str,
) -> Result<Option<Delivery>, Fault> {
    match conn
        .query_opt(
            &sql.delivery_by_idem_key,
            &[(&thread_key, Type::INT8), (&idem_key, Type::TEXT)],
        )
        .await?
    {
        None => Ok(None),
        Some(row) => decode_delivery(&row, thread_id).map(Some),
    }
}

fn decode_delivery(row: &Row, thread_id: &ThreadId) -> Result<Delivery, Fault> {
    let id = req::<uuid::Uuid>(row, 1, "delivery_id")
        .map(DeliveryId::from_uuid)
        .map_err(|f| f.within("delivery record").at(thread_id, None))?;
    let decode = || -> Result<Delivery, Fault> {
        Ok(Delivery {
            delivery_id: id,
            thread_id: thread_id.clone(),
            name: req(row, 2, "name")?,
            payload: payload(row, 3, "payload")?,
            key: opt(row, 4, "idem_key")?,
            sent_at: time(row, 5, "sent_at")?,
            consumed_seq: opt_seq(row, 6, "consumed_seq")?,
        })
    };
    decode().map_err(|f| f.within(format!("delivery {id}")).at(thread_id, None))
}

/// Reads the idempotency record of `key` in `scope`, locked until the transaction ends.
pub(crate) async fn idempotency_locked(
    conn: &Conn,
    sql: &Sql,
    scope: &str,
    key: &str,
) -> Result<Option<IdempotencyRecord>, Fault> {
    let Some(row) = conn
        .query_opt(
            &sql.idempotency_for_update,
            &[(&scope, Type::TEXT), (&key, Type::TEXT)],
        )
        .await?
    else {
        return Ok(None);
    };
    let decode = || -> Result<IdempotencyRecord, Fault> {
        let response = match (
            opt::<i32>(&row, 4, "response_status")?,
            opt::<String>(&row, 5, "response_body")?,
        ) {
            (None, None) => None,
            (Some(status), Some(body)) => Some(StoredResponse {
                status: u16::try_from(status).map_err(|_| {
                    Fault::Bad(format!(
                        "column `response_status`: {status} is out of range"
                    ))
                })?,
                body,
            }),
            _ => {
                return Err(Fault::Bad(
                    "columns `response_status` and `response_body` are not both set".into(),
                ));
            }
        };
        Ok(IdempotencyRecord {
            scope: scope.to_owned(),
            key: key.to_owned(),
            request_hash: req(&row, 0, "request_hash")?,
            created_at: time(&row, 1, "created_at")?,
            expires_at: time(&row, 2, "expires_at")?,
            locked_until: time(&row, 3, "locked_until")?,
            response,
        })
    };
    decode()
        .map(Some)
        .map_err(|f| corrupt_record(f, format!("idempotency record `{scope}`/`{key}`")))
}

/// A control-plane record that does not decode: corruption, named after the record (it
/// belongs to no thread).
fn corrupt_record(f: Fault, what: String) -> Fault {
    match f.within(what) {
        Fault::Bad(detail) => Fault::Store(Error::Corrupt {
            thread_id: unknown_thread(),
            seq: None,
            detail,
        }),
        other => other,
    }
}

/// Reads an API key by id.
pub(crate) async fn api_key(
    conn: &Conn,
    sql: &Sql,
    key_id: &str,
) -> Result<Option<ApiKeyRecord>, Fault> {
    conn.query_opt(&sql.api_key, &[(&key_id, Type::TEXT)])
        .await?
        .map(|row| decode_api_key(&row))
        .transpose()
}

/// Every API key, oldest first.
pub(crate) async fn api_keys(conn: &Conn, sql: &Sql) -> Result<Vec<ApiKeyRecord>, Fault> {
    let rows = conn.query(&sql.api_keys, &[]).await?;
    rows.iter().map(decode_api_key).collect()
}

/// Runs holding a lease unexpired at `now`, per graph, by graph name.
pub(crate) async fn lease_counts(
    conn: &Conn,
    sql: &Sql,
    now: Timestamp,
) -> Result<Vec<(String, u64)>, Fault> {
    let rows = conn
        .query(&sql.lease_counts, &[(&now.0, Type::INT8)])
        .await?;
    rows.iter()
        .map(|row| {
            let decode = || -> Result<(String, u64), Fault> {
                let n: i64 = req(row, 1, "count")?;
                let n =
                    u64::try_from(n).map_err(|_| Fault::Bad(format!("count {n} is negative")))?;
                Ok((req(row, 0, "graph")?, n))
            };
            decode().map_err(|f| corrupt_record(f, "lease counts".to_owned()))
        })
        .collect()
}

/// Every registered worker, by id.
pub(crate) async fn workers(conn: &Conn, sql: &Sql) -> Result<Vec<WorkerRecord>, Fault> {
    let rows = conn.query(&sql.workers, &[]).await?;
    rows.iter().map(decode_worker).collect()
}

/// A thread's pending runs, lowest position first.
pub(crate) async fn pending_runs(
    conn: &Conn,
    sql: &Sql,
    thread_id: &ThreadId,
) -> Result<Vec<PendingRun>, Fault> {
    let rows = conn
        .query(&sql.pending_runs, &[(&thread_id.as_str(), Type::TEXT)])
        .await?;
    rows.iter()
        .map(|row| {
            let decode = || -> Result<PendingRun, Fault> {
                let position: i64 = req(row, 2, "position")?;
                Ok(PendingRun {
                    run_id: RunId::from_uuid(req(row, 0, "run_id")?),
                    thread_id: thread_id_col(row, 1, "thread_id")?,
                    position: u64::try_from(position).map_err(|_| {
                        Fault::Bad(format!("column `position`: {position} is negative"))
                    })?,
                    graph: req(row, 3, "graph")?,
                    graph_version: req(row, 4, "graph_version")?,
                    request: payload(row, 5, "request")?,
                    created_at: time(row, 6, "created_at")?,
                })
            };
            decode().map_err(|f| corrupt_record(f, format!("pending run of `{thread_id}`")))
        })
        .collect()
}

/// Threads with pending runs and no active run, at most `limit`.
pub(crate) async fn pending_threads(
    conn: &Conn,
    sql: &Sql,
    limit: usize,
) -> Result<Vec<ThreadId>, Fault> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = conn
        .query(&sql.pending_threads, &[(&limit, Type::INT8)])
        .await?;
    rows.iter()
        .map(|row| {
            thread_id_col(row, 0, "thread_id")
                .map_err(|f| corrupt_record(f, "pending run".to_owned()))
        })
        .collect()
}

fn decode_worker(row: &Row) -> Result<WorkerRecord, Fault> {
    let worker_id: String =
        req(row, 0, "worker_id").map_err(|f| corrupt_record(f, "worker".to_owned()))?;
    let decode = || -> Result<WorkerRecord, Fault> {
        let graphs: String = req(row, 1, "graphs")?;
        Ok(WorkerRecord {
            worker_id: worker_id.clone(),
            graphs: serde_json::from_str(&graphs).map_err(|e| {
                Fault::Bad(format!(
                    "column `graphs` is not a JSON array of [name, version] pairs: {e}"
                ))
            })?,
            capacity: u32_col(row, 2, "capacity")?,
            registered_at: time(row, 3, "registered_at")?,
            last_seen: time(row, 4, "last_seen")?,
            stopped_at: opt::<i64>(row, 5, "stopped_at")?.map(Timestamp),
        })
    };
    decode().map_err(|f| corrupt_record(f, format!("worker `{worker_id}`")))
}

fn decode_api_key(row: &Row) -> Result<ApiKeyRecord, Fault> {
    let key_id: String =
        req(row, 0, "key_id").map_err(|f| corrupt_record(f, "api key".to_owned()))?;
    let decode = || -> Result<ApiKeyRecord, Fault> {
        Ok(ApiKeyRecord {
            key_id: key_id.clone(),
            name: req(row, 1, "name")?,
            role: req(row, 2, "role")?,
            secret_hash: req(row, 3, "secret_hash")?,
            created_at: time(row, 4, "created_at")?,
            revoked_at: opt::<i64>(row, 5, "revoked_at")?.map(Timestamp),
        })
    };
    decode().map_err(|f| corrupt_record(f, format!("api key `{key_id}`")))
}

/// Lists audit entries, oldest first.
pub(crate) async fn audit(
    conn: &Conn,
    sql: &Sql,
    filter: &AuditFilter,
) -> Result<Vec<AuditRecord>, Fault> {
    let text = queries::audit(sql, filter);
    let after = filter.after.map(|a| i64::try_from(a).unwrap_or(i64::MAX));
    let limit = limit_param(filter.limit);
    let mut params: Vec<Param<'_>> = Vec::new();
    if let Some(a) = &after {
        params.push((a, Type::INT8));
    }
    if let Some(a) = &filter.actor {
        params.push((a, Type::TEXT));
    }
    if let Some(a) = &filter.action {
        params.push((a, Type::TEXT));
    }
    params.push((&limit, Type::INT8));
    let rows = conn.query(&text, &params).await?;
    rows.iter().map(decode_audit).collect()
}

fn decode_audit(row: &Row) -> Result<AuditRecord, Fault> {
    let id: i64 = req(row, 0, "id").map_err(|f| corrupt_record(f, "audit entry".to_owned()))?;
    let decode = || -> Result<AuditRecord, Fault> {
        let status: i32 = req(row, 7, "status")?;
        Ok(AuditRecord {
            id: u64::try_from(id)
                .map_err(|_| Fault::Bad(format!("column `id`: {id} is negative")))?,
            at: time(row, 1, "at")?,
            actor: req(row, 2, "actor")?,
            role: req(row, 3, "role")?,
            action: req(row, 4, "action")?,
            target: opt(row, 5, "target")?,
            request_id: req(row, 6, "request_id")?,
            status: u16::try_from(status)
                .map_err(|_| Fault::Bad(format!("column `status`: {status} is out of range")))?,
            outcome: req(row, 8, "outcome")?,
            details: opt_payload(row, 9, "details")?,
        })
    };
    decode().map_err(|f| corrupt_record(f, format!("audit entry {id}")))
}
