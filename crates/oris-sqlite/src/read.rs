//! Reading records back, shared by the read pool and the writer (which reads the stored
//! thread and run inside its transaction before deciding a commit).

use oris_core::event::{Event, EventKind, EventRow};
use oris_core::id::{InterruptId, RunId, Seq, ThreadId, Timestamp};
use oris_core::status::RunStatus;
use oris_core::store::{
    ApiKeyRecord, AuditFilter, AuditRecord, Delivery, IdempotencyRecord, InterruptFilter,
    InterruptRecord, LeaseHolder, PendingRun, RunFilter, RunRecord, Snapshot, StoredResponse,
    ThreadRecord, WorkerRecord,
};
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

use crate::codec::{
    Fault, MAX_SEQ, decode_boundary, decode_state, decode_status, delivery_id, event_id, int,
    interrupt_id as interrupt_id_col, interrupt_id_blob, kind_from_code, opt_int, opt_payload,
    opt_run_id, opt_seq, opt_text, opt_u32, payload, run_id, run_id_blob, seq_col, split_event_id,
    text, thread_id as thread_id_col, time, u32_col, unknown_thread,
};
use crate::queries;

/// A run as the writer needs it: key, id and the base of its events' times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunRef {
    pub key: i64,
    pub id: RunId,
    pub created_at: Timestamp,
}

/// A thread record with its keys.
#[derive(Debug, Clone)]
pub(crate) struct StoredThread {
    pub key: i64,
    pub record: ThreadRecord,
    pub active: Option<RunRef>,
    pub last_key: Option<i64>,
}

/// A run record with its keys.
#[derive(Debug, Clone)]
pub(crate) struct StoredRun {
    pub key: i64,
    pub record: RunRecord,
}

/// Prefixes the detail of a [`Fault::Bad`].
fn within(prefix: impl std::fmt::Display) -> impl FnOnce(Fault) -> Fault {
    move |f| match f {
        Fault::Bad(d) => Fault::Bad(format!("{prefix}: {d}")),
        other => other,
    }
}

/// Reads a thread with the keys and ids of its runs.
pub(crate) fn thread(conn: &Connection, id: &ThreadId) -> Result<Option<StoredThread>, Fault> {
    let mut stmt = conn.prepare_cached(queries::THREAD_BY_ID)?;
    let mut rows = stmt.query(params![id.as_str()])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    decode_thread(row, id)
        .map(Some)
        .map_err(|f| within("thread record")(f).at(id, None))
}

fn decode_thread(row: &Row<'_>, id: &ThreadId) -> Result<StoredThread, Fault> {
    let key = int(row, 0, "key")?;
    let active_key = opt_int(row, 5, "active_run_key")?;
    let active = match active_key {
        None => None,
        Some(key) => Some(RunRef {
            key,
            id: opt_run_id(row, 6, "run_id")?.ok_or_else(|| {
                Fault::Bad(format!(
                    "column `active_run_key`: run key {key} does not exist"
                ))
            })?,
            created_at: time(row, 7, "created_at")?,
        }),
    };
    let last_key = opt_int(row, 8, "last_run_key")?;
    let last_run = match last_key {
        None => None,
        Some(key) => Some(opt_run_id(row, 9, "run_id")?.ok_or_else(|| {
            Fault::Bad(format!(
                "column `last_run_key`: run key {key} does not exist"
            ))
        })?),
    };
    Ok(StoredThread {
        key,
        record: ThreadRecord {
            thread_id: id.clone(),
            graph: text(row, 1, "graph")?,
            head: seq_col(row, 2, "head")?,
            active_run: active.map(|r| r.id),
            last_run,
            created_at: time(row, 3, "created_at")?,
            updated_at: time(row, 4, "updated_at")?,
        },
        active,
        last_key,
    })
}

/// A thread's key.
pub(crate) fn thread_key(conn: &Connection, id: &ThreadId) -> Result<Option<i64>, Fault> {
    let key = conn
        .prepare_cached(queries::THREAD_KEY)?
        .query_row(params![id.as_str()], |r| r.get::<_, i64>(0))
        .optional()?;
    Ok(key)
}

/// A run's key, thread key and creation time.
pub(crate) fn run_ref(conn: &Connection, id: RunId) -> Result<Option<(RunRef, i64)>, Fault> {
    let mut stmt = conn.prepare_cached(queries::RUN_REF_BY_ID)?;
    let mut rows = stmt.query(params![run_id_blob(id)])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let run = RunRef {
        key: int(row, 0, "key")?,
        id,
        created_at: time(row, 2, "created_at")?,
    };
    Ok(Some((run, int(row, 1, "thread_key")?)))
}

/// Reads a run.
pub(crate) fn run(conn: &Connection, id: RunId) -> Result<Option<StoredRun>, Fault> {
    let mut stmt = conn.prepare_cached(queries::RUN_BY_ID)?;
    let mut rows = stmt.query(params![run_id_blob(id)])?;
    match rows.next()? {
        None => Ok(None),
        Some(row) => decode_run(row).map(Some),
    }
}

/// Lists runs.
pub(crate) fn runs(conn: &Connection, filter: &RunFilter) -> Result<Vec<RunRecord>, Fault> {
    let (sql, values) = queries::runs(filter);
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(values))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode_run(row)?.record);
    }
    Ok(out)
}

/// Waiting runs due at `now`, earliest first.
pub(crate) fn due_runs(
    conn: &Connection,
    now: Timestamp,
    limit: usize,
) -> Result<Vec<RunRecord>, Fault> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(queries::DUE_RUNS)?;
    let mut rows = stmt.query(params![now.0, limit])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode_run(row)?.record);
    }
    Ok(out)
}

/// Decodes a row of `run_select!`; errors are [`Fault::Store`] with their thread.
pub(crate) fn decode_run(row: &Row<'_>) -> Result<StoredRun, Fault> {
    let id = run_id(row, 1, "run_id")
        .map_err(|f| within("run record")(f).at(&unknown_thread(), None))?;
    let thread_id = thread_id_col(row, 3, "thread_id")
        .map_err(|f| within(format!("run {id}"))(f).at(&unknown_thread(), None))?;
    let decode = || -> Result<StoredRun, Fault> {
        let status = decode_status(&text(row, 6, "status")?, text(row, 7, "status_data")?)?;
        Ok(StoredRun {
            key: int(row, 0, "key")?,
            record: RunRecord {
                run_id: id,
                thread_id: thread_id.clone(),
                graph: text(row, 4, "graph")?,
                graph_version: text(row, 5, "graph_version")?,
                status,
                first_seq: seq_col(row, 8, "first_seq")?,
                created_at: time(row, 9, "created_at")?,
                updated_at: time(row, 10, "updated_at")?,
                priority: i32::try_from(int(row, 11, "priority")?)
                    .map_err(|_| Fault::Bad("column `priority` is out of range".into()))?,
                metadata: opt_payload(row, 12, "metadata")?,
                ready_at: opt_int(row, 13, "ready_at")?.map(Timestamp),
                lease_epoch: u64::try_from(int(row, 14, "lease_epoch")?)
                    .map_err(|_| Fault::Bad("column `lease_epoch` is negative".into()))?,
                lease: match (
                    opt_text(row, 15, "lease_worker")?,
                    opt_int(row, 16, "lease_expires")?,
                ) {
                    (Some(worker_id), Some(expires)) => Some(LeaseHolder {
                        worker_id,
                        expires_at: Timestamp(expires),
                    }),
                    (None, None) => None,
                    _ => {
                        return Err(Fault::Bad(
                            "columns `lease_worker` and `lease_expires` disagree".into(),
                        ));
                    }
                },
            },
        })
    };
    decode().map_err(|f| within(format!("run {id}"))(f).at(&thread_id, None))
}

/// Reads up to `limit` events after `after`, checking the log has no gap.
pub(crate) fn events(
    conn: &Connection,
    thread_id: &ThreadId,
    after: Seq,
    limit: usize,
) -> Result<Vec<Event>, Fault> {
    if limit == 0 || after.0 >= MAX_SEQ {
        return Ok(Vec::new());
    }
    let Some(key) = thread_key(conn, thread_id)? else {
        return Ok(Vec::new());
    };
    let (Some(low), Some(high)) = (event_id(key, after.0), event_id(key, MAX_SEQ)) else {
        return Err(Fault::Bad(format!("thread key {key} is out of range")).at(thread_id, None));
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(queries::EVENTS_RANGE)?;
    let mut rows = stmt.query(params![low, high, limit])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let id = int(row, 0, "id").map_err(|f| f.at(thread_id, None))?;
        let (_, seq) = split_event_id(id);
        let expected = out
            .last()
            .map_or(Seq(after.0 + 1), |e: &Event| e.seq.next());
        // A pruned log starts at its `history_pruned` base, not at seq 1.
        let pruned_start = out.is_empty()
            && seq > expected
            && int(row, 5, "kind").ok().and_then(kind_from_code) == Some(EventKind::HistoryPruned);
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

fn decode_event(row: &Row<'_>, seq: Seq) -> Result<Event, Fault> {
    let run_key = int(row, 1, "run_key")?;
    let run_id = opt_run_id(row, 2, "run_id")?.ok_or_else(|| {
        Fault::Bad(format!(
            "column `run_key`: run key {run_key} does not exist"
        ))
    })?;
    let base = time(row, 3, "created_at")?;
    let delta = int(row, 4, "at")?;
    let at = base
        .0
        .checked_add(delta)
        .map(Timestamp)
        .ok_or_else(|| Fault::Bad(format!("column `at`: {delta} overflows")))?;
    let code = int(row, 5, "kind")?;
    let kind = kind_from_code(code)
        .ok_or_else(|| Fault::Bad(format!("column `kind`: unknown event kind code {code}")))?;
    let event_row = EventRow {
        seq,
        run_id,
        at,
        kind,
        superstep: opt_u32(row, 6, "superstep")?,
        task: opt_u32(row, 7, "task")?,
        node: opt_text(row, 8, "node")?,
        attempt: opt_u32(row, 9, "attempt")?,
        data: opt_text(row, 10, "data")?,
        extra: opt_text(row, 11, "extra")?,
    };
    event_row
        .into_event()
        .map_err(|e| Fault::Bad(format!("{} event: {}", e.kind, e.detail)))
}

/// Reads the thread's snapshot if it stands at or before `at_or_before`.
pub(crate) fn snapshot(
    conn: &Connection,
    thread_id: &ThreadId,
    at_or_before: Seq,
) -> Result<Option<Snapshot>, Fault> {
    let Some(key) = thread_key(conn, thread_id)? else {
        return Ok(None);
    };
    let bound = i64::try_from(at_or_before.0).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(queries::SNAPSHOT)?;
    let mut rows = stmt.query(params![key, bound])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let at_seq =
        seq_col(row, 0, "at_seq").map_err(|f| within("snapshot")(f).at(thread_id, None))?;
    let decode = || -> Result<Snapshot, Fault> {
        let run_key = int(row, 1, "run_key")?;
        Ok(Snapshot {
            at_seq,
            run_id: opt_run_id(row, 2, "run_id")?.ok_or_else(|| {
                Fault::Bad(format!(
                    "column `run_key`: run key {run_key} does not exist"
                ))
            })?,
            next_superstep: u32_col(row, 3, "next_superstep")?,
            state: decode_state(&crate::codec::blob(row, 4, "state")?)?,
            boundary: decode_boundary(text(row, 5, "boundary")?)?,
            created_at: time(row, 6, "created_at")?,
        })
    };
    decode()
        .map(Some)
        .map_err(|f| within(format!("snapshot at seq {at_seq}"))(f).at(thread_id, None))
}

/// An interrupt record with its keys and, when asked for, its run's status and epoch.
#[derive(Debug, Clone)]
pub(crate) struct StoredInterrupt {
    pub key: i64,
    pub thread_key: i64,
    pub run_key: i64,
    pub record: InterruptRecord,
    /// The status of the run that raised it (read only by the writer, which decides
    /// answers with it).
    pub run_status: Option<RunStatus>,
    /// That run's lease epoch (read with the status): whether workers drive it.
    pub run_epoch: Option<u64>,
}

/// Whether an interrupt with this id exists.
pub(crate) fn interrupt_exists(conn: &Connection, id: InterruptId) -> Result<bool, Fault> {
    Ok(conn
        .prepare_cached(queries::INTERRUPT_EXISTS)?
        .exists(params![interrupt_id_blob(id)])?)
}

/// Reads an interrupt by id; with `with_status`, its run's status too.
pub(crate) fn interrupt(
    conn: &Connection,
    id: InterruptId,
    with_status: bool,
) -> Result<Option<StoredInterrupt>, Fault> {
    let mut stmt = conn.prepare_cached(queries::INTERRUPT_BY_ID)?;
    let mut rows = stmt.query(params![interrupt_id_blob(id)])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let thread_id = interrupt_thread(row, &id.to_string())?;
    decode_interrupt(row, &thread_id, with_status).map(Some)
}

/// The thread of a row of `interrupt_select!`, read from its joined `threads` row.
fn interrupt_thread(row: &Row<'_>, what: &str) -> Result<ThreadId, Fault> {
    let thread_key = int(row, 2, "thread_key")
        .map_err(|f| within(format!("interrupt {what}"))(f).at(&unknown_thread(), None))?;
    opt_text(row, 3, "thread_id")
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
        .map_err(|f| within(format!("interrupt {what}"))(f).at(&unknown_thread(), None))
}

/// Lists interrupts across threads, by id.
pub(crate) fn list_interrupts(
    conn: &Connection,
    filter: &InterruptFilter,
) -> Result<Vec<InterruptRecord>, Fault> {
    let (sql, values) = queries::interrupts(filter);
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(values))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let thread_id = interrupt_thread(row, "record")?;
        out.push(decode_interrupt(row, &thread_id, false)?.record);
    }
    Ok(out)
}

/// The interrupts not applied yet of the thread's latest run (by the run's key and first
/// seq), of thread `thread_id` (by key).
pub(crate) fn open_interrupts_of_run(
    conn: &Connection,
    thread_key: i64,
    thread_id: &ThreadId,
    run_key: i64,
    first_seq: Seq,
) -> Result<Vec<InterruptRecord>, Fault> {
    let first = i64::try_from(first_seq.0)
        .map_err(|_| Fault::Bad(format!("seq {first_seq} is out of range")))?;
    let mut stmt = conn.prepare_cached(queries::OPEN_INTERRUPTS_OF_RUN)?;
    let mut rows = stmt.query(params![thread_key, first, run_key])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode_interrupt(row, thread_id, false)?.record);
    }
    Ok(out)
}

/// Reads a thread's interrupts, in raised order.
pub(crate) fn interrupts(
    conn: &Connection,
    thread_id: &ThreadId,
) -> Result<Vec<InterruptRecord>, Fault> {
    let Some(key) = thread_key(conn, thread_id)? else {
        return Ok(Vec::new());
    };
    let mut stmt = conn.prepare_cached(queries::INTERRUPTS_OF_THREAD)?;
    let mut rows = stmt.query(params![key])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode_interrupt(row, thread_id, false)?.record);
    }
    Ok(out)
}

/// Decodes a row of `interrupt_select!` of thread `thread_id`; errors are
/// [`Fault::Store`] naming the thread.
fn decode_interrupt(
    row: &Row<'_>,
    thread_id: &ThreadId,
    with_status: bool,
) -> Result<StoredInterrupt, Fault> {
    let id = interrupt_id_col(row, 1, "interrupt_id")
        .map_err(|f| within("interrupt record")(f).at(thread_id, None))?;
    let decode = || -> Result<StoredInterrupt, Fault> {
        let run_key = int(row, 4, "run_key")?;
        let run_id = opt_run_id(row, 5, "run_id")?.ok_or_else(|| {
            Fault::Bad(format!(
                "column `run_key`: run key {run_key} does not exist"
            ))
        })?;
        let answer = match (
            opt_payload(row, 10, "answer")?,
            opt_int(row, 11, "answered_at")?,
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
        let (run_status, run_epoch) = if with_status {
            let status = decode_status(&text(row, 13, "status")?, text(row, 14, "status_data")?)
                .map_err(within(format!("run {run_id}")))?;
            let epoch = u64::try_from(int(row, 15, "lease_epoch")?)
                .map_err(|_| Fault::Bad(format!("run {run_id}: negative lease_epoch")))?;
            (Some(status), Some(epoch))
        } else {
            (None, None)
        };
        Ok(StoredInterrupt {
            key: int(row, 0, "key")?,
            thread_key: int(row, 2, "thread_key")?,
            run_key,
            record: InterruptRecord {
                interrupt_id: id,
                thread_id: thread_id.clone(),
                run_id,
                node: text(row, 6, "node")?,
                payload: payload(row, 7, "payload")?,
                raised_seq: seq_col(row, 8, "raised_seq")?,
                raised_at: time(row, 9, "raised_at")?,
                answer,
                applied_seq: opt_seq(row, 12, "applied_seq")?,
            },
            run_status,
            run_epoch,
        })
    };
    decode().map_err(|f| within(format!("interrupt {id}"))(f).at(thread_id, None))
}

/// Reads a thread's deliveries in arrival order; only unconsumed ones if `pending_only`.
pub(crate) fn deliveries(
    conn: &Connection,
    thread_id: &ThreadId,
    pending_only: bool,
) -> Result<Vec<Delivery>, Fault> {
    let Some(key) = thread_key(conn, thread_id)? else {
        return Ok(Vec::new());
    };
    let sql = if pending_only {
        queries::PENDING_DELIVERIES_OF_THREAD
    } else {
        queries::DELIVERIES_OF_THREAD
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params![key])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode_delivery(row, thread_id)?);
    }
    Ok(out)
}

/// Reads the delivery of the thread (by key) with idempotency key `idem_key`.
pub(crate) fn delivery_by_idem_key(
    conn: &Connection,
    thread_key: i64,
    thread_id: &ThreadId,
    idem_key: &str,
) -> Result<Option<Delivery>, Fault> {
    let mut stmt = conn.prepare_cached(queries::DELIVERY_BY_IDEM_KEY)?;
    let mut rows = stmt.query(params![thread_key, idem_key])?;
    match rows.next()? {
        None => Ok(None),
        Some(row) => decode_delivery(row, thread_id).map(Some),
    }
}

/// Decodes a row of `delivery_select!` of thread `thread_id`; errors are [`Fault::Store`]
/// naming the thread.
fn decode_delivery(row: &Row<'_>, thread_id: &ThreadId) -> Result<Delivery, Fault> {
    let id = delivery_id(row, 1, "delivery_id")
        .map_err(|f| within("delivery record")(f).at(thread_id, None))?;
    let decode = || -> Result<Delivery, Fault> {
        Ok(Delivery {
            delivery_id: id,
            thread_id: thread_id.clone(),
            name: text(row, 2, "name")?,
            payload: payload(row, 3, "payload")?,
            key: opt_text(row, 4, "idem_key")?,
            sent_at: time(row, 5, "sent_at")?,
            consumed_seq: opt_seq(row, 6, "consumed_seq")?,
        })
    };
    decode().map_err(|f| within(format!("delivery {id}"))(f).at(thread_id, None))
}

/// The earliest arrival time of a thread's unconsumed deliveries named in `names`.
pub(crate) fn earliest_pending_delivery(
    conn: &Connection,
    thread_key: i64,
    thread_id: &ThreadId,
    names: &[String],
) -> Result<Option<Timestamp>, Fault> {
    let mut stmt = conn.prepare_cached(queries::PENDING_DELIVERY_TIMES)?;
    let mut rows = stmt.query(params![thread_key])?;
    let mut earliest: Option<Timestamp> = None;
    while let Some(row) = rows.next()? {
        let decode = || -> Result<(String, Timestamp), Fault> {
            Ok((text(row, 0, "name")?, time(row, 1, "sent_at")?))
        };
        let (name, at) = decode().map_err(|f| within("delivery")(f).at(thread_id, None))?;
        if names.contains(&name) {
            earliest = Some(earliest.map_or(at, |e| e.min(at)));
        }
    }
    Ok(earliest)
}

// ---------------------------------------------------------------------------------------
// Idempotency records, API keys, audit (not tied to a thread: a damaged row is reported
// as corruption of the `unknown` thread, its table and key named in the detail)

/// Reads the idempotency record of `key` within `scope`.
pub(crate) fn idempotency(
    conn: &Connection,
    scope: &str,
    key: &str,
) -> Result<Option<IdempotencyRecord>, Fault> {
    let mut stmt = conn.prepare_cached(queries::IDEMPOTENCY_BY_KEY)?;
    let mut rows = stmt.query(params![scope, key])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let decode = || -> Result<IdempotencyRecord, Fault> {
        let response = match (opt_int(row, 4, "status")?, opt_text(row, 5, "body")?) {
            (Some(status), Some(body)) => Some(StoredResponse {
                status: u16::try_from(status)
                    .map_err(|_| Fault::Bad(format!("column `status`: {status} is not HTTP")))?,
                body,
            }),
            (None, None) => None,
            _ => return Err(Fault::Bad("columns `status` and `body` disagree".into())),
        };
        Ok(IdempotencyRecord {
            scope: scope.to_owned(),
            key: key.to_owned(),
            request_hash: text(row, 0, "request_hash")?,
            created_at: time(row, 1, "created_at")?,
            expires_at: time(row, 2, "expires_at")?,
            locked_until: time(row, 3, "locked_until")?,
            response,
        })
    };
    decode().map(Some).map_err(|f| {
        within(format!("idempotency record {scope:?}/{key:?}"))(f).at(&unknown_thread(), None)
    })
}

fn decode_api_key(row: &Row<'_>) -> Result<ApiKeyRecord, Fault> {
    let key_id =
        text(row, 0, "key_id").map_err(|f| within("api key")(f).at(&unknown_thread(), None))?;
    let decode = || -> Result<ApiKeyRecord, Fault> {
        Ok(ApiKeyRecord {
            key_id: key_id.clone(),
            name: text(row, 1, "name")?,
            role: text(row, 2, "role")?,
            secret_hash: text(row, 3, "secret_hash")?,
            created_at: time(row, 4, "created_at")?,
            revoked_at: opt_int(row, 5, "revoked_at")?.map(Timestamp),
        })
    };
    decode().map_err(|f| within(format!("api key `{key_id}`"))(f).at(&unknown_thread(), None))
}

/// Reads an API key by id.
pub(crate) fn api_key(conn: &Connection, key_id: &str) -> Result<Option<ApiKeyRecord>, Fault> {
    let mut stmt = conn.prepare_cached(queries::API_KEY_BY_ID)?;
    let mut rows = stmt.query(params![key_id])?;
    match rows.next()? {
        None => Ok(None),
        Some(row) => decode_api_key(row).map(Some),
    }
}

/// Whether an API key id is taken.
pub(crate) fn api_key_exists(conn: &Connection, key_id: &str) -> Result<bool, Fault> {
    Ok(conn
        .prepare_cached(queries::API_KEY_EXISTS)?
        .exists(params![key_id])?)
}

/// Every API key, oldest first.
pub(crate) fn api_keys(conn: &Connection) -> Result<Vec<ApiKeyRecord>, Fault> {
    let mut stmt = conn.prepare_cached(queries::API_KEYS)?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(decode_api_key(row)?);
    }
    Ok(out)
}

/// Runs holding a lease unexpired at `now`, per graph, by graph name.
pub(crate) fn lease_counts(conn: &Connection, now: Timestamp) -> Result<Vec<(String, u64)>, Fault> {
    let mut stmt = conn.prepare_cached(queries::LEASE_COUNTS)?;
    let mut rows = stmt.query(params![now.0])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let decode = || -> Result<(String, u64), Fault> {
            let graph = text(row, 0, "graph")?;
            let n = int(row, 1, "count")?;
            let n = u64::try_from(n).map_err(|_| Fault::Bad(format!("count {n} is negative")))?;
            Ok((graph, n))
        };
        out.push(decode().map_err(|f| within("lease counts")(f).at(&unknown_thread(), None))?);
    }
    Ok(out)
}

/// Every registered worker, by id.
pub(crate) fn workers(conn: &Connection) -> Result<Vec<WorkerRecord>, Fault> {
    let mut stmt = conn.prepare_cached(queries::WORKERS)?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let worker_id = text(row, 0, "worker_id")
            .map_err(|f| within("worker")(f).at(&unknown_thread(), None))?;
        let decode = || -> Result<WorkerRecord, Fault> {
            let graphs = text(row, 1, "graphs")?;
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
                stopped_at: opt_int(row, 5, "stopped_at")?.map(Timestamp),
            })
        };
        out.push(
            decode().map_err(|f| {
                within(format!("worker `{worker_id}`"))(f).at(&unknown_thread(), None)
            })?,
        );
    }
    Ok(out)
}

/// A thread's pending runs, lowest position first.
pub(crate) fn pending_runs(conn: &Connection, id: &ThreadId) -> Result<Vec<PendingRun>, Fault> {
    let mut stmt = conn.prepare_cached(queries::PENDING_OF_THREAD)?;
    let mut rows = stmt.query(params![id.as_str()])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let decode = || -> Result<PendingRun, Fault> {
            let position = int(row, 2, "position")?;
            Ok(PendingRun {
                run_id: run_id(row, 0, "run_id")?,
                thread_id: thread_id_col(row, 1, "thread_id")?,
                position: u64::try_from(position).map_err(|_| {
                    Fault::Bad(format!("column `position`: {position} is negative"))
                })?,
                graph: text(row, 3, "graph")?,
                graph_version: text(row, 4, "graph_version")?,
                request: payload(row, 5, "request")?,
                created_at: time(row, 6, "created_at")?,
            })
        };
        out.push(decode().map_err(|f| within("pending run")(f).at(id, None))?);
    }
    Ok(out)
}

/// Threads with pending runs and no active run, at most `limit`.
pub(crate) fn pending_threads(conn: &Connection, limit: usize) -> Result<Vec<ThreadId>, Fault> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(queries::PENDING_THREADS)?;
    let mut rows = stmt.query(params![limit])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(
            thread_id_col(row, 0, "thread_id")
                .map_err(|f| within("pending run")(f).at(&unknown_thread(), None))?,
        );
    }
    Ok(out)
}

/// Lists audit entries, oldest first.
pub(crate) fn audit(conn: &Connection, filter: &AuditFilter) -> Result<Vec<AuditRecord>, Fault> {
    let (sql, values) = queries::audit(filter);
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(params_from_iter(values))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let id =
            int(row, 0, "id").map_err(|f| within("audit entry")(f).at(&unknown_thread(), None))?;
        let decode = || -> Result<AuditRecord, Fault> {
            let status = int(row, 7, "status")?;
            Ok(AuditRecord {
                id: u64::try_from(id)
                    .map_err(|_| Fault::Bad(format!("column `id`: {id} is negative")))?,
                at: time(row, 1, "at")?,
                actor: text(row, 2, "actor")?,
                role: text(row, 3, "role")?,
                action: text(row, 4, "action")?,
                target: opt_text(row, 5, "target")?,
                request_id: text(row, 6, "request_id")?,
                status: u16::try_from(status)
                    .map_err(|_| Fault::Bad(format!("column `status`: {status} is not HTTP")))?,
                outcome: text(row, 8, "outcome")?,
                details: opt_payload(row, 9, "details")?,
            })
        };
        out.push(
            decode()
                .map_err(|f| within(format!("audit entry {id}"))(f).at(&unknown_thread(), None))?,
        );
    }
    Ok(out)
}
