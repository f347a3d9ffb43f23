//! Deterministic simulation of workers, leases and failover against a real store.
//!
//! [`simulate`] drives a few simulated workers against any [`Store`] through the operations
//! of the worker protocol — claim, fenced commits, renew, release, reap — plus an operator
//! who enqueues and cancels runs, all chosen by a seeded random sequence ([`SimRng`]) on a
//! manual clock. Faults are actions like any other: a worker crashes before a commit, or
//! after it but before it learned the receipt (the request is delivered again later: a
//! duplicate delivery), loses a receipt and retries the same commit, pauses (no renewals,
//! no commits) and later resumes with its stale view, or the clock jumps past leases.
//!
//! After **every** step the store is read back and checked ([`Invariant`]): no task of a
//! superstep completed twice, logs contiguous and equal to the commits that landed, a
//! commit lands only under its run's current lease (never with a superseded epoch, never
//! after a release, reap or cancellation), a claim never takes a live lease and raises the
//! epoch by exactly one, the holder a run names is the worker that claimed that epoch,
//! epochs never decrease, a terminal run never changes, and an unfinished run is always
//! leased or claimable. At the end faults stop and the clock runs on: every run must end
//! within a bounded number of rounds (no lost run).
//!
//! A failure ([`SimFailure`]) names the seed, the step, the broken invariant and the trace
//! of steps, and replays with `ORIS_SIM_SEED=<seed> cargo nextest run -p oris-testkit
//! simulation`.
//!
//! # Time
//! Claims, renewals, releases and reaps take the simulator's clock. A commit's fence is
//! judged by the store against its own clock; the simulated clock starts in the year 2200,
//! so to the store no simulated lease has expired yet, and a lease's expiry reaches a
//! commit the way it does in a server: by the reaper clearing it or a newer claim
//! superseding it. (A worker whose lease expired by the simulated clock but that nobody
//! reaped or claimed may still commit — its epoch is the current one, and no other worker
//! writes the run.)
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use oris_core::store::MemoryStore;
//! use oris_testkit::sim::{SimConfig, simulate};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let report = simulate(Arc::new(MemoryStore::new()), 42, &SimConfig::default())
//!     .await
//!     .unwrap_or_else(|failure| panic!("{failure}"));
//! assert!(report.stats.runs_ended > 0);
//! # });
//! ```

mod check;
mod model;
mod rng;
mod world;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use oris_core::store::Store;

pub use model::{GRAPH, shape_of, version_of};
pub use rng::SimRng;

/// What a simulation does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Simulated workers.
    pub workers: usize,
    /// Runs one worker holds at most.
    pub capacity: usize,
    /// Steps with faults, before the drain.
    pub steps: usize,
    /// Runs enqueued at most.
    pub max_runs: usize,
    /// Lease length of every claim and renewal.
    pub ttl: Duration,
    /// Rounds of the drain (every worker acts once per round, the clock advances half a
    /// second) within which every run must end.
    pub drain_rounds: usize,
    /// Whether faults happen (crashes, lost receipts, duplicates, pauses, clock jumps,
    /// cancellations); without, the workers only claim, commit, renew and release.
    pub faults: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            workers: 3,
            capacity: 2,
            steps: 300,
            max_runs: 12,
            ttl: Duration::from_secs(10),
            drain_rounds: 300,
            faults: true,
        }
    }
}

/// A rule the simulation checks after every step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Invariant {
    /// No (run, superstep, task) completed twice in any log; no run started twice; no
    /// completion of a superstep that was already closed.
    DoubleCompletion,
    /// Logs contiguous from seq 1, equal to the head and to the commits that landed, runs
    /// one after another, boundaries only once every task of the superstep completed.
    LogShape,
    /// A fenced commit lands only with the run's current epoch while it is leased.
    StaleCommit,
    /// One lease holder: a claim never takes an unexpired lease, an epoch is granted to one
    /// worker, a run's holder is the worker that claimed its epoch, a renewal or release
    /// succeeds only for the current lease, a reap clears only expired leases.
    LeaseHolder,
    /// Epochs only increase, by one per claim.
    Epoch,
    /// A terminal run never changes again, and nothing is written after its terminal event.
    TerminalChanged,
    /// Every unfinished run is leased or claimable, and ends once faults stop.
    LostRun,
    /// The store failed an operation the protocol does not let fail, or its records
    /// disagree with each other (status and log, active run).
    StoreError,
}

impl Invariant {
    /// Its name in failure messages.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::DoubleCompletion => "no double completion",
            Invariant::LogShape => "log shape",
            Invariant::StaleCommit => "no stale-epoch commit",
            Invariant::LeaseHolder => "one lease holder",
            Invariant::Epoch => "epochs only increase",
            Invariant::TerminalChanged => "a terminal run never changes",
            Invariant::LostRun => "no lost run",
            Invariant::StoreError => "store answers",
        }
    }
}

/// A broken invariant, with what is needed to replay it.
#[derive(Debug, Clone)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// The step after which the invariant was found broken (drain rounds continue the
    /// count).
    pub step: usize,
    /// The invariant.
    pub invariant: Invariant,
    /// What exactly is wrong.
    pub detail: String,
    /// Every step so far, one line each.
    pub trace: Vec<String>,
}

/// Trace lines a failure message shows (the last ones); all of them when replaying one
/// seed with `ORIS_SIM_SEED`.
const TRACE_TAIL: usize = 80;

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "simulation seed {} broke `{}` at step {}: {}",
            self.seed,
            self.invariant.name(),
            self.step,
            self.detail
        )?;
        writeln!(
            f,
            "replay: ORIS_SIM_SEED={} cargo nextest run -p oris-testkit simulation",
            self.seed
        )?;
        let all = std::env::var_os("ORIS_SIM_SEED").is_some();
        let skip = if all {
            0
        } else {
            self.trace.len().saturating_sub(TRACE_TAIL)
        };
        if skip > 0 {
            writeln!(
                f,
                "trace (last {TRACE_TAIL} of {} lines):",
                self.trace.len()
            )?;
        } else {
            writeln!(f, "trace:")?;
        }
        for line in &self.trace[skip..] {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SimFailure {}

/// What happened in a simulation (summed over seeds with [`SimStats::add`]): tests assert
/// that the faults they rely on did happen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Seeds simulated.
    pub seeds: u64,
    /// Steps, drain rounds included.
    pub steps: u64,
    /// Runs enqueued.
    pub runs: u64,
    /// Runs that ended (all of them, when the simulation passed).
    pub runs_ended: u64,
    /// Runs cancelled by the operator.
    pub cancelled: u64,
    /// Claims that returned a run.
    pub claimed: u64,
    /// Claims of a run that had been claimed before (failover).
    pub reclaimed: u64,
    /// Commits that landed.
    pub commits: u64,
    /// Fenced commits refused with `LeaseLost`.
    pub fenced_out: u64,
    /// Commits refused with `Conflict` (duplicates, stale views).
    pub conflicts: u64,
    /// Duplicate deliveries sent (retries after a lost receipt, redeliveries after a
    /// crash); each must be refused.
    pub duplicates: u64,
    /// Renewals that succeeded.
    pub renewals: u64,
    /// Renewals refused with `LeaseLost`.
    pub renewals_refused: u64,
    /// Releases.
    pub releases: u64,
    /// Leases the reaper cleared.
    pub reaped: u64,
    /// Worker crashes.
    pub crashes: u64,
    /// Worker pauses.
    pub pauses: u64,
    /// Clock jumps.
    pub clock_jumps: u64,
    /// Whether the store implements `reap_leases` (until every backend does, the reap
    /// action is skipped for a store that refuses it).
    pub reap_supported: bool,
}

impl SimStats {
    /// Adds `other` to these.
    pub fn add(&mut self, other: &SimStats) {
        self.seeds += other.seeds;
        self.steps += other.steps;
        self.runs += other.runs;
        self.runs_ended += other.runs_ended;
        self.cancelled += other.cancelled;
        self.claimed += other.claimed;
        self.reclaimed += other.reclaimed;
        self.commits += other.commits;
        self.fenced_out += other.fenced_out;
        self.conflicts += other.conflicts;
        self.duplicates += other.duplicates;
        self.renewals += other.renewals;
        self.renewals_refused += other.renewals_refused;
        self.releases += other.releases;
        self.reaped += other.reaped;
        self.crashes += other.crashes;
        self.pauses += other.pauses;
        self.clock_jumps += other.clock_jumps;
        self.reap_supported |= other.reap_supported;
    }
}

/// A simulation that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimReport {
    /// What happened.
    pub stats: SimStats,
    /// Every step, one line each (the same lines for the same seed and configuration).
    pub trace: Vec<String>,
}

/// Simulates `seed` against `store`, which must be empty (or at least hold no thread named
/// `sim-…`). Returns what happened, or the first broken invariant.
///
/// # Errors
/// [`SimFailure`] naming the seed, step, invariant and trace.
pub async fn simulate(
    store: Arc<dyn Store>,
    seed: u64,
    config: &SimConfig,
) -> Result<SimReport, SimFailure> {
    world::Sim::new(store, seed, config.clone()).run().await
}

/// The seeds a simulation test runs: only `ORIS_SIM_SEED` when it is set (a replay),
/// otherwise `0..ORIS_SIM_SEEDS`, or `0..default_count` without either.
///
/// # Panics
/// When a variable is set but is not a number.
pub fn seeds_from_env(default_count: u64) -> Vec<u64> {
    let var = |name: &str| {
        std::env::var(name).ok().map(|v| {
            v.trim()
                .parse::<u64>()
                .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}"))
        })
    };
    if let Some(seed) = var("ORIS_SIM_SEED") {
        return vec![seed];
    }
    (0..var("ORIS_SIM_SEEDS").unwrap_or(default_count)).collect()
}
