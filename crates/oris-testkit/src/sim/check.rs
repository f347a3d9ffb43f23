//! The invariants: read the store back after every step and compare it with what the
//! simulation did; check each claim, renewal, release and reap against the store as it was
//! before.

use std::collections::BTreeMap;

use oris_core::event::Event;
use oris_core::id::{RunId, Seq};
use oris_core::status::RunStatus;
use oris_core::store::{Fence, RunFilter, RunRecord};

use super::Invariant;
use super::SimFailure;
use super::model::{self, Ended};
use super::world::{Observed, Sim};
use crate::check::ALL;

impl Sim {
    /// Reads every run and every thread's record and log, checks them against the previous
    /// reading and the commits that landed, and keeps them as the new reading.
    pub(super) async fn observe(&mut self) -> Result<(), SimFailure> {
        let runs: BTreeMap<RunId, RunRecord> = self
            .store
            .runs(&RunFilter::default())
            .await
            .map_err(|e| self.fail(Invariant::StoreError, format!("runs(): {e}")))?
            .into_iter()
            .map(|r| (r.run_id, r))
            .collect();
        let mut threads = Vec::with_capacity(self.threads.len());
        for t in &self.threads {
            let record =
                self.store.thread(&t.id).await.map_err(|e| {
                    self.fail(Invariant::StoreError, format!("thread({}): {e}", t.id))
                })?;
            let events = self
                .store
                .events(&t.id, Seq::ZERO, ALL)
                .await
                .map_err(|e| self.fail(Invariant::StoreError, format!("events({}): {e}", t.id)))?;
            threads.push((record, events));
        }
        self.check_runs(&runs)?;
        for (i, (record, events)) in threads.iter().enumerate() {
            self.check_thread(i, record.as_ref(), events, &runs)?;
        }
        self.stats.runs_ended = runs.values().filter(|r| r.status.is_terminal()).count() as u64;
        self.obs = Observed { runs, threads };
        Ok(())
    }

    fn check_runs(&self, runs: &BTreeMap<RunId, RunRecord>) -> Result<(), SimFailure> {
        for (id, r) in runs {
            let label = self.label(*id);
            if !self.by_id.contains_key(id) {
                return Err(self.fail(
                    Invariant::StoreError,
                    format!("the store lists run {id}, which nobody created"),
                ));
            }
            if let Some(prev) = self.obs.runs.get(id) {
                if r.lease_epoch < prev.lease_epoch {
                    return Err(self.fail(
                        Invariant::Epoch,
                        format!(
                            "run {label}'s epoch went from {} back to {}",
                            prev.lease_epoch, r.lease_epoch
                        ),
                    ));
                }
                if prev.status.is_terminal() && r != prev {
                    return Err(self.fail(
                        Invariant::TerminalChanged,
                        format!("run {label} ended as {prev:?} but now reads {r:?}"),
                    ));
                }
            }
            if let Some(l) = &r.lease {
                let granted = self.grants.get(&(*id, r.lease_epoch));
                if granted != Some(&l.worker_id) {
                    return Err(self.fail(
                        Invariant::LeaseHolder,
                        format!(
                            "run {label} is held by {} at epoch {}, which was {}",
                            l.worker_id,
                            r.lease_epoch,
                            granted.map_or_else(
                                || "never granted by a claim".to_owned(),
                                |w| format!("granted to {w}")
                            )
                        ),
                    ));
                }
            }
            if !r.status.is_terminal() && r.lease.is_none() && r.ready_at.is_none() {
                return Err(self.fail(
                    Invariant::LostRun,
                    format!(
                        "run {label} is {}, unleased and never claimable (no ready_at)",
                        r.status.kind().as_str()
                    ),
                ));
            }
        }
        if let Some(id) = self.obs.runs.keys().find(|id| !runs.contains_key(id)) {
            return Err(self.fail(
                Invariant::LostRun,
                format!("run {} disappeared from the store", self.label(*id)),
            ));
        }
        Ok(())
    }

    fn check_thread(
        &self,
        index: usize,
        record: Option<&oris_core::store::ThreadRecord>,
        events: &[Event],
        runs: &BTreeMap<RunId, RunRecord>,
    ) -> Result<(), SimFailure> {
        let t = &self.threads[index];
        let landed = &t.landed;
        if events != landed.as_slice() {
            let at = events
                .iter()
                .zip(landed)
                .position(|(a, b)| a != b)
                .unwrap_or(events.len().min(landed.len()));
            let show = |e: Option<&Event>| {
                e.map_or_else(
                    || "nothing".to_owned(),
                    |e| format!("{} of {}", e.body.kind().as_str(), self.label(e.run_id)),
                )
            };
            return Err(self.fail(
                Invariant::LogShape,
                format!(
                    "thread {} holds {} events where {} landed; at position {at} it has {} \
                     instead of {}",
                    t.id,
                    events.len(),
                    landed.len(),
                    show(events.get(at)),
                    show(landed.get(at))
                ),
            ));
        }
        let Some(record) = record else {
            if events.is_empty() {
                return Ok(());
            }
            return Err(self.fail(
                Invariant::StoreError,
                format!("thread {} has events but no record", t.id),
            ));
        };
        if record.head != Seq(events.len() as u64) {
            return Err(self.fail(
                Invariant::LogShape,
                format!(
                    "thread {}'s head is {} but its log has {} events",
                    t.id,
                    record.head,
                    events.len()
                ),
            ));
        }
        let folded = model::fold_thread(events)
            .map_err(|(i, d)| self.fail(i, format!("thread {}: {d}", t.id)))?;
        let mut active = None;
        for (run_id, progress) in &folded {
            let label = self.label(*run_id);
            let Some(r) = runs.get(run_id) else {
                return Err(self.fail(
                    Invariant::LostRun,
                    format!("run {label} is in the log of {} but has no record", t.id),
                ));
            };
            let agrees = matches!(
                (&r.status, progress.ended),
                (RunStatus::Completed { .. }, Some(Ended::Completed))
                    | (RunStatus::Cancelled { .. }, Some(Ended::Cancelled))
                    | (RunStatus::Failed { .. }, Some(Ended::Failed))
                    | (RunStatus::Queued | RunStatus::Running, None)
            );
            if !agrees {
                return Err(self.fail(
                    Invariant::StoreError,
                    format!(
                        "run {label} is {} but its log says {:?}",
                        r.status.kind().as_str(),
                        progress.ended
                    ),
                ));
            }
            if progress.ended.is_none() {
                active = Some(*run_id);
            }
        }
        if record.active_run != active {
            return Err(self.fail(
                Invariant::StoreError,
                format!(
                    "thread {}'s active run is {:?}, its log says {:?}",
                    t.id,
                    record.active_run.map(|r| self.label(r)),
                    active.map(|r| self.label(r))
                ),
            ));
        }
        Ok(())
    }

    /// The run as last observed, which an operation on it must find.
    fn before(&self, run: RunId, what: &str) -> Result<&RunRecord, SimFailure> {
        self.obs.runs.get(&run).ok_or_else(|| {
            self.fail(
                Invariant::StoreError,
                format!(
                    "{what} returned run {}, which was not in the store",
                    self.label(run)
                ),
            )
        })
    }

    /// A claim by `worker` returned `r`: the run was unfinished, ready, not under an
    /// unexpired lease; its epoch is the previous one plus one, granted to nobody before;
    /// the claimer holds it.
    pub(super) fn check_claim(&self, worker: &str, r: &RunRecord) -> Result<(), SimFailure> {
        let prev = self.before(r.run_id, "a claim")?;
        let label = self.label(r.run_id);
        if prev.status.is_terminal() {
            return Err(self.fail(
                Invariant::TerminalChanged,
                format!(
                    "{worker} claimed run {label}, which had ended ({})",
                    prev.status.kind().as_str()
                ),
            ));
        }
        if let Some(l) = &prev.lease
            && l.expires_at > self.now
        {
            return Err(self.fail(
                Invariant::LeaseHolder,
                format!(
                    "{worker} claimed run {label} while {} held it at epoch {} until {}",
                    l.worker_id,
                    prev.lease_epoch,
                    self.t(l.expires_at)
                ),
            ));
        }
        if prev.ready_at.is_none_or(|t| t > self.now) {
            return Err(self.fail(
                Invariant::LeaseHolder,
                format!(
                    "{worker} claimed run {label}, which was not ready (ready at {:?})",
                    prev.ready_at.map(|t| self.t(t))
                ),
            ));
        }
        if r.lease_epoch != prev.lease_epoch + 1 {
            return Err(self.fail(
                Invariant::Epoch,
                format!(
                    "{worker}'s claim of run {label} has epoch {}, after {}",
                    r.lease_epoch, prev.lease_epoch
                ),
            ));
        }
        if let Some(other) = self.grants.get(&(r.run_id, r.lease_epoch)) {
            return Err(self.fail(
                Invariant::LeaseHolder,
                format!(
                    "epoch {} of run {label} was granted to {other} and again to {worker}",
                    r.lease_epoch
                ),
            ));
        }
        match &r.lease {
            Some(l) if l.worker_id == worker && l.expires_at == self.now.plus(self.cfg.ttl) => {
                Ok(())
            }
            other => Err(self.fail(
                Invariant::LeaseHolder,
                format!("{worker}'s claim of run {label} returned the lease {other:?}"),
            )),
        }
    }

    /// A renewal by `worker` of `fence` succeeded: the lease was current, unexpired and
    /// the worker's; it now lasts a ttl from now.
    pub(super) fn check_renew(
        &self,
        worker: &str,
        fence: &Fence,
        r: &RunRecord,
    ) -> Result<(), SimFailure> {
        let prev = self.before(fence.run_id, "a renewal")?;
        let label = self.label(fence.run_id);
        let live = prev.lease_epoch == fence.epoch
            && prev
                .lease
                .as_ref()
                .is_some_and(|l| l.worker_id == worker && l.expires_at > self.now);
        if !live {
            return Err(self.fail(
                Invariant::LeaseHolder,
                format!(
                    "{worker} renewed run {label} at epoch {}, but the run was at epoch {} \
                     with lease {:?}",
                    fence.epoch, prev.lease_epoch, prev.lease
                ),
            ));
        }
        let until = self.now.plus(self.cfg.ttl);
        if r.lease_epoch != fence.epoch
            || r.lease
                .as_ref()
                .is_none_or(|l| l.worker_id != worker || l.expires_at != until)
        {
            return Err(self.fail(
                Invariant::LeaseHolder,
                format!("{worker}'s renewal of run {label} returned {r:?}"),
            ));
        }
        Ok(())
    }

    /// A release of `fence` succeeded: the lease was the current one; the run is unleased
    /// and claimable now.
    pub(super) fn check_release(&self, fence: &Fence, r: &RunRecord) -> Result<(), SimFailure> {
        let prev = self.before(fence.run_id, "a release")?;
        let label = self.label(fence.run_id);
        if prev.lease_epoch != fence.epoch || prev.lease.is_none() {
            return Err(self.fail(
                Invariant::LeaseHolder,
                format!(
                    "a release of run {label} at epoch {} succeeded, but the run was at epoch \
                     {} with lease {:?}",
                    fence.epoch, prev.lease_epoch, prev.lease
                ),
            ));
        }
        if r.lease.is_some() || r.lease_epoch != fence.epoch || r.ready_at != Some(self.now) {
            return Err(self.fail(
                Invariant::LeaseHolder,
                format!("the release of run {label} returned {r:?}"),
            ));
        }
        Ok(())
    }

    /// The reaper returned `r`: its lease had expired by now; it is cleared, the epoch kept.
    pub(super) fn check_reap(&self, r: &RunRecord) -> Result<(), SimFailure> {
        let prev = self.before(r.run_id, "the reaper")?;
        let label = self.label(r.run_id);
        let expired = prev
            .lease
            .as_ref()
            .is_some_and(|l| l.expires_at <= self.now);
        if !expired || r.lease.is_some() || r.lease_epoch != prev.lease_epoch {
            return Err(self.fail(
                Invariant::LeaseHolder,
                format!(
                    "the reaper returned run {label} as {:?} (epoch {}), which had lease {:?} \
                     (epoch {})",
                    r.lease, r.lease_epoch, prev.lease, prev.lease_epoch
                ),
            ));
        }
        Ok(())
    }
}
