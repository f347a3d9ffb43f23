//! Helpers shared by the runtime's integration tests: the workload states and graphs, a
//! commit-recording observer to synchronise on, drop guards and bounded waits.
//!
//! Each test binary uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oris_core::event::{Event, EventBody};
use oris_core::graph::{END, START};
use oris_core::id::{Seq, ThreadId};
use oris_core::state::state_hash;
use oris_core::store::{Commit, MemoryStore};
use oris_runtime::{Engine, EngineOptions, NodeError, Observer, StateGraph};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

/// The W1/W4 state: `counter` is last-value, `log` appends.
#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, oris_derive::State)]
#[oris(crate = "::oris_core")]
pub struct Lin {
    pub counter: i64,
    #[reducer(append)]
    pub log: Vec<String>,
}

/// `n0 … n{n-1}` in a line; `ni` returns `{counter: counter + 1, log: ["ni"]}` (W1).
pub fn linear(name: &str, n: usize) -> StateGraph<Lin> {
    let mut g = StateGraph::<Lin>::new(name, "1");
    for i in 0..n {
        let me = format!("n{i}");
        g =
            g.node(me.clone(), move |s: Lin, _ctx| {
                let me = me.clone();
                async move {
                    Ok::<_, NodeError>(LinUpdate::default().counter(s.counter + 1).log(vec![me]))
                }
            });
    }
    g = g.edge(START, "n0");
    for i in 1..n {
        g = g.edge(format!("n{}", i - 1), format!("n{i}"));
    }
    g.edge(format!("n{}", n - 1), END)
}

/// The log W1 ends with.
pub fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

pub fn tid(s: &str) -> ThreadId {
    ThreadId::new(s).expect("test thread ids are valid")
}

pub fn hash<S: Serialize>(s: &S) -> String {
    state_hash(s).expect("test states serialize")
}

/// Every event of a thread, in order.
pub async fn all_events(engine: &Engine, thread: &str) -> Vec<Event> {
    engine
        .timeline(&tid(thread), Seq::ZERO, usize::MAX)
        .await
        .expect("timeline reads")
}

/// Awaits `f`, failing the test (instead of hanging) if it takes longer than 10 s. Under a
/// paused clock a deadlocked test reaches this limit at once.
pub async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// An observer that keeps every successful commit, and lets tests wait for a condition on
/// them (no polling, no sleeping).
#[derive(Debug)]
pub struct Recorder {
    commits: watch::Sender<Vec<Commit>>,
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::new(Recorder {
            commits: watch::channel(Vec::new()).0,
        })
    }

    /// Engine options with this recorder as the observer.
    pub fn options(self: &Arc<Self>) -> EngineOptions {
        EngineOptions {
            observer: Some(self.clone()),
            ..EngineOptions::default()
        }
    }

    /// The commits of one thread so far.
    pub fn commits(&self, thread: &str) -> Vec<Commit> {
        self.commits
            .borrow()
            .iter()
            .filter(|c| c.thread_id.as_str() == thread)
            .cloned()
            .collect()
    }

    /// Waits until `pred` holds for the commits of `thread`.
    pub async fn wait_until(&self, thread: &str, pred: impl Fn(&[Commit]) -> bool) {
        let mut rx = self.commits.subscribe();
        rx.wait_for(|all| {
            let mine: Vec<Commit> = all
                .iter()
                .filter(|c| c.thread_id.as_str() == thread)
                .cloned()
                .collect();
            pred(&mine)
        })
        .await
        .expect("the recorder outlives the test");
    }
}

impl Observer for Recorder {
    fn after_commit(&self, commit: &Commit) {
        self.commits.send_modify(|v| v.push(commit.clone()));
    }
}

/// Committed `NodeCompleted` events of `node` in `commits`.
pub fn completions(commits: &[Commit], node: &str) -> usize {
    commits
        .iter()
        .flat_map(|c| &c.events)
        .filter(|e| matches!(&e.body, EventBody::NodeCompleted { node: n, .. } if n == node))
        .count()
}

/// Fires a oneshot when dropped: proves a node future was dropped.
#[derive(Debug)]
pub struct OnDrop(Option<oneshot::Sender<()>>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// A node body that never finishes: it reports that it started, then waits forever
/// holding a guard that reports when its future is dropped.
#[derive(Debug, Clone)]
pub struct Blocker {
    started: mpsc::UnboundedSender<()>,
    dropped: Arc<Mutex<Vec<oneshot::Sender<()>>>>,
}

/// The test's end of a [`Blocker`].
#[derive(Debug)]
pub struct BlockerProbe {
    started: mpsc::UnboundedReceiver<()>,
    dropped: Arc<Mutex<Vec<oneshot::Sender<()>>>>,
}

pub fn blocker() -> (Blocker, BlockerProbe) {
    let (tx, rx) = mpsc::unbounded_channel();
    let dropped = Arc::new(Mutex::new(Vec::new()));
    (
        Blocker {
            started: tx,
            dropped: dropped.clone(),
        },
        BlockerProbe {
            started: rx,
            dropped,
        },
    )
}

impl Blocker {
    /// Blocks forever (until the future is dropped).
    pub async fn block(&self) {
        let guard = OnDrop(self.dropped.lock().unwrap().pop());
        let _ = self.started.send(());
        std::future::pending::<()>().await;
        drop(guard);
    }
}

impl BlockerProbe {
    /// Arms the next blocking attempt with a drop report and returns its receiver.
    pub fn arm(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.dropped.lock().unwrap().push(tx);
        rx
    }

    /// Waits until a blocking node has started.
    pub async fn started(&mut self) {
        within("a blocking node to start", self.started.recv())
            .await
            .expect("blocker alive");
    }
}

/// Execution counters per node name.
#[derive(Debug, Default)]
pub struct Counters(Mutex<std::collections::BTreeMap<String, Arc<AtomicUsize>>>);

impl Counters {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn get(&self, node: &str) -> Arc<AtomicUsize> {
        self.0
            .lock()
            .unwrap()
            .entry(node.to_owned())
            .or_default()
            .clone()
    }

    pub fn hit(&self, node: &str) -> usize {
        self.get(node).fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn count(&self, node: &str) -> usize {
        self.get(node).load(Ordering::SeqCst)
    }
}

/// A fresh engine over a fresh memory store.
pub fn memory_engine(options: EngineOptions) -> (Arc<MemoryStore>, Engine) {
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::with_options(store.clone(), options);
    (store, engine)
}

/// The kinds of `events`, in order.
pub fn kinds(events: &[Event]) -> Vec<oris_core::event::EventKind> {
    events.iter().map(|e| e.body.kind()).collect()
}

/// How many of `events` are of `kind`.
pub fn count_kind(events: &[Event], kind: oris_core::event::EventKind) -> usize {
    events.iter().filter(|e| e.body.kind() == kind).count()
}

/// The interrupts a paused outcome waits on; fails the test on any other outcome.
#[track_caller]
pub fn paused<S: std::fmt::Debug>(
    out: &oris_runtime::RunOutcome<S>,
) -> Vec<oris_core::status::PendingInterrupt> {
    match out {
        oris_runtime::RunOutcome::Interrupted { interrupts, .. } => interrupts.clone(),
        other => panic!("expected the run to pause at an interrupt, got {other:?}"),
    }
}
