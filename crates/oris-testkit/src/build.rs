//! Terse constructors for ids, events, run records, snapshots and commits.
//!
//! Everything here is pure: values are built, nothing is written. Timestamps are fixed and
//! carry milliseconds (see [`at`]) so that a backend that truncates to seconds, or writes its
//! own clock instead of the given value, fails an equality check. Invalid input (a bad
//! thread id, malformed JSON) panics: these are test fixtures.

use oris_core::event::{
    Barriers, Boundary, Durability, Event, EventBody, Failure, FailureKind, Payload, RunSettings,
    Task,
};
use oris_core::id::{CheckpointId, DeliveryId, InterruptId, RunId, Seq, ThreadId, Timestamp};
use oris_core::status::{PendingInterrupt, RunStatus};
use oris_core::store::{ClaimRequest, Commit, Fence, RunRecord, RunWrite, Snapshot};

/// The graph name the builders use unless told otherwise.
pub const GRAPH: &str = "conformance";

/// The graph version the builders pin runs to.
pub const GRAPH_VERSION: &str = "v1";

/// A thread id; panics if `id` is not a valid one.
pub fn thread_id(id: &str) -> ThreadId {
    ThreadId::new(id).unwrap_or_else(|e| panic!("test thread id {id:?} is invalid: {e}"))
}

/// A payload from JSON text, kept verbatim; panics if `json` is not JSON.
pub fn payload(json: &str) -> Payload {
    Payload::from_json(json.to_owned())
        .unwrap_or_else(|e| panic!("test payload is not JSON ({e}): {json:.80}"))
}

/// A fixed, millisecond-precise timestamp that differs per `n` (2024-11-19T07:06:40.123Z
/// plus `n` seconds and `n` milliseconds).
pub fn at(n: u64) -> Timestamp {
    Timestamp(1_732_000_000_123 + n as i64 * 1_001)
}

/// A boundary whose next superstep runs `nodes`, without fan-out or barriers.
pub fn boundary(nodes: &[&str]) -> Boundary {
    Boundary {
        next: nodes.iter().map(|n| Task::Node((*n).to_owned())).collect(),
        barriers: Barriers::new(),
    }
}

/// A running run of `graph` on `thread` whose first event will have seq `first_seq`.
pub fn run_record(thread: &ThreadId, graph: &str, first_seq: u64) -> RunRecord {
    RunRecord {
        run_id: RunId::generate(),
        thread_id: thread.clone(),
        graph: graph.to_owned(),
        graph_version: GRAPH_VERSION.to_owned(),
        status: RunStatus::Running,
        first_seq: Seq(first_seq),
        created_at: at(first_seq),
        updated_at: at(first_seq),
        priority: 0,
        metadata: None,
        ready_at: None,
        lease_epoch: 0,
        lease: None,
    }
}

/// The same run record, queued instead of running.
pub fn queued(run: RunRecord) -> RunRecord {
    RunRecord {
        status: RunStatus::Queued,
        ..run
    }
}

/// The `RunStarted` event of `run` at `seq`: input `{"seq":<seq>}`, first superstep `["a"]`.
pub fn started(run: &RunRecord, seq: u64) -> Event {
    Event {
        seq: Seq(seq),
        run_id: run.run_id,
        at: at(seq),
        body: EventBody::RunStarted {
            graph: run.graph.clone(),
            graph_version: run.graph_version.clone(),
            input: payload(&format!(r#"{{"seq":{seq}}}"#)),
            settings: RunSettings {
                durability: Durability::Sync,
                deadline: None,
                superstep_limit: 25,
                interrupt_before: vec![],
                interrupt_after: vec![],
            },
            boundary: boundary(&["a"]),
        },
    }
}

/// A `NodeCompleted` event (task 0, attempt 1) with `update_json` as the update.
pub fn completed(
    run: RunId,
    seq: u64,
    superstep: u32,
    node: &str,
    update_json: &str,
    boundary: Option<Boundary>,
) -> Event {
    Event {
        seq: Seq(seq),
        run_id: run,
        at: at(seq),
        body: EventBody::NodeCompleted {
            superstep,
            task: 0,
            node: node.to_owned(),
            attempt: 1,
            update: payload(update_json),
            boundary,
        },
    }
}

/// A `NodeCompleted` event of node `a` at superstep `seq`, update `{"step":<seq>}`, closing
/// its superstep with `["a"]` next: the filler of most cases.
pub fn step(run: RunId, seq: u64) -> Event {
    completed(
        run,
        seq,
        seq as u32,
        "a",
        &format!(r#"{{"step":{seq}}}"#),
        Some(boundary(&["a"])),
    )
}

/// A `NodeFailed` event (task 0, attempt 1) of `node` with a `node_error` failure.
pub fn node_failed(
    run: RunId,
    seq: u64,
    superstep: u32,
    node: &str,
    retry_at: Option<Timestamp>,
) -> Event {
    Event {
        seq: Seq(seq),
        run_id: run,
        at: at(seq),
        body: EventBody::NodeFailed {
            superstep,
            task: 0,
            node: node.to_owned(),
            attempt: 1,
            error: failure("node failed").at_node(node),
            retry_at,
        },
    }
}

/// A `RunCompleted` event.
pub fn run_completed(run: RunId, seq: u64) -> Event {
    Event {
        seq: Seq(seq),
        run_id: run,
        at: at(seq),
        body: EventBody::RunCompleted,
    }
}

/// A `RunFailed` event with a `node_error` failure carrying `message`.
pub fn run_failed(run: RunId, seq: u64, message: &str) -> Event {
    Event {
        seq: Seq(seq),
        run_id: run,
        at: at(seq),
        body: EventBody::RunFailed {
            error: failure(message),
        },
    }
}

/// A `RunCancelled` event with `reason`.
pub fn run_cancelled(run: RunId, seq: u64, reason: &str) -> Event {
    Event {
        seq: Seq(seq),
        run_id: run,
        at: at(seq),
        body: EventBody::RunCancelled {
            reason: reason.to_owned(),
        },
    }
}

/// A `node_error` failure with `message` and a two-level cause chain.
pub fn failure(message: &str) -> Failure {
    Failure {
        chain: vec!["caused by: io".to_owned(), "caused by: timeout".to_owned()],
        ..Failure::new(FailureKind::NodeError, message)
    }
}

/// `Completed`, with the checkpoint at `seq`.
pub fn status_completed(seq: u64) -> RunStatus {
    RunStatus::Completed {
        checkpoint: CheckpointId(Seq(seq)),
    }
}

/// `Failed`, with a [`failure`] carrying `message`.
pub fn status_failed(message: &str) -> RunStatus {
    RunStatus::Failed {
        error: failure(message),
    }
}

/// `Cancelled`, with `reason`.
pub fn status_cancelled(reason: &str) -> RunStatus {
    RunStatus::Cancelled {
        reason: reason.to_owned(),
    }
}

/// A snapshot of `run` standing at `at_seq`, next superstep `at_seq`, next tasks `["a"]`.
pub fn snapshot(run: RunId, at_seq: u64, state_json: &str) -> Snapshot {
    Snapshot {
        at_seq: Seq(at_seq),
        run_id: run,
        next_superstep: at_seq as u32,
        state: payload(state_json),
        boundary: boundary(&["a"]),
        created_at: at(at_seq),
    }
}

/// A commit creating `run` with `events`; the expected head is `run.first_seq - 1`.
pub fn create(run: &RunRecord, events: Vec<Event>) -> Commit {
    Commit {
        thread_id: run.thread_id.clone(),
        expected_head: Seq(run.first_seq.0.saturating_sub(1)),
        events,
        run: Some(RunWrite::Create(run.clone())),
        snapshot: None,
        durability: Durability::Sync,
        fence: None,
    }
}

/// A commit appending `events` to `thread` whose head is expected to be `head`.
pub fn append(thread: &ThreadId, head: u64, events: Vec<Event>) -> Commit {
    Commit {
        thread_id: thread.clone(),
        expected_head: Seq(head),
        events,
        run: None,
        snapshot: None,
        durability: Durability::Sync,
        fence: None,
    }
}

/// The terminal event matching the terminal `status` (same error, same reason), of `run` at
/// `seq`; panics if `status` is not terminal.
pub fn terminal_event(run: RunId, seq: u64, status: &RunStatus) -> Event {
    let body = match status {
        RunStatus::Completed { .. } => EventBody::RunCompleted,
        RunStatus::Failed { error } => EventBody::RunFailed {
            error: error.clone(),
        },
        RunStatus::Cancelled { reason } => EventBody::RunCancelled {
            reason: reason.clone(),
        },
        other => panic!("terminal_event needs a terminal status, not {other:?}"),
    };
    Event {
        seq: Seq(seq),
        run_id: run,
        at: at(seq),
        body,
    }
}

/// A commit ending `run` with the terminal `status`: `events` (seqs `head + 1 ..`), then
/// the matching [`terminal_event`] as the last event, as the rules of `plan_commit` demand.
pub fn finish(
    thread: &ThreadId,
    head: u64,
    run: RunId,
    status: RunStatus,
    mut events: Vec<Event>,
) -> Commit {
    let seq = head + events.len() as u64 + 1;
    events.push(terminal_event(run, seq, &status));
    set_status(thread, head, run, status, events)
}

/// A commit changing `run`'s status to `status` that satisfies the rules on events: a
/// terminal status via [`finish`] with no other event, any other with one [`step`] event.
/// For cases about the status edge itself.
pub fn change(thread: &ThreadId, head: u64, run: RunId, status: RunStatus) -> Commit {
    if status.is_terminal() {
        finish(thread, head, run, status, vec![])
    } else {
        set_status(thread, head, run, status, vec![step(run, head + 1)])
    }
}

/// A commit setting `run`'s status to `status`, with `events` taken as given. A valid
/// status change carries at least one event and, for a terminal status, ends with the
/// matching terminal event (see [`finish`]); cases testing those rules build the invalid
/// forms with this.
pub fn set_status(
    thread: &ThreadId,
    head: u64,
    run: RunId,
    status: RunStatus,
    events: Vec<Event>,
) -> Commit {
    Commit {
        run: Some(RunWrite::SetStatus {
            run_id: run,
            status,
        }),
        ..append(thread, head, events)
    }
}

/// An event of `run` at `seq` (time [`at`]`(seq)`) with `body`.
pub fn event(run: RunId, seq: u64, body: EventBody) -> Event {
    Event {
        seq: Seq(seq),
        run_id: run,
        at: at(seq),
        body,
    }
}

/// An `InterruptRaised` event (superstep 0, task 0, index 0) of `node` asking `payload_json`.
pub fn interrupt_raised(
    run: RunId,
    seq: u64,
    node: &str,
    interrupt_id: InterruptId,
    payload_json: &str,
) -> Event {
    event(
        run,
        seq,
        EventBody::InterruptRaised {
            superstep: 0,
            task: 0,
            node: node.to_owned(),
            index: 0,
            interrupt_id,
            payload: payload(payload_json),
        },
    )
}

/// An `InterruptResumed` event applying `value_json` to `interrupt_id`.
pub fn interrupt_resumed(
    run: RunId,
    seq: u64,
    interrupt_id: InterruptId,
    value_json: &str,
) -> Event {
    event(
        run,
        seq,
        EventBody::InterruptResumed {
            interrupt_id,
            value: payload(value_json),
        },
    )
}

/// A `RunSuspended` event.
pub fn run_suspended(
    run: RunId,
    seq: u64,
    interrupts: &[InterruptId],
    until: Option<Timestamp>,
    events: &[&str],
) -> Event {
    event(
        run,
        seq,
        EventBody::RunSuspended {
            interrupts: interrupts.to_vec(),
            until,
            events: events.iter().map(|e| (*e).to_owned()).collect(),
        },
    )
}

/// A `RunResumed` event.
pub fn run_resumed(run: RunId, seq: u64) -> Event {
    event(run, seq, EventBody::RunResumed)
}

/// An `EventReceived` event (superstep 0, task 0, node `w`, index 0) for the event `name`:
/// with a delivery and its payload, or neither (the wait timed out).
pub fn event_received(
    run: RunId,
    seq: u64,
    name: &str,
    delivery: Option<DeliveryId>,
    payload_json: Option<&str>,
) -> Event {
    event(
        run,
        seq,
        EventBody::EventReceived {
            superstep: 0,
            task: 0,
            node: "w".to_owned(),
            index: 0,
            name: name.to_owned(),
            delivery,
            payload: payload_json.map(payload),
        },
    )
}

/// A `StateUpdated` event: an operator edit attributed to `as_node`.
pub fn state_updated(run: RunId, seq: u64, as_node: &str, update_json: &str) -> Event {
    event(
        run,
        seq,
        EventBody::StateUpdated {
            as_node: as_node.to_owned(),
            update: payload(update_json),
        },
    )
}

/// A pending interrupt as an `Interrupted` status lists it; panics if `payload_json` is not
/// JSON.
pub fn pending(interrupt_id: InterruptId, node: &str, payload_json: &str) -> PendingInterrupt {
    PendingInterrupt {
        interrupt_id,
        node: node.to_owned(),
        payload: serde_json::from_str(payload_json)
            .unwrap_or_else(|e| panic!("test payload is not JSON ({e}): {payload_json:.80}")),
    }
}

/// `Interrupted`, waiting on `interrupts`.
pub fn status_interrupted(interrupts: Vec<PendingInterrupt>) -> RunStatus {
    RunStatus::Interrupted { interrupts }
}

/// `Waiting`, until `until` or for `events`.
pub fn status_waiting(until: Option<Timestamp>, events: &[&str]) -> RunStatus {
    RunStatus::Waiting {
        until,
        events: events.iter().map(|e| (*e).to_owned()).collect(),
    }
}

/// A claim by `worker` at `now` for a lease of `ttl`, of at most `limit` runs of any graph.
pub fn claim_request(
    worker: &str,
    now: Timestamp,
    ttl: std::time::Duration,
    limit: usize,
) -> ClaimRequest {
    ClaimRequest {
        worker_id: worker.to_owned(),
        now,
        ttl,
        limit,
        graphs: Vec::new(),
    }
}

/// The fence of `run` at `epoch`.
pub fn fence(run: RunId, epoch: u64) -> Fence {
    Fence { run_id: run, epoch }
}

/// `commit`, fenced by `fence`.
pub fn fenced(commit: Commit, fence: Fence) -> Commit {
    Commit {
        fence: Some(fence),
        ..commit
    }
}

/// A queued run of `graph` version `version` on `thread` (its first event will be seq 1),
/// created at `created` (also its `updated_at`), with `priority` and `metadata_json`.
pub fn queued_run(
    thread: &ThreadId,
    graph: &str,
    version: &str,
    created: Timestamp,
    priority: i32,
    metadata_json: Option<&str>,
) -> RunRecord {
    RunRecord {
        graph_version: version.to_owned(),
        created_at: created,
        updated_at: created,
        priority,
        metadata: metadata_json.map(payload),
        ..queued(run_record(thread, graph, 1))
    }
}
