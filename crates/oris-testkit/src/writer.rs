//! [`Writer`]: drives one thread through valid commits, tracking its head and run.

use oris_core::event::Event;
use oris_core::id::{Seq, ThreadId};
use oris_core::status::RunStatus;
use oris_core::store::{Commit, Receipt, RunRecord, Store};

use crate::build;
use crate::check::ok;

/// The writer of one thread: knows its head and current run, and makes commits that must
/// succeed (it panics, naming the thread and head, when one does not). Cases use it to
/// reach a state before testing what they are about.
#[derive(Debug, Clone)]
pub struct Writer {
    /// The thread.
    pub thread: ThreadId,
    /// Its most recent run.
    pub run: RunRecord,
    /// Its head.
    pub head: u64,
}

impl Writer {
    /// Creates `thread` of graph [`build::GRAPH`] with a running run and its `RunStarted`
    /// event at seq 1.
    pub async fn start(store: &dyn Store, thread: &str) -> Self {
        Self::start_graph(store, &build::thread_id(thread), build::GRAPH).await
    }

    /// Creates `thread` of `graph` with a running run and its `RunStarted` event at seq 1.
    pub async fn start_graph(store: &dyn Store, thread: &ThreadId, graph: &str) -> Self {
        let run = build::run_record(thread, graph, 1);
        let mut w = Writer {
            thread: thread.clone(),
            run: run.clone(),
            head: 0,
        };
        w.commit(store, build::create(&run, vec![build::started(&run, 1)]))
            .await;
        w
    }

    /// Applies `commit`, which must succeed and leave the head past its events.
    pub async fn commit(&mut self, store: &dyn Store, commit: Commit) -> Receipt {
        let want = Seq(commit.expected_head.0 + commit.events.len() as u64);
        let what = format!(
            "commit on thread `{}` at head {} with {} event(s)",
            self.thread,
            commit.expected_head,
            commit.events.len()
        );
        let receipt = ok(store.commit(commit).await, &what);
        assert_eq!(receipt.head, want, "{what}: receipt head");
        self.head = receipt.head.0;
        receipt
    }

    /// Appends `n` [`build::step`] events of the current run in one commit.
    pub async fn steps(&mut self, store: &dyn Store, n: u64) -> Vec<Event> {
        let events: Vec<Event> = (self.head + 1..=self.head + n)
            .map(|seq| build::step(self.run.run_id, seq))
            .collect();
        let commit = build::append(&self.thread, self.head, events.clone());
        self.commit(store, commit).await;
        events
    }

    /// Ends the current run with `status` (terminal) and the matching terminal event.
    pub async fn finish(&mut self, store: &dyn Store, status: RunStatus) {
        assert!(
            status.is_terminal(),
            "Writer::finish needs a terminal status, not {status:?}"
        );
        let commit = build::finish(&self.thread, self.head, self.run.run_id, status, vec![]);
        self.commit(store, commit).await;
    }

    /// Completes the current run.
    pub async fn complete(&mut self, store: &dyn Store) {
        let status = build::status_completed(self.head);
        self.finish(store, status).await;
    }

    /// Starts the thread's next run (the previous one must have finished), with its
    /// `RunStarted` event at `head + 1`.
    pub async fn next_run(&mut self, store: &dyn Store) -> RunRecord {
        let run = build::run_record(&self.thread, &self.run.graph, self.head + 1);
        let commit = build::create(&run, vec![build::started(&run, self.head + 1)]);
        self.commit(store, commit).await;
        self.run = run.clone();
        run
    }
}
