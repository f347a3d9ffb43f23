//! Every SQL statement, as templates where `{S}.` stands for the store's (quoted) schema.
//! [`Sql::new`] fills the schema in once, at connect time, so statements are plain
//! strings afterwards (and the same text each time, for the statement cache).

use oris_core::status::StatusKind;
use oris_core::store::{AuditFilter, InterruptFilter, RunFilter};

/// Declares the statements: one `String` field of [`Sql`] per template.
macro_rules! statements {
    ($($(#[$doc:meta])* $name:ident = $sql:expr;)*) => {
        /// The statements of one store, with its schema filled in.
        #[derive(Debug)]
        pub(crate) struct Sql {
            /// The quoted schema and a dot, e.g. `"public".`.
            pub prefix: String,
            /// The wake-up channel of the schema.
            pub channel: String,
            $($(#[$doc])* pub $name: String,)*
        }

        impl Sql {
            /// The statements for `schema`.
            pub(crate) fn new(schema: &str) -> Sql {
                let prefix = format!("{}.", quote_ident(schema));
                Sql {
                    $($name: $sql.replace("{S}.", &prefix),)*
                    prefix,
                    channel: channel(schema),
                }
            }

            /// Fills the schema into a template.
            pub(crate) fn fill(&self, template: &str) -> String {
                template.replace("{S}.", &self.prefix)
            }
        }
    };
}

/// Quotes an SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Columns of a thread with its active and last runs: 0 key, 1 graph, 2 head,
/// 3 active_run_key, 4 active run_id, 5 last_run_key, 6 last run_id, 7 created_at,
/// 8 updated_at.
macro_rules! thread_select {
    () => {
        "\
SELECT t.key, t.graph, t.head, t.active_run_key, a.run_id, t.last_run_key, l.run_id,
       t.created_at, t.updated_at
FROM {S}.threads t
LEFT JOIN {S}.runs a ON a.key = t.active_run_key
LEFT JOIN {S}.runs l ON l.key = t.last_run_key
WHERE t.thread_id = $1"
    };
}

/// Columns of a run (`run_columns!`), from `runs r` joined with its thread `t`.
macro_rules! run_select {
    () => {
        concat!(
            "SELECT ",
            run_columns!(),
            "\nFROM {S}.runs r\nJOIN {S}.threads t ON t.key = r.thread_key"
        )
    };
}

/// The columns of a run, from `runs r` and `threads t`: 0 key, 1 run_id, 2 thread_key,
/// 3 thread_id, 4 graph, 5 graph_version, 6 status, 7 status_data, 8 first_seq,
/// 9 created_at, 10 updated_at, 11 priority, 12 metadata, 13 ready_at, 14 lease_epoch,
/// 15 lease_worker, 16 lease_expires.
macro_rules! run_columns {
    () => {
        "\
r.key, r.run_id, r.thread_key, t.thread_id, r.graph, r.graph_version,
       r.status, r.status_data, r.first_seq, r.created_at, r.updated_at,
       r.priority, r.metadata, r.ready_at, r.lease_epoch, r.lease_worker, r.lease_expires"
    };
}

/// The claim statement, with `$graphs` standing for the graph filter (empty, or a clause
/// on `r`). Parameters: $1 now, $2 limit, $3 worker, $4 lease expiry, $5 the
/// `status_data` of a running run, then those of the filter.
///
/// One statement: the CTE picks the ready runs in claim order from the index `runs_claim`
/// (its predicate repeated with literals) and locks them, skipping rows other claimers or
/// writers hold, so concurrent claimers never wait for each other nor take the same run;
/// the `UPDATE` applies `plan_claim` to them. The returned rows are the runs after the
/// claim (columns of `run_columns!`), then the columns the claim changed as they were
/// before it: 17 status, 18 status_data, 19 updated_at, 20 ready_at, 21 lease_epoch,
/// 22 lease_worker, 23 lease_expires — so that the caller checks the result against
/// `plan_claim` and orders it.
macro_rules! claim_template {
    () => {
        concat!(
            "\
WITH c AS (
    SELECT r.key, r.status, r.status_data, r.updated_at, r.ready_at, r.lease_epoch,
           r.lease_worker, r.lease_expires
    FROM {S}.runs r
    WHERE r.ready_at <= $1
      AND r.ready_at IS NOT NULL AND r.status IN ('queued', 'running', 'interrupted', 'waiting')
      $graphs
    ORDER BY r.priority DESC, r.ready_at, r.run_id
    LIMIT $2
    FOR NO KEY UPDATE OF r SKIP LOCKED
)
UPDATE {S}.runs r
SET lease_epoch = c.lease_epoch + 1, lease_worker = $3, lease_expires = $4, ready_at = $4,
    status = CASE WHEN c.status = 'queued' THEN 'running' ELSE c.status END,
    status_data = CASE WHEN c.status = 'queued' THEN $5 ELSE c.status_data END,
    updated_at = CASE WHEN c.status = 'queued' THEN $1 ELSE c.updated_at END
FROM c, {S}.threads t
WHERE r.key = ANY (ARRAY(SELECT c.key FROM c)) AND r.key = c.key AND t.key = r.thread_key
RETURNING ",
            run_columns!(),
            ",
       c.status, c.status_data, c.updated_at, c.ready_at, c.lease_epoch, c.lease_worker,
       c.lease_expires"
        )
    };
}

/// The reaper's statement. Parameters: $1 now, $2 limit.
///
/// One statement, like the claim: the CTE picks the leases expired at `$1` from the index
/// `runs_leased` (its predicate repeated), earliest expiry first, and locks them, skipping
/// rows that claims, renewals, commits or another reaper hold — so it never waits for
/// them, nor they for it beyond one row update; the `UPDATE` applies `plan_reap`: the lease
/// is cleared, the epoch kept, and an unfinished run is ready since the earlier of its
/// `ready_at` and the lease's expiry. The returned rows are the runs after (columns of
/// `run_columns!`), then the columns it changed as they were before: 17 ready_at,
/// 18 lease_worker, 19 lease_expires — so that the caller checks the result against
/// `plan_reap` and orders it.
macro_rules! reap_template {
    () => {
        concat!(
            "\
WITH c AS (
    SELECT r.key, r.ready_at, r.lease_worker, r.lease_expires
    FROM {S}.runs r
    WHERE r.lease_worker IS NOT NULL AND r.lease_expires <= $1
    ORDER BY r.lease_expires, r.run_id
    LIMIT $2
    FOR NO KEY UPDATE OF r SKIP LOCKED
)
UPDATE {S}.runs r
SET lease_worker = NULL, lease_expires = NULL,
    ready_at = CASE WHEN r.status IN ('queued', 'running', 'interrupted', 'waiting')
                    THEN least(c.ready_at, c.lease_expires) ELSE c.ready_at END
FROM c, {S}.threads t
WHERE r.key = ANY (ARRAY(SELECT c.key FROM c)) AND r.key = c.key AND t.key = r.thread_key
RETURNING ",
            run_columns!(),
            ",
       c.ready_at, c.lease_worker, c.lease_expires"
        )
    };
}

/// Columns of an interrupt: 0 key, 1 interrupt_id, 2 thread_key, 3 thread_id, 4 run_key,
/// 5 run_id, 6 node, 7 payload, 8 raised_seq, 9 raised_at, 10 answer, 11 answered_at,
/// 12 applied_seq, 13 run status, 14 run status_data.
macro_rules! interrupt_select {
    () => {
        "\
SELECT i.key, i.interrupt_id, i.thread_key, t.thread_id, i.run_key, r.run_id, i.node,
       i.payload, i.raised_seq, i.raised_at, i.answer, i.answered_at, i.applied_seq,
       r.status, r.status_data
FROM {S}.interrupts i
LEFT JOIN {S}.threads t ON t.key = i.thread_key
LEFT JOIN {S}.runs r ON r.key = i.run_key"
    };
}

/// Columns of a delivery: 0 key, 1 delivery_id, 2 name, 3 payload, 4 idem_key, 5 sent_at,
/// 6 consumed_seq.
macro_rules! delivery_select {
    () => {
        "\
SELECT d.key, d.delivery_id, d.name, d.payload, d.idem_key, d.sent_at, d.consumed_seq
FROM {S}.deliveries d"
    };
}

/// Columns of an API key: 0 key_id, 1 name, 2 role, 3 secret_hash, 4 created_at,
/// 5 revoked_at.
macro_rules! api_key_select {
    () => {
        "SELECT key_id, name, role, secret_hash, created_at, revoked_at FROM {S}.api_keys"
    };
}

/// Columns of an audit entry: 0 id, 1 at, 2 actor, 3 role, 4 action, 5 target,
/// 6 request_id, 7 status, 8 outcome, 9 details.
macro_rules! audit_select {
    () => {
        "\
SELECT a.id, a.at, a.actor, a.role, a.action, a.target, a.request_id, a.status, a.outcome,
       a.details
FROM {S}.audit a"
    };
}

statements! {
    /// A thread by id (columns of `thread_select!`).
    thread = thread_select!();
    /// A thread by id, locked against other writers until the transaction ends. `NO KEY
    /// UPDATE` serializes commits of one thread but lets deliveries and interrupt inserts
    /// check their foreign keys (`KEY SHARE`) without waiting.
    thread_for_update = concat!(thread_select!(), "\nFOR NO KEY UPDATE OF t");
    /// A thread by id, locked exclusively (deleting it).
    thread_for_delete = concat!(thread_select!(), "\nFOR UPDATE OF t");
    /// A thread's key and its active run's key, the thread locked so that it is not
    /// deleted meanwhile.
    thread_key_share =
        "SELECT key, active_run_key FROM {S}.threads WHERE thread_id = $1 FOR KEY SHARE";
    /// Creates a thread; no row when another transaction created it first.
    insert_thread = "\
INSERT INTO {S}.threads (thread_id, graph, head, created_at, updated_at)
VALUES ($1, $2, 0, $3, $3)
ON CONFLICT (thread_id) DO NOTHING
RETURNING key";
    /// Sets a thread's head, runs and time.
    update_thread = "\
UPDATE {S}.threads SET head = $2, active_run_key = $3, last_run_key = $4, updated_at = $5
WHERE key = $1";
    /// A run by id (columns of `run_select!`).
    run = concat!(run_select!(), "\nWHERE r.run_id = $1");
    /// A run by id, locked against other writers (commits, claims, lease changes, answers,
    /// deliveries) until the transaction ends. `NO KEY UPDATE`: foreign-key checks of
    /// rows referring to it do not wait.
    run_for_update = concat!(run_select!(), "\nWHERE r.run_id = $1\nFOR NO KEY UPDATE OF r");
    /// A run by key, locked as `run_for_update`.
    run_by_key_for_update = concat!(run_select!(), "\nWHERE r.key = $1\nFOR NO KEY UPDATE OF r");
    /// Locks the run of interrupt `$1` as `run_for_update` (an answer locks the run before
    /// the interrupt, in the order commits take them); returns its key.
    interrupt_run_for_update = "\
SELECT r.key FROM {S}.interrupts i JOIN {S}.runs r ON r.key = i.run_key
WHERE i.interrupt_id = $1
FOR NO KEY UPDATE OF r";
    /// A run's key and thread key, by id.
    run_ref = "SELECT key, thread_key FROM {S}.runs WHERE run_id = $1";
    /// Creates a run (unleased: epoch 0).
    insert_run = "\
INSERT INTO {S}.runs (run_id, thread_key, graph, graph_version, status, status_data, first_seq,
                      created_at, updated_at, wake_at, priority, metadata, ready_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
RETURNING key";
    /// Sets a run's status, readiness and lease holder (a commit never changes the epoch).
    update_run_status = "\
UPDATE {S}.runs SET status = $2, status_data = $3, updated_at = $4, wake_at = $5, ready_at = $6,
                    lease_worker = $7, lease_expires = $8
WHERE key = $1";
    /// Sets when a run is ready (an answer or delivery made it ready, or a suspension found
    /// one that raced it).
    set_ready_at = "UPDATE {S}.runs SET ready_at = $2 WHERE key = $1";
    /// Sets a run's readiness and lease (renewal, release).
    set_lease = "\
UPDATE {S}.runs SET ready_at = $2, lease_epoch = $3, lease_worker = $4, lease_expires = $5
WHERE key = $1";
    /// Claims ready runs of any graph (see `claim_template!`).
    claim = claim_template!().replace("$graphs", "");
    /// Claims ready runs of the (graph, version) pairs `$6[i]`, `$7[i]` (see
    /// `claim_template!`).
    claim_graphs = claim_template!().replace(
        "$graphs",
        "AND (r.graph, r.graph_version) IN\n          \
         (SELECT l.g, l.v FROM unnest($6::text[], $7::text[]) AS l (g, v))",
    );
    /// Clears leases expired at `$1`, at most `$2` (see `reap_template!`).
    reap_leases = reap_template!();
    /// Runs holding a lease unexpired at `$1`, counted per graph, by graph name (bytewise,
    /// as Rust orders strings) — the live end of `runs_leased`. Columns: 0 graph, 1 count.
    lease_counts = "\
SELECT r.graph, count(*) FROM {S}.runs r
WHERE r.lease_worker IS NOT NULL AND r.lease_expires > $1
GROUP BY r.graph
ORDER BY r.graph COLLATE \"C\"";
    /// Registers a worker: inserts it, or replaces every field of its record but
    /// `registered_at`.
    upsert_worker = "\
INSERT INTO {S}.workers (worker_id, graphs, capacity, registered_at, last_seen, stopped_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (worker_id) DO UPDATE SET
    graphs = excluded.graphs, capacity = excluded.capacity, last_seen = excluded.last_seen,
    stopped_at = excluded.stopped_at";
    /// Moves a worker's `last_seen`.
    touch_worker = "UPDATE {S}.workers SET last_seen = $2 WHERE worker_id = $1";
    /// Every worker, by id (bytewise). Columns: 0 worker_id, 1 graphs, 2 capacity,
    /// 3 registered_at, 4 last_seen, 5 stopped_at.
    workers = "\
SELECT worker_id, graphs, capacity, registered_at, last_seen, stopped_at FROM {S}.workers
ORDER BY worker_id COLLATE \"C\"";
    /// Stores a pending run at the next position of its thread unless its id or that
    /// position is taken (a concurrent push); returns the position when it did.
    push_pending = "\
INSERT INTO {S}.pending_runs (run_id, thread_id, position, graph, graph_version, request,
                              created_at)
SELECT $1, $2, coalesce(max(position), 0) + 1, $3, $4, $5, $6
FROM {S}.pending_runs WHERE thread_id = $2
ON CONFLICT DO NOTHING
RETURNING position";
    /// Whether a pending run with this id is stored.
    pending_exists = "SELECT 1 FROM {S}.pending_runs WHERE run_id = $1";
    /// A thread's pending runs, lowest position first. Columns: 0 run_id, 1 thread_id,
    /// 2 position, 3 graph, 4 graph_version, 5 request, 6 created_at.
    pending_runs = "\
SELECT run_id, thread_id, position, graph, graph_version, request, created_at
FROM {S}.pending_runs WHERE thread_id = $1 ORDER BY position";
    /// Threads with pending runs and no active run, by the creation time of their lowest
    /// pending position, at most `$1`.
    pending_threads = "\
SELECT p.thread_id FROM {S}.pending_runs p
WHERE p.position = (SELECT min(q.position) FROM {S}.pending_runs q WHERE q.thread_id = p.thread_id)
  AND NOT EXISTS (SELECT 1 FROM {S}.threads t
                  WHERE t.thread_id = p.thread_id AND t.active_run_key IS NOT NULL)
ORDER BY p.created_at, p.thread_id COLLATE \"C\"
LIMIT $1";
    /// Deletes a pending run.
    remove_pending = "DELETE FROM {S}.pending_runs WHERE run_id = $1";
    /// Waiting runs due at `$1`, earliest first, at most `$2` (columns of `run_select!`).
    due_runs = concat!(
        run_select!(),
        "\nWHERE r.wake_at IS NOT NULL AND r.wake_at <= $1\nORDER BY r.wake_at, r.run_id\nLIMIT $2"
    );
    /// Appends events: one row per array element.
    insert_events = "\
INSERT INTO {S}.events (thread_key, seq, run_key, at, kind, superstep, task, node, attempt,
                        data, extra)
SELECT $1, s, $2, a, k, ss, tk, n, att, d, x
FROM unnest($3::bigint[], $4::bigint[], $5::smallint[], $6::bigint[], $7::bigint[],
            $8::text[], $9::bigint[], $10::text[], $11::text[])
     AS e (s, a, k, ss, tk, n, att, d, x)";
    /// Events of a thread with seq above `$2`, in order, at most `$3`. Columns: 0 seq,
    /// 1 run_key, 2 run_id, 3 at, 4 kind, 5 superstep, 6 task, 7 node, 8 attempt, 9 data,
    /// 10 extra.
    events = "\
SELECT e.seq, e.run_key, r.run_id, e.at, e.kind, e.superstep, e.task, e.node, e.attempt,
       e.data, e.extra
FROM {S}.events e
LEFT JOIN {S}.runs r ON r.key = e.run_key
WHERE e.thread_key = (SELECT key FROM {S}.threads WHERE thread_id = $1) AND e.seq > $2
ORDER BY e.seq
LIMIT $3";
    /// Deletes a thread's events with `seq <= $2`.
    delete_events_upto = "DELETE FROM {S}.events WHERE thread_key = $1 AND seq <= $2";
    /// Inserts one event (a prune base).
    insert_event = "\
INSERT INTO {S}.events (thread_key, seq, run_key, at, kind, superstep, task, node, attempt,
                        data, extra)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
    /// Deletes a thread's interrupts applied before seq `$2` (pruning).
    prune_interrupts = "DELETE FROM {S}.interrupts WHERE thread_key = $1 AND applied_seq < $2";
    /// Deletes a thread's deliveries consumed before seq `$2` (pruning).
    prune_deliveries = "DELETE FROM {S}.deliveries WHERE thread_key = $1 AND consumed_seq < $2";
    /// Deletes everything of a thread, children first (foreign keys), in one statement.
    delete_thread = "\
WITH e AS (DELETE FROM {S}.events WHERE thread_key = $1),
     p AS (DELETE FROM {S}.pending_runs
           WHERE thread_id = (SELECT thread_id FROM {S}.threads WHERE key = $1)),
     d AS (DELETE FROM {S}.deliveries WHERE thread_key = $1),
     i AS (DELETE FROM {S}.interrupts WHERE thread_key = $1),
     s AS (DELETE FROM {S}.snapshots WHERE thread_key = $1)
UPDATE {S}.threads SET active_run_key = NULL, last_run_key = NULL WHERE key = $1";
    /// Deletes a thread's runs and the thread (after `delete_thread`).
    delete_thread_rows = "\
WITH r AS (DELETE FROM {S}.runs WHERE thread_key = $1)
DELETE FROM {S}.threads WHERE key = $1";
    /// Writes a thread's snapshot, replacing the previous one.
    upsert_snapshot = "\
INSERT INTO {S}.snapshots (thread_key, at_seq, run_key, next_superstep, state, boundary, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (thread_key) DO UPDATE SET
    at_seq = excluded.at_seq, run_key = excluded.run_key,
    next_superstep = excluded.next_superstep, state = excluded.state,
    boundary = excluded.boundary, created_at = excluded.created_at";
    /// A thread's snapshot if it stands at or before `$2`. Columns: 0 at_seq, 1 run_key,
    /// 2 run_id, 3 next_superstep, 4 state, 5 boundary, 6 created_at.
    snapshot = "\
SELECT s.at_seq, s.run_key, r.run_id, s.next_superstep, s.state, s.boundary, s.created_at
FROM {S}.snapshots s
JOIN {S}.threads t ON t.key = s.thread_key
LEFT JOIN {S}.runs r ON r.key = s.run_key
WHERE t.thread_id = $1 AND s.at_seq <= $2";
    /// Deletes a thread's snapshot.
    delete_snapshots = "DELETE FROM {S}.snapshots WHERE thread_key = $1";
    /// Which of the interrupt ids `$1` are taken.
    interrupts_exist = "SELECT interrupt_id FROM {S}.interrupts WHERE interrupt_id = ANY($1)";
    /// Records a raised interrupt.
    insert_interrupt = "\
INSERT INTO {S}.interrupts (interrupt_id, thread_key, run_key, node, payload, raised_seq, raised_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)";
    /// Marks an interrupt applied by the `InterruptResumed` event at seq `$2`, taking that
    /// event's value `$3` (at time `$4`) as its answer when none was recorded.
    apply_interrupt = "\
UPDATE {S}.interrupts SET applied_seq = $2, answer = coalesce(answer, $3),
                          answered_at = coalesce(answered_at, $4)
WHERE interrupt_id = $1";
    /// Records an interrupt's answer.
    answer_interrupt = "UPDATE {S}.interrupts SET answer = $2, answered_at = $3 WHERE key = $1";
    /// An interrupt by id (columns of `interrupt_select!`).
    interrupt = concat!(interrupt_select!(), "\nWHERE i.interrupt_id = $1");
    /// An interrupt by id, locked until the transaction ends.
    interrupt_for_update = concat!(interrupt_select!(), "\nWHERE i.interrupt_id = $1\nFOR UPDATE OF i");
    /// A run's interrupts (by run key), in raised order.
    interrupts_of_run = concat!(
        interrupt_select!(),
        "\nWHERE i.run_key = $1\nORDER BY i.raised_seq"
    );
    /// A thread's interrupts, in raised order.
    interrupts_of_thread = concat!(
        interrupt_select!(),
        "\nWHERE i.thread_key = (SELECT key FROM {S}.threads WHERE thread_id = $1)\nORDER BY i.raised_seq"
    );
    /// A thread's deliveries, in arrival order.
    deliveries_of_thread = concat!(
        delivery_select!(),
        "\nWHERE d.thread_key = (SELECT key FROM {S}.threads WHERE thread_id = $1)\nORDER BY d.key"
    );
    /// A thread's unconsumed deliveries, in arrival order (`deliveries_pending`).
    pending_deliveries_of_thread = concat!(
        delivery_select!(),
        "\nWHERE d.thread_key = (SELECT key FROM {S}.threads WHERE thread_id = $1) AND d.consumed_seq IS NULL\nORDER BY d.key"
    );
    /// A thread's delivery with idempotency key `$2`.
    delivery_by_idem_key = concat!(
        delivery_select!(),
        "\nWHERE d.thread_key = $1 AND d.idem_key = $2"
    );
    /// Buffers a delivery; no row when one with the same idempotency key was recorded
    /// meanwhile.
    insert_delivery = "\
INSERT INTO {S}.deliveries (delivery_id, thread_key, name, payload, idem_key, sent_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (thread_key, idem_key) WHERE idem_key IS NOT NULL DO NOTHING
RETURNING key";
    /// A thread's (by key) earliest unconsumed delivery named one of `$2`: name and
    /// arrival time.
    earliest_pending_delivery = "\
SELECT d.name, d.sent_at FROM {S}.deliveries d
WHERE d.thread_key = $1 AND d.consumed_seq IS NULL AND d.name = ANY ($2)
ORDER BY d.sent_at, d.key
LIMIT 1";
    /// Marks a thread's delivery consumed by the `EventReceived` event at seq `$3`.
    consume_delivery =
        "UPDATE {S}.deliveries SET consumed_seq = $3 WHERE delivery_id = $1 AND thread_key = $2";
    /// Records a reservation of an idempotency key unless the key has a record; returns a
    /// row when it did.
    insert_idempotency = "\
INSERT INTO {S}.idempotency (scope, key, request_hash, created_at, expires_at, locked_until)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (scope, key) DO NOTHING
RETURNING 1";
    /// An idempotency record, locked until the transaction ends. Columns: 0 request_hash,
    /// 1 created_at, 2 expires_at, 3 locked_until, 4 response_status, 5 response_body.
    idempotency_for_update = "\
SELECT request_hash, created_at, expires_at, locked_until, response_status, response_body
FROM {S}.idempotency WHERE scope = $1 AND key = $2
FOR UPDATE";
    /// Replaces an idempotency record (a taken-over or renewed reservation).
    update_idempotency = "\
UPDATE {S}.idempotency SET request_hash = $3, created_at = $4, expires_at = $5, locked_until = $6,
                           response_status = $7, response_body = $8
WHERE scope = $1 AND key = $2";
    /// Stores the response of a reserved key.
    complete_idempotency = "\
UPDATE {S}.idempotency SET response_status = $3, response_body = $4 WHERE scope = $1 AND key = $2";
    /// Drops an unfinished reservation.
    release_idempotency = "\
DELETE FROM {S}.idempotency WHERE scope = $1 AND key = $2 AND response_status IS NULL";
    /// Deletes the idempotency records expired at `$1`.
    purge_idempotency = "DELETE FROM {S}.idempotency WHERE expires_at <= $1";
    /// Stores an API key unless its id is taken; returns a row when it did.
    insert_api_key = "\
INSERT INTO {S}.api_keys (key_id, name, role, secret_hash, created_at, revoked_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (key_id) DO NOTHING
RETURNING 1";
    /// An API key by id (columns of `api_key_select!`).
    api_key = concat!(api_key_select!(), "\nWHERE key_id = $1");
    /// Every API key, oldest first, equal creation times by id (bytewise, as Rust orders
    /// strings).
    api_keys = concat!(api_key_select!(), "\nORDER BY created_at, key_id COLLATE \"C\"");
    /// Revokes an API key unless it is revoked already.
    revoke_api_key =
        "UPDATE {S}.api_keys SET revoked_at = $2 WHERE key_id = $1 AND revoked_at IS NULL";
    /// Serializes audit appends until the transaction ends (the key is the channel name,
    /// unique per schema).
    audit_lock = "SELECT pg_advisory_xact_lock(hashtext($1))";
    /// Appends an audit entry; returns its id.
    insert_audit = "\
INSERT INTO {S}.audit (at, actor, role, action, target, request_id, status, outcome, details)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
RETURNING id";
    /// The schema's version.
    version = "SELECT max(version) FROM {S}.oris_schema_migrations";
    /// Records a migration.
    record_version = "INSERT INTO {S}.oris_schema_migrations (version) VALUES ($1)";
}

/// The channel of wake-up notifications of the `public` schema; the payload is the thread
/// id.
pub(crate) const CHANNEL: &str = "oris_changed";

/// The channel of the stores in `schema`: [`CHANNEL`] for `public`, `oris_changed.SCHEMA`
/// for others (so stores in other schemas of the database do not wake each other), or,
/// when that is longer than PostgreSQL's 63-byte identifiers, a hash of the schema name.
pub(crate) fn channel(schema: &str) -> String {
    if schema == "public" {
        return CHANNEL.to_owned();
    }
    let named = format!("{CHANNEL}.{schema}");
    if named.len() <= 63 {
        return named;
    }
    // FNV-1a: stable across builds and platforms.
    let hash = schema.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{CHANNEL}.{hash:016x}")
}

/// Sends a wake-up on channel `$1` for thread `$2` (delivered when the transaction
/// commits).
pub(crate) const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// Numbers the parameters of a query built from optional clauses.
#[derive(Debug, Default)]
struct Clauses {
    clauses: Vec<String>,
    n: usize,
}

impl Clauses {
    /// The next parameter, as `$n`.
    fn param(&mut self) -> String {
        self.n += 1;
        format!("${}", self.n)
    }

    /// Adds a clause.
    fn push(&mut self, clause: String) {
        self.clauses.push(clause);
    }

    /// Appends the clauses as a `WHERE` to `text`, then `tail` with the limit parameter
    /// (`{limit}` in it).
    fn finish(mut self, mut text: String, tail: &str) -> String {
        for (i, clause) in self.clauses.iter().enumerate() {
            text.push_str(if i == 0 { "\nWHERE " } else { "\n  AND " });
            text.push_str(clause);
        }
        let limit = self.param();
        text.push_str(&tail.replace("{limit}", &limit));
        text
    }
}

/// The run listing for `filter`, oldest first. Parameters, in order and only when the
/// filter has them: thread id (text), graph (text), after (uuid), created from, created
/// to, updated from, updated to (bigint), then a key and a value (text) per metadata pair;
/// then the limit (bigint).
///
/// Statuses are inlined as literals (they are `StatusKind::as_str` constants, not input).
/// When every requested status is unfinished, the predicate of the partial index
/// `runs_unfinished` is added with literals, so the planner can prove the index applies
/// (it cannot with a bound parameter under a generic plan). Metadata is compared as
/// `jsonb` with bound keys and values; like `RunRecord::metadata_map`, metadata that is
/// not an object of strings matches no pair.
pub(crate) fn runs(sql: &Sql, filter: &RunFilter) -> String {
    let mut q = Clauses::default();
    if filter.thread_id.is_some() {
        let p = q.param();
        q.push(format!(
            "r.thread_key = (SELECT key FROM {}threads WHERE thread_id = {p})",
            sql.prefix
        ));
    }
    if filter.graph.is_some() {
        let p = q.param();
        q.push(format!("r.graph = {p}"));
    }
    if !filter.statuses.is_empty() {
        let list: Vec<String> = filter
            .statuses
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        q.push(format!("r.status IN ({})", list.join(", ")));
        if filter.statuses.iter().all(|s| !s.is_terminal()) {
            q.push(unfinished_predicate());
        }
    }
    if filter.after.is_some() {
        let p = q.param();
        q.push(format!("r.run_id > {p}"));
    }
    for (present, clause) in [
        (filter.created_from.is_some(), "r.created_at >= "),
        (filter.created_to.is_some(), "r.created_at < "),
        (filter.updated_from.is_some(), "r.updated_at >= "),
        (filter.updated_to.is_some(), "r.updated_at < "),
    ] {
        if present {
            let p = q.param();
            q.push(format!("{clause}{p}"));
        }
    }
    if !filter.metadata.is_empty() {
        q.push(
            // CASE, not AND: `jsonb_each` fails on a non-object, and the planner may
            // evaluate AND-ed conditions in any order.
            "CASE WHEN jsonb_typeof(r.metadata::jsonb) = 'object'
       THEN NOT EXISTS (SELECT 1 FROM jsonb_each(r.metadata::jsonb) m
                        WHERE jsonb_typeof(m.value) <> 'string')
       ELSE false END"
                .to_owned(),
        );
        for _ in &filter.metadata {
            let (k, v) = (q.param(), q.param());
            q.push(format!("(r.metadata::jsonb ->> {k}) = {v}"));
        }
    }
    q.finish(
        sql.fill(run_select!()),
        "\nORDER BY r.run_id\nLIMIT {limit}",
    )
}

/// The interrupt listing for `filter`, oldest (lowest id) first. Parameters, in order and
/// only when the filter has them: thread id (text), graph (text), after (uuid); then the
/// limit (bigint). `open_only` adds literals: not applied (the predicate of the partial
/// index `interrupts_open`), raised by an unfinished run.
pub(crate) fn interrupts(sql: &Sql, filter: &InterruptFilter) -> String {
    let mut q = Clauses::default();
    if filter.thread_id.is_some() {
        let p = q.param();
        q.push(format!(
            "i.thread_key = (SELECT key FROM {}threads WHERE thread_id = {p})",
            sql.prefix
        ));
    }
    if filter.graph.is_some() {
        let p = q.param();
        q.push(format!("t.graph = {p}"));
    }
    if filter.open_only {
        q.push("i.applied_seq IS NULL".to_owned());
        q.push(unfinished_predicate());
    }
    if filter.after.is_some() {
        let p = q.param();
        q.push(format!("i.interrupt_id > {p}"));
    }
    q.finish(
        sql.fill(interrupt_select!()),
        "\nORDER BY i.interrupt_id\nLIMIT {limit}",
    )
}

/// The audit listing for `filter`, oldest first. Parameters, in order and only when the
/// filter has them: after (bigint), actor (text), action (text); then the limit (bigint).
pub(crate) fn audit(sql: &Sql, filter: &AuditFilter) -> String {
    let mut q = Clauses::default();
    if filter.after.is_some() {
        let p = q.param();
        q.push(format!("a.id > {p}"));
    }
    if filter.actor.is_some() {
        let p = q.param();
        q.push(format!("a.actor = {p}"));
    }
    if filter.action.is_some() {
        let p = q.param();
        q.push(format!("a.action = {p}"));
    }
    q.finish(sql.fill(audit_select!()), "\nORDER BY a.id\nLIMIT {limit}")
}

/// `r.status IN ('queued', 'running', 'interrupted', 'waiting')`: the predicate of the
/// partial index `runs_unfinished`.
fn unfinished_predicate() -> String {
    let list: Vec<String> = StatusKind::ALL
        .iter()
        .filter(|s| !s.is_terminal())
        .map(|s| format!("'{}'", s.as_str()))
        .collect();
    format!("r.status IN ({})", list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oris_core::id::{RunId, ThreadId, Timestamp};

    #[test]
    fn schema_is_quoted_into_every_statement() {
        let sql = Sql::new(r#"we"ird"#);
        assert!(
            sql.thread.contains(r#"FROM "we""ird".threads t"#),
            "{}",
            sql.thread
        );
        assert!(!sql.insert_events.contains("{S}"));
    }

    #[test]
    fn channels_fit_in_an_identifier() {
        assert_eq!(channel("public"), "oris_changed");
        assert_eq!(channel("tenant_a"), "oris_changed.tenant_a");
        let long = "x".repeat(63);
        assert!(channel(&long).len() <= 63);
        assert_ne!(channel(&long), channel(&"y".repeat(63)));
    }

    #[test]
    fn listing_numbers_its_parameters() {
        let sql = Sql::new("public");
        let text = runs(
            &sql,
            &RunFilter {
                thread_id: Some(ThreadId::new("t").unwrap()),
                graph: Some("g".into()),
                statuses: vec![StatusKind::Completed, StatusKind::Queued],
                after: Some(RunId::generate()),
                limit: 5,
                ..Default::default()
            },
        );
        assert!(text.ends_with("LIMIT $4"), "{text}");
        assert!(text.contains("r.run_id > $3"), "{text}");
        assert!(
            text.contains("r.status IN ('completed', 'queued')"),
            "{text}"
        );
        assert!(!text.contains("'running'"), "{text}");
        let text = runs(&sql, &RunFilter::unfinished());
        assert!(text.ends_with("LIMIT $1"), "{text}");
        assert!(text.contains(&unfinished_predicate()), "{text}");
        let text = runs(
            &sql,
            &RunFilter {
                graph: Some("g".into()),
                created_from: Some(Timestamp(1)),
                updated_to: Some(Timestamp(2)),
                metadata: vec![("a".into(), "b".into()), ("c".into(), "d".into())],
                ..Default::default()
            },
        );
        assert!(text.contains("r.graph = $1"), "{text}");
        assert!(text.contains("r.created_at >= $2"), "{text}");
        assert!(text.contains("r.updated_at < $3"), "{text}");
        assert!(text.contains("(r.metadata::jsonb ->> $4) = $5"), "{text}");
        assert!(text.contains("(r.metadata::jsonb ->> $6) = $7"), "{text}");
        assert!(text.ends_with("LIMIT $8"), "{text}");
    }

    #[test]
    fn interrupt_and_audit_listings_number_their_parameters() {
        let sql = Sql::new("public");
        let text = interrupts(
            &sql,
            &InterruptFilter {
                thread_id: Some(ThreadId::new("t").unwrap()),
                graph: Some("g".into()),
                open_only: true,
                after: Some(oris_core::id::InterruptId::generate()),
                limit: 3,
            },
        );
        assert!(text.contains("thread_id = $1)"), "{text}");
        assert!(text.contains("t.graph = $2"), "{text}");
        assert!(text.contains("i.applied_seq IS NULL"), "{text}");
        assert!(text.contains(&unfinished_predicate()), "{text}");
        assert!(text.contains("i.interrupt_id > $3"), "{text}");
        assert!(text.ends_with("LIMIT $4"), "{text}");
        let text = interrupts(&sql, &InterruptFilter::default());
        assert!(!text.contains("WHERE"), "{text}");
        assert!(text.ends_with("LIMIT $1"), "{text}");
        let text = audit(
            &sql,
            &AuditFilter {
                after: Some(4),
                actor: None,
                action: Some("jobs.create".into()),
                limit: 0,
            },
        );
        assert!(text.contains("a.id > $1"), "{text}");
        assert!(text.contains("a.action = $2"), "{text}");
        assert!(!text.contains("a.actor ="), "{text}");
        assert!(text.ends_with("LIMIT $3"), "{text}");
    }

    #[test]
    fn claims_repeat_the_claim_index_predicate() {
        let sql = Sql::new("public");
        for text in [&sql.claim, &sql.claim_graphs] {
            assert!(
                text.contains(&format!(
                    "r.ready_at IS NOT NULL AND {}",
                    unfinished_predicate()
                )),
                "{text}"
            );
            assert!(text.contains("SKIP LOCKED"), "{text}");
            assert!(!text.contains("$graphs"), "{text}");
        }
        assert!(!sql.claim.contains("$6"), "{}", sql.claim);
        assert!(sql.claim_graphs.contains("unnest($6::text[], $7::text[])"));
    }
}
