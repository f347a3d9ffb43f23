//! The engine observer of the server: what it sees of every commit made by this process —
//! its engine's, and the commits remote workers report through it — feeds SSE streams (a broadcast of committed events), long-polls (per thread, the run
//! change each commit carries) and metrics (node durations, ended runs). It also carries the worker pool's
//! wake-ups from handlers, timers and external signals.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oris_core::event::{Event, EventBody};
use oris_core::id::{RunId, ThreadId, Timestamp};
use oris_core::status::StatusKind;
use oris_core::store::{Commit, RunRecord, RunWrite};
use oris_runtime::Observer;
use tokio::sync::{broadcast, mpsc, watch};

use crate::metrics::Metrics;

/// Events committed to one thread by this process, in seq order.
#[derive(Debug)]
pub(crate) struct Committed {
    pub thread_id: ThreadId,
    pub events: Vec<Event>,
}

/// The run write of a commit, as a long-poll needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunChange {
    /// A run was created (queued, or running when driven in-process): the thread's latest
    /// run now.
    Created(RunId),
    /// The run's status was set to this.
    Status(RunId, StatusKind),
}

impl RunChange {
    fn of(w: &RunWrite) -> Self {
        match w {
            RunWrite::Create(r) => RunChange::Created(r.run_id),
            RunWrite::SetStatus { run_id, status } => RunChange::Status(*run_id, status.kind()),
        }
    }
}

/// Capacity of the broadcast; a subscriber that falls further behind reads the store.
const CHANNEL_CAPACITY: usize = 4096;
/// Bound of the node-timing maps (runs this process drives at once, with room).
const TIMING_CAP: usize = 100_000;

#[derive(Default)]
struct Timing {
    /// Per run: the superstep that started (None: any, after a resume) and when.
    supersteps: HashMap<RunId, (Option<u32>, Instant)>,
    /// Per (run, task): when a scheduled retry starts.
    retries: HashMap<(RunId, u32), Instant>,
}

/// What run metrics need of a run, kept from its creation or claim until it ends.
#[derive(Debug, Clone)]
struct Started {
    graph: String,
    created_at: Timestamp,
}

pub(crate) struct Hub {
    /// Every commit's events, for SSE streams.
    tx: broadcast::Sender<Arc<Committed>>,
    /// Per thread, the long-polls following it: told of each commit to that thread only
    /// (a broadcast would wake every long-poll for every commit of every thread).
    watchers: Mutex<HashMap<ThreadId, Vec<mpsc::UnboundedSender<Option<RunChange>>>>>,
    /// Bumped when the pool should look for ready runs (an event delivered through the
    /// API, a suspended run's timer, an external signal — the engine's own
    /// `subscribe_ready` covers runs it queued, answered or handed back): a watch, so that
    /// wake-ups coalesce and the pool can tell whether one arrived since its last claim.
    wake: watch::Sender<u64>,
    /// Runs that end without their `Started` here (created and claimed elsewhere, or
    /// forgotten past the cap): their metrics need a store read.
    ended: mpsc::UnboundedSender<RunId>,
    started: Mutex<HashMap<RunId, Started>>,
    timing: Mutex<Timing>,
    metrics: Arc<Metrics>,
    user: Option<Arc<dyn Observer>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("subscribers", &self.tx.receiver_count())
            .finish()
    }
}

impl Hub {
    /// A hub, and the receiver of ids of runs that ended (for run metrics).
    pub fn new(
        metrics: Arc<Metrics>,
        user: Option<Arc<dyn Observer>>,
    ) -> (Self, mpsc::UnboundedReceiver<RunId>) {
        let (ended, ended_rx) = mpsc::unbounded_channel();
        (
            Hub {
                tx: broadcast::channel(CHANNEL_CAPACITY).0,
                watchers: Mutex::new(HashMap::new()),
                wake: watch::channel(0).0,
                ended,
                started: Mutex::new(HashMap::new()),
                timing: Mutex::new(Timing::default()),
                metrics,
                user,
            },
            ended_rx,
        )
    }

    /// Commits from now on (subscribe before reading the store, so nothing falls between).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Committed>> {
        self.tx.subscribe()
    }

    /// This process's commits to `thread_id` from now on, each as the run write it carried
    /// (`None`: events only), in commit order, until the watch is dropped (watch before
    /// reading the store, so nothing falls between).
    pub fn watch_thread(self: &Arc<Self>, thread_id: &ThreadId) -> ThreadWatch {
        let (tx, rx) = mpsc::unbounded_channel();
        self.watchers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(thread_id.clone())
            .or_default()
            .push(tx);
        ThreadWatch {
            rx,
            hub: self.clone(),
            thread_id: thread_id.clone(),
        }
    }

    fn tell_watchers(&self, commit: &Commit) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if watchers.is_empty() {
            return;
        }
        if let Some(w) = watchers.get_mut(&commit.thread_id) {
            let change = commit.run.as_ref().map(RunChange::of);
            w.retain(|tx| tx.send(change).is_ok());
            if w.is_empty() {
                watchers.remove(&commit.thread_id);
            }
        }
    }

    /// Tells the pool to look for ready runs.
    pub fn wake_pool(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The pool's wake-ups ([`Hub::wake_pool`]).
    pub fn pool_wakes(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    /// Remembers what the metrics of `run`'s end need (the pool calls it for every run it
    /// claims, so runs created elsewhere are measured without a read).
    pub fn track(&self, run: &RunRecord) {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        if started.len() >= TIMING_CAP && !started.contains_key(&run.run_id) {
            // Runs created here that end elsewhere or never: forget them all; whatever
            // ends here later is measured from the store instead.
            started.clear();
        }
        started.insert(
            run.run_id,
            Started {
                graph: run.graph.clone(),
                created_at: run.created_at,
            },
        );
    }

    /// Records `runs_total` and `run_duration_seconds` for a run that just ended here.
    fn run_ended(&self, run_id: RunId, outcome: StatusKind) {
        let started = self
            .started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run_id);
        match started {
            Some(s) => {
                let ms = (Timestamp::now().as_millis() - s.created_at.as_millis()).max(0);
                self.metrics.run_finished(
                    &s.graph,
                    outcome.as_str(),
                    Duration::from_millis(ms as u64),
                );
            }
            None => {
                let _ = self.ended.send(run_id);
            }
        }
    }

    fn time_nodes(&self, commit: &Commit) {
        let now = Instant::now();
        let mut t = self.timing.lock().unwrap_or_else(|e| e.into_inner());
        if t.supersteps.len() > TIMING_CAP || t.retries.len() > TIMING_CAP {
            *t = Timing::default();
        }
        for e in &commit.events {
            match &e.body {
                EventBody::RunStarted { .. } => {
                    t.supersteps.insert(e.run_id, (Some(0), now));
                }
                EventBody::RunResumed => {
                    t.supersteps.insert(e.run_id, (None, now));
                }
                EventBody::NodeCompleted {
                    superstep,
                    task,
                    node,
                    boundary,
                    ..
                } => {
                    if let Some(start) = started(&mut t, e.run_id, *superstep, *task) {
                        self.metrics
                            .node_finished(node, now.saturating_duration_since(start));
                    }
                    if boundary.is_some() {
                        t.supersteps.insert(e.run_id, (Some(superstep + 1), now));
                    }
                }
                EventBody::NodeFailed {
                    superstep,
                    task,
                    node,
                    retry_at,
                    ..
                } => {
                    if let Some(start) = started(&mut t, e.run_id, *superstep, *task) {
                        self.metrics
                            .node_finished(node, now.saturating_duration_since(start));
                    }
                    if let Some(at) = retry_at {
                        let wait = u64::try_from(at.as_millis() - e.at.as_millis()).unwrap_or(0);
                        t.retries
                            .insert((e.run_id, *task), now + Duration::from_millis(wait));
                    }
                }
                b if b.is_terminal() || matches!(b, EventBody::RunSuspended { .. }) => {
                    t.supersteps.remove(&e.run_id);
                    t.retries.retain(|(r, _), _| *r != e.run_id);
                }
                _ => {}
            }
        }
    }
}

/// A long-poll's view of one thread's commits ([`Hub::watch_thread`]).
pub(crate) struct ThreadWatch {
    rx: mpsc::UnboundedReceiver<Option<RunChange>>,
    hub: Arc<Hub>,
    thread_id: ThreadId,
}

impl ThreadWatch {
    /// The next commit's run write (`Some(None)`: events only); `None` once the hub is gone.
    pub async fn next(&mut self) -> Option<Option<RunChange>> {
        self.rx.recv().await
    }
}

impl Drop for ThreadWatch {
    fn drop(&mut self) {
        self.rx.close();
        let mut watchers = self.hub.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = watchers.get_mut(&self.thread_id) {
            w.retain(|tx| !tx.is_closed());
            if w.is_empty() {
                watchers.remove(&self.thread_id);
            }
        }
    }
}

fn started(t: &mut Timing, run: RunId, superstep: u32, task: u32) -> Option<Instant> {
    if let Some(at) = t.retries.remove(&(run, task)) {
        return Some(at);
    }
    match t.supersteps.get(&run) {
        Some((Some(s), at)) if *s == superstep => Some(*at),
        Some((None, at)) => Some(*at),
        _ => None,
    }
}

impl Observer for Hub {
    fn before_commit(&self, commit: &Commit) {
        if let Some(u) = &self.user {
            u.before_commit(commit);
        }
    }

    fn after_commit(&self, commit: &Commit) {
        if let Some(u) = &self.user {
            u.after_commit(commit);
        }
        self.time_nodes(commit);
        match &commit.run {
            // A run recorded here (enqueue, replay, fork, or driven in-process). The engine
            // tells the pool about a queued one (`Engine::subscribe_ready`).
            Some(RunWrite::Create(r)) => self.track(r),
            Some(RunWrite::SetStatus { run_id, status }) if status.is_terminal() => {
                self.run_ended(*run_id, status.kind());
            }
            _ => {}
        }
        self.tell_watchers(commit);
        if self.tx.receiver_count() > 0 && !commit.events.is_empty() {
            let _ = self.tx.send(Arc::new(Committed {
                thread_id: commit.thread_id.clone(),
                events: commit.events.clone(),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use oris_core::event::Durability;
    use oris_core::id::Seq;
    use oris_core::status::RunStatus;

    use super::*;

    fn commit(thread: &str, run: Option<RunWrite>) -> Commit {
        Commit {
            thread_id: ThreadId::new(thread).unwrap(),
            expected_head: Seq::ZERO,
            events: Vec::new(),
            run,
            snapshot: None,
            durability: Durability::Sync,
            fence: None,
        }
    }

    #[test]
    fn a_thread_watch_hears_its_own_threads_commits_until_dropped() {
        let (hub, _ended) = Hub::new(Arc::new(Metrics::new()), None);
        let hub = Arc::new(hub);
        let t = ThreadId::new("t").unwrap();
        let mut watch = hub.watch_thread(&t);
        let run = RunRecord::new(
            RunId::generate(),
            t.clone(),
            "g",
            "1",
            RunStatus::Queued,
            Seq(1),
            Timestamp::now(),
        );
        hub.after_commit(&commit("other", None));
        hub.after_commit(&commit("t", Some(RunWrite::Create(run.clone()))));
        hub.after_commit(&commit("t", None));
        hub.after_commit(&commit(
            "t",
            Some(RunWrite::SetStatus {
                run_id: run.run_id,
                status: RunStatus::Cancelled { reason: "r".into() },
            }),
        ));
        let mut heard = Vec::new();
        while let Ok(change) = watch.rx.try_recv() {
            heard.push(change);
        }
        assert_eq!(
            heard,
            [
                Some(RunChange::Created(run.run_id)),
                None,
                Some(RunChange::Status(run.run_id, StatusKind::Cancelled)),
            ]
        );
        let other = hub.watch_thread(&t);
        assert_eq!(hub.watchers.lock().unwrap()[&t].len(), 2);
        drop(watch);
        assert_eq!(hub.watchers.lock().unwrap()[&t].len(), 1);
        drop(other);
        assert!(hub.watchers.lock().unwrap().is_empty());
    }
}
