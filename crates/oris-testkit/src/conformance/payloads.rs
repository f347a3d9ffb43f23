//! What is stored reads back exactly: every event variant, large and odd JSON, thread
//! ids at the edges of their syntax, every durability.

use std::sync::Arc;

use std::collections::BTreeSet;

use oris_core::event::{
    Barriers, Boundary, Durability, Event, EventBody, EventKind, Failure, FailureKind, Origin,
    RunSettings, StepResult, Task,
};
use oris_core::id::{CheckpointId, InterruptId, RunId, Seq};
use oris_core::status::RunStatus;
use oris_core::store::{Commit, RunRecord, Snapshot, Store};

use crate::build::{self, GRAPH, payload};
use crate::check::{LATEST, all_events, ok, run_record, thread_record};

fn event(run: &RunRecord, seq: u64, body: EventBody) -> Event {
    Event {
        seq: Seq(seq),
        run_id: run.run_id,
        at: build::at(seq),
        body,
    }
}

/// Failure kinds the suite knows of (the enum is non-exhaustive).
const FAILURE_KINDS: [FailureKind; 10] = [
    FailureKind::NodeError,
    FailureKind::NodePanicked,
    FailureKind::NodeTimeout,
    FailureKind::RunTimeout,
    FailureKind::SuperstepLimit,
    FailureKind::ReduceConflict,
    FailureKind::InvalidRoute,
    FailureKind::Serialization,
    FailureKind::StepFailed,
    FailureKind::NonDeterminism,
];

/// Every `EventBody` variant, with every optional part present and absent, reads back
/// exactly through `events`: `RunStarted` with fan-out tasks, barriers and a deadline,
/// `NodeCompleted` with no boundary and with an empty one (END), `NodeFailed` of every
/// failure kind with and without `retry_at`, `RunCompleted`, `RunFailed`, `RunCancelled`.
pub async fn every_event_body_round_trips(store: Arc<dyn Store>) {
    let s = &*store;
    let t = build::thread_id("every-event");
    let run = RunRecord {
        graph_version: "2024-11-19+sha.0a1b".into(),
        ..build::run_record(&t, GRAPH, 1)
    };
    let fan_out = Boundary {
        next: vec![
            Task::Node("a".into()),
            Task::Send {
                node: "w".into(),
                input: payload(r#"[1,{"k":"v"}]"#),
            },
            Task::Send {
                node: "w".into(),
                input: payload("null"),
            },
        ],
        barriers: Barriers::from([
            (0, ["a".to_owned(), "b".to_owned()].into()),
            (3, ["x".to_owned()].into()),
        ]),
    };
    let mut events = vec![event(
        &run,
        1,
        EventBody::RunStarted {
            graph: GRAPH.into(),
            graph_version: run.graph_version.clone(),
            input: payload(r#"{"question":"¿qué?","n":[1,2,3]}"#),
            settings: RunSettings {
                durability: Durability::Batched,
                deadline: Some(build::at(1000)),
                superstep_limit: 7,
                interrupt_before: vec![],
                interrupt_after: vec![],
            },
            boundary: fan_out.clone(),
        },
    )];
    let completions = [
        (None, r#"{"log":["a"]}"#),
        (Some(Boundary::default()), "{}"),
        (Some(fan_out.clone()), "null"),
        (Some(build::boundary(&["b", "c"])), r#""text""#),
        (None, "0"),
        (None, "[]"),
    ];
    for (i, (boundary, update)) in completions.into_iter().enumerate() {
        let seq = events.len() as u64 + 1;
        let body = EventBody::NodeCompleted {
            superstep: i as u32,
            task: i as u32 * 2,
            node: format!("node-{i}"),
            attempt: i as u32 + 1,
            update: payload(update),
            boundary,
        };
        events.push(event(&run, seq, body));
    }
    for (i, kind) in FAILURE_KINDS.into_iter().enumerate() {
        let seq = events.len() as u64 + 1;
        let mut error = Failure::new(kind, format!("failure {i}"));
        if i % 2 == 0 {
            error = error.at_node("n");
            error.chain = vec!["cause one".into(), "cause two".into()];
        }
        let body = EventBody::NodeFailed {
            superstep: 3,
            task: i as u32,
            node: "n".into(),
            attempt: i as u32 + 1,
            error,
            retry_at: (i % 2 == 1).then(|| build::at(5000 + i as u64)),
        };
        events.push(event(&run, seq, body));
    }
    let last = events.len() as u64 + 1;
    events.push(build::run_completed(run.run_id, last));
    // The terminal event is committed with the status change, as the last event.
    let (body, end) = events.split_at(events.len() - 1);
    ok(
        s.commit(build::create(&run, body.to_vec())).await,
        "one run's events",
    );
    ok(
        s.commit(build::set_status(
            &t,
            last - 1,
            run.run_id,
            build::status_completed(last),
            end.to_vec(),
        ))
        .await,
        "completing the run",
    );

    // Two more runs: one failing, one cancelled.
    let failed = build::run_record(&t, GRAPH, last + 1);
    let failure = Failure {
        node: Some("n".into()),
        chain: vec!["a".into()],
        ..Failure::new(FailureKind::RunTimeout, "too slow ⏱")
    };
    let failed_events = vec![
        event(
            &failed,
            last + 1,
            EventBody::RunStarted {
                graph: GRAPH.into(),
                graph_version: failed.graph_version.clone(),
                input: payload("{}"),
                settings: RunSettings {
                    durability: Durability::Exit,
                    deadline: None,
                    superstep_limit: 1,
                    interrupt_before: vec![],
                    interrupt_after: vec![],
                },
                boundary: Boundary::default(),
            },
        ),
        event(
            &failed,
            last + 2,
            EventBody::RunFailed {
                error: failure.clone(),
            },
        ),
    ];
    ok(
        s.commit(build::create(&failed, failed_events[..1].to_vec()))
            .await,
        "failing run",
    );
    let status = RunStatus::Failed { error: failure };
    ok(
        s.commit(build::set_status(
            &t,
            last + 1,
            failed.run_id,
            status.clone(),
            failed_events[1..].to_vec(),
        ))
        .await,
        "failing the run",
    );
    assert_eq!(run_record(s, failed.run_id).await.status, status);

    let cancelled = build::run_record(&t, GRAPH, last + 3);
    let reason = "operator said \"stop\" — ¡ya! 🛑\n";
    let cancel_events = vec![
        build::started(&cancelled, last + 3),
        event(
            &cancelled,
            last + 4,
            EventBody::RunCancelled {
                reason: reason.into(),
            },
        ),
    ];
    ok(
        s.commit(build::create(&cancelled, cancel_events[..1].to_vec()))
            .await,
        "cancelled run",
    );
    let status = build::status_cancelled(reason);
    ok(
        s.commit(build::set_status(
            &t,
            last + 3,
            cancelled.run_id,
            status.clone(),
            cancel_events[1..].to_vec(),
        ))
        .await,
        "cancelling the run",
    );
    assert_eq!(run_record(s, cancelled.run_id).await.status, status);

    events.extend(failed_events);
    events.extend(cancel_events);
    let stored = all_events(s, &t).await;
    assert_eq!(stored.len(), events.len(), "number of events");
    for (got, want) in stored.iter().zip(&events) {
        assert_eq!(got, want, "event {} ({:?})", want.seq, want.body.kind());
    }
    for want in &events {
        let one = ok(s.events(&t, Seq(want.seq.0 - 1), 1).await, "one event");
        assert_eq!(
            one.as_slice(),
            std::slice::from_ref(want),
            "event {} alone",
            want.seq
        );
    }
}

/// The `RunStarted` event of `run` at `seq`, with per-run breakpoints.
fn started_with_breakpoints(run: &RunRecord, seq: u64) -> Event {
    event(
        run,
        seq,
        EventBody::RunStarted {
            graph: run.graph.clone(),
            graph_version: run.graph_version.clone(),
            input: payload(r#"{"order":42}"#),
            settings: RunSettings {
                durability: Durability::Sync,
                deadline: None,
                superstep_limit: 9,
                interrupt_before: vec!["review".into(), "pay ✓".into()],
                interrupt_after: vec!["draft".into()],
            },
            boundary: build::boundary(&["draft"]),
        },
    )
}

/// The event kinds of suspension, recorded steps, external events, rebasing and edits
/// read back exactly through `events`: `RunStarted` with breakpoints; `RunRebased` with an
/// `Origin` (steps reused and re-executed); `StepRecorded` with a value and with errors;
/// `InterruptRaised` with several payloads; `RunSuspended` with and without interrupts,
/// `until` and events; `RunResumed`; `InterruptResumed`; `EventReceived` with a delivery
/// and its payload and without either (a timed-out wait); `StateUpdated`.
pub async fn workflow_event_bodies_round_trip(store: Arc<dyn Store>) {
    let s = &*store;
    let t = build::thread_id("workflow-events");
    let first = build::run_record(&t, GRAPH, 1);
    let source = build::thread_id("workflow-source");
    let rebased = |run: &RunRecord, seq: u64, reexecute_steps: bool, base: &str| {
        event(
            run,
            seq,
            EventBody::RunRebased {
                base: payload(base),
                origin: Origin {
                    thread_id: source.clone(),
                    checkpoint: CheckpointId(Seq(seq + 17)),
                    run_id: RunId::generate(),
                    superstep: seq as u32 + 3,
                    reexecute_steps,
                },
            },
        )
    };
    let mut events = vec![
        rebased(&first, 1, false, r#"{"b":[1.50,"é"], "a" :{}}"#),
        started_with_breakpoints(&first, 2),
    ];
    ok(
        s.commit(build::create(&first, events.clone())).await,
        "a rebased run's first events",
    );
    // A real delivery for the `EventReceived` event to consume.
    let (delivery, _) = ok(
        s.deliver(
            &t,
            "paid",
            payload(r#"{"amount": 5, "currency":"€"}"#),
            None,
            build::at(50),
        )
        .await,
        "deliver",
    );

    let (i1, i2) = (InterruptId::generate(), InterruptId::generate());
    let step_error = Failure {
        chain: vec!["card declined".into()],
        ..Failure::new(FailureKind::StepFailed, "charge failed ✗").at_node("pay")
    };
    let bodies = vec![
        EventBody::StepRecorded {
            superstep: 1,
            task: 2,
            node: "pay".into(),
            index: 0,
            name: "charge 💳".into(),
            result: StepResult::Ok(payload(r#"{"id":"ch_1", "amount":5.00}"#)),
        },
        EventBody::StepRecorded {
            superstep: 1,
            task: 2,
            node: "pay".into(),
            index: 1,
            name: "charge again".into(),
            result: StepResult::Err(step_error),
        },
        EventBody::StepRecorded {
            superstep: 2,
            task: 0,
            node: "pay".into(),
            index: 7,
            name: "charge".into(),
            result: StepResult::Err(Failure::new(FailureKind::NonDeterminism, "renamed")),
        },
        EventBody::StepRecorded {
            superstep: 2,
            task: 0,
            node: "pay".into(),
            index: 8,
            name: String::new(),
            result: StepResult::Ok(payload("null")),
        },
        EventBody::InterruptRaised {
            superstep: 3,
            task: 1,
            node: "review".into(),
            index: 2,
            interrupt_id: i1,
            payload: payload(r#"{"question":"¿aprobar?", "options":["y","n"]}"#),
        },
        EventBody::InterruptRaised {
            superstep: 3,
            task: 4,
            node: "review".into(),
            index: 0,
            interrupt_id: i2,
            payload: payload(r#""approve?""#),
        },
        EventBody::RunSuspended {
            interrupts: vec![i1, i2],
            until: Some(build::at(900)),
            events: vec!["paid".into(), "shipped 📦".into()],
        },
        EventBody::RunResumed,
        EventBody::InterruptResumed {
            interrupt_id: i1,
            value: payload(r#"{"approved" : true,"by":"ana"}"#),
        },
        EventBody::InterruptResumed {
            interrupt_id: i2,
            value: payload("false"),
        },
        EventBody::RunSuspended {
            interrupts: vec![],
            until: Some(build::at(901)),
            events: vec![],
        },
        EventBody::RunResumed,
        EventBody::RunSuspended {
            interrupts: vec![],
            until: None,
            events: vec!["paid".into()],
        },
        EventBody::RunResumed,
        EventBody::EventReceived {
            superstep: 4,
            task: 3,
            node: "wait".into(),
            index: 5,
            name: "paid".into(),
            delivery: Some(delivery.delivery_id),
            payload: Some(delivery.payload.clone()),
        },
        EventBody::RunSuspended {
            interrupts: vec![],
            until: None,
            events: vec![],
        },
        EventBody::RunResumed,
        EventBody::EventReceived {
            superstep: 5,
            task: 0,
            node: "wait".into(),
            index: 6,
            name: "shipped 📦".into(),
            delivery: None,
            payload: None,
        },
        EventBody::StateUpdated {
            as_node: "édition".into(),
            update: payload(r#"{"log":["edit"], "n" : 1e3}"#),
        },
        EventBody::StateUpdated {
            as_node: "b".into(),
            update: payload("[]"),
        },
    ];
    let appended: Vec<Event> = bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| event(&first, i as u64 + 3, body))
        .collect();
    ok(
        s.commit(build::append(&t, 2, appended.clone())).await,
        "the suspension events",
    );
    events.extend(appended);

    // A second run, re-executing the steps of its origin.
    let head = events.len() as u64;
    ok(
        s.commit(build::finish(
            &t,
            head,
            first.run_id,
            build::status_completed(head),
            vec![],
        ))
        .await,
        "completing the first run",
    );
    events.push(build::run_completed(first.run_id, head + 1));
    let second = build::run_record(&t, GRAPH, head + 2);
    let second_events = vec![
        rebased(&second, head + 2, true, "{}"),
        started_with_breakpoints(&second, head + 3),
    ];
    ok(
        s.commit(build::create(&second, second_events.clone()))
            .await,
        "a second rebased run",
    );
    events.extend(second_events);

    let written: BTreeSet<&str> = events.iter().map(|e| e.body.kind().as_str()).collect();
    for kind in EventKind::ALL {
        let needed = !matches!(
            kind,
            EventKind::NodeCompleted
                | EventKind::NodeFailed
                | EventKind::RunFailed
                | EventKind::RunCancelled
                // Written only by `Store::prune`: see the retention cases.
                | EventKind::HistoryPruned
        );
        assert!(
            !needed || written.contains(kind.as_str()),
            "the case must write a {} event",
            kind.as_str()
        );
    }
    let stored = all_events(s, &t).await;
    assert_eq!(stored.len(), events.len(), "number of events");
    for (got, want) in stored.iter().zip(&events) {
        assert_eq!(got, want, "event {} ({:?})", want.seq, want.body.kind());
    }
    for want in &events {
        let one = ok(s.events(&t, Seq(want.seq.0 - 1), 1).await, "one event");
        assert_eq!(
            one.as_slice(),
            std::slice::from_ref(want),
            "event {} alone",
            want.seq
        );
    }
}

/// A large string of mixed ASCII and multi-byte characters, `len` bytes or a few more.
fn big_text(len: usize) -> String {
    let unit = "abcdefghij-é-漢字-🚀-\\\"-";
    let mut s = String::with_capacity(len + unit.len());
    while s.len() < len {
        s.push_str(unit);
    }
    s
}

/// Payloads of several MiB (update, run input, snapshot state) and a commit of 5,000
/// events read back exactly.
pub async fn large_payloads_round_trip(store: Arc<dyn Store>) {
    let s = &*store;
    let t = build::thread_id("large");
    let run = build::run_record(&t, GRAPH, 1);
    let input = format!(r#"{{"document":"{}"}}"#, big_text(1 << 20));
    let mut started = build::started(&run, 1);
    if let EventBody::RunStarted { input: i, .. } = &mut started.body {
        *i = payload(&input);
    }
    ok(
        s.commit(build::create(&run, vec![started.clone()])).await,
        "1 MiB input",
    );

    let update = format!(
        r#"{{"blob":"{}","list":[{}]}}"#,
        big_text(1 << 20),
        (0..20_000)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    let completed = build::completed(
        run.run_id,
        2,
        0,
        "a",
        &update,
        Some(build::boundary(&["a"])),
    );
    let state = format!(r#"{{"state":"{}"}}"#, big_text(2 << 20));
    let snap = Snapshot {
        state: payload(&state),
        ..build::snapshot(run.run_id, 2, "{}")
    };
    let commit = Commit {
        snapshot: Some(snap.clone()),
        ..build::append(&t, 1, vec![completed.clone()])
    };
    ok(s.commit(commit).await, "1 MiB update with a 2 MiB snapshot");

    let got = all_events(s, &t).await;
    assert!(
        got[0] == started,
        "the 1 MiB RunStarted input did not read back exactly"
    );
    assert!(
        got[1] == completed,
        "the 1 MiB update did not read back exactly"
    );
    let got_snap = ok(s.snapshot(&t, LATEST).await, "snapshot").expect("snapshot written");
    assert_eq!(
        got_snap.state.json().len(),
        state.len(),
        "snapshot state length"
    );
    assert!(
        got_snap == snap,
        "the 2 MiB snapshot did not read back exactly"
    );

    let many: Vec<Event> = (3..3 + 5_000)
        .map(|seq| build::step(run.run_id, seq))
        .collect();
    let receipt = ok(
        s.commit(build::append(&t, 2, many.clone())).await,
        "one commit of 5,000 events",
    );
    assert_eq!(receipt.head, Seq(5_002));
    let got = ok(s.events(&t, Seq(2), 10_000).await, "the 5,000 events");
    assert_eq!(got.len(), many.len(), "events in the big commit");
    assert!(got == many, "the 5,000 events did not read back exactly");
}

/// Payload JSON is stored verbatim, never re-serialized: key order, whitespace, number
/// spelling, duplicate keys, escapes and non-ASCII text read back byte for byte (a store
/// that parses into a JSON value — PostgreSQL `jsonb`, for one — fails this). So do
/// non-ASCII node names, failure messages and graph names.
pub async fn json_is_stored_verbatim(store: Arc<dyn Store>) {
    let s = &*store;
    let docs = [
        r#"{"b":1,"a":2}"#,
        r#"{ "spaced" : [ 1 , 2 ] ,"tab":	true }"#,
        r#"{"n":[1.50,1e3,1E-7,-0,0.0,12345678901234567890123456789,-9007199254740993]}"#,
        r#"{"dup":1,"dup":2}"#,
        r#""\u00e9\ud83d\ude80 é🚀 \n\t\"\\\/ \u0000 end""#,
        r#"{"ключ":"значение","键":"值","emoji":"👩‍👩‍👧‍👦","rtl":"שלום"}"#,
        "null",
        "true",
        "0",
        r#""""#,
        "[]",
        "{}",
    ];
    let t = build::thread_id("verbatim");
    let run = RunRecord {
        graph: "graphé-🚀".into(),
        graph_version: "versión 2".into(),
        ..build::run_record(&t, GRAPH, 1)
    };
    let mut events = vec![build::started(&run, 1)];
    if let EventBody::RunStarted { input, .. } = &mut events[0].body {
        *input = payload(docs[0]);
    }
    for (i, doc) in docs.iter().enumerate() {
        let seq = i as u64 + 2;
        let boundary = Boundary {
            next: vec![Task::Send {
                node: "nœud-🚀".into(),
                input: payload(doc),
            }],
            barriers: Barriers::new(),
        };
        events.push(build::completed(
            run.run_id,
            seq,
            0,
            "nœud-🚀",
            doc,
            Some(boundary),
        ));
    }
    let seq = events.len() as u64 + 1;
    events.push(Event {
        body: EventBody::NodeFailed {
            superstep: 0,
            task: 0,
            node: "nœud-🚀".into(),
            attempt: 1,
            error: Failure::new(FailureKind::NodeError, "échec: «x» 💥 \u{0}"),
            retry_at: None,
        },
        ..build::step(run.run_id, seq)
    });
    let snap = build::snapshot(run.run_id, 3, docs[1]);
    let commit = Commit {
        snapshot: Some(snap.clone()),
        ..build::create(&run, events.clone())
    };
    ok(s.commit(commit).await, "verbatim payloads");

    let got = all_events(s, &t).await;
    assert_eq!(got.len(), events.len());
    for (got, want) in got.iter().zip(&events) {
        assert_eq!(got, want, "event {} must read back verbatim", want.seq);
    }
    assert_eq!(ok(s.snapshot(&t, LATEST).await, "snapshot"), Some(snap));
    assert_eq!(run_record(s, run.run_id).await, run);
    assert_eq!(thread_record(s, &t).await.graph, run.graph);
}
