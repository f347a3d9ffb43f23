//! The in-memory store: for tests, benchmarks of engine overhead, and ephemeral graphs.
//! Nothing survives the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::{
    Answer, Commit, Delivery, Error, InterruptRecord, Receipt, Result, RunFilter, RunRecord,
    RunWrite, Snapshot, Store, ThreadRecord, check_prune, check_redelivery, consumed_deliveries,
    interrupt_effects, plan_answer, plan_commit,
};
use crate::event::{Event, Payload};
use crate::id::{DeliveryId, InterruptId, RunId, Seq, ThreadId, Timestamp};

#[derive(Debug, Default)]
struct Thread {
    record: Option<ThreadRecord>,
    events: Vec<Event>,
    snapshot: Option<Snapshot>,
}

#[derive(Debug, Default)]
struct Inner {
    threads: HashMap<ThreadId, Thread>,
    runs: BTreeMap<RunId, RunRecord>,
    interrupts: HashMap<InterruptId, InterruptRecord>,
    /// Per thread, in arrival order.
    deliveries: HashMap<ThreadId, Vec<Delivery>>,
}

/// A [`Store`] in process memory. Commits are linearized by one mutex.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied commit: commits are
        // validated first and applied without fallible steps.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Approximate bytes held for a thread: the JSON of its events and snapshot.
    pub fn approx_bytes(&self, thread_id: &ThreadId) -> usize {
        let inner = self.lock();
        let Some(t) = inner.threads.get(thread_id) else {
            return 0;
        };
        let events: usize = t
            .events
            .iter()
            .map(|e| {
                crate::event::EventRow::from_event(e)
                    .map(|r| {
                        24 + r.data.map_or(0, |d| d.len())
                            + r.extra.map_or(0, |x| x.len())
                            + r.node.map_or(0, |n| n.len())
                    })
                    .unwrap_or(0)
            })
            .sum();
        events + t.snapshot.as_ref().map_or(0, |s| s.state.json().len())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn commit(&self, commit: Commit) -> Result<Receipt> {
        let mut inner = self.lock();
        let stored_run = match &commit.run {
            Some(RunWrite::SetStatus { run_id, .. }) => inner.runs.get(run_id).cloned(),
            _ => None,
        };
        if let Some(RunWrite::Create(r)) = &commit.run
            && inner.runs.contains_key(&r.run_id)
        {
            return Err(Error::InvalidCommit {
                thread_id: commit.thread_id.clone(),
                detail: format!("run {} already exists", r.run_id),
            });
        }
        let thread = inner.threads.get(&commit.thread_id);
        let plan = plan_commit(
            &commit,
            thread.and_then(|t| t.record.as_ref()),
            stored_run.as_ref(),
            Timestamp::now(),
        )?;
        let effects = interrupt_effects(&commit);
        if let Some(r) = effects
            .raised
            .iter()
            .find(|r| inner.interrupts.contains_key(&r.interrupt_id))
        {
            return Err(Error::InvalidCommit {
                thread_id: commit.thread_id.clone(),
                detail: format!("interrupt {} already exists", r.interrupt_id),
            });
        }
        if let Some(run) = plan.run {
            inner.runs.insert(run.run_id, run);
        }
        for r in effects.raised {
            inner.interrupts.insert(r.interrupt_id, r);
        }
        let consumed = consumed_deliveries(&commit);
        if !consumed.is_empty() {
            let list = inner
                .deliveries
                .entry(commit.thread_id.clone())
                .or_default();
            for (id, seq) in consumed {
                if let Some(d) = list.iter_mut().find(|d| d.delivery_id == id) {
                    d.consumed_seq = Some(seq);
                }
            }
        }
        for (id, seq, value) in effects.applied {
            if let Some(r) = inner.interrupts.get_mut(&id) {
                r.applied_seq = Some(seq);
                if r.answer.is_none() {
                    r.answer = Some((value, Timestamp::now()));
                }
            }
        }
        let head = plan.thread.head;
        let t = inner.threads.entry(commit.thread_id).or_default();
        t.record = Some(plan.thread);
        t.events.extend(commit.events);
        if let Some(s) = commit.snapshot {
            t.snapshot = Some(s);
        }
        Ok(Receipt { head })
    }

    async fn thread(&self, thread_id: &ThreadId) -> Result<Option<ThreadRecord>> {
        Ok(self
            .lock()
            .threads
            .get(thread_id)
            .and_then(|t| t.record.clone()))
    }

    async fn run(&self, run_id: RunId) -> Result<Option<RunRecord>> {
        Ok(self.lock().runs.get(&run_id).cloned())
    }

    async fn runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>> {
        let inner = self.lock();
        let start = match filter.after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        let limit = if filter.limit == 0 {
            usize::MAX
        } else {
            filter.limit
        };
        Ok(inner
            .runs
            .range((start, std::ops::Bound::Unbounded))
            .map(|(_, r)| r)
            .filter(|r| filter.matches(r))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn due_runs(&self, now: Timestamp, limit: usize) -> Result<Vec<RunRecord>> {
        let mut due: Vec<RunRecord> = self
            .lock()
            .runs
            .values()
            .filter(|r| super::wake_at(&r.status).is_some_and(|t| t <= now))
            .cloned()
            .collect();
        due.sort_by_key(|r| (super::wake_at(&r.status), r.run_id));
        due.truncate(limit);
        Ok(due)
    }

    async fn events(&self, thread_id: &ThreadId, after: Seq, limit: usize) -> Result<Vec<Event>> {
        let inner = self.lock();
        let Some(t) = inner.threads.get(thread_id) else {
            return Ok(Vec::new());
        };
        // Seqs are contiguous from the first retained event (1, or a prune point).
        let first = t.events.first().map_or(1, |e| e.seq.0);
        let from = usize::try_from(after.0.saturating_add(1).saturating_sub(first))
            .unwrap_or(usize::MAX)
            .min(t.events.len());
        Ok(t.events[from..].iter().take(limit).cloned().collect())
    }

    async fn snapshot(&self, thread_id: &ThreadId, at_or_before: Seq) -> Result<Option<Snapshot>> {
        Ok(self
            .lock()
            .threads
            .get(thread_id)
            .and_then(|t| t.snapshot.clone())
            .filter(|s| s.at_seq <= at_or_before))
    }

    async fn interrupt(&self, interrupt_id: InterruptId) -> Result<Option<InterruptRecord>> {
        Ok(self.lock().interrupts.get(&interrupt_id).cloned())
    }

    async fn interrupts(&self, thread_id: &ThreadId) -> Result<Vec<InterruptRecord>> {
        let mut out: Vec<InterruptRecord> = self
            .lock()
            .interrupts
            .values()
            .filter(|r| r.thread_id == *thread_id)
            .cloned()
            .collect();
        out.sort_by_key(|r| r.raised_seq);
        Ok(out)
    }

    async fn answer_interrupt(
        &self,
        interrupt_id: InterruptId,
        value: Payload,
        at: Timestamp,
    ) -> Result<(Answer, InterruptRecord)> {
        let mut inner = self.lock();
        let stored = inner
            .interrupts
            .get(&interrupt_id)
            .cloned()
            .ok_or(Error::InterruptNotFound { interrupt_id })?;
        let status = inner
            .runs
            .get(&stored.run_id)
            .map(|r| r.status.clone())
            .ok_or(Error::RunNotFound {
                run_id: stored.run_id,
            })?;
        match plan_answer(&stored, &status, &value, at)? {
            None => Ok((Answer::AlreadyAnswered, stored)),
            Some(updated) => {
                inner.interrupts.insert(interrupt_id, updated.clone());
                Ok((Answer::Recorded, updated))
            }
        }
    }

    async fn deliver(
        &self,
        thread_id: &ThreadId,
        name: &str,
        payload: Payload,
        key: Option<String>,
        at: Timestamp,
    ) -> Result<(Delivery, bool)> {
        let mut inner = self.lock();
        if !inner.threads.contains_key(thread_id) {
            return Err(Error::ThreadNotFound {
                thread_id: thread_id.clone(),
            });
        }
        let list = inner.deliveries.entry(thread_id.clone()).or_default();
        if let Some(k) = &key
            && let Some(existing) = list.iter().find(|d| d.key.as_ref() == Some(k))
        {
            check_redelivery(existing, name, &payload)?;
            return Ok((existing.clone(), false));
        }
        let d = Delivery {
            delivery_id: DeliveryId::generate(),
            thread_id: thread_id.clone(),
            name: name.to_owned(),
            payload,
            key,
            sent_at: at,
            consumed_seq: None,
        };
        list.push(d.clone());
        Ok((d, true))
    }

    async fn delete_thread(&self, thread_id: &ThreadId) -> Result<()> {
        let mut inner = self.lock();
        let record = inner
            .threads
            .get(thread_id)
            .and_then(|t| t.record.clone())
            .ok_or_else(|| Error::ThreadNotFound {
                thread_id: thread_id.clone(),
            })?;
        if let Some(run_id) = record.active_run {
            return Err(Error::RunActive {
                thread_id: thread_id.clone(),
                run_id,
            });
        }
        inner.threads.remove(thread_id);
        inner.runs.retain(|_, r| r.thread_id != *thread_id);
        inner.interrupts.retain(|_, r| r.thread_id != *thread_id);
        inner.deliveries.remove(thread_id);
        Ok(())
    }

    async fn prune(&self, thread_id: &ThreadId, base: Event) -> Result<u64> {
        let mut inner = self.lock();
        let not_found = || Error::ThreadNotFound {
            thread_id: thread_id.clone(),
        };
        let t = inner.threads.get(thread_id).ok_or_else(not_found)?;
        let record = t.record.clone().ok_or_else(not_found)?;
        let active_first = record
            .active_run
            .and_then(|r| inner.runs.get(&r))
            .map(|r| r.first_seq);
        let replaced = t
            .events
            .iter()
            .find(|e| e.seq == base.seq)
            .cloned()
            .ok_or_else(|| Error::InvalidCommit {
                thread_id: thread_id.clone(),
                detail: format!("no event at seq {} (already pruned?)", base.seq),
            })?;
        check_prune(&record, active_first, &base, &replaced)?;
        let at = base.seq;
        let t = inner.threads.get_mut(thread_id).ok_or_else(not_found)?;
        let before = t.events.len();
        t.events.retain(|e| e.seq > at);
        let deleted = (before - t.events.len()) as u64;
        t.events.insert(0, base);
        inner
            .interrupts
            .retain(|_, r| r.thread_id != *thread_id || r.applied_seq.is_none_or(|s| s >= at));
        if let Some(list) = inner.deliveries.get_mut(thread_id) {
            list.retain(|d| d.consumed_seq.is_none_or(|s| s >= at));
        }
        Ok(deleted.saturating_sub(1))
    }

    async fn deliveries(&self, thread_id: &ThreadId, pending_only: bool) -> Result<Vec<Delivery>> {
        Ok(self
            .lock()
            .deliveries
            .get(thread_id)
            .map(|l| {
                l.iter()
                    .filter(|d| !pending_only || d.consumed_seq.is_none())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn delete_snapshots(&self, thread_id: &ThreadId) -> Result<u64> {
        let mut inner = self.lock();
        let Some(t) = inner.threads.get_mut(thread_id) else {
            return Err(Error::ThreadNotFound {
                thread_id: thread_id.clone(),
            });
        };
        Ok(u64::from(t.snapshot.take().is_some()))
    }
}
