//! The engine observer of the server: what it sees of every commit made by this process
//! feeds SSE streams and long-polls (a broadcast of committed events), the worker pool (a
//! wake-up when a run is created here) and metrics (node durations, ended runs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oris_core::event::{Event, EventBody};
use oris_core::id::{RunId, ThreadId};
use oris_core::store::{Commit, RunWrite};
use oris_runtime::Observer;
use tokio::sync::{Notify, broadcast, mpsc};

use crate::metrics::Metrics;

/// Events committed to one thread by this process, in seq order.
#[derive(Debug)]
pub(crate) struct Committed {
    pub thread_id: ThreadId,
    pub events: Vec<Event>,
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

pub(crate) struct Hub {
    tx: broadcast::Sender<Arc<Committed>>,
    pub pool_wake: Arc<Notify>,
    ended: mpsc::UnboundedSender<RunId>,
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
                pool_wake: Arc::new(Notify::new()),
                ended,
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
            // A run recorded here (enqueue, replay, fork): the local pool can take it now.
            Some(RunWrite::Create(_)) => self.pool_wake.notify_one(),
            Some(RunWrite::SetStatus { run_id, status }) if status.is_terminal() => {
                let _ = self.ended.send(*run_id);
            }
            _ => {}
        }
        if self.tx.receiver_count() > 0 && !commit.events.is_empty() {
            let _ = self.tx.send(Arc::new(Committed {
                thread_id: commit.thread_id.clone(),
                events: commit.events.clone(),
            }));
        }
    }
}
