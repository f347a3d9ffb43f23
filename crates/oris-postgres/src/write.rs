//! The write transactions: commits, answers, deliveries, deletions and pruning. Each runs
//! inside [`Db::transact`](crate::conn::Db::transact); each reads what it decides on with
//! a row lock and decides with the core's pure rules (`plan_commit`, `plan_answer`,
//! `check_redelivery`, `check_prune`).
//!
//! Concurrency control: a commit locks its thread's row (`FOR NO KEY UPDATE`) before
//! reading the head, so two writers of one thread — in one process or many — are
//! serialized by PostgreSQL, and the second one sees the first one's head and fails the
//! compare-and-set with [`Error::Conflict`]. Two *first* commits of a new thread have no row
//! to lock: both insert it with `ON CONFLICT DO NOTHING`; the loser's insert waits for the
//! winner and returns nothing, and the transaction is re-run ([`Fault::Retry`]), which now
//! finds the thread and answers as the memory store would (`Conflict`). Unique violations
//! of run and interrupt ids (the same id used concurrently on two threads) become
//! `InvalidCommit`, like the duplicates the transaction finds itself.

use oris_core::event::{Event, EventRow, Payload};
use oris_core::id::{DeliveryId, InterruptId, RunId, Seq, ThreadId, Timestamp};
use oris_core::status::RunStatus;
use oris_core::store::{
    Answer, Commit, Delivery, Error, InterruptRecord, Receipt, RunRecord, RunWrite, check_prune,
    check_redelivery, consumed_deliveries, interrupt_effects, plan_answer, plan_commit,
    ready_on_answer, ready_on_delivery, wake_at,
};
use tokio_postgres::types::Type;

use crate::codec::{Fault, encode_status, invalid, is_unique_violation, kind_code, seq_param};
use crate::conn::Conn;
use crate::queries::{NOTIFY, Sql};
use crate::read::{self, Lock, StoredThread};

/// Queues a wake-up for `thread_id`, sent when the transaction commits.
pub(crate) async fn notify(conn: &Conn, sql: &Sql, thread_id: &ThreadId) -> Result<(), Fault> {
    conn.query(
        NOTIFY,
        &[
            (&sql.channel, Type::TEXT),
            (&thread_id.as_str(), Type::TEXT),
        ],
    )
    .await?;
    Ok(())
}

/// The columns of a batch of events, one array per column.
#[derive(Debug, Default)]
struct EventColumns {
    seq: Vec<i64>,
    at: Vec<i64>,
    kind: Vec<i16>,
    superstep: Vec<Option<i64>>,
    task: Vec<Option<i64>>,
    node: Vec<Option<String>>,
    attempt: Vec<Option<i64>>,
    data: Vec<Option<String>>,
    extra: Vec<Option<String>>,
}

impl EventColumns {
    fn push(&mut self, tid: &ThreadId, row: EventRow) -> Result<(), Fault> {
        let code = kind_code(row.kind).ok_or_else(|| {
            invalid(
                tid,
                format!("event kind {} has no storage code", row.kind.as_str()),
            )
        })?;
        self.seq.push(seq_param(tid, row.seq)?);
        self.at.push(row.at.0);
        self.kind.push(code);
        self.superstep.push(row.superstep.map(i64::from));
        self.task.push(row.task.map(i64::from));
        self.node.push(row.node);
        self.attempt.push(row.attempt.map(i64::from));
        self.data.push(row.data);
        self.extra.push(row.extra);
        Ok(())
    }

    async fn insert(
        &self,
        conn: &Conn,
        sql: &Sql,
        thread_key: i64,
        run_key: i64,
    ) -> Result<(), Fault> {
        conn.execute(
            &sql.insert_events,
            &[
                (&thread_key, Type::INT8),
                (&run_key, Type::INT8),
                (&self.seq, Type::INT8_ARRAY),
                (&self.at, Type::INT8_ARRAY),
                (&self.kind, Type::INT2_ARRAY),
                (&self.superstep, Type::INT8_ARRAY),
                (&self.task, Type::INT8_ARRAY),
                (&self.node, Type::TEXT_ARRAY),
                (&self.attempt, Type::INT8_ARRAY),
                (&self.data, Type::TEXT_ARRAY),
                (&self.extra, Type::TEXT_ARRAY),
            ],
        )
        .await?;
        Ok(())
    }
}

/// Validates a commit against the locked stored records with [`plan_commit`] and writes it.
pub(crate) async fn commit(conn: &Conn, sql: &Sql, c: &Commit) -> Result<Receipt, Fault> {
    let tid = &c.thread_id;
    let stored = read::thread(conn, sql, tid, Lock::Write).await?;
    // A lease entitles its holder to write its own run only.
    oris_core::store::check_fence_writer(c, stored.as_ref().map(|s| &s.record))?;
    // The run whose status changes, or else whose lease fences the commit, locked (after
    // the thread: every writer locks in that order) so that a claim, renewal, release,
    // answer or delivery cannot change it between the check and the write.
    let run_to_lock = match (&c.run, &c.fence) {
        (Some(RunWrite::SetStatus { run_id, .. }), _) => Some(*run_id),
        (_, Some(fence)) => Some(fence.run_id),
        _ => None,
    };
    let stored_run = match run_to_lock {
        Some(id) => read::run(conn, sql, id, true).await?,
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
    let mut columns = EventColumns::default();
    for e in &c.events {
        let row = EventRow::from_event(e)
            .map_err(|e| invalid(tid, format!("an event does not serialize: {e}")))?;
        columns.push(tid, row)?;
    }
    let status = plan
        .run
        .as_ref()
        .map(|r| encode_status(&r.status))
        .transpose()
        .map_err(|e| invalid(tid, format!("the run status does not serialize: {e}")))?;
    let head = seq_param(tid, plan.thread.head)?;

    // An interrupt id is unique across threads: raising one that is stored refuses the
    // commit (`plan_commit` refused one raised twice in the commit).
    let effects = interrupt_effects(c);
    if !effects.raised.is_empty() {
        let ids: Vec<uuid::Uuid> = effects
            .raised
            .iter()
            .map(|r| r.interrupt_id.as_uuid())
            .collect();
        if let Some(row) = conn
            .query_opt(&sql.interrupts_exist, &[(&ids, Type::UUID_ARRAY)])
            .await?
        {
            let id: uuid::Uuid = row.get(0);
            return Err(invalid(
                tid,
                format!("interrupt {} already exists", InterruptId::from_uuid(id)),
            ));
        }
    }

    let thread_key = match &stored {
        Some(s) => s.key,
        None => {
            let row = conn
                .query_opt(
                    &sql.insert_thread,
                    &[
                        (&tid.as_str(), Type::TEXT),
                        (&plan.thread.graph, Type::TEXT),
                        (&plan.thread.created_at.0, Type::INT8),
                    ],
                )
                .await?;
            // Another transaction created the thread meanwhile: decide again on its row.
            let Some(row) = row else {
                return Err(Fault::Retry);
            };
            row.get::<_, i64>(0)
        }
    };

    // The run that writes this commit's events, if any: (id, key).
    let writer: Option<(RunId, i64)> = match (&c.run, &plan.run, &status) {
        (Some(RunWrite::Create(_)), Some(run), Some((kind, data))) => {
            if read::run_ref(conn, sql, run.run_id).await?.is_some() {
                return Err(invalid(tid, format!("run {} already exists", run.run_id)));
            }
            let first_seq = seq_param(tid, run.first_seq)?;
            let uuid = run.run_id.as_uuid();
            let metadata = run.metadata.as_ref().map(|m| m.json());
            let ready_at = run.ready_at.map(|t| t.0);
            let row = conn
                .query_opt(
                    &sql.insert_run,
                    &[
                        (&uuid, Type::UUID),
                        (&thread_key, Type::INT8),
                        (&run.graph, Type::TEXT),
                        (&run.graph_version, Type::TEXT),
                        (kind, Type::TEXT),
                        (data, Type::TEXT),
                        (&first_seq, Type::INT8),
                        (&run.created_at.0, Type::INT8),
                        (&run.updated_at.0, Type::INT8),
                        (&wake_at(&run.status).map(|t| t.0), Type::INT8),
                        (&run.priority, Type::INT4),
                        (&metadata, Type::TEXT),
                        (&ready_at, Type::INT8),
                    ],
                )
                .await
                .map_err(|e| {
                    if is_unique_violation(&e, "runs_run_id_key") {
                        invalid(tid, format!("run {} already exists", run.run_id))
                    } else {
                        Fault::Db(e)
                    }
                })?
                .ok_or_else(|| invalid(tid, "the run insert returned no key"))?;
            Some((run.run_id, row.get(0)))
        }
        (Some(RunWrite::SetStatus { .. }), Some(run), Some((kind, data))) => {
            let key = stored_run
                .as_ref()
                .map(|r| r.key)
                .expect("invariant: plan_commit accepted a status change of a stored run");
            let ready_at = run.ready_at.map(|t| t.0);
            let worker = run.lease.as_ref().map(|l| l.worker_id.as_str());
            let expires = run.lease.as_ref().map(|l| l.expires_at.0);
            conn.execute(
                &sql.update_run_status,
                &[
                    (&key, Type::INT8),
                    (kind, Type::TEXT),
                    (data, Type::TEXT),
                    (&run.updated_at.0, Type::INT8),
                    (&wake_at(&run.status).map(|t| t.0), Type::INT8),
                    (&ready_at, Type::INT8),
                    (&worker, Type::TEXT),
                    (&expires, Type::INT8),
                ],
            )
            .await?;
            Some((run.run_id, key))
        }
        _ => match (
            stored
                .as_ref()
                .and_then(|s| s.record.active_run.zip(s.active_key)),
            c.events.first(),
        ) {
            (Some(active), _) => Some(active),
            // An operator edit of an idle thread, written by its last run (which
            // `plan_commit` checked every event names).
            (None, Some(e)) => match read::run_ref(conn, sql, e.run_id).await? {
                Some((key, tk)) if tk == thread_key => Some((e.run_id, key)),
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

    let keys = Keys {
        sql,
        tid,
        writer,
        stored: stored.as_ref(),
        thread_key,
    };
    let active_key = match plan.thread.active_run {
        Some(id) => Some(keys.of(conn, id).await?),
        None => None,
    };
    let last_key = match plan.thread.last_run {
        Some(id) => Some(keys.of(conn, id).await?),
        None => None,
    };
    conn.execute(
        &sql.update_thread,
        &[
            (&thread_key, Type::INT8),
            (&head, Type::INT8),
            (&active_key, Type::INT8),
            (&last_key, Type::INT8),
            (&plan.thread.updated_at.0, Type::INT8),
        ],
    )
    .await?;

    if !c.events.is_empty() {
        let (_, run_key) = writer.ok_or_else(|| invalid(tid, "events without a writing run"))?;
        columns.insert(conn, sql, thread_key, run_key).await?;
    }

    for r in &effects.raised {
        let run_key = keys.of(conn, r.run_id).await?;
        let uuid = r.interrupt_id.as_uuid();
        let raised_seq = seq_param(tid, r.raised_seq)?;
        conn.execute(
            &sql.insert_interrupt,
            &[
                (&uuid, Type::UUID),
                (&thread_key, Type::INT8),
                (&run_key, Type::INT8),
                (&r.node, Type::TEXT),
                (&r.payload.json(), Type::TEXT),
                (&raised_seq, Type::INT8),
                (&r.raised_at.0, Type::INT8),
            ],
        )
        .await
        .map_err(|e| {
            if is_unique_violation(&e, "interrupts_interrupt_id_key") {
                invalid(tid, format!("interrupt {} already exists", r.interrupt_id))
            } else {
                Fault::Db(e)
            }
        })?;
    }
    for (id, at_seq, value) in &effects.applied {
        let uuid = id.as_uuid();
        let at_seq = seq_param(tid, *at_seq)?;
        conn.execute(
            &sql.apply_interrupt,
            &[
                (&uuid, Type::UUID),
                (&at_seq, Type::INT8),
                (&value.json(), Type::TEXT),
                (&now.0, Type::INT8),
            ],
        )
        .await?;
    }
    for (id, at_seq) in consumed_deliveries(c) {
        let uuid = id.as_uuid();
        let at_seq = seq_param(tid, at_seq)?;
        conn.execute(
            &sql.consume_delivery,
            &[
                (&uuid, Type::UUID),
                (&thread_key, Type::INT8),
                (&at_seq, Type::INT8),
            ],
        )
        .await?;
    }

    if let Some(s) = &c.snapshot {
        let run_key = keys.of(conn, s.run_id).await?;
        let boundary = serde_json::to_string(&s.boundary).map_err(|e| {
            invalid(
                tid,
                format!("the snapshot boundary does not serialize: {e}"),
            )
        })?;
        let at_seq = seq_param(tid, s.at_seq)?;
        let next = i64::from(s.next_superstep);
        conn.execute(
            &sql.upsert_snapshot,
            &[
                (&thread_key, Type::INT8),
                (&at_seq, Type::INT8),
                (&run_key, Type::INT8),
                (&next, Type::INT8),
                (&s.state.json(), Type::TEXT),
                (&boundary, Type::TEXT),
                (&s.created_at.0, Type::INT8),
            ],
        )
        .await?;
    }
    // A suspension that raced an answer or a delivery: the run is ready at once.
    if let (Some(RunWrite::SetStatus { .. }), Some(run), Some((_, run_key))) =
        (&c.run, &plan.run, writer)
    {
        let ready = match &run.status {
            RunStatus::Interrupted { .. } => {
                // Ready since the latest answer, if every open interrupt has one.
                let interrupts = read::interrupts_of_run(conn, sql, run_key, tid).await?;
                interrupts
                    .iter()
                    .filter(|i| i.applied_seq.is_none())
                    .filter_map(|i| i.answer.as_ref().map(|(_, at)| *at))
                    .max()
                    .and_then(|latest| ready_on_answer(run, &interrupts, latest))
            }
            RunStatus::Waiting { events, .. } if !events.is_empty() => {
                earliest_pending(conn, sql, thread_key, events)
                    .await?
                    .and_then(|(name, sent_at)| ready_on_delivery(run, &name, sent_at))
            }
            _ => None,
        };
        make_ready(conn, sql, run_key, run, ready).await?;
    }
    if c.run.is_some() {
        notify(conn, sql, tid).await?;
    }
    Ok(Receipt {
        head: plan.thread.head,
    })
}

/// The thread's (by key) earliest pending delivery named one of `names`: name and arrival.
async fn earliest_pending(
    conn: &Conn,
    sql: &Sql,
    thread_key: i64,
    names: &[String],
) -> Result<Option<(String, Timestamp)>, Fault> {
    let row = conn
        .query_opt(
            &sql.earliest_pending_delivery,
            &[(&thread_key, Type::INT8), (&names, Type::TEXT_ARRAY)],
        )
        .await?;
    row.map(|row| {
        Ok((
            crate::codec::req(&row, 0, "name")?,
            crate::codec::time(&row, 1, "sent_at")?,
        ))
    })
    .transpose()
}

/// Sets when the run (by key) is ready.
async fn set_ready_at(conn: &Conn, sql: &Sql, run_key: i64, at: Timestamp) -> Result<(), Fault> {
    conn.execute(
        &sql.set_ready_at,
        &[(&run_key, Type::INT8), (&Some(at.0), Type::INT8)],
    )
    .await?;
    Ok(())
}

/// Applies `ready` (from `ready_on_answer` or `ready_on_delivery`) to `run` (by key).
async fn make_ready(
    conn: &Conn,
    sql: &Sql,
    run_key: i64,
    run: &RunRecord,
    ready: Option<Timestamp>,
) -> Result<(), Fault> {
    match ready {
        Some(at) if run.ready_at != Some(at) => set_ready_at(conn, sql, run_key, at).await,
        _ => Ok(()),
    }
}

/// Finds the keys of runs a commit refers to.
struct Keys<'a> {
    sql: &'a Sql,
    tid: &'a ThreadId,
    writer: Option<(RunId, i64)>,
    stored: Option<&'a StoredThread>,
    thread_key: i64,
}

impl Keys<'_> {
    /// The key of run `id`: the writing run, one of the thread's stored runs, or looked
    /// up — and it must belong to the thread.
    async fn of(&self, conn: &Conn, id: RunId) -> Result<i64, Fault> {
        if let Some((_, key)) = self.writer.filter(|(w, _)| *w == id) {
            return Ok(key);
        }
        if let Some(s) = self.stored {
            if let (Some(active), Some(key)) = (s.record.active_run, s.active_key)
                && active == id
            {
                return Ok(key);
            }
            if let (Some(last), Some(key)) = (s.record.last_run, s.last_key)
                && last == id
            {
                return Ok(key);
            }
        }
        match read::run_ref(conn, self.sql, id).await? {
            Some((key, tk)) if tk == self.thread_key => Ok(key),
            Some(_) => Err(invalid(
                self.tid,
                format!("run {id} belongs to another thread"),
            )),
            None => Err(invalid(self.tid, format!("run {id} does not exist"))),
        }
    }
}

fn not_found(thread_id: &ThreadId) -> Fault {
    Fault::Store(Error::ThreadNotFound {
        thread_id: thread_id.clone(),
    })
}

/// Deletes a thread's snapshot.
pub(crate) async fn delete_snapshots(
    conn: &Conn,
    sql: &Sql,
    thread_id: &ThreadId,
) -> Result<u64, Fault> {
    let stored = read::thread(conn, sql, thread_id, Lock::Write)
        .await?
        .ok_or_else(|| not_found(thread_id))?;
    Ok(conn
        .execute(&sql.delete_snapshots, &[(&stored.key, Type::INT8)])
        .await?)
}

/// Deletes a thread and all its rows, unless a run of it is unfinished.
pub(crate) async fn delete_thread(
    conn: &Conn,
    sql: &Sql,
    thread_id: &ThreadId,
) -> Result<(), Fault> {
    let stored = read::thread(conn, sql, thread_id, Lock::Delete)
        .await?
        .ok_or_else(|| not_found(thread_id))?;
    if let Some(run_id) = stored.record.active_run {
        return Err(Fault::Store(Error::RunActive {
            thread_id: thread_id.clone(),
            run_id,
        }));
    }
    conn.execute(&sql.delete_thread, &[(&stored.key, Type::INT8)])
        .await?;
    conn.execute(&sql.delete_thread_rows, &[(&stored.key, Type::INT8)])
        .await?;
    Ok(())
}

/// Replaces the event at `base.seq` with `base` and deletes the events before it (see
/// [`check_prune`]).
pub(crate) async fn prune(
    conn: &Conn,
    sql: &Sql,
    thread_id: &ThreadId,
    base: &Event,
) -> Result<u64, Fault> {
    let stored = read::thread(conn, sql, thread_id, Lock::Write)
        .await?
        .ok_or_else(|| not_found(thread_id))?;
    let active_first = match stored.record.active_run {
        Some(id) => read::run(conn, sql, id, false)
            .await?
            .map(|r| r.record.first_seq),
        None => None,
    };
    let at = base.seq;
    let replaced = read::events(conn, sql, thread_id, Seq(at.0.saturating_sub(1)), 1)
        .await?
        .into_iter()
        .next()
        .filter(|e| e.seq == at)
        .ok_or_else(|| invalid(thread_id, format!("no event at seq {at} (already pruned?)")))?;
    check_prune(&stored.record, active_first, base, &replaced)?;
    let (run_key, _) = read::run_ref(conn, sql, replaced.run_id)
        .await?
        .ok_or_else(|| invalid(thread_id, format!("run {} is missing", replaced.run_id)))?;
    let at_value = seq_param(thread_id, at)?;
    let deleted = conn
        .execute(
            &sql.delete_events_upto,
            &[(&stored.key, Type::INT8), (&at_value, Type::INT8)],
        )
        .await?;
    let mut row = EventRow::from_event(base)
        .map_err(|e| invalid(thread_id, format!("the prune base does not serialize: {e}")))?;
    // The base keeps the replaced event's run and time.
    row.run_id = replaced.run_id;
    row.at = replaced.at;
    let code = kind_code(row.kind).ok_or_else(|| invalid(thread_id, "unknown event kind"))?;
    let (superstep, task, attempt) = (
        row.superstep.map(i64::from),
        row.task.map(i64::from),
        row.attempt.map(i64::from),
    );
    conn.execute(
        &sql.insert_event,
        &[
            (&stored.key, Type::INT8),
            (&at_value, Type::INT8),
            (&run_key, Type::INT8),
            (&row.at.0, Type::INT8),
            (&code, Type::INT2),
            (&superstep, Type::INT8),
            (&task, Type::INT8),
            (&row.node, Type::TEXT),
            (&attempt, Type::INT8),
            (&row.data, Type::TEXT),
            (&row.extra, Type::TEXT),
        ],
    )
    .await?;
    conn.execute(
        &sql.prune_interrupts,
        &[(&stored.key, Type::INT8), (&at_value, Type::INT8)],
    )
    .await?;
    conn.execute(
        &sql.prune_deliveries,
        &[(&stored.key, Type::INT8), (&at_value, Type::INT8)],
    )
    .await?;
    Ok(deleted.saturating_sub(1))
}

/// Decides an answer with [`plan_answer`] on the interrupt (locked) and its run's status,
/// and records it: of concurrent answers, exactly one is `Recorded`. An answer that makes
/// the run ready ([`ready_on_answer`]) sets its `ready_at`.
///
/// The run is locked before the interrupt, as commits lock them; so a commit suspending
/// the run and this answer are serialized, and whichever comes second sees the other
/// (the answer sees the run interrupted, or the commit sees the answer).
pub(crate) async fn answer_interrupt(
    conn: &Conn,
    sql: &Sql,
    interrupt_id: InterruptId,
    value: &Payload,
    at: Timestamp,
) -> Result<(Answer, InterruptRecord), Fault> {
    let uuid = interrupt_id.as_uuid();
    // None when the interrupt or its run is missing: the read below tells which.
    let run_key: Option<i64> = conn
        .query_opt(&sql.interrupt_run_for_update, &[(&uuid, Type::UUID)])
        .await?
        .map(|row| row.get(0));
    let stored = read::interrupt(conn, sql, interrupt_id, true)
        .await?
        .ok_or(Error::InterruptNotFound { interrupt_id })?;
    match plan_answer(&stored.record, &stored.run_status, value, at)? {
        None => Ok((Answer::AlreadyAnswered, stored.record)),
        Some(updated) => {
            conn.execute(
                &sql.answer_interrupt,
                &[
                    (&stored.key, Type::INT8),
                    (&value.json(), Type::TEXT),
                    (&at.0, Type::INT8),
                ],
            )
            .await?;
            let tid = &stored.record.thread_id;
            if let Some(run_key) = run_key
                && let Some(run) = read::run_by_key_locked(conn, sql, run_key).await?
            {
                let interrupts = read::interrupts_of_run(conn, sql, run_key, tid).await?;
                let ready = ready_on_answer(&run.record, &interrupts, at);
                make_ready(conn, sql, run_key, &run.record, ready).await?;
            }
            notify(conn, sql, tid).await?;
            Ok((Answer::Recorded, updated))
        }
    }
}

/// Buffers a delivery, or returns the one recorded earlier with the same idempotency key.
/// A new delivery the thread's active run waits for makes it ready ([`ready_on_delivery`]);
/// the run is locked for that, after the thread, as commits lock them.
pub(crate) async fn deliver(
    conn: &Conn,
    sql: &Sql,
    thread_id: &ThreadId,
    name: &str,
    payload: &Payload,
    key: Option<&str>,
    at: Timestamp,
) -> Result<(Delivery, bool), Fault> {
    let row = conn
        .query_opt(&sql.thread_key_share, &[(&thread_id.as_str(), Type::TEXT)])
        .await?
        .ok_or_else(|| not_found(thread_id))?;
    let thread_key: i64 = row.get(0);
    let active_key: Option<i64> = row.get(1);
    if let Some(k) = key
        && let Some(existing) =
            read::delivery_by_idem_key(conn, sql, thread_key, thread_id, k).await?
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
    let uuid = delivery.delivery_id.as_uuid();
    let inserted = conn
        .query_opt(
            &sql.insert_delivery,
            &[
                (&uuid, Type::UUID),
                (&thread_key, Type::INT8),
                (&name, Type::TEXT),
                (&payload.json(), Type::TEXT),
                (&key, Type::TEXT),
                (&at.0, Type::INT8),
            ],
        )
        .await?;
    if inserted.is_none() {
        // A concurrent sender recorded the same key first: decide again on its row.
        return Err(Fault::Retry);
    }
    if let Some(run_key) = active_key
        && let Some(run) = read::run_by_key_locked(conn, sql, run_key).await?
    {
        let ready = ready_on_delivery(&run.record, name, at);
        make_ready(conn, sql, run_key, &run.record, ready).await?;
    }
    notify(conn, sql, thread_id).await?;
    Ok((delivery, true))
}
