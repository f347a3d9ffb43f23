//! Deterministic simulation of workers, leases and failover (`oris_testkit::sim`) against
//! the memory store: many seeds, each checked after every step; and the proof that the
//! checks can fail, with faults planted in a store wrapper.
//!
//! Replay one seed: `ORIS_SIM_SEED=<seed> cargo nextest run -p oris-testkit simulation`
//! (the failure message prints the whole trace then); more or fewer seeds:
//! `ORIS_SIM_SEEDS=<n>`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use oris_core::event::{Event, Payload};
use oris_core::id::{InterruptId, RunId, Seq, ThreadId, Timestamp};
use oris_core::store::{
    Answer, ApiKeyRecord, AuditFilter, AuditRecord, ClaimRequest, Commit, Delivery, Fence,
    IdempotencyRecord, InterruptFilter, InterruptRecord, MemoryStore, PendingRun, Receipt,
    Reservation, Result, RunFilter, RunRecord, RunWrite, Snapshot, Store, StoredResponse,
    ThreadRecord, WorkerRecord,
};
use oris_testkit::sim::{
    GRAPH, Invariant, SimConfig, SimFailure, SimReport, SimStats, seeds_from_env, simulate,
    version_of,
};

/// Seeds of the default run (CI).
const SEEDS: u64 = 300;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
}

fn run_seed(store: Arc<dyn Store>, seed: u64, config: &SimConfig) -> Result<SimReport, SimFailure> {
    runtime().block_on(simulate(store, seed, config))
}

/// Every seed passes on the memory store, and the faults the invariants are about did
/// happen across them (a simulation that never lost a lease would prove nothing).
#[test]
fn simulation_memory_store_many_seeds() {
    let seeds = seeds_from_env(SEEDS);
    let config = SimConfig::default();
    let started = Instant::now();
    let mut total = SimStats::default();
    let rt = runtime();
    for seed in &seeds {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        match rt.block_on(simulate(store, *seed, &config)) {
            Ok(report) => total.add(&report.stats),
            Err(failure) => panic!("{failure}"),
        }
    }
    let took = started.elapsed();
    eprintln!(
        "{} seeds in {:.2}s: {total:?}",
        seeds.len(),
        took.as_secs_f64()
    );
    assert_eq!(
        total.runs_ended, total.runs,
        "every run ended (the drain checks it per seed)"
    );
    if seeds.len() >= 50 {
        for (what, n) in [
            ("runs", total.runs),
            ("claims of a run claimed before (failover)", total.reclaimed),
            ("fenced commits refused", total.fenced_out),
            ("conflicts", total.conflicts),
            ("duplicate deliveries", total.duplicates),
            ("renewals refused", total.renewals_refused),
            ("releases", total.releases),
            ("crashes", total.crashes),
            ("pauses", total.pauses),
            ("clock jumps", total.clock_jumps),
            ("cancellations", total.cancelled),
        ] {
            assert!(
                n > 0,
                "{} seeds never produced any {what}: {total:?}",
                seeds.len()
            );
        }
        if total.reap_supported {
            assert!(
                total.reaped > 0,
                "the reaper never cleared a lease: {total:?}"
            );
        }
        // Duplicates never land, so each one is refused.
        assert!(total.conflicts + total.fenced_out >= total.duplicates);
    }
}

/// A seed replays exactly: the same trace and the same outcome, twice.
#[test]
fn simulation_is_deterministic() {
    let config = SimConfig::default();
    let a = run_seed(Arc::new(MemoryStore::new()), 7, &config).unwrap_or_else(|f| panic!("{f}"));
    let b = run_seed(Arc::new(MemoryStore::new()), 7, &config).unwrap_or_else(|f| panic!("{f}"));
    assert_eq!(a, b);
    assert!(
        a.trace.len() > config.steps,
        "one trace line per step at least"
    );
    let c = run_seed(Arc::new(MemoryStore::new()), 8, &config).unwrap_or_else(|f| panic!("{f}"));
    assert_ne!(a.trace, c.trace, "another seed, other steps");
}

/// Without faults every run completes: none is cancelled, none lost.
#[test]
fn simulation_without_faults_completes_every_run() {
    let config = SimConfig {
        faults: false,
        ..SimConfig::default()
    };
    for seed in 0..20 {
        let report =
            run_seed(Arc::new(MemoryStore::new()), seed, &config).unwrap_or_else(|f| panic!("{f}"));
        let s = report.stats;
        assert!(s.runs > 0, "seed {seed}: {s:?}");
        assert_eq!(s.runs_ended, s.runs, "seed {seed}: {s:?}");
        assert_eq!(
            s.cancelled + s.crashes + s.duplicates + s.clock_jumps,
            0,
            "{s:?}"
        );
    }
}

// --- The checks can fail --------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// None: the wrapper itself passes.
    Nothing,
    /// Commits are not fenced: the fence is dropped before the store sees it.
    FenceIgnored,
    /// A commit is applied at the thread's current head whatever head it expected (no
    /// compare-and-set): duplicates and stale views land again.
    CasIgnored,
    /// Claims never hand out runs whose graph begins with a superstep of three tasks (a
    /// dispatcher that lost a queue): those runs are never executed.
    DropsSomeRuns,
}

#[derive(Debug)]
struct Planted {
    inner: MemoryStore,
    fault: Fault,
}

/// Every version the simulator uses (1–3 supersteps of 1–3 tasks) except those starting
/// with three tasks.
fn versions_but_three_first() -> Vec<(String, String)> {
    let mut shapes: Vec<Vec<u32>> = vec![vec![]];
    let mut all = Vec::new();
    for _ in 0..3 {
        let mut next = Vec::new();
        for s in &shapes {
            for n in 1..=3 {
                let mut s = s.clone();
                s.push(n);
                all.push(s.clone());
                next.push(s);
            }
        }
        shapes = next;
    }
    all.into_iter()
        .filter(|s| s[0] != 3)
        .map(|s| (GRAPH.to_owned(), version_of(&s)))
        .collect()
}

#[async_trait]
impl Store for Planted {
    async fn commit(&self, mut commit: Commit) -> Result<Receipt> {
        match self.fault {
            Fault::FenceIgnored => commit.fence = None,
            Fault::CasIgnored if !matches!(commit.run, Some(RunWrite::Create(_))) => {
                if let Some(t) = self.inner.thread(&commit.thread_id).await? {
                    commit.expected_head = t.head;
                    for (i, e) in commit.events.iter_mut().enumerate() {
                        e.seq = Seq(t.head.0 + 1 + i as u64);
                    }
                }
            }
            _ => {}
        }
        self.inner.commit(commit).await
    }
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<RunRecord>> {
        if self.fault == Fault::DropsSomeRuns && request.graphs.is_empty() {
            let request = ClaimRequest {
                graphs: versions_but_three_first(),
                ..request.clone()
            };
            return self.inner.claim(&request).await;
        }
        self.inner.claim(request).await
    }
    async fn thread(&self, thread_id: &ThreadId) -> Result<Option<ThreadRecord>> {
        self.inner.thread(thread_id).await
    }
    async fn run(&self, run_id: RunId) -> Result<Option<RunRecord>> {
        self.inner.run(run_id).await
    }
    async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        self.inner.runs(filter).await
    }
    async fn due_runs(&self, now: Timestamp, limit: usize) -> Result<Vec<RunRecord>> {
        self.inner.due_runs(now, limit).await
    }
    async fn events(&self, thread_id: &ThreadId, after: Seq, limit: usize) -> Result<Vec<Event>> {
        self.inner.events(thread_id, after, limit).await
    }
    async fn snapshot(&self, thread_id: &ThreadId, at_or_before: Seq) -> Result<Option<Snapshot>> {
        self.inner.snapshot(thread_id, at_or_before).await
    }
    async fn delete_snapshots(&self, thread_id: &ThreadId) -> Result<u64> {
        self.inner.delete_snapshots(thread_id).await
    }
    async fn interrupt(&self, interrupt_id: InterruptId) -> Result<Option<InterruptRecord>> {
        self.inner.interrupt(interrupt_id).await
    }
    async fn interrupts(&self, thread_id: &ThreadId) -> Result<Vec<InterruptRecord>> {
        self.inner.interrupts(thread_id).await
    }
    async fn answer_interrupt(
        &self,
        interrupt_id: InterruptId,
        value: Payload,
        at: Timestamp,
    ) -> Result<(Answer, InterruptRecord)> {
        self.inner.answer_interrupt(interrupt_id, value, at).await
    }
    async fn deliver(
        &self,
        thread_id: &ThreadId,
        name: &str,
        payload: Payload,
        key: Option<String>,
        at: Timestamp,
    ) -> Result<(Delivery, bool)> {
        self.inner.deliver(thread_id, name, payload, key, at).await
    }
    async fn delete_thread(&self, thread_id: &ThreadId) -> Result<()> {
        self.inner.delete_thread(thread_id).await
    }
    async fn prune(&self, thread_id: &ThreadId, base: Event) -> Result<u64> {
        self.inner.prune(thread_id, base).await
    }
    async fn deliveries(&self, thread_id: &ThreadId, pending_only: bool) -> Result<Vec<Delivery>> {
        self.inner.deliveries(thread_id, pending_only).await
    }
    async fn list_interrupts(&self, filter: &InterruptFilter) -> Result<Vec<InterruptRecord>> {
        self.inner.list_interrupts(filter).await
    }
    async fn renew_lease(
        &self,
        fence: &Fence,
        worker_id: &str,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<RunRecord> {
        self.inner.renew_lease(fence, worker_id, now, ttl).await
    }
    async fn release_lease(&self, fence: &Fence, now: Timestamp) -> Result<RunRecord> {
        self.inner.release_lease(fence, now).await
    }
    async fn reap_leases(&self, now: Timestamp, limit: usize) -> Result<Vec<RunRecord>> {
        self.inner.reap_leases(now, limit).await
    }
    async fn lease_counts(&self, now: Timestamp) -> Result<Vec<(String, u64)>> {
        self.inner.lease_counts(now).await
    }
    async fn register_worker(&self, worker: &WorkerRecord) -> Result<()> {
        self.inner.register_worker(worker).await
    }
    async fn touch_worker(&self, worker_id: &str, now: Timestamp) -> Result<bool> {
        self.inner.touch_worker(worker_id, now).await
    }
    async fn workers(&self) -> Result<Vec<WorkerRecord>> {
        self.inner.workers().await
    }
    async fn push_pending(&self, run: &PendingRun) -> Result<u64> {
        self.inner.push_pending(run).await
    }
    async fn pending_runs(&self, thread_id: &ThreadId) -> Result<Vec<PendingRun>> {
        self.inner.pending_runs(thread_id).await
    }
    async fn pending_threads(&self, limit: usize) -> Result<Vec<ThreadId>> {
        self.inner.pending_threads(limit).await
    }
    async fn remove_pending(&self, run_id: RunId) -> Result<bool> {
        self.inner.remove_pending(run_id).await
    }
    async fn reserve_idempotency(
        &self,
        candidate: &IdempotencyRecord,
        now: Timestamp,
    ) -> Result<Reservation> {
        self.inner.reserve_idempotency(candidate, now).await
    }
    async fn complete_idempotency(
        &self,
        scope: &str,
        key: &str,
        response: &StoredResponse,
    ) -> Result<()> {
        self.inner.complete_idempotency(scope, key, response).await
    }
    async fn release_idempotency(&self, scope: &str, key: &str) -> Result<()> {
        self.inner.release_idempotency(scope, key).await
    }
    async fn purge_idempotency(&self, now: Timestamp) -> Result<u64> {
        self.inner.purge_idempotency(now).await
    }
    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<()> {
        self.inner.create_api_key(key).await
    }
    async fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRecord>> {
        self.inner.api_key(key_id).await
    }
    async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        self.inner.api_keys().await
    }
    async fn revoke_api_key(&self, key_id: &str, at: Timestamp) -> Result<bool> {
        self.inner.revoke_api_key(key_id, at).await
    }
    async fn append_audit(&self, record: &AuditRecord) -> Result<u64> {
        self.inner.append_audit(record).await
    }
    async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        self.inner.audit(filter).await
    }
}

/// Seeds a planted fault is tried on.
const PLANTED_SEEDS: u64 = 30;

/// Runs `fault` over [`PLANTED_SEEDS`] seeds; returns the failures.
fn failures_of(fault: Fault) -> Vec<SimFailure> {
    // A shorter drain than the default: a run lost to the fault stays lost however long.
    let config = SimConfig {
        drain_rounds: 150,
        ..SimConfig::default()
    };
    (0..PLANTED_SEEDS)
        .filter_map(|seed| {
            let store = Arc::new(Planted {
                inner: MemoryStore::new(),
                fault,
            });
            run_seed(store, seed, &config).err()
        })
        .collect()
}

/// Asserts that `fault` is caught, by one of `expected`, on most seeds, and that the
/// message says how to replay it.
fn assert_caught(fault: Fault, expected: &[Invariant], at_least: usize) {
    let failures = failures_of(fault);
    eprintln!(
        "{fault:?}: caught on {} of {PLANTED_SEEDS} seeds; the first:\n{}",
        failures.len(),
        failures
            .first()
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    assert!(
        failures.len() >= at_least,
        "{fault:?} was caught on {} of {PLANTED_SEEDS} seeds, expected at least {at_least}",
        failures.len()
    );
    for f in &failures {
        assert!(
            expected.contains(&f.invariant),
            "{fault:?} was caught by {:?}, expected one of {expected:?}:\n{f}",
            f.invariant
        );
        let message = f.to_string();
        assert!(
            message.contains(&format!("ORIS_SIM_SEED={} ", f.seed)),
            "the message names the replay: {message}"
        );
        assert!(!f.trace.is_empty());
    }
}

#[test]
fn planted_nothing_passes() {
    let failures = failures_of(Fault::Nothing);
    assert!(failures.is_empty(), "{}", failures[0]);
}

#[test]
fn planted_fence_ignored_is_a_stale_commit() {
    assert_caught(Fault::FenceIgnored, &[Invariant::StaleCommit], 10);
}

#[test]
fn planted_cas_ignored_is_a_double_completion() {
    assert_caught(
        Fault::CasIgnored,
        &[Invariant::DoubleCompletion, Invariant::LogShape],
        20,
    );
}

#[test]
fn planted_dropped_runs_are_lost_runs() {
    assert_caught(Fault::DropsSomeRuns, &[Invariant::LostRun], 10);
}
