//! The simulated graph and how far a run of it got.
//!
//! A run's graph is a fixed sequence of supersteps, each of one to three tasks (nodes
//! `n<superstep>_<task>`); its shape is spelled in the run's graph version (`s3-1-2`: three
//! tasks, then one, then two), so a worker knows the graph from the run record alone, as a
//! real worker knows it by (graph, version). The log of a run is what the runtime writes:
//! `RunStarted` with the first superstep's tasks, one `NodeCompleted` per task, the last one
//! of a superstep carrying the boundary, and `RunCompleted` after the last boundary (or a
//! `RunCancelled` at any point).

use std::collections::BTreeSet;

use oris_core::event::{Barriers, Boundary, Event, EventBody, Task};
use oris_core::id::RunId;

use super::Invariant;

/// The graph name of every simulated run.
pub const GRAPH: &str = "sim";

/// The graph version spelling `shape`.
pub fn version_of(shape: &[u32]) -> String {
    let parts: Vec<String> = shape.iter().map(u32::to_string).collect();
    format!("s{}", parts.join("-"))
}

/// The shape a graph version spells, if it is one of [`version_of`].
pub fn shape_of(version: &str) -> Option<Vec<u32>> {
    let shape: Vec<u32> = version
        .strip_prefix('s')?
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    (!shape.is_empty() && shape.iter().all(|n| *n > 0)).then_some(shape)
}

/// The name of task `task` of superstep `superstep`.
pub fn node(superstep: u32, task: u32) -> String {
    format!("n{superstep}_{task}")
}

/// The boundary whose next superstep is `superstep` of `shape` (empty past the end).
pub fn boundary(shape: &[u32], superstep: u32) -> Boundary {
    let n = shape.get(superstep as usize).copied().unwrap_or(0);
    Boundary {
        next: (0..n).map(|t| Task::Node(node(superstep, t))).collect(),
        barriers: Barriers::new(),
    }
}

/// How a run ended, as its log says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `RunCompleted`.
    Completed,
    /// `RunCancelled`.
    Cancelled,
    /// `RunFailed`.
    Failed,
}

/// Where a run is, folded from its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The superstep being executed.
    pub superstep: u32,
    /// Its number of tasks.
    pub tasks: u32,
    /// Its tasks completed so far.
    pub done: BTreeSet<u32>,
    /// Set once the run's terminal event is in the log.
    pub ended: Option<Ended>,
}

impl Progress {
    /// The progress right after a `RunStarted` whose boundary is `first`.
    pub fn started(first: &Boundary) -> Self {
        Progress {
            superstep: 0,
            tasks: first.next.len() as u32,
            done: BTreeSet::new(),
            ended: None,
        }
    }

    /// The tasks of the current superstep not completed yet.
    pub fn remaining(&self) -> Vec<u32> {
        (0..self.tasks).filter(|t| !self.done.contains(t)).collect()
    }

    /// Applies the next event of the run, checking it may come next.
    ///
    /// # Errors
    /// The invariant it breaks and how: a task completed twice, a completion of a superstep
    /// that is not the current one, a boundary before every task of its superstep completed,
    /// anything after the terminal event.
    pub fn apply(&mut self, e: &Event) -> Result<(), (Invariant, String)> {
        let at = |what: String| format!("seq {}: {what}", e.seq);
        if let Some(end) = self.ended {
            return Err((
                Invariant::TerminalChanged,
                at(format!(
                    "{} written after the run ended ({end:?})",
                    e.body.kind().as_str()
                )),
            ));
        }
        match &e.body {
            EventBody::NodeCompleted {
                superstep,
                task,
                boundary,
                ..
            } => {
                if *superstep != self.superstep {
                    return Err((
                        Invariant::DoubleCompletion,
                        at(format!(
                            "task {task} of superstep {superstep} completed while the run is at \
                             superstep {} (its superstep was already closed)",
                            self.superstep
                        )),
                    ));
                }
                if *task >= self.tasks {
                    return Err((
                        Invariant::LogShape,
                        at(format!(
                            "task {task} of superstep {superstep}, which has {} tasks",
                            self.tasks
                        )),
                    ));
                }
                if !self.done.insert(*task) {
                    return Err((
                        Invariant::DoubleCompletion,
                        at(format!(
                            "task {task} of superstep {superstep} completed a second time"
                        )),
                    ));
                }
                if let Some(b) = boundary {
                    if self.done.len() as u32 != self.tasks {
                        return Err((
                            Invariant::LogShape,
                            at(format!(
                                "boundary of superstep {superstep} with tasks {:?} still open",
                                self.remaining()
                            )),
                        ));
                    }
                    self.superstep += 1;
                    self.tasks = b.next.len() as u32;
                    self.done.clear();
                }
                Ok(())
            }
            EventBody::RunCompleted => {
                if self.tasks != 0 {
                    return Err((
                        Invariant::LogShape,
                        at(format!(
                            "RunCompleted while superstep {} has {} tasks",
                            self.superstep, self.tasks
                        )),
                    ));
                }
                self.ended = Some(Ended::Completed);
                Ok(())
            }
            EventBody::RunCancelled { .. } => {
                self.ended = Some(Ended::Cancelled);
                Ok(())
            }
            EventBody::RunFailed { .. } => {
                self.ended = Some(Ended::Failed);
                Ok(())
            }
            other => Err((
                Invariant::LogShape,
                at(format!(
                    "unexpected {} in a simulated run",
                    other.kind().as_str()
                )),
            )),
        }
    }
}

/// Folds a thread's whole log: the progress of each of its runs, in log order.
///
/// # Errors
/// The invariant the log breaks: seqs not contiguous from 1, runs interleaved (an event of
/// a run that is not the latest, or a run starting before the previous one ended), and
/// whatever [`Progress::apply`] refuses.
pub fn fold_thread(events: &[Event]) -> Result<Vec<(RunId, Progress)>, (Invariant, String)> {
    let mut runs: Vec<(RunId, Progress)> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if e.seq.0 != i as u64 + 1 {
            return Err((
                Invariant::LogShape,
                format!("event {i} has seq {}, expected {}", e.seq, i + 1),
            ));
        }
        if let EventBody::RunStarted { boundary, .. } = &e.body {
            if let Some((prev, p)) = runs.last()
                && p.ended.is_none()
            {
                return Err((
                    Invariant::LogShape,
                    format!("seq {}: a run starts while run {prev} has not ended", e.seq),
                ));
            }
            if runs.iter().any(|(r, _)| *r == e.run_id) {
                return Err((
                    Invariant::DoubleCompletion,
                    format!("seq {}: run {} started a second time", e.seq, e.run_id),
                ));
            }
            runs.push((e.run_id, Progress::started(boundary)));
            continue;
        }
        match runs.last_mut() {
            Some((r, p)) if *r == e.run_id => p.apply(e)?,
            _ => {
                return Err((
                    Invariant::LogShape,
                    format!(
                        "seq {}: event of run {}, which is not the thread's latest run",
                        e.seq, e.run_id
                    ),
                ));
            }
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build;

    #[test]
    fn versions_spell_shapes() {
        assert_eq!(version_of(&[3, 1, 2]), "s3-1-2");
        assert_eq!(shape_of("s3-1-2"), Some(vec![3, 1, 2]));
        assert_eq!(shape_of("v1"), None);
        assert_eq!(shape_of("s0"), None);
        assert_eq!(shape_of("s"), None);
    }

    fn done(run: RunId, seq: u64, s: u32, t: u32, b: Option<Boundary>) -> Event {
        build::event(
            run,
            seq,
            EventBody::NodeCompleted {
                superstep: s,
                task: t,
                node: node(s, t),
                attempt: 1,
                update: build::payload("{}"),
                boundary: b,
            },
        )
    }

    #[test]
    fn the_fold_follows_a_run_and_refuses_a_second_completion() {
        let shape = [2, 1];
        let t = build::thread_id("fold");
        let rec = build::run_record(&t, GRAPH, 1);
        let r = rec.run_id;
        let mut started = build::started(&rec, 1);
        if let EventBody::RunStarted { boundary: b, .. } = &mut started.body {
            *b = boundary(&shape, 0);
        }
        let mut log = vec![
            started,
            done(r, 2, 0, 1, None),
            done(r, 3, 0, 0, Some(boundary(&shape, 1))),
            done(r, 4, 1, 0, Some(boundary(&shape, 2))),
            build::run_completed(r, 5),
        ];
        let runs = fold_thread(&log).expect("a valid log");
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].1.ended, Some(Ended::Completed));

        // The same task twice, and a task of a closed superstep.
        let mut twice = log[..2].to_vec();
        twice.push(done(r, 3, 0, 1, None));
        assert_eq!(
            fold_thread(&twice).unwrap_err().0,
            Invariant::DoubleCompletion
        );
        log.truncate(3);
        log.push(done(r, 4, 0, 0, None));
        assert_eq!(
            fold_thread(&log).unwrap_err().0,
            Invariant::DoubleCompletion
        );
        // A gap in seqs.
        log.truncate(2);
        log.push(done(r, 4, 0, 0, None));
        assert_eq!(fold_thread(&log).unwrap_err().0, Invariant::LogShape);
    }
}
