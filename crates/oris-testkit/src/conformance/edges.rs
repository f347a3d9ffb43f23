//! Inputs at the edges of what the trait accepts: thread ids, durabilities.

use std::sync::Arc;

use oris_core::event::Durability;
use oris_core::id::Seq;
use oris_core::store::{Commit, Store};

use crate::build::{self, GRAPH};
use crate::check::{LATEST, all_events, assert_contiguous, ok, run_record, thread_record};
use crate::writer::Writer;

/// Thread ids at the edges of their syntax are stored exactly and kept apart: 200 bytes,
/// every punctuation character allowed, ids differing only in case, ids that are prefixes
/// of one another, ids that a SQL `LIKE` pattern would confuse (`p_` and `p.`).
pub async fn thread_id_edge_cases(store: Arc<dyn Store>) {
    let s = &*store;
    let ids = [
        "x".repeat(oris_core::id::THREAD_ID_MAX_LEN),
        "a-_.:@+=Z9".to_owned(),
        "Case".to_owned(),
        "case".to_owned(),
        "CASE".to_owned(),
        "p".to_owned(),
        "p-1".to_owned(),
        "p_".to_owned(),
        "p.".to_owned(),
        "0".to_owned(),
    ];
    let mut writers = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let mut w = Writer::start_graph(s, &build::thread_id(id), GRAPH).await;
        w.steps(s, i as u64).await;
        writers.push(w);
    }
    for (i, w) in writers.iter().enumerate() {
        let record = thread_record(s, &w.thread).await;
        assert_eq!(record.thread_id.as_str(), ids[i], "thread id read back");
        assert_eq!(record.head, Seq(i as u64 + 1), "head of `{}`", ids[i]);
        let events = all_events(s, &w.thread).await;
        assert_eq!(events.len(), i + 1, "events of `{}`", ids[i]);
        assert!(
            events.iter().all(|e| e.run_id == w.run.run_id),
            "thread `{}` shows another thread's events",
            ids[i]
        );
        let run = run_record(s, w.run.run_id).await;
        assert_eq!(run.thread_id.as_str(), ids[i]);
    }
}

/// Every durability is accepted for every kind of commit, and what a commit wrote is
/// visible to the next read, whatever its durability (durability is about surviving a
/// crash, not about visibility).
pub async fn all_durabilities_are_accepted(store: Arc<dyn Store>) {
    let s = &*store;
    for durability in [Durability::Sync, Durability::Batched, Durability::Exit] {
        let name = durability.as_str();
        let t = build::thread_id(&format!("durability-{name}"));
        let run = build::run_record(&t, GRAPH, 1);
        let with = |c: Commit| Commit { durability, ..c };
        let r = run.run_id;

        ok(
            s.commit(with(build::create(&run, vec![build::started(&run, 1)])))
                .await,
            name,
        );
        assert_eq!(
            thread_record(s, &t).await.head,
            Seq(1),
            "{name}: creation visible"
        );

        let snap = build::snapshot(r, 2, r#"{"d":1}"#);
        let commit = Commit {
            snapshot: Some(snap.clone()),
            ..with(build::append(&t, 1, vec![build::step(r, 2)]))
        };
        ok(s.commit(commit).await, name);
        assert_eq!(all_events(s, &t).await.len(), 2, "{name}: append visible");
        assert_eq!(ok(s.snapshot(&t, LATEST).await, name), Some(snap), "{name}");

        let done = build::status_completed(3);
        let commit = with(build::set_status(
            &t,
            2,
            r,
            done.clone(),
            vec![build::run_completed(r, 3)],
        ));
        ok(s.commit(commit).await, name);
        assert_eq!(
            run_record(s, r).await.status,
            done,
            "{name}: status visible"
        );
        let events = all_events(s, &t).await;
        assert_contiguous(&t, &events);
        assert_eq!(events.len(), 3, "{name}");
        assert_eq!(thread_record(s, &t).await.active_run, None, "{name}");
    }
}
