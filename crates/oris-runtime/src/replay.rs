//! Rebuilding a thread from its log: the fold of events through the reducers.
//!
//! This is the one place where stored events become typed state. The live driver applies
//! the same updates in the same (task) order, so a fold of the log reproduces the state the
//! run saw, bit for bit.

use std::collections::BTreeMap;

use oris_core::event::{
    Barriers, Boundary, DecodeError, Event, EventBody, Origin, Payload, RunSettings, Task,
};
use oris_core::id::{RunId, Seq, ThreadId, Timestamp};
use oris_core::state::{INPUT_WRITER, State};
use oris_core::store::{RunRecord, Snapshot, Store};

use crate::error::Error;
use crate::record::{Records, apply_record};

const PAGE: usize = 1024;

/// Where an unfinished run stands.
#[derive(Debug)]
pub(crate) struct Progress<U> {
    pub run_id: RunId,
    pub settings: RunSettings,
    pub graph_version: String,
    pub superstep: u32,
    pub tasks: Vec<Task>,
    pub barriers: Barriers,
    /// Completed tasks of the current superstep, by task index.
    pub done: BTreeMap<u32, U>,
    /// Last failed attempt per task of the current superstep.
    pub failed: BTreeMap<u32, u32>,
    /// When the next attempt of a failed task is due (its last `NodeFailed.retry_at`), so
    /// that a resumed run keeps the backoff instead of retrying at once.
    pub retry_at: BTreeMap<u32, Timestamp>,
    /// Recorded calls (steps, interrupts) of the current superstep's tasks.
    pub records: Records,
    /// Where the run comes from, if it replays a checkpoint or starts a fork.
    pub origin: Option<Origin>,
}

/// A thread rebuilt from snapshot + events.
#[derive(Debug)]
pub(crate) struct Folded<S: State> {
    pub state: S,
    pub head: Seq,
    /// Seq of the last event that closed a superstep.
    pub last_boundary: Option<Seq>,
    /// Supersteps closed since the snapshot the fold started from.
    pub since_snapshot: u32,
    /// The run in progress at `head`, if any.
    pub progress: Option<Progress<S::Update>>,
    /// Origin of a `RunRebased` waiting for its `RunStarted`.
    rebased: Option<Origin>,
    /// Whether the run in progress is suspended (its last status event is `RunSuspended`).
    pub suspended: bool,
}

fn decode<T: serde::de::DeserializeOwned>(
    thread_id: &ThreadId,
    seq: Seq,
    what: &str,
    p: &Payload,
) -> Result<T, Error> {
    p.decode()
        .map_err(|DecodeError { path, message }| Error::Corrupt {
            thread_id: thread_id.clone(),
            seq: Some(seq),
            detail: format!("{what} field `{path}`: {message}"),
        })
}

impl<S: State> Folded<S> {
    fn empty() -> Self {
        Folded {
            state: S::default(),
            head: Seq::ZERO,
            last_boundary: None,
            since_snapshot: 0,
            progress: None,
            rebased: None,
            suspended: false,
        }
    }

    fn from_snapshot(
        thread_id: &ThreadId,
        snap: Snapshot,
        active: Option<(RunSettings, String, Option<Origin>)>,
    ) -> Result<Self, Error> {
        let state = decode(thread_id, snap.at_seq, "snapshot state", &snap.state)?;
        Ok(Folded {
            state,
            head: snap.at_seq,
            last_boundary: Some(snap.at_seq),
            since_snapshot: 0,
            progress: active.map(|(settings, graph_version, origin)| Progress {
                run_id: snap.run_id,
                settings,
                graph_version,
                superstep: snap.next_superstep,
                tasks: snap.boundary.next,
                barriers: snap.boundary.barriers,
                done: BTreeMap::new(),
                failed: BTreeMap::new(),
                retry_at: BTreeMap::new(),
                records: Records::new(),
                origin,
            }),
            rebased: None,
            suspended: false,
        })
    }

    /// Applies one event.
    pub fn apply(&mut self, thread_id: &ThreadId, e: &Event) -> Result<(), Error> {
        let corrupt = |detail: String| Error::Corrupt {
            thread_id: thread_id.clone(),
            seq: Some(e.seq),
            detail,
        };
        match &e.body {
            EventBody::RunStarted {
                graph_version,
                input,
                settings,
                boundary,
                ..
            } => {
                let update: S::Update = decode(thread_id, e.seq, "run input", input)?;
                self.state
                    .apply(vec![(INPUT_WRITER, update)])
                    .map_err(|err| corrupt(format!("input does not apply: {err}")))?;
                self.progress = Some(Progress {
                    run_id: e.run_id,
                    settings: settings.clone(),
                    graph_version: graph_version.clone(),
                    superstep: 0,
                    tasks: boundary.next.clone(),
                    barriers: boundary.barriers.clone(),
                    done: BTreeMap::new(),
                    failed: BTreeMap::new(),
                    retry_at: BTreeMap::new(),
                    records: Records::new(),
                    origin: self.rebased.take(),
                });
                self.last_boundary = Some(e.seq);
                self.suspended = false;
            }
            EventBody::NodeCompleted {
                task,
                update,
                boundary,
                ..
            } => {
                let p = self
                    .progress
                    .as_mut()
                    .ok_or_else(|| corrupt("node completion outside a run".into()))?;
                let update: S::Update = decode(thread_id, e.seq, "node update", update)?;
                p.done.insert(*task, update);
                if let Some(b) = boundary {
                    close_superstep(&mut self.state, p, b).map_err(corrupt)?;
                    self.last_boundary = Some(e.seq);
                    self.since_snapshot += 1;
                }
            }
            EventBody::NodeFailed {
                task,
                attempt,
                retry_at,
                ..
            } => {
                if let Some(p) = self.progress.as_mut() {
                    p.failed.insert(*task, *attempt);
                    match retry_at {
                        Some(at) => p.retry_at.insert(*task, *at),
                        None => p.retry_at.remove(task),
                    };
                }
            }
            EventBody::StepRecorded { .. }
            | EventBody::InterruptRaised { .. }
            | EventBody::InterruptResumed { .. }
            | EventBody::EventReceived { .. } => {
                let p = self
                    .progress
                    .as_mut()
                    .ok_or_else(|| corrupt("a recorded call outside a run".into()))?;
                apply_record(&mut p.records, &e.body);
            }
            EventBody::RunSuspended { .. } => self.suspended = true,
            EventBody::RunResumed => self.suspended = false,
            EventBody::RunRebased { base, origin } => {
                self.state = decode(thread_id, e.seq, "rebased state", base)?;
                self.rebased = Some(origin.clone());
            }
            EventBody::HistoryPruned { state, .. } => {
                // The log starts here: the history before was pruned into this state.
                self.state = decode(thread_id, e.seq, "pruned base state", state)?;
                self.progress = None;
                self.suspended = false;
                self.last_boundary = Some(e.seq);
            }
            EventBody::StateUpdated { as_node, update } => {
                let update: S::Update = decode(thread_id, e.seq, "state edit", update)?;
                self.state
                    .apply(vec![(as_node.as_str(), update)])
                    .map_err(|err| corrupt(format!("state edit does not apply: {err}")))?;
            }
            EventBody::RunCompleted
            | EventBody::RunFailed { .. }
            | EventBody::RunCancelled { .. } => {
                self.progress = None;
                self.suspended = false;
            }
            // Future event kinds must be handled explicitly.
            #[allow(unreachable_patterns)]
            other => return Err(corrupt(format!("unknown event kind {:?}", other.kind()))),
        }
        self.head = e.seq;
        Ok(())
    }
}

/// Merges the completed tasks of the superstep in task order and moves to `boundary`.
fn close_superstep<S: State>(
    state: &mut S,
    p: &mut Progress<S::Update>,
    boundary: &Boundary,
) -> Result<(), String> {
    let done = std::mem::take(&mut p.done);
    merge(state, &p.tasks, done)
        .map_err(|e| format!("superstep {} does not merge: {e}", p.superstep))?;
    p.superstep += 1;
    p.tasks = boundary.next.clone();
    p.barriers = boundary.barriers.clone();
    p.failed.clear();
    p.retry_at.clear();
    p.records.clear();
    Ok(())
}

/// Rebuilds a thread up to `upto` (inclusive), starting from the latest snapshot at or
/// before it unless `from_scratch`.
pub(crate) async fn fold<S: State>(
    store: &dyn Store,
    thread_id: &ThreadId,
    upto: Seq,
    from_scratch: bool,
) -> Result<Folded<S>, Error> {
    fold_known(store, thread_id, upto, from_scratch, None).await
}

/// [`fold`], given a run record the caller already read (`known`): when the snapshot the
/// fold starts from belongs to that run, the record is not read again, and when that run
/// has ended and the fold goes to the end of the log, its settings are not read either
/// (they only matter to a driver, and the fold passes the run's end).
///
/// Reads: the snapshot (unless `from_scratch`), then the events after it a page at a time;
/// a page shorter than asked for is the end of the log (no read to find it empty).
pub(crate) async fn fold_known<S: State>(
    store: &dyn Store,
    thread_id: &ThreadId,
    upto: Seq,
    from_scratch: bool,
    known: Option<&RunRecord>,
) -> Result<Folded<S>, Error> {
    let snapshot = if from_scratch {
        None
    } else {
        store.snapshot(thread_id, upto).await?
    };
    let mut folded = match snapshot {
        None => Folded::empty(),
        Some(snap) => {
            // The snapshot records the boundary; the run's settings are in its RunStarted
            // event. Events after the snapshot (including the run's end) settle the rest.
            let run = match known.filter(|r| r.run_id == snap.run_id) {
                Some(r) => Some(r.clone()),
                None => store.run(snap.run_id).await?,
            };
            let active = match run {
                // Its end is in the log after the snapshot: the fold passes it and drops
                // the progress these settings would go into.
                Some(run) if run.status.is_terminal() && upto == Seq(u64::MAX) => {
                    Some((neutral_settings(), run.graph_version.clone(), None))
                }
                Some(run) => {
                    // A rebased run opens with `RunRebased`, then `RunStarted`.
                    let mut first = store
                        .events(thread_id, Seq(run.first_seq.0 - 1), 2)
                        .await?
                        .into_iter()
                        .map(|e| e.body);
                    let (origin, start) = match first.next() {
                        Some(EventBody::RunRebased { origin, .. }) => (Some(origin), first.next()),
                        other => (None, other),
                    };
                    match start {
                        Some(EventBody::RunStarted {
                            settings,
                            graph_version,
                            ..
                        }) => Some((settings, graph_version, origin)),
                        // The start of a finished run may have been pruned away. Its settings
                        // only matter to a driver, and a finished run is never driven again:
                        // fold its remaining events with neutral ones.
                        _ if run.status.is_terminal() => {
                            Some((neutral_settings(), run.graph_version.clone(), None))
                        }
                        _ => {
                            return Err(Error::Corrupt {
                                thread_id: thread_id.clone(),
                                seq: Some(run.first_seq),
                                detail: "a run's first event is not run_started".into(),
                            });
                        }
                    }
                }
                None => {
                    return Err(Error::Corrupt {
                        thread_id: thread_id.clone(),
                        seq: Some(snap.at_seq),
                        detail: format!("snapshot names unknown run {}", snap.run_id),
                    });
                }
            };
            Folded::from_snapshot(thread_id, snap, active)?
        }
    };
    loop {
        if folded.head >= upto {
            break;
        }
        let limit = PAGE.min((upto.0 - folded.head.0) as usize);
        let events = store.events(thread_id, folded.head, limit).await?;
        for e in &events {
            folded.apply(thread_id, e)?;
        }
        // `Store::events` returns up to `limit` events: fewer means the log ended there
        // when it was read (a later commit is one the fold may as well have preceded).
        if events.len() < limit {
            break;
        }
    }
    Ok(folded)
}

/// Settings for a finished run whose own cannot be (or need not be) read: only a driver
/// uses them, and a finished run is never driven again.
fn neutral_settings() -> RunSettings {
    RunSettings {
        durability: oris_core::event::Durability::Sync,
        deadline: None,
        superstep_limit: u32::MAX,
        interrupt_before: Vec::new(),
        interrupt_after: Vec::new(),
    }
}

/// Merges one superstep's completed updates into `state` in task order — the single merge
/// used both by the live driver and by every replay, so they cannot disagree.
///
/// Writers are named by node, and fan-out tasks additionally by their task index
/// (`worker[3]`), so a conflict between two tasks of one node names both. A reducer that
/// panics is reported as an error.
pub(crate) fn merge<S: State>(
    state: &mut S,
    tasks: &[Task],
    done: BTreeMap<u32, S::Update>,
) -> Result<(), String> {
    let mut labels = Vec::with_capacity(done.len());
    for &i in done.keys() {
        let task = tasks
            .get(i as usize)
            .ok_or_else(|| format!("task {i} is not part of the superstep"))?;
        labels.push(match task {
            Task::Node(n) => n.clone(),
            Task::Send { node, .. } => format!("{node}[{i}]"),
        });
    }
    let updates: Vec<(&str, S::Update)> = labels
        .iter()
        .map(String::as_str)
        .zip(done.into_values())
        .collect();
    // `State::apply` leaves the state unchanged on error; after a panicking reducer the
    // state is unspecified, and both callers abandon it (the run fails, the fold errors).
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state.apply(updates))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(p) => Err(format!(
            "a reducer panicked: {}",
            crate::driver::panic_message(&p)
        )),
    }
}
