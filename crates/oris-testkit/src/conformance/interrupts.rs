//! Interrupts: records derived from `InterruptRaised` and `InterruptResumed` events,
//! resume values recorded at most once (`answer_interrupt`), ids unique across threads.

use std::sync::Arc;

use oris_core::event::Payload;
use oris_core::id::{InterruptId, Seq, Timestamp};
use oris_core::store::{Answer, Error, InterruptRecord, Store};
use tokio::sync::Barrier;

use crate::build::{self, GRAPH, payload};
use crate::check::{
    FullView, ThreadView, assert_invalid_commit, assert_no_thread, err, interrupt_record,
    interrupts_of, ok,
};
use crate::conformance::concurrency::join;
use crate::conformance::suspension::move_to;
use crate::writer::Writer;

/// The record an `InterruptRaised` event of the writer's run at `seq` must create.
fn raised(w: &Writer, id: InterruptId, seq: u64, node: &str, json: &str) -> InterruptRecord {
    InterruptRecord {
        interrupt_id: id,
        thread_id: w.thread.clone(),
        run_id: w.run.run_id,
        node: node.to_owned(),
        payload: payload(json),
        raised_seq: Seq(seq),
        raised_at: build::at(seq),
        answer: None,
        applied_seq: None,
    }
}

/// Raises one interrupt per `(id, node, json)` in one commit of the writer's run, moving
/// it to `Interrupted` (with a closing `RunSuspended`); returns the records they create.
async fn suspend_on(
    s: &dyn Store,
    w: &mut Writer,
    asks: &[(InterruptId, &str, &str)],
) -> Vec<InterruptRecord> {
    let (head, r) = (w.head, w.run.run_id);
    let mut events: Vec<_> = asks
        .iter()
        .enumerate()
        .map(|(i, (id, node, json))| {
            build::interrupt_raised(r, head + 1 + i as u64, node, *id, json)
        })
        .collect();
    let ids: Vec<InterruptId> = asks.iter().map(|(id, _, _)| *id).collect();
    events.push(build::run_suspended(
        r,
        head + 1 + asks.len() as u64,
        &ids,
        None,
        &[],
    ));
    let status = build::status_interrupted(
        asks.iter()
            .map(|(id, node, json)| build::pending(*id, node, json))
            .collect(),
    );
    let commit = build::set_status(&w.thread, head, r, status, events);
    w.commit(s, commit).await;
    asks.iter()
        .enumerate()
        .map(|(i, (id, node, json))| raised(w, *id, head + 1 + i as u64, node, json))
        .collect()
}

/// Answers `id`, which must succeed with `want`; returns the record it returned.
async fn answer(
    s: &dyn Store,
    id: InterruptId,
    json: &str,
    at: Timestamp,
    want: Answer,
) -> InterruptRecord {
    let what = format!("answer_interrupt({id}, {json})");
    let (got, record) = ok(s.answer_interrupt(id, payload(json), at).await, &what);
    assert_eq!(got, want, "{what}");
    record
}

/// A commit carrying `InterruptRaised` events creates one record per interrupt, readable
/// by `interrupt(id)` and listed by `interrupts(thread)` in raised order (not id order),
/// with thread, run, node, payload (verbatim), raised seq and time, no answer, not applied.
/// Other threads' interrupts are not listed; unknown ids read as `None`; a failed commit
/// raises nothing; records outlive their run.
pub async fn raised_interrupts_are_recorded(store: Arc<dyn Store>) {
    let s = &*store;
    // Generated in id order i1 < i2 < i3, raised in the reverse order.
    let (i1, i2, i3) = (
        InterruptId::generate(),
        InterruptId::generate(),
        InterruptId::generate(),
    );
    let mut w = Writer::start(s, "int-raised").await;
    let r = w.run.run_id;
    let first = vec![
        build::step(r, 2),
        build::interrupt_raised(r, 3, "ask-3", i3, r#"{"q": "third?" , "n":1.50}"#),
        build::interrupt_raised(r, 4, "ask-ä", i2, r#""plain text""#),
    ];
    w.commit(s, build::append(&w.thread, 1, first)).await;
    let rec3 = raised(&w, i3, 3, "ask-3", r#"{"q": "third?" , "n":1.50}"#);
    let rec2 = raised(&w, i2, 4, "ask-ä", r#""plain text""#);
    assert_eq!(interrupt_record(s, i3).await, rec3, "interrupt i3");
    assert_eq!(interrupt_record(s, i2).await, rec2, "interrupt i2");
    assert_eq!(
        ok(s.interrupt(i1).await, "interrupt(i1)"),
        None,
        "not raised yet"
    );

    let rec1 = suspend_on(s, &mut w, &[(i1, "ask-1", r#"{"b":1,"a":[]}"#)]).await;
    assert_eq!(interrupt_record(s, i1).await, rec1[0], "interrupt i1");

    let mut other = Writer::start(s, "int-raised-other").await;
    let j = InterruptId::generate();
    let rec_j = suspend_on(s, &mut other, &[(j, "ask", "null")]).await;

    let want = vec![rec3.clone(), rec2.clone(), rec1[0].clone()];
    assert_eq!(
        interrupts_of(s, &w.thread).await,
        want,
        "interrupts(thread): this thread's, in raised order"
    );
    assert_eq!(interrupts_of(s, &other.thread).await, rec_j, "other thread");
    assert_eq!(
        interrupts_of(s, &build::thread_id("int-raised-none")).await,
        vec![],
        "a thread that does not exist"
    );
    assert_eq!(
        ok(
            s.interrupt(InterruptId::generate()).await,
            "interrupt(unknown)"
        ),
        None,
        "an unknown interrupt"
    );

    // A commit that fails raises nothing.
    let k = InterruptId::generate();
    let before = FullView::read(s, &w.thread).await;
    let stale = build::append(
        &w.thread,
        w.head - 1,
        vec![build::interrupt_raised(r, w.head, "ask", k, "1")],
    );
    err(s.commit(stale).await, "a commit on a stale head");
    before
        .assert_unchanged(s, "a failed commit raising an interrupt")
        .await;
    assert_eq!(
        ok(s.interrupt(k).await, "interrupt(k)"),
        None,
        "failed commit"
    );

    // Records outlive their run.
    move_to(s, &mut w, build::status_cancelled("stop")).await;
    assert_eq!(
        interrupts_of(s, &w.thread).await,
        want,
        "after the run ended"
    );
}

/// `answer_interrupt` records the value and its time (`Recorded`) and returns the record as
/// `interrupt` then reads it; the same value again — verbatim or with other key order and
/// whitespace — is `AlreadyAnswered` and keeps the first answer, bytes and time; another
/// value is `ResumeConflict` and changes nothing; an unknown id is `InterruptNotFound`.
/// Answers touch only the interrupt: never the log, the runs or another interrupt. An
/// interrupt may be answered while its run is still running.
pub async fn answer_interrupt_records_once(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "answer").await;
    let (i1, i2, i3) = (
        InterruptId::generate(),
        InterruptId::generate(),
        InterruptId::generate(),
    );
    let recs = suspend_on(
        s,
        &mut w,
        &[(i1, "review", r#"{"q":"ok?"}"#), (i2, "review", "2")],
    )
    .await;
    let log = ThreadView::read(s, &w.thread).await;

    let value = r#"{"approved":true,"by":"ana","n":[1,2]}"#;
    let got = answer(s, i1, value, build::at(100), Answer::Recorded).await;
    let answered = InterruptRecord {
        answer: Some((payload(value), build::at(100))),
        ..recs[0].clone()
    };
    assert_eq!(got, answered, "the record answer_interrupt returns");
    assert_eq!(interrupt_record(s, i1).await, answered, "the stored record");
    assert_eq!(
        interrupt_record(s, i2).await,
        recs[1],
        "the other interrupt"
    );
    log.assert_unchanged(s, "answering an interrupt").await;

    let same = [
        value,
        r#"{"n":[1,2],"by":"ana","approved":true}"#,
        " {\n  \"approved\" : true ,\t\"by\":\"ana\", \"n\": [ 1, 2 ] }\n",
    ];
    for (k, json) in same.into_iter().enumerate() {
        let got = answer(
            s,
            i1,
            json,
            build::at(101 + k as u64),
            Answer::AlreadyAnswered,
        )
        .await;
        assert_eq!(got, answered, "the same value again ({json:?})");
        assert_eq!(
            interrupt_record(s, i1).await,
            answered,
            "after the same value"
        );
    }
    let before = FullView::read(s, &w.thread).await;
    let different = [
        r#"{"approved":false,"by":"ana","n":[1,2]}"#,
        r#"{"approved":true,"by":"ana"}"#,
        r#"{"approved":true,"by":"ana","n":[2,1]}"#,
        r#"{"approved":true,"by":"ana","n":[1,2],"extra":null}"#,
        r#""yes""#,
        "null",
    ];
    for json in different {
        let what = format!("another value ({json})");
        let e = err(
            s.answer_interrupt(i1, payload(json), build::at(200)).await,
            &what,
        );
        assert_eq!(e, Error::ResumeConflict { interrupt_id: i1 }, "{what}");
        before.assert_unchanged(s, &what).await;
    }

    let unknown = InterruptId::generate();
    let e = err(
        s.answer_interrupt(unknown, payload("1"), build::at(201))
            .await,
        "answer to an unknown interrupt",
    );
    assert_eq!(
        e,
        Error::InterruptNotFound {
            interrupt_id: unknown
        }
    );
    assert_eq!(ok(s.interrupt(unknown).await, "interrupt()"), None);
    before
        .assert_unchanged(s, "answer to an unknown interrupt")
        .await;

    // A resume value may arrive before the run has suspended.
    move_to(s, &mut w, oris_core::status::RunStatus::Running).await;
    let r = w.run.run_id;
    w.commit(
        s,
        build::append(
            &w.thread,
            w.head,
            vec![build::interrupt_raised(r, w.head + 1, "late", i3, "{}")],
        ),
    )
    .await;
    let got = answer(s, i3, "[]", build::at(300), Answer::Recorded).await;
    assert_eq!(
        got.answer,
        Some((payload("[]"), build::at(300))),
        "answered while running"
    );
    assert_eq!(
        interrupt_record(s, i2).await,
        recs[1],
        "i2 is still unanswered"
    );
}

/// A commit carrying `InterruptResumed` sets the interrupt's `applied_seq` to that event's
/// seq and keeps its answer (value and time); an interrupt applied without a recorded
/// answer gets the applied value as its answer. Applied interrupts stay idempotent: the same
/// value is `AlreadyAnswered`, another `ResumeConflict`. A failed commit applies nothing.
pub async fn resumed_interrupts_are_marked_applied(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "applied").await;
    let (i1, i2, i3) = (
        InterruptId::generate(),
        InterruptId::generate(),
        InterruptId::generate(),
    );
    let recs = suspend_on(s, &mut w, &[(i1, "a", "1"), (i2, "b", "2"), (i3, "c", "3")]).await;
    answer(s, i1, r#"{"v":1}"#, build::at(50), Answer::Recorded).await;

    // A stale commit applying i3 fails and applies nothing.
    let r = w.run.run_id;
    let before = FullView::read(s, &w.thread).await;
    let stale = build::set_status(
        &w.thread,
        w.head - 1,
        r,
        oris_core::status::RunStatus::Running,
        vec![
            build::interrupt_resumed(r, w.head, i3, "true"),
            build::run_resumed(r, w.head + 1),
        ],
    );
    err(s.commit(stale).await, "a stale resume");
    before.assert_unchanged(s, "a stale resume").await;

    let head = w.head;
    let resume = build::set_status(
        &w.thread,
        head,
        r,
        oris_core::status::RunStatus::Running,
        vec![
            build::interrupt_resumed(r, head + 1, i1, r#"{"v":1}"#),
            build::interrupt_resumed(r, head + 2, i2, r#"{"by": "event"}"#),
            build::run_resumed(r, head + 3),
        ],
    );
    w.commit(s, resume).await;

    let got1 = interrupt_record(s, i1).await;
    assert_eq!(
        got1,
        InterruptRecord {
            answer: Some((payload(r#"{"v":1}"#), build::at(50))),
            applied_seq: Some(Seq(head + 1)),
            ..recs[0].clone()
        },
        "an answered interrupt, applied"
    );
    let got2 = interrupt_record(s, i2).await;
    assert_eq!(got2.applied_seq, Some(Seq(head + 2)), "i2 applied");
    assert_eq!(
        got2.answer.as_ref().map(|(v, _)| v.clone()),
        Some(payload(r#"{"by": "event"}"#)),
        "an interrupt applied unanswered takes the applied value as its answer"
    );
    assert_eq!(
        InterruptRecord {
            answer: None,
            applied_seq: None,
            ..got2.clone()
        },
        recs[1],
        "i2: only answer and applied_seq change"
    );
    assert_eq!(interrupt_record(s, i3).await, recs[2], "i3 untouched");

    let got = answer(
        s,
        i1,
        r#"{ "v" : 1 }"#,
        build::at(60),
        Answer::AlreadyAnswered,
    )
    .await;
    assert_eq!(got, got1, "applied i1, same value");
    let got = answer(
        s,
        i2,
        r#"{"by":"event"}"#,
        build::at(61),
        Answer::AlreadyAnswered,
    )
    .await;
    assert_eq!(got, got2, "applied i2, same value");
    let before = FullView::read(s, &w.thread).await;
    for (id, json) in [(i1, r#"{"v":2}"#), (i2, r#"{"by":"human"}"#)] {
        let what = format!("another value for applied {id}");
        let e = err(
            s.answer_interrupt(id, payload(json), build::at(62)).await,
            &what,
        );
        assert_eq!(e, Error::ResumeConflict { interrupt_id: id }, "{what}");
        before.assert_unchanged(s, &what).await;
    }
    // i3 was never applied: its run is running, so it may still be answered.
    answer(s, i3, "false", build::at(63), Answer::Recorded).await;
}

/// An unanswered interrupt whose run ended (cancelled while interrupted) is not pending:
/// `InterruptNotPending` naming the run's status, and nothing changes. One answered before
/// the run ended keeps its answer: the same value is `AlreadyAnswered`, another
/// `ResumeConflict`.
pub async fn interrupt_of_ended_run_is_not_pending(store: Arc<dyn Store>) {
    let s = &*store;
    let mut w = Writer::start(s, "not-pending").await;
    let (i1, i2) = (InterruptId::generate(), InterruptId::generate());
    suspend_on(s, &mut w, &[(i1, "a", "1"), (i2, "b", "2")]).await;
    let answered = answer(s, i2, r#""kept""#, build::at(70), Answer::Recorded).await;
    move_to(s, &mut w, build::status_cancelled("abandoned")).await;
    let unanswered = interrupt_record(s, i1).await;
    assert_eq!(unanswered.answer, None);

    let before = FullView::read(s, &w.thread).await;
    for json in ["1", r#""kept""#, "{}"] {
        let what = format!("answering i1 of a cancelled run with {json}");
        let e = err(
            s.answer_interrupt(i1, payload(json), build::at(71)).await,
            &what,
        );
        assert_eq!(
            e,
            Error::InterruptNotPending {
                interrupt_id: i1,
                status: "cancelled",
            },
            "{what}"
        );
        before.assert_unchanged(s, &what).await;
    }
    assert_eq!(interrupt_record(s, i1).await, unanswered);

    let got = answer(s, i2, r#""kept""#, build::at(72), Answer::AlreadyAnswered).await;
    assert_eq!(got, answered, "the answer given before the run ended");
    let e = err(
        s.answer_interrupt(i2, payload(r#""other""#), build::at(73))
            .await,
        "another value after the run ended",
    );
    assert_eq!(e, Error::ResumeConflict { interrupt_id: i2 });
    before
        .assert_unchanged(s, "answers after the run ended")
        .await;
}

/// An interrupt id is unique across threads: a commit raising an id that exists — in a
/// later commit of the same thread, on another thread, in a commit creating a run — or
/// raising one id twice fails with `InvalidCommit`, and nothing of it is written.
pub async fn duplicate_interrupt_id_is_invalid(store: Arc<dyn Store>) {
    let s = &*store;
    let mut a = Writer::start(s, "dup-a").await;
    let b = Writer::start(s, "dup-b").await;
    let i = InterruptId::generate();
    let r = a.run.run_id;
    a.commit(
        s,
        build::append(
            &a.thread,
            1,
            vec![build::interrupt_raised(r, 2, "ask", i, "1")],
        ),
    )
    .await;
    let original = interrupt_record(s, i).await;
    let before_a = FullView::read(s, &a.thread).await;
    let before_b = FullView::read(s, &b.thread).await;

    let what = "the same id in a later commit";
    let commit = build::append(
        &a.thread,
        2,
        vec![
            build::step(r, 3),
            build::interrupt_raised(r, 4, "again", i, "2"),
        ],
    );
    assert_invalid_commit(&err(s.commit(commit).await, what), &a.thread, what);
    before_a.assert_unchanged(s, what).await;

    let what = "the same id on another thread";
    let br = b.run.run_id;
    let commit = build::append(
        &b.thread,
        1,
        vec![build::interrupt_raised(br, 2, "ask", i, "1")],
    );
    assert_invalid_commit(&err(s.commit(commit).await, what), &b.thread, what);
    before_b.assert_unchanged(s, what).await;

    let what = "the same id in a commit creating a thread";
    let c = build::thread_id("dup-c");
    let run = build::run_record(&c, GRAPH, 1);
    let commit = build::create(
        &run,
        vec![
            build::started(&run, 1),
            build::interrupt_raised(run.run_id, 2, "ask", i, "1"),
        ],
    );
    assert_invalid_commit(&err(s.commit(commit).await, what), &c, what);
    assert_no_thread(s, &c, what).await;
    assert_eq!(interrupts_of(s, &c).await, vec![], "{what}");

    let what = "one new id raised twice in a commit";
    let k = InterruptId::generate();
    let commit = build::append(
        &a.thread,
        2,
        vec![
            build::interrupt_raised(r, 3, "one", k, "1"),
            build::interrupt_raised(r, 4, "two", k, "2"),
        ],
    );
    assert_invalid_commit(&err(s.commit(commit).await, what), &a.thread, what);
    before_a.assert_unchanged(s, what).await;
    assert_eq!(ok(s.interrupt(k).await, "interrupt(k)"), None, "{what}");

    assert_eq!(
        interrupt_record(s, i).await,
        original,
        "the original interrupt"
    );
    before_b.assert_unchanged(s, "after every duplicate").await;
    // The thread goes on.
    a.commit(
        s,
        build::append(
            &a.thread,
            2,
            vec![build::interrupt_raised(r, 3, "one", k, "1")],
        ),
    )
    .await;
    assert_eq!(interrupt_record(s, k).await, raised(&a, k, 3, "one", "1"));
}

/// Concurrent answers to one interrupt are decided atomically. 32 callers with the same
/// value (spelt two ways): exactly one `Recorded`, 31 `AlreadyAnswered`, every returned
/// record carrying the stored answer (the winner's bytes and time). 32 callers with 32
/// values: exactly one succeeds (`Recorded`), 31 get `ResumeConflict`, and the stored answer
/// is the winner's. 8 rounds of each.
pub async fn concurrent_answers_exactly_one_wins(store: Arc<dyn Store>) {
    const CALLERS: usize = 32;
    const ROUNDS: usize = 8;
    let s = &*store;
    let mut w = Writer::start(s, "answer-race").await;
    let r = w.run.run_id;
    let ids: Vec<InterruptId> = (0..2 * ROUNDS).map(|_| InterruptId::generate()).collect();
    let events = ids
        .iter()
        .enumerate()
        .map(|(k, id)| build::interrupt_raised(r, 2 + k as u64, "ask", *id, "{}"))
        .collect();
    w.commit(s, build::append(&w.thread, 1, events)).await;

    for (round, id) in ids.iter().copied().enumerate() {
        let same = round < ROUNDS;
        let barrier = Arc::new(Barrier::new(CALLERS));
        let tasks: Vec<_> = (0..CALLERS)
            .map(|k| {
                let json = match (same, k % 2) {
                    (true, 0) => format!(r#"{{"round":{round},"ok":true}}"#),
                    (true, _) => format!(r#"{{ "ok" : true, "round" : {round} }}"#),
                    (false, _) => format!(r#"{{"round":{round},"caller":{k}}}"#),
                };
                let at = build::at(1_000 + k as u64);
                let (store, barrier) = (store.clone(), barrier.clone());
                tokio::spawn(async move {
                    let value = payload(&json);
                    barrier.wait().await;
                    let result = store.answer_interrupt(id, value.clone(), at).await;
                    (value, at, result)
                })
            })
            .collect();
        let mut winners: Vec<(Payload, Timestamp)> = Vec::new();
        let mut returned = Vec::new();
        for task in tasks {
            let (value, at, result) = join(task).await;
            let what = format!(
                "round {round} ({})",
                if same { "same value" } else { "values" }
            );
            match result {
                Ok((Answer::Recorded, record)) => {
                    winners.push((value, at));
                    returned.push(record);
                }
                Ok((Answer::AlreadyAnswered, record)) => {
                    assert!(same, "{what}: AlreadyAnswered for a different value");
                    returned.push(record);
                }
                Err(e) => {
                    assert!(!same, "{what}: the same value failed with {e:?}");
                    assert_eq!(e, Error::ResumeConflict { interrupt_id: id }, "{what}");
                }
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} of {CALLERS} concurrent answers were Recorded",
            winners.len()
        );
        let stored = interrupt_record(s, id).await;
        assert_eq!(
            stored.answer,
            Some(winners[0].clone()),
            "round {round}: the stored answer is the winner's"
        );
        for record in returned {
            assert_eq!(record, stored, "round {round}: a returned record");
        }
    }
}
