//! Listing runs: filters, `unfinished`, cursor pagination in creation order.

use std::sync::Arc;

use oris_core::id::RunId;
use oris_core::status::{RunStatus, StatusKind};
use oris_core::store::{RunFilter, Store};

use crate::build::{self, GRAPH};
use crate::check::{ok, run_ids, run_record};
use crate::writer::Writer;

/// Seven runs on five threads of two graphs, created in this order (ids ascending):
///
/// | run | thread | graph | final status |
/// |-----|--------|-------|--------------|
/// | a1  | r-0    | alpha | completed    |
/// | b1  | r-1    | beta  | failed       |
/// | a2  | r-0    | alpha | running      |
/// | c1  | r-2    | alpha | queued       |
/// | d1  | r-3    | beta  | cancelled    |
/// | b2  | r-1    | beta  | running      |
/// | e1  | r-4    | alpha | cancelled    |
struct Population {
    a1: RunId,
    b1: RunId,
    a2: RunId,
    c1: RunId,
    d1: RunId,
    b2: RunId,
    e1: RunId,
    /// Thread r-0's writer, its run a2 still running.
    r0: Writer,
}

impl Population {
    async fn create(s: &dyn Store) -> Self {
        let (alpha, beta) = ("alpha", "beta");
        let mut r0 = Writer::start_graph(s, &build::thread_id("r-0"), alpha).await;
        let a1 = r0.run.run_id;
        r0.complete(s).await;
        let mut r1 = Writer::start_graph(s, &build::thread_id("r-1"), beta).await;
        let b1 = r1.run.run_id;
        r1.finish(s, build::status_failed("no")).await;
        let a2 = r0.next_run(s).await.run_id;

        let r2 = build::thread_id("r-2");
        let c1 = build::queued(build::run_record(&r2, alpha, 1));
        ok(s.commit(build::create(&c1, vec![])).await, "queued c1");

        let mut r3 = Writer::start_graph(s, &build::thread_id("r-3"), beta).await;
        r3.finish(s, build::status_cancelled("stop")).await;
        let d1 = r3.run.run_id;

        // b2 is created queued, then started.
        let b2 = build::queued(build::run_record(&r1.thread, beta, r1.head + 1));
        ok(s.commit(build::create(&b2, vec![])).await, "queued b2");
        let commit = build::set_status(
            &r1.thread,
            r1.head,
            b2.run_id,
            RunStatus::Running,
            vec![build::started(&b2, r1.head + 1)],
        );
        ok(s.commit(commit).await, "start b2");

        let r4 = build::thread_id("r-4");
        let e1 = build::queued(build::run_record(&r4, alpha, 1));
        ok(s.commit(build::create(&e1, vec![])).await, "queued e1");
        let commit = build::finish(&r4, 0, e1.run_id, build::status_cancelled("x"), vec![]);
        ok(s.commit(commit).await, "cancel e1");

        let ids = [a1, b1, a2, c1.run_id, d1, b2.run_id, e1.run_id];
        let mut sorted = ids;
        sorted.sort();
        assert_eq!(
            sorted, ids,
            "RunId::generate must be ordered by creation (UUIDv7): the suite relies on it"
        );
        Population {
            a1,
            b1,
            a2,
            c1: c1.run_id,
            d1,
            b2: b2.run_id,
            e1: e1.run_id,
            r0,
        }
    }

    fn all(&self) -> Vec<RunId> {
        vec![
            self.a1, self.b1, self.a2, self.c1, self.d1, self.b2, self.e1,
        ]
    }
}

fn by_thread(thread: &str) -> RunFilter {
    RunFilter {
        thread_id: Some(build::thread_id(thread)),
        ..RunFilter::default()
    }
}

fn by_graph(graph: &str) -> RunFilter {
    RunFilter {
        graph: Some(graph.to_owned()),
        ..RunFilter::default()
    }
}

fn by_status(statuses: &[StatusKind]) -> RunFilter {
    RunFilter {
        statuses: statuses.to_vec(),
        ..RunFilter::default()
    }
}

/// `runs` filters by thread, graph and status set (and their combination), returns the
/// full records (equal to `run`), oldest first.
pub async fn runs_filter_by_thread_graph_status(store: Arc<dyn Store>) {
    let s = &*store;
    let p = Population::create(s).await;
    use StatusKind::*;

    let everything = ok(s.runs(&RunFilter::default()).await, "runs()");
    assert_eq!(
        everything.iter().map(|r| r.run_id).collect::<Vec<_>>(),
        p.all(),
        "runs() with no filter: every run, oldest first"
    );
    for r in &everything {
        assert_eq!(
            *r,
            run_record(s, r.run_id).await,
            "runs() and run() disagree"
        );
    }

    let cases: Vec<(&str, RunFilter, Vec<RunId>)> = vec![
        ("thread r-0", by_thread("r-0"), vec![p.a1, p.a2]),
        ("thread r-1", by_thread("r-1"), vec![p.b1, p.b2]),
        ("thread r-2", by_thread("r-2"), vec![p.c1]),
        ("unknown thread", by_thread("r-9"), vec![]),
        (
            "graph alpha",
            by_graph("alpha"),
            vec![p.a1, p.a2, p.c1, p.e1],
        ),
        ("graph beta", by_graph("beta"), vec![p.b1, p.d1, p.b2]),
        ("unknown graph", by_graph(GRAPH), vec![]),
        ("graph prefix is not a match", by_graph("alph"), vec![]),
        ("completed", by_status(&[Completed]), vec![p.a1]),
        ("queued", by_status(&[Queued]), vec![p.c1]),
        ("running", by_status(&[Running]), vec![p.a2, p.b2]),
        (
            "failed or cancelled",
            by_status(&[Failed, Cancelled]),
            vec![p.b1, p.d1, p.e1],
        ),
        ("every status", by_status(&StatusKind::ALL), p.all()),
        (
            "thread r-1, running",
            RunFilter {
                statuses: vec![Running],
                ..by_thread("r-1")
            },
            vec![p.b2],
        ),
        (
            "graph alpha, cancelled",
            RunFilter {
                statuses: vec![Cancelled],
                ..by_graph("alpha")
            },
            vec![p.e1],
        ),
        (
            "graph beta on thread r-0",
            RunFilter {
                graph: Some("beta".into()),
                ..by_thread("r-0")
            },
            vec![],
        ),
    ];
    for (what, filter, want) in cases {
        assert_eq!(run_ids(s, &filter).await, want, "runs({what})");
    }
}

/// `RunFilter::unfinished()` lists the queued and running runs, oldest first, and follows
/// status changes.
pub async fn runs_unfinished(store: Arc<dyn Store>) {
    let s = &*store;
    let mut p = Population::create(s).await;
    let unfinished = RunFilter::unfinished();
    assert_eq!(run_ids(s, &unfinished).await, vec![p.a2, p.c1, p.b2]);

    p.r0.complete(s).await;
    assert_eq!(run_ids(s, &unfinished).await, vec![p.c1, p.b2]);
    let c1 = run_record(s, p.c1).await;
    let commit = build::set_status(
        &build::thread_id("r-2"),
        0,
        p.c1,
        RunStatus::Running,
        vec![build::started(&c1, 1)],
    );
    ok(s.commit(commit).await, "start c1");
    assert_eq!(run_ids(s, &unfinished).await, vec![p.c1, p.b2]);
    let alpha_unfinished = RunFilter {
        graph: Some("alpha".into()),
        ..RunFilter::unfinished()
    };
    assert_eq!(run_ids(s, &alpha_unfinished).await, vec![p.c1]);
}

/// The `after` cursor and `limit` page through runs in creation order: walking pages of
/// any size yields every run exactly once; a cursor need not match the filter; a cursor
/// past the newest run yields nothing.
pub async fn runs_paginate_in_creation_order(store: Arc<dyn Store>) {
    let s = &*store;
    let p = Population::create(s).await;

    let walk = |base: RunFilter, page: usize| async move {
        let (mut after, mut walked, mut pages) = (None, Vec::new(), 0);
        loop {
            let filter = RunFilter {
                after,
                limit: page,
                ..base.clone()
            };
            let got = run_ids(s, &filter).await;
            assert!(
                got.len() <= page,
                "a page of {page} returned {} runs",
                got.len()
            );
            let Some(last) = got.last() else { break };
            after = Some(*last);
            walked.extend(got);
            pages += 1;
            assert!(pages <= 8, "pagination with limit {page} does not end");
        }
        walked
    };
    for page in 1..=8 {
        assert_eq!(
            walk(RunFilter::default(), page).await,
            p.all(),
            "pages of {page}"
        );
        assert_eq!(
            walk(by_graph("alpha"), page).await,
            vec![p.a1, p.a2, p.c1, p.e1],
            "alpha runs, pages of {page}"
        );
    }

    let after = |cursor: RunId, base: RunFilter| RunFilter {
        after: Some(cursor),
        ..base
    };
    let cases: Vec<(&str, RunFilter, Vec<RunId>)> = vec![
        (
            "after b1",
            after(p.b1, RunFilter::default()),
            vec![p.a2, p.c1, p.d1, p.b2, p.e1],
        ),
        (
            "alpha after b1 (a cursor outside the filter)",
            after(p.b1, by_graph("alpha")),
            vec![p.a2, p.c1, p.e1],
        ),
        (
            "unfinished after a2, limit 1",
            RunFilter {
                limit: 1,
                ..after(p.a2, RunFilter::unfinished())
            },
            vec![p.c1],
        ),
        (
            "after the newest",
            after(p.e1, RunFilter::default()),
            vec![],
        ),
        (
            "after an id newer than every run",
            after(RunId::generate(), RunFilter::default()),
            vec![],
        ),
        (
            "limit 3",
            RunFilter {
                limit: 3,
                ..RunFilter::default()
            },
            vec![p.a1, p.b1, p.a2],
        ),
    ];
    for (what, filter, want) in cases {
        assert_eq!(run_ids(s, &filter).await, want, "runs({what})");
    }
}
