//! Handing runs to executors: the one claim path of the embedded pool and of remote worker
//! polls (with the per-graph concurrency limits), the lease reaper, and the queued-run
//! count behind `max_queued`.
//!
//! Per-graph limits ([`ServerBuilder::graph_limit`](crate::ServerBuilder::graph_limit)): a
//! claim that may take runs of a limited graph reads the store's lease counts first and
//! claims at most the room left under each limit, in rounds (each round claims at most the
//! smallest room among the limited graphs it includes, then the rooms are recounted from
//! what it got), so priority order is kept across graphs and no limit is exceeded. Such
//! claims are serialized within the server, which makes the limits exact here; claims of
//! other servers on the same store may overshoot a limit by what they claim concurrently.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oris_core::id::{RunId, Timestamp};
use oris_core::status::StatusKind;
use oris_core::store::{self, ClaimRequest, RunFilter, RunRecord};
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// Bound of the lease-holder map (leases granted here and not yet seen to end).
const HOLDERS_CAP: usize = 100_000;
/// How long the queued-run count is reused.
const QUEUED_CACHE: Duration = Duration::from_millis(100);
/// Most leases one reaper round clears.
const REAP_BATCH: usize = 1000;
/// Shortest interval between reaper rounds.
const REAP_MIN: Duration = Duration::from_millis(200);

/// What the server keeps for dispatching.
#[derive(Debug, Default)]
pub(crate) struct Dispatch {
    /// Held while a claim under per-graph limits counts and claims.
    limited: tokio::sync::Mutex<()>,
    /// Run → (epoch, worker) of leases this server granted: names the former holder when
    /// the reaper clears an expired lease (the store's answer no longer has it).
    holders: Mutex<HashMap<RunId, (u64, String)>>,
    /// The last count of queued runs and when it was read.
    queued: Mutex<Option<(Instant, usize)>>,
}

impl Dispatch {
    fn remember(&self, runs: &[RunRecord]) {
        let mut h = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        if h.len() + runs.len() > HOLDERS_CAP {
            h.clear();
        }
        for r in runs {
            if let Some(l) = &r.lease {
                h.insert(r.run_id, (r.lease_epoch, l.worker_id.clone()));
            }
        }
    }

    /// Forgets the lease of `run` (it ended, was released or handed back).
    pub fn forget(&self, run: RunId) {
        self.holders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&run);
    }

    /// The holder of the lease `epoch` of `run`, if this server granted it.
    fn holder(&self, run: RunId, epoch: u64) -> Option<String> {
        let mut h = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        match h.get(&run) {
            Some((e, w)) if *e == epoch => {
                let w = w.clone();
                h.remove(&run);
                Some(w)
            }
            _ => None,
        }
    }
}

/// Claims up to `limit` ready runs of `graphs` for `worker_id` with the server's lease TTL,
/// within the per-graph concurrency limits.
pub(crate) async fn claim(
    app: &AppState,
    worker_id: &str,
    graphs: &[(String, String)],
    limit: usize,
) -> store::Result<Vec<RunRecord>> {
    // An empty list would mean "any graph" to the store: claim nothing instead.
    if limit == 0 || graphs.is_empty() {
        return Ok(Vec::new());
    }
    let limits = &app.config.graph_limits;
    let request = |graphs: Vec<(String, String)>, limit: usize| ClaimRequest {
        worker_id: worker_id.to_owned(),
        now: Timestamp::now(),
        ttl: app.config.lease_ttl,
        limit,
        graphs,
    };
    if !graphs.iter().any(|(g, _)| limits.contains_key(g)) {
        let runs = app.store.claim(&request(graphs.to_vec(), limit)).await?;
        app.dispatch.remember(&runs);
        return Ok(runs);
    }
    let _serialized = app.dispatch.limited.lock().await;
    let counts: HashMap<String, u64> = app
        .store
        .lease_counts(Timestamp::now())
        .await?
        .into_iter()
        .collect();
    let mut room: BTreeMap<&str, usize> = BTreeMap::new();
    for (g, _) in graphs {
        if let Some(n) = limits.get(g) {
            let held = usize::try_from(counts.get(g).copied().unwrap_or(0)).unwrap_or(usize::MAX);
            room.insert(g, n.saturating_sub(held));
        }
    }
    let mut claimed = Vec::new();
    let mut remaining = limit;
    while remaining > 0 {
        let eligible: Vec<(String, String)> = graphs
            .iter()
            .filter(|(g, _)| room.get(g.as_str()).is_none_or(|r| *r > 0))
            .cloned()
            .collect();
        if eligible.is_empty() {
            break;
        }
        let step = eligible
            .iter()
            .filter_map(|(g, _)| room.get(g.as_str()).copied())
            .min()
            .unwrap_or(remaining)
            .min(remaining);
        let runs = app.store.claim(&request(eligible, step)).await?;
        let got = runs.len();
        for r in &runs {
            if let Some(n) = room.get_mut(r.graph.as_str()) {
                *n = n.saturating_sub(1);
            }
        }
        app.dispatch.remember(&runs);
        claimed.extend(runs);
        remaining -= got.min(remaining);
        if got < step {
            break;
        }
    }
    Ok(claimed)
}

/// How many runs are queued, counting at most `cap` and reusing a count younger than
/// 100 ms.
pub(crate) async fn queued(app: &AppState, cap: usize) -> store::Result<usize> {
    if let Some((at, n)) = *app
        .dispatch
        .queued
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        && at.elapsed() < QUEUED_CACHE
    {
        return Ok(n);
    }
    let n = app
        .store
        .runs(&RunFilter {
            statuses: vec![StatusKind::Queued],
            limit: cap,
            ..Default::default()
        })
        .await?
        .len();
    *app.dispatch
        .queued
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), n));
    Ok(n)
}

/// Counts a created run into the cached queued-run count (so a burst within the cache's
/// lifetime is seen).
pub(crate) fn queued_one_more(app: &AppState) {
    if let Some((_, n)) = app
        .dispatch
        .queued
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
    {
        *n += 1;
    }
}

/// The lease reaper: every `lease_ttl / 2` (at least 200 ms) clears leases that expired
/// ([`Store::reap_leases`](oris_core::store::Store::reap_leases)), logs and counts each with
/// its run and former holder (when this server granted the lease), and wakes the pool and
/// waiting polls (the runs are claimable).
pub(crate) async fn reaper(app: AppState, stop: CancellationToken) {
    let every = (app.config.lease_ttl / 2).max(REAP_MIN);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        loop {
            match app.store.reap_leases(Timestamp::now(), REAP_BATCH).await {
                Ok(runs) => {
                    failing = false;
                    for r in &runs {
                        let holder = app
                            .dispatch
                            .holder(r.run_id, r.lease_epoch)
                            .unwrap_or_else(|| "(granted by another server)".into());
                        tracing::info!(
                            run_id = %r.run_id,
                            thread_id = %r.thread_id,
                            lease_epoch = r.lease_epoch,
                            former_holder = %holder,
                            "expired lease reaped; the run is claimable"
                        );
                        app.metrics.lease_expired(&r.graph);
                    }
                    if !runs.is_empty() {
                        app.hub.wake_pool();
                    }
                    if runs.len() < REAP_BATCH || stop.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    if failing {
                        tracing::debug!(error = %e, "lease reaping failed again");
                    } else {
                        tracing::warn!(error = %e, "lease reaping failed; retrying");
                    }
                    failing = true;
                    break;
                }
            }
        }
    }
}
