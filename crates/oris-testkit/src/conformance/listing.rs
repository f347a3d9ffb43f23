//! Listing for the server's API: runs by creation and status-change time ranges
//! (half-open: `from` included, `to` excluded) and by metadata labels (every pair must
//! match), combined with the other filters and the cursor; interrupts across threads by
//! thread, graph and openness, in id order with a cursor.

use std::sync::Arc;
use std::time::Duration;

use oris_core::id::{InterruptId, RunId};
use oris_core::status::StatusKind;
use oris_core::store::{InterruptFilter, InterruptRecord, RunFilter, RunRecord, Store};

use crate::build::{self, GRAPH};
use crate::check::{interrupt_record, ok, run_ids};
use crate::conformance::claims::enqueue;
use crate::conformance::leases::claim_one;
use crate::conformance::suspension::move_to;
use crate::writer::Writer;

/// Five queued runs, created at `at(1)` … `at(5)` (ids ascending), each pinned to a graph
/// version of its own, with metadata (verbatim JSON text, odd spacing and characters):
///
/// | run | metadata                                             | priority    |
/// |-----|------------------------------------------------------|-------------|
/// | r1  | team a, env prod                                     | 3           |
/// | r2  | team a, env dev                                      | -2          |
/// | r3  | team b                                               | i32::MAX    |
/// | r4  | none                                                 | i32::MIN    |
/// | r5  | team a, env prod, `a.b c` = `ü "q" '; --`            | 0           |
async fn labelled_runs(s: &dyn Store) -> [RunRecord; 5] {
    let specs: [(&str, Option<&str>, i32); 5] = [
        ("lbl-1", Some(r#"{"team": "a", "env":"prod"}"#), 3),
        ("lbl-2", Some(r#"{"env":"dev","team":"a"}"#), -2),
        ("lbl-3", Some(r#"{ "team" : "b" }"#), i32::MAX),
        ("lbl-4", None, i32::MIN),
        (
            "lbl-5",
            Some(r#"{"team":"a","env":"prod","a.b c":"ü \"q\" '; --"}"#),
            0,
        ),
    ];
    let mut out = Vec::new();
    for (i, (thread, metadata, priority)) in specs.into_iter().enumerate() {
        let t = build::thread_id(thread);
        let created = build::at(i as u64 + 1);
        out.push(
            enqueue(
                s,
                build::queued_run(&t, GRAPH, thread, created, priority, metadata),
            )
            .await,
        );
    }
    out.try_into().unwrap_or_else(|_| unreachable!("five runs"))
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `runs` filters by creation time (`created_from` included, `created_to` excluded), by
/// status-change time (`updated_*`, same bounds) and by metadata pairs (every pair must be a
/// top-level string value, compared exactly: keys with dots and spaces are plain keys,
/// values with quotes are plain values); combined with each other, with status filters and
/// with cursor paging. Priority and metadata read back exactly.
pub async fn runs_filter_by_time_and_metadata(store: Arc<dyn Store>) {
    let s = &*store;
    let [r1, r2, r3, r4, r5] = labelled_runs(s).await;
    let (i1, i2, i3, i4, i5) = (r1.run_id, r2.run_id, r3.run_id, r4.run_id, r5.run_id);
    // r3 changes status (queued → running) at at(20), by a claim.
    claim_one(s, &r3, "w", build::at(20), Duration::from_secs(30)).await;

    let at = |n: u64| Some(build::at(n));
    let f = RunFilter::default;
    let cases: Vec<(&str, RunFilter, Vec<RunId>)> = vec![
        (
            "created in [2, 4)",
            RunFilter {
                created_from: at(2),
                created_to: at(4),
                ..f()
            },
            vec![i2, i3],
        ),
        (
            "created from 5",
            RunFilter {
                created_from: at(5),
                ..f()
            },
            vec![i5],
        ),
        (
            "created before 1",
            RunFilter {
                created_to: at(1),
                ..f()
            },
            vec![],
        ),
        (
            "created before 2",
            RunFilter {
                created_to: at(2),
                ..f()
            },
            vec![i1],
        ),
        (
            "updated from 20",
            RunFilter {
                updated_from: at(20),
                ..f()
            },
            vec![i3],
        ),
        (
            "updated before 20",
            RunFilter {
                updated_to: at(20),
                ..f()
            },
            vec![i1, i2, i4, i5],
        ),
        (
            "updated in [2, 4)",
            RunFilter {
                updated_from: at(2),
                updated_to: at(4),
                ..f()
            },
            vec![i2],
        ),
        (
            "created in [2, 4), updated before 20",
            RunFilter {
                created_from: at(2),
                created_to: at(4),
                updated_to: at(20),
                ..f()
            },
            vec![i2],
        ),
        (
            "team a",
            RunFilter {
                metadata: pairs(&[("team", "a")]),
                ..f()
            },
            vec![i1, i2, i5],
        ),
        (
            "team a, env prod",
            RunFilter {
                metadata: pairs(&[("team", "a"), ("env", "prod")]),
                ..f()
            },
            vec![i1, i5],
        ),
        (
            "env prod, team b",
            RunFilter {
                metadata: pairs(&[("env", "prod"), ("team", "b")]),
                ..f()
            },
            vec![],
        ),
        (
            "team A (values are case-sensitive)",
            RunFilter {
                metadata: pairs(&[("team", "A")]),
                ..f()
            },
            vec![],
        ),
        (
            "team c",
            RunFilter {
                metadata: pairs(&[("team", "c")]),
                ..f()
            },
            vec![],
        ),
        (
            "a dotted key with a quoted value",
            RunFilter {
                metadata: pairs(&[("a.b c", "ü \"q\" '; --")]),
                ..f()
            },
            vec![i5],
        ),
        (
            "a prefix of the key",
            RunFilter {
                metadata: pairs(&[("a", "ü \"q\" '; --")]),
                ..f()
            },
            vec![],
        ),
        (
            "team a, running",
            RunFilter {
                metadata: pairs(&[("team", "a")]),
                statuses: vec![StatusKind::Running],
                ..f()
            },
            vec![],
        ),
        (
            "team b, running",
            RunFilter {
                metadata: pairs(&[("team", "b")]),
                statuses: vec![StatusKind::Running],
                ..f()
            },
            vec![i3],
        ),
        (
            "team a, created from 2",
            RunFilter {
                metadata: pairs(&[("team", "a")]),
                created_from: at(2),
                ..f()
            },
            vec![i2, i5],
        ),
        (
            "team a after r1",
            RunFilter {
                metadata: pairs(&[("team", "a")]),
                after: Some(i1),
                ..f()
            },
            vec![i2, i5],
        ),
        (
            "team a after r2, limit 1",
            RunFilter {
                metadata: pairs(&[("team", "a")]),
                after: Some(i2),
                limit: 1,
                ..f()
            },
            vec![i5],
        ),
        (
            "no metadata filter",
            RunFilter {
                created_from: at(4),
                created_to: at(5),
                ..f()
            },
            vec![i4],
        ),
    ];
    for (what, filter, want) in cases {
        assert_eq!(run_ids(s, &filter).await, want, "runs({what})");
    }
    let listed = ok(s.runs(&RunFilter::default()).await, "runs()");
    for r in [&r1, &r2, &r4, &r5] {
        let got = listed
            .iter()
            .find(|l| l.run_id == r.run_id)
            .unwrap_or_else(|| panic!("run {} is listed", r.run_id));
        assert_eq!(got, r, "runs() returns the record as created");
    }
    for page in 1..=3 {
        let (mut after, mut walked) = (None, Vec::new());
        for _ in 0..10 {
            let got = run_ids(
                s,
                &RunFilter {
                    metadata: pairs(&[("team", "a")]),
                    after,
                    limit: page,
                    ..f()
                },
            )
            .await;
            let Some(l) = got.last() else { break };
            after = Some(*l);
            walked.extend(got);
        }
        assert_eq!(walked, vec![i1, i2, i5], "team a in pages of {page}");
    }
}

/// `list_interrupts` lists interrupts across threads in id order (not raise order), each as
/// `interrupt` reads it; filtered by thread, by the graph of their thread, by openness (not
/// applied, and the run that raised it has not ended — an answered one is still open), after
/// an id cursor, at most `limit` (0: no limit).
pub async fn interrupts_are_listed_across_threads(store: Arc<dyn Store>) {
    let s = &*store;
    let g: Vec<InterruptId> = (0..5).map(|_| InterruptId::generate()).collect();
    let ask = |id: InterruptId| build::pending(id, "ask", r#"{"q": "¿ok?"}"#);

    // li-1 (alpha): interrupted on g3 and g1.
    let mut t1 = Writer::start_graph(s, &build::thread_id("li-1"), "alpha").await;
    move_to(
        s,
        &mut t1,
        build::status_interrupted(vec![ask(g[3]), ask(g[1])]),
    )
    .await;
    // li-2 (beta): g4 raised and applied, then interrupted on g2.
    let mut t2 = Writer::start_graph(s, &build::thread_id("li-2"), "beta").await;
    let (r, h) = (t2.run.run_id, t2.head);
    let c = build::append(
        &t2.thread,
        h,
        vec![
            build::interrupt_raised(r, h + 1, "ask", g[4], r#"{"q":4}"#),
            build::interrupt_resumed(r, h + 2, g[4], "true"),
        ],
    );
    t2.commit(s, c).await;
    move_to(s, &mut t2, build::status_interrupted(vec![ask(g[2])])).await;
    // li-3 (alpha): g0 raised, then the run is cancelled.
    let mut t3 = Writer::start_graph(s, &build::thread_id("li-3"), "alpha").await;
    let (r, h) = (t3.run.run_id, t3.head);
    let c = build::append(
        &t3.thread,
        h,
        vec![build::interrupt_raised(r, h + 1, "ask", g[0], r#"{"q":0}"#)],
    );
    t3.commit(s, c).await;
    t3.finish(s, build::status_cancelled("gone")).await;
    // An answer does not close an interrupt.
    ok(
        s.answer_interrupt(g[1], build::payload(r#"{"a": 1}"#), build::at(9))
            .await,
        "answer g1",
    );

    let mut records = Vec::new();
    for id in &g {
        records.push(interrupt_record(s, *id).await);
    }
    let pick = |idx: &[usize]| -> Vec<InterruptRecord> {
        idx.iter().map(|i| records[*i].clone()).collect()
    };
    let f = InterruptFilter::default;
    let cases: Vec<(&str, InterruptFilter, Vec<InterruptRecord>)> = vec![
        ("everything", f(), pick(&[0, 1, 2, 3, 4])),
        (
            "open",
            InterruptFilter {
                open_only: true,
                ..f()
            },
            pick(&[1, 2, 3]),
        ),
        (
            "thread li-1",
            InterruptFilter {
                thread_id: Some(t1.thread.clone()),
                ..f()
            },
            pick(&[1, 3]),
        ),
        (
            "thread li-2, open",
            InterruptFilter {
                thread_id: Some(t2.thread.clone()),
                open_only: true,
                ..f()
            },
            pick(&[2]),
        ),
        (
            "an unknown thread",
            InterruptFilter {
                thread_id: Some(build::thread_id("li-9")),
                ..f()
            },
            vec![],
        ),
        (
            "graph alpha",
            InterruptFilter {
                graph: Some("alpha".into()),
                ..f()
            },
            pick(&[0, 1, 3]),
        ),
        (
            "graph alpha, open",
            InterruptFilter {
                graph: Some("alpha".into()),
                open_only: true,
                ..f()
            },
            pick(&[1, 3]),
        ),
        (
            "graph alph",
            InterruptFilter {
                graph: Some("alph".into()),
                ..f()
            },
            vec![],
        ),
        (
            "after g1",
            InterruptFilter {
                after: Some(g[1]),
                ..f()
            },
            pick(&[2, 3, 4]),
        ),
        (
            "open after g1, limit 1",
            InterruptFilter {
                after: Some(g[1]),
                open_only: true,
                limit: 1,
                ..f()
            },
            pick(&[2]),
        ),
        (
            "after g4",
            InterruptFilter {
                after: Some(g[4]),
                ..f()
            },
            vec![],
        ),
        (
            "limit 2",
            InterruptFilter { limit: 2, ..f() },
            pick(&[0, 1]),
        ),
    ];
    for (what, filter, want) in cases {
        let got = ok(
            s.list_interrupts(&filter).await,
            &format!("list_interrupts({what})"),
        );
        assert_eq!(got, want, "list_interrupts({what})");
    }
    for page in 1..=3 {
        let (mut after, mut walked) = (None, Vec::new());
        for _ in 0..10 {
            let got = ok(
                s.list_interrupts(&InterruptFilter {
                    after,
                    limit: page,
                    ..f()
                })
                .await,
                "list_interrupts(page)",
            );
            let Some(l) = got.last() else { break };
            after = Some(l.interrupt_id);
            walked.extend(got);
        }
        assert_eq!(walked, records, "pages of {page}");
    }
}
