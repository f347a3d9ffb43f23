//! The simulated world: workers, an operator, a network that may deliver a request twice,
//! and the manual clock, acting on the store one step at a time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use oris_core::event::{Durability, Event, EventBody, RunSettings};
use oris_core::id::{CheckpointId, RunId, Seq, ThreadId, Timestamp};
use oris_core::status::RunStatus;
use oris_core::store::{
    self, ClaimRequest, Commit, Fence, Receipt, RunRecord, RunWrite, Store, ThreadRecord,
};

use super::model::{self, GRAPH, Progress};
use super::rng::SimRng;
use super::{Invariant, SimConfig, SimFailure, SimReport, SimStats};
use crate::build;
use crate::check::ALL;

/// Where the simulated clock starts: 2200-01-01T00:00:00Z, far past the store's own clock,
/// which judges the fences of commits (see the module documentation).
pub(super) const BASE: Timestamp = Timestamp(7_258_118_400_000);

/// How much of a step the clock advances at most in the fault phase.
const STEP_MS: u64 = 400;

/// How much the clock advances per drain round.
const DRAIN_TICK: Duration = Duration::from_millis(500);

/// What a worker knows about a run it claimed.
#[derive(Debug, Clone)]
pub(super) struct Held {
    /// The run (index into `Sim::runs`).
    pub(super) run: usize,
    /// Its fence, from the claim.
    pub(super) fence: Fence,
    /// When the lease ends, as the worker last learned it.
    pub(super) expires_at: Timestamp,
    /// The thread's head as the worker believes it.
    pub(super) head: Seq,
    /// How far the run got, as the worker believes it.
    pub(super) progress: Progress,
}

/// A simulated worker.
#[derive(Debug)]
pub(super) struct Worker {
    pub(super) id: String,
    /// A paused worker does nothing (no renewal, no commit) until it resumes.
    pub(super) paused: bool,
    pub(super) held: Vec<Held>,
}

/// A run the operator enqueued.
#[derive(Debug)]
pub(super) struct SimRun {
    pub(super) run_id: RunId,
    /// Index into `Sim::threads`.
    pub(super) thread: usize,
    pub(super) shape: Vec<u32>,
}

/// A thread, with every event that landed on it by the store's receipts.
#[derive(Debug)]
pub(super) struct SimThread {
    pub(super) id: ThreadId,
    pub(super) landed: Vec<Event>,
}

/// A request the network may deliver again.
#[derive(Debug)]
struct Sent {
    commit: Commit,
    what: String,
}

/// The store as read after the last step.
#[derive(Debug, Default)]
pub(super) struct Observed {
    pub(super) runs: BTreeMap<RunId, RunRecord>,
    /// By index of `Sim::threads`.
    pub(super) threads: Vec<(Option<ThreadRecord>, Vec<Event>)>,
}

type Outcome = Result<Receipt, store::Error>;

#[derive(Debug, Clone, Copy)]
enum Action {
    Tick(usize),
    Enqueue,
    Cancel,
    CrashBefore(usize),
    CrashAfter(usize),
    LostAck(usize),
    Redeliver,
    Pause(usize),
    Resume(usize),
    Jump,
    Reap,
    Release(usize),
}

/// One simulation.
#[derive(Debug)]
pub(super) struct Sim {
    pub(super) store: Arc<dyn Store>,
    pub(super) cfg: SimConfig,
    pub(super) seed: u64,
    rng: SimRng,
    pub(super) now: Timestamp,
    pub(super) step: usize,
    pub(super) workers: Vec<Worker>,
    pub(super) runs: Vec<SimRun>,
    pub(super) by_id: BTreeMap<RunId, usize>,
    pub(super) threads: Vec<SimThread>,
    network: Vec<Sent>,
    pub(super) obs: Observed,
    /// Who each (run, epoch) was granted to by a claim.
    pub(super) grants: BTreeMap<(RunId, u64), String>,
    pub(super) stats: SimStats,
    trace: Vec<String>,
}

impl Sim {
    pub(super) fn new(store: Arc<dyn Store>, seed: u64, cfg: SimConfig) -> Self {
        let workers = (0..cfg.workers.max(1))
            .map(|i| Worker {
                id: format!("w{i}"),
                paused: false,
                held: Vec::new(),
            })
            .collect();
        Sim {
            store,
            seed,
            rng: SimRng::new(seed),
            now: BASE,
            step: 0,
            workers,
            runs: Vec::new(),
            by_id: BTreeMap::new(),
            threads: Vec::new(),
            network: Vec::new(),
            obs: Observed::default(),
            grants: BTreeMap::new(),
            stats: SimStats {
                seeds: 1,
                ..SimStats::default()
            },
            trace: Vec::new(),
            cfg,
        }
    }

    /// The failure of `invariant` at this step.
    pub(super) fn fail(&self, invariant: Invariant, detail: impl Into<String>) -> SimFailure {
        SimFailure {
            seed: self.seed,
            step: self.step,
            invariant,
            detail: detail.into(),
            trace: self.trace.clone(),
        }
    }

    /// Adds a line to the trace.
    fn note(&mut self, line: String) {
        let at = self.t(self.now);
        self.trace.push(format!("{:>4} {at:>8} {line}", self.step));
    }

    /// A simulated time as an offset from the start.
    pub(super) fn t(&self, at: Timestamp) -> String {
        format!("+{:.1}s", (at.0 - BASE.0) as f64 / 1000.0)
    }

    /// The label of a run in the trace: `#<index>`.
    pub(super) fn label(&self, run: RunId) -> String {
        self.by_id
            .get(&run)
            .map_or_else(|| run.to_string(), |i| format!("#{i}"))
    }

    fn thread_index(&self, id: &ThreadId) -> Option<usize> {
        self.threads.iter().position(|t| t.id == *id)
    }

    pub(super) async fn run(mut self) -> Result<SimReport, SimFailure> {
        self.stats.reap_supported = match self.store.reap_leases(self.now, 1).await {
            Ok(_) => true,
            Err(store::Error::Incompatible(_)) => false,
            Err(e) => return Err(self.fail(Invariant::StoreError, format!("reap_leases: {e}"))),
        };
        self.note(format!(
            "seed {}: {} workers × {} runs, ttl {:?}, faults {}, reaper {}",
            self.seed,
            self.workers.len(),
            self.cfg.capacity,
            self.cfg.ttl,
            if self.cfg.faults { "on" } else { "off" },
            if self.stats.reap_supported {
                "on"
            } else {
                "not supported by the store"
            }
        ));
        for _ in 0..self.cfg.steps {
            self.step += 1;
            self.now = self
                .now
                .plus(Duration::from_millis(self.rng.range(0, STEP_MS)));
            let action = self.choose();
            self.act(action).await?;
            self.observe().await?;
        }
        self.drain().await?;
        self.stats.steps = self.step as u64;
        Ok(SimReport {
            stats: self.stats,
            trace: self.trace,
        })
    }

    fn choose(&mut self) -> Action {
        let f = u32::from(self.cfg.faults);
        let n = self.workers.len();
        let any_paused = self.workers.iter().any(|w| w.paused);
        let unfinished = self.unfinished().len();
        let weights = [
            60,                                                 // tick
            u32::from(self.runs.len() < self.cfg.max_runs) * 4, // enqueue
            f * u32::from(unfinished > 0),                      // cancel
            f * 2,                                              // crash before a commit
            f * 2,                                              // crash after a commit
            f * 3,                                              // lost receipt
            f * 3 * u32::from(!self.network.is_empty()),        // redelivery
            f * 2,                                              // pause
            4 * u32::from(any_paused),                          // resume
            f * 2,                                              // clock jump
            3 * u32::from(self.stats.reap_supported),           // reap
            2,                                                  // release
        ];
        let worker = self.rng.below(n as u64) as usize;
        match self.rng.weighted(&weights) {
            Some(1) => Action::Enqueue,
            Some(2) => Action::Cancel,
            Some(3) => Action::CrashBefore(worker),
            Some(4) => Action::CrashAfter(worker),
            Some(5) => Action::LostAck(worker),
            Some(6) => Action::Redeliver,
            Some(7) => Action::Pause(worker),
            Some(8) => {
                let paused: Vec<usize> = (0..n).filter(|i| self.workers[*i].paused).collect();
                Action::Resume(paused[self.rng.below(paused.len() as u64) as usize])
            }
            Some(9) => Action::Jump,
            Some(10) => Action::Reap,
            Some(11) => Action::Release(worker),
            _ => Action::Tick(worker),
        }
    }

    async fn act(&mut self, action: Action) -> Result<(), SimFailure> {
        match action {
            Action::Tick(w) => self.tick(w).await,
            Action::Enqueue => self.enqueue().await,
            Action::Cancel => self.cancel().await,
            Action::CrashBefore(w) => {
                let id = self.workers[w].id.clone();
                let what = match self.workers[w].held.first() {
                    Some(h) => format!("before its next commit of {}", self.label_of(h.run)),
                    None => "holding nothing".to_owned(),
                };
                let n = self.crash(w);
                self.note(format!("{id} crashes {what}, forgets {n} lease(s)"));
                Ok(())
            }
            Action::CrashAfter(w) => self.crash_after_commit(w).await,
            Action::LostAck(w) => self.lost_ack(w).await,
            Action::Redeliver => self.redeliver().await,
            Action::Pause(w) => {
                let worker = &mut self.workers[w];
                if worker.paused {
                    return self.tick(w).await;
                }
                worker.paused = true;
                let (id, n) = (worker.id.clone(), worker.held.len());
                self.stats.pauses += 1;
                self.note(format!("{id} pauses holding {n} lease(s)"));
                Ok(())
            }
            Action::Resume(w) => {
                self.workers[w].paused = false;
                let id = self.workers[w].id.clone();
                self.note(format!("{id} resumes with what it knew"));
                Ok(())
            }
            Action::Jump => {
                let ttl = self.cfg.ttl.as_millis() as u64;
                let by = self.rng.range(ttl / 2, ttl * 2);
                self.now = self.now.plus(Duration::from_millis(by));
                self.stats.clock_jumps += 1;
                self.note(format!("clock jumps {:.1}s", by as f64 / 1000.0));
                Ok(())
            }
            Action::Reap => self.reap().await,
            Action::Release(w) => {
                if self.workers[w].paused || self.workers[w].held.is_empty() {
                    return self.tick(w).await;
                }
                let h = self.rng.below(self.workers[w].held.len() as u64) as usize;
                self.release(w, h).await
            }
        }
    }

    fn label_of(&self, run: usize) -> String {
        format!("#{run}")
    }

    /// Runs not ended as last observed, by index.
    fn unfinished(&self) -> Vec<usize> {
        (0..self.runs.len())
            .filter(|i| {
                self.obs
                    .runs
                    .get(&self.runs[*i].run_id)
                    .is_some_and(|r| !r.status.is_terminal())
            })
            .collect()
    }

    /// A worker's ordinary step: commit, renew or claim, chosen at random.
    async fn tick(&mut self, w: usize) -> Result<(), SimFailure> {
        if self.workers[w].paused {
            let id = self.workers[w].id.clone();
            self.note(format!("{id} is paused"));
            return Ok(());
        }
        let held = self.workers[w].held.len();
        let weights = [
            6 * u32::from(held > 0),
            2 * u32::from(held > 0),
            3 * u32::from(held < self.cfg.capacity),
        ];
        let h = self.rng.below(held.max(1) as u64) as usize;
        match self.rng.weighted(&weights) {
            Some(0) => self.commit_next(w, h).await,
            Some(1) => self.renew(w, h).await,
            Some(2) => self.claim(w).await,
            _ => {
                let id = self.workers[w].id.clone();
                self.note(format!("{id} idles"));
                Ok(())
            }
        }
    }

    /// A well-behaved worker's step in the drain: renew a lease due within half its
    /// length, otherwise commit, otherwise claim.
    async fn polite_tick(&mut self, w: usize) -> Result<(), SimFailure> {
        let due = self.now.plus(self.cfg.ttl / 2);
        let worker = &self.workers[w];
        if let Some(h) = worker.held.iter().position(|h| h.expires_at <= due) {
            self.renew(w, h).await
        } else if !worker.held.is_empty() {
            self.commit_next(w, 0).await
        } else {
            self.claim(w).await
        }
    }

    /// Forgets everything the worker knew; returns how many leases it held.
    fn crash(&mut self, w: usize) -> usize {
        let worker = &mut self.workers[w];
        let n = worker.held.len();
        worker.held.clear();
        worker.paused = false;
        self.stats.crashes += 1;
        n
    }

    async fn claim(&mut self, w: usize) -> Result<(), SimFailure> {
        let id = self.workers[w].id.clone();
        let limit = self.cfg.capacity.saturating_sub(self.workers[w].held.len());
        if limit == 0 {
            self.note(format!("{id} is full"));
            return Ok(());
        }
        let request = ClaimRequest {
            worker_id: id.clone(),
            now: self.now,
            ttl: self.cfg.ttl,
            limit,
            graphs: Vec::new(),
        };
        let got = match self.store.claim(&request).await {
            Ok(got) => got,
            Err(e) => return Err(self.fail(Invariant::StoreError, format!("{id}'s claim: {e}"))),
        };
        if got.len() > limit {
            return Err(self.fail(
                Invariant::StoreError,
                format!("{id}'s claim of at most {limit} returned {}", got.len()),
            ));
        }
        let mut labels = Vec::new();
        for r in got {
            self.check_claim(&id, &r)?;
            self.grants.insert((r.run_id, r.lease_epoch), id.clone());
            let run = self.by_id[&r.run_id];
            let thread = self.runs[run].thread;
            let log = self.read_log(thread).await?;
            let progress = self.progress_in(&log, r.run_id)?;
            let expires_at = r.lease.as_ref().map_or(self.now, |l| l.expires_at);
            self.stats.claimed += 1;
            if r.lease_epoch > 1 {
                self.stats.reclaimed += 1;
            }
            labels.push(format!("#{run}@{}", r.lease_epoch));
            if progress.ended.is_some() {
                // The checks after this step report the disagreement of log and status.
                continue;
            }
            self.workers[w].held.push(Held {
                run,
                fence: Fence {
                    run_id: r.run_id,
                    epoch: r.lease_epoch,
                },
                expires_at,
                head: Seq(log.len() as u64),
                progress,
            });
        }
        self.note(format!(
            "{id} claims (limit {limit}) → [{}]",
            labels.join(", ")
        ));
        Ok(())
    }

    /// The progress of `run` in a thread's log.
    fn progress_in(&self, log: &[Event], run: RunId) -> Result<Progress, SimFailure> {
        let runs = model::fold_thread(log).map_err(|(i, d)| self.fail(i, d))?;
        runs.into_iter()
            .find(|(r, _)| *r == run)
            .map(|(_, p)| p)
            .ok_or_else(|| {
                self.fail(
                    Invariant::LogShape,
                    format!("run {} has no RunStarted in its log", self.label(run)),
                )
            })
    }

    pub(super) async fn read_log(&self, thread: usize) -> Result<Vec<Event>, SimFailure> {
        let id = &self.threads[thread].id;
        self.store
            .events(id, Seq::ZERO, ALL)
            .await
            .map_err(|e| self.fail(Invariant::StoreError, format!("events({id}): {e}")))
    }

    /// The next commit of held run `h` of worker `w`: one or two of the remaining tasks of
    /// its superstep, the boundary with the last, `RunCompleted` and the status after the
    /// last boundary. `None` when the worker believes nothing is left.
    fn next_commit(&mut self, w: usize, h: usize) -> Option<Commit> {
        let held = self.workers[w].held[h].clone();
        let run = &self.runs[held.run];
        let (run_id, shape, thread) = (run.run_id, run.shape.clone(), run.thread);
        let mut remaining = held.progress.remaining();
        if remaining.is_empty() {
            return None;
        }
        let k = if remaining.len() >= 2 && self.rng.chance(1, 3) {
            2
        } else {
            1
        };
        let mut picked = Vec::new();
        for _ in 0..k {
            let i = self.rng.below(remaining.len() as u64) as usize;
            picked.push(remaining.remove(i));
        }
        let closes = remaining.is_empty();
        let s = held.progress.superstep;
        let mut seq = held.head.0;
        let mut events = Vec::new();
        for (j, t) in picked.iter().enumerate() {
            seq += 1;
            let boundary =
                (closes && j + 1 == picked.len()).then(|| model::boundary(&shape, s + 1));
            events.push(Event {
                seq: Seq(seq),
                run_id,
                at: self.now,
                body: EventBody::NodeCompleted {
                    superstep: s,
                    task: *t,
                    node: model::node(s, *t),
                    attempt: 1,
                    update: build::payload(&format!(r#"{{"s":{s},"t":{t}}}"#)),
                    boundary,
                },
            });
        }
        let mut run_write = None;
        if closes && s as usize + 1 == shape.len() {
            let checkpoint = CheckpointId(Seq(seq));
            events.push(Event {
                seq: Seq(seq + 1),
                run_id,
                at: self.now,
                body: EventBody::RunCompleted,
            });
            run_write = Some(RunWrite::SetStatus {
                run_id,
                status: RunStatus::Completed { checkpoint },
            });
        }
        Some(Commit {
            thread_id: self.threads[thread].id.clone(),
            expected_head: held.head,
            events,
            run: run_write,
            snapshot: None,
            durability: Durability::Sync,
            fence: Some(held.fence),
        })
    }

    /// A short description of a commit for the trace.
    fn describe(&self, c: &Commit) -> String {
        let mut tasks = Vec::new();
        let mut run = None;
        for e in &c.events {
            run = Some(e.run_id);
            match &e.body {
                EventBody::NodeCompleted {
                    superstep,
                    task,
                    boundary,
                    ..
                } => tasks.push(format!(
                    "s{superstep}t{task}{}",
                    if boundary.is_some() { "|" } else { "" }
                )),
                other => tasks.push(other.kind().as_str().to_owned()),
            }
        }
        let fence = c
            .fence
            .map_or_else(|| "unfenced".to_owned(), |f| format!("epoch {}", f.epoch));
        format!(
            "{} [{}] at head {}, {fence}",
            run.map_or_else(String::new, |r| self.label(r)),
            tasks.join(" "),
            c.expected_head
        )
    }

    /// Sends a commit and checks what landed: a landed commit's receipt and fence, and the
    /// landed events join the thread's shadow log. `Conflict` and `LeaseLost` are answers
    /// the protocol expects; any other error is a failure.
    async fn send(&mut self, commit: Commit, from: &str) -> Result<Outcome, SimFailure> {
        let thread = self.thread_index(&commit.thread_id).ok_or_else(|| {
            self.fail(
                Invariant::StoreError,
                format!("commit on unknown thread {}", commit.thread_id),
            )
        })?;
        let pre = commit
            .fence
            .and_then(|f| self.obs.runs.get(&f.run_id).cloned());
        let want = commit.expected_head.0 + commit.events.len() as u64;
        match self.store.commit(commit.clone()).await {
            Ok(receipt) => {
                self.stats.commits += 1;
                if let Some(f) = commit.fence {
                    let current = pre
                        .as_ref()
                        .is_some_and(|r| r.lease_epoch == f.epoch && r.lease.is_some());
                    if !current {
                        let (epoch, lease) = pre.as_ref().map_or((0, "no record".into()), |r| {
                            (
                                r.lease_epoch,
                                r.lease.as_ref().map_or_else(
                                    || "no lease (released, reaped or ended)".to_owned(),
                                    |l| format!("held by {}", l.worker_id),
                                ),
                            )
                        });
                        return Err(self.fail(
                            Invariant::StaleCommit,
                            format!(
                                "{from}'s commit {} landed, but the run was at epoch {epoch} \
                                 with {lease}",
                                self.describe(&commit)
                            ),
                        ));
                    }
                }
                if receipt.head.0 != want {
                    return Err(self.fail(
                        Invariant::LogShape,
                        format!(
                            "{from}'s commit {} landed with head {}, expected {want}",
                            self.describe(&commit),
                            receipt.head
                        ),
                    ));
                }
                self.threads[thread].landed.extend(commit.events);
                Ok(Ok(receipt))
            }
            Err(e @ store::Error::Conflict { .. }) => {
                self.stats.conflicts += 1;
                Ok(Err(e))
            }
            Err(e @ store::Error::LeaseLost { .. }) if commit.fence.is_some() => {
                self.stats.fenced_out += 1;
                Ok(Err(e))
            }
            Err(e) => Err(self.fail(
                Invariant::StoreError,
                format!("{from}'s commit {}: {e}", self.describe(&commit)),
            )),
        }
    }

    fn outcome_text(o: &Outcome) -> String {
        match o {
            Ok(r) => format!("landed, head {}", r.head),
            Err(store::Error::LeaseLost { reason, .. }) => format!("lease lost ({reason})"),
            Err(store::Error::Conflict { actual, .. }) => format!("conflict (head is {actual})"),
            Err(e) => e.to_string(),
        }
    }

    fn held_index(&self, w: usize, fence: Fence) -> Option<usize> {
        self.workers[w].held.iter().position(|h| h.fence == fence)
    }

    /// What the worker learns from the answer to its commit.
    async fn learn(
        &mut self,
        w: usize,
        commit: &Commit,
        outcome: &Outcome,
    ) -> Result<String, SimFailure> {
        let Some(fence) = commit.fence else {
            return Ok(String::new());
        };
        let Some(h) = self.held_index(w, fence) else {
            return Ok(String::new());
        };
        match outcome {
            Ok(receipt) => {
                let held = &mut self.workers[w].held[h];
                held.head = receipt.head;
                for e in &commit.events {
                    if let Err((i, d)) = held.progress.apply(e) {
                        return Err(self.fail(i, format!("the worker's own commit: {d}")));
                    }
                }
                if held.progress.ended.is_some() {
                    self.workers[w].held.remove(h);
                    return Ok("; run ended".to_owned());
                }
                Ok(String::new())
            }
            Err(store::Error::LeaseLost { .. }) => {
                self.workers[w].held.remove(h);
                Ok("; stops driving it".to_owned())
            }
            Err(_) => {
                // A conflict: someone wrote (a cancellation), or this worker's own commit
                // landed without it learning so. Read the log again and continue from it.
                let run = self.workers[w].held[h].run;
                let log = self.read_log(self.runs[run].thread).await?;
                let progress = self.progress_in(&log, fence.run_id)?;
                let held = &mut self.workers[w].held[h];
                held.head = Seq(log.len() as u64);
                held.progress = progress;
                if held.progress.ended.is_some() {
                    self.workers[w].held.remove(h);
                    return Ok("; re-read the log: run ended".to_owned());
                }
                let p = &self.workers[w].held[h].progress;
                Ok(format!(
                    "; re-read the log: superstep {}, open tasks {:?}",
                    p.superstep,
                    p.remaining()
                ))
            }
        }
    }

    async fn commit_next(&mut self, w: usize, h: usize) -> Result<(), SimFailure> {
        let id = self.workers[w].id.clone();
        let Some(commit) = self.next_commit(w, h) else {
            let run = self.workers[w].held.remove(h).run;
            self.note(format!("{id} has nothing left to commit on #{run}"));
            return Ok(());
        };
        let outcome = self.send(commit.clone(), &id).await?;
        let learned = self.learn(w, &commit, &outcome).await?;
        let line = format!(
            "{id} commits {} → {}{learned}",
            self.describe(&commit),
            Self::outcome_text(&outcome)
        );
        self.note(line);
        Ok(())
    }

    /// The commit lands but its receipt is lost: the worker sends the same commit again
    /// (a duplicate delivery), which must be refused, and continues from the log.
    async fn lost_ack(&mut self, w: usize) -> Result<(), SimFailure> {
        if self.workers[w].paused || self.workers[w].held.is_empty() {
            return self.tick(w).await;
        }
        let id = self.workers[w].id.clone();
        let h = self.rng.below(self.workers[w].held.len() as u64) as usize;
        let Some(commit) = self.next_commit(w, h) else {
            return self.commit_next(w, h).await;
        };
        let first = self.send(commit.clone(), &id).await?;
        if first.is_err() {
            let learned = self.learn(w, &commit, &first).await?;
            let line = format!(
                "{id} commits {} → {}{learned}",
                self.describe(&commit),
                Self::outcome_text(&first)
            );
            self.note(line);
            return Ok(());
        }
        self.stats.duplicates += 1;
        let again = self.send(commit.clone(), &id).await?;
        let learned = self.learn(w, &commit, &again).await?;
        let line = format!(
            "{id} commits {} → {} but the receipt is lost; sent again → {}{learned}",
            self.describe(&commit),
            Self::outcome_text(&first),
            Self::outcome_text(&again)
        );
        self.note(line);
        Ok(())
    }

    /// The worker sends a commit and crashes before it learns the answer; the network
    /// keeps the request and may deliver it again later.
    async fn crash_after_commit(&mut self, w: usize) -> Result<(), SimFailure> {
        let id = self.workers[w].id.clone();
        let commit = if self.workers[w].paused || self.workers[w].held.is_empty() {
            None
        } else {
            let h = self.rng.below(self.workers[w].held.len() as u64) as usize;
            self.next_commit(w, h)
        };
        let Some(commit) = commit else {
            let n = self.crash(w);
            self.note(format!("{id} crashes, forgets {n} lease(s)"));
            return Ok(());
        };
        let outcome = self.send(commit.clone(), &id).await?;
        let what = format!("{id}'s commit {}", self.describe(&commit));
        let n = self.crash(w);
        self.note(format!(
            "{what} → {}; {id} crashes before the answer, forgets {n} lease(s)",
            Self::outcome_text(&outcome)
        ));
        self.network.push(Sent { commit, what });
        Ok(())
    }

    /// The network delivers a request again.
    async fn redeliver(&mut self) -> Result<(), SimFailure> {
        let Some(i) = self.rng.index(self.network.len()) else {
            return Ok(());
        };
        let sent = self.network.remove(i);
        self.stats.duplicates += 1;
        let outcome = self.send(sent.commit, "the network").await?;
        self.note(format!(
            "the network delivers {} again → {}",
            sent.what,
            Self::outcome_text(&outcome)
        ));
        Ok(())
    }

    async fn renew(&mut self, w: usize, h: usize) -> Result<(), SimFailure> {
        let id = self.workers[w].id.clone();
        let held = self.workers[w].held[h].clone();
        let label = format!("#{}@{}", held.run, held.fence.epoch);
        match self
            .store
            .renew_lease(&held.fence, &id, self.now, self.cfg.ttl)
            .await
        {
            Ok(r) => {
                self.check_renew(&id, &held.fence, &r)?;
                let until = r.lease.as_ref().map_or(self.now, |l| l.expires_at);
                self.workers[w].held[h].expires_at = until;
                self.stats.renewals += 1;
                let line = format!("{id} renews {label} → until {}", self.t(until));
                self.note(line);
            }
            Err(store::Error::LeaseLost { reason, .. }) => {
                self.workers[w].held.remove(h);
                self.stats.renewals_refused += 1;
                self.note(format!(
                    "{id} renews {label} → lease lost ({reason}); stops driving it"
                ));
            }
            Err(e) => {
                return Err(self.fail(
                    Invariant::StoreError,
                    format!("{id}'s renewal of {label}: {e}"),
                ));
            }
        }
        Ok(())
    }

    async fn release(&mut self, w: usize, h: usize) -> Result<(), SimFailure> {
        let id = self.workers[w].id.clone();
        let held = self.workers[w].held.remove(h);
        let label = format!("#{}@{}", held.run, held.fence.epoch);
        match self.store.release_lease(&held.fence, self.now).await {
            Ok(r) => {
                self.check_release(&held.fence, &r)?;
                self.stats.releases += 1;
                self.note(format!("{id} releases {label}"));
            }
            Err(store::Error::LeaseLost { reason, .. }) => {
                self.note(format!("{id} releases {label} → lease lost ({reason})"));
            }
            Err(e) => {
                return Err(self.fail(
                    Invariant::StoreError,
                    format!("{id}'s release of {label}: {e}"),
                ));
            }
        }
        Ok(())
    }

    async fn reap(&mut self) -> Result<(), SimFailure> {
        match self.store.reap_leases(self.now, 64).await {
            Ok(runs) => {
                let mut labels = Vec::new();
                for r in &runs {
                    self.check_reap(r)?;
                    labels.push(format!("{}@{}", self.label(r.run_id), r.lease_epoch));
                }
                self.stats.reaped += runs.len() as u64;
                self.note(format!("the reaper clears [{}]", labels.join(", ")));
                Ok(())
            }
            Err(e) => Err(self.fail(Invariant::StoreError, format!("reap_leases: {e}"))),
        }
    }

    /// The operator cancels an unfinished run: an unfenced commit of `RunCancelled` and the
    /// status, at the thread's head.
    async fn cancel(&mut self) -> Result<(), SimFailure> {
        let unfinished = self.unfinished();
        let Some(i) = self.rng.index(unfinished.len()) else {
            return Ok(());
        };
        let run = unfinished[i];
        let (run_id, thread) = (self.runs[run].run_id, self.runs[run].thread);
        let head = self.obs.threads[thread]
            .0
            .as_ref()
            .map_or(Seq::ZERO, |t| t.head);
        let reason = "sim: cancelled by the operator".to_owned();
        let commit = Commit {
            thread_id: self.threads[thread].id.clone(),
            expected_head: head,
            events: vec![Event {
                seq: head.next(),
                run_id,
                at: self.now,
                body: EventBody::RunCancelled {
                    reason: reason.clone(),
                },
            }],
            run: Some(RunWrite::SetStatus {
                run_id,
                status: RunStatus::Cancelled { reason },
            }),
            snapshot: None,
            durability: Durability::Sync,
            fence: None,
        };
        let outcome = self.send(commit, "the operator").await?;
        if let Err(e) = outcome {
            return Err(self.fail(
                Invariant::StoreError,
                format!("the operator's cancellation of #{run} at the current head: {e}"),
            ));
        }
        self.stats.cancelled += 1;
        self.note(format!("the operator cancels #{run}"));
        Ok(())
    }

    /// The operator enqueues a run: on a thread whose last run ended, or on a new thread.
    async fn enqueue(&mut self) -> Result<(), SimFailure> {
        let idle: Vec<usize> = (0..self.threads.len())
            .filter(|t| {
                self.obs.threads[*t]
                    .0
                    .as_ref()
                    .is_some_and(|r| r.active_run.is_none())
            })
            .collect();
        let thread = match self.rng.index(idle.len()) {
            Some(i) if self.rng.chance(1, 2) => idle[i],
            _ => {
                self.threads.push(SimThread {
                    id: build::thread_id(&format!("sim-{}", self.threads.len())),
                    landed: Vec::new(),
                });
                self.obs.threads.push((None, Vec::new()));
                self.threads.len() - 1
            }
        };
        let supersteps = self.rng.range(1, 3) as usize;
        let shape: Vec<u32> = (0..supersteps)
            .map(|_| self.rng.range(1, 3) as u32)
            .collect();
        let version = model::version_of(&shape);
        let head = self.obs.threads[thread]
            .0
            .as_ref()
            .map_or(Seq::ZERO, |t| t.head);
        let run_id = RunId::from_uuid(uuid::Uuid::from_u128(
            ((self.runs.len() as u128 + 1) << 64) | u128::from(self.seed),
        ));
        let tid = self.threads[thread].id.clone();
        let mut record = RunRecord::new(
            run_id,
            tid.clone(),
            GRAPH,
            version.clone(),
            RunStatus::Queued,
            head.next(),
            self.now,
        );
        record.priority = self.rng.range(0, 2) as i32;
        let started = Event {
            seq: head.next(),
            run_id,
            at: self.now,
            body: EventBody::RunStarted {
                graph: GRAPH.to_owned(),
                graph_version: version.clone(),
                input: build::payload("{}"),
                settings: RunSettings {
                    durability: Durability::Sync,
                    deadline: None,
                    superstep_limit: 25,
                    interrupt_before: Vec::new(),
                    interrupt_after: Vec::new(),
                },
                boundary: model::boundary(&shape, 0),
            },
        };
        let commit = Commit {
            thread_id: tid.clone(),
            expected_head: head,
            events: vec![started],
            run: Some(RunWrite::Create(record.clone())),
            snapshot: None,
            durability: Durability::Sync,
            fence: None,
        };
        // Registered before the commit, so that the checks can name it either way.
        let index = self.runs.len();
        self.runs.push(SimRun {
            run_id,
            thread,
            shape,
        });
        self.by_id.insert(run_id, index);
        let outcome = self.send(commit, "the operator").await?;
        if let Err(e) = outcome {
            return Err(self.fail(
                Invariant::StoreError,
                format!("the operator's enqueue of #{index} on {tid}: {e}"),
            ));
        }
        self.stats.runs += 1;
        self.note(format!(
            "the operator enqueues #{index} ({version}, priority {}) on {tid}",
            record.priority
        ));
        Ok(())
    }

    /// Faults stop, paused workers resume, the network drops what it held, and every
    /// worker acts once per round on a clock advancing half a second a round, until every
    /// run ended or the bound is reached.
    async fn drain(&mut self) -> Result<(), SimFailure> {
        for w in &mut self.workers {
            w.paused = false;
        }
        self.network.clear();
        self.note("drain: faults stop, every worker resumes".to_owned());
        for _ in 0..self.cfg.drain_rounds {
            if self.unfinished().is_empty() {
                return Ok(());
            }
            self.now = self.now.plus(DRAIN_TICK);
            for w in 0..self.workers.len() {
                self.step += 1;
                self.polite_tick(w).await?;
                self.observe().await?;
            }
            if self.stats.reap_supported {
                self.step += 1;
                self.reap().await?;
                self.observe().await?;
            }
        }
        let unfinished = self.unfinished();
        if let Some(run) = unfinished.first() {
            let r = &self.obs.runs[&self.runs[*run].run_id];
            let detail = format!(
                "{} of {} runs still unfinished after {} drain rounds ({:.0}s without faults); \
                 #{run} is {} (epoch {}, lease {}, ready at {})",
                unfinished.len(),
                self.runs.len(),
                self.cfg.drain_rounds,
                (self.cfg.drain_rounds as u128 * DRAIN_TICK.as_millis()) as f64 / 1000.0,
                r.status.kind().as_str(),
                r.lease_epoch,
                r.lease.as_ref().map_or_else(
                    || "none".to_owned(),
                    |l| format!("{} until {}", l.worker_id, self.t(l.expires_at))
                ),
                r.ready_at.map_or_else(|| "never".to_owned(), |t| self.t(t)),
            );
            return Err(self.fail(Invariant::LostRun, detail));
        }
        Ok(())
    }
}
