//! The in-memory store: for tests, benchmarks of engine overhead, and ephemeral graphs.
//! Nothing survives the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::{
    Commit, Error, Receipt, Result, RunFilter, RunRecord, RunWrite, Snapshot, Store, ThreadRecord,
    plan_commit,
};
use crate::event::Event;
use crate::id::{RunId, Seq, ThreadId, Timestamp};

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
        if let Some(run) = plan.run {
            inner.runs.insert(run.run_id, run);
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

    async fn events(&self, thread_id: &ThreadId, after: Seq, limit: usize) -> Result<Vec<Event>> {
        let inner = self.lock();
        let Some(t) = inner.threads.get(thread_id) else {
            return Ok(Vec::new());
        };
        // Seqs are contiguous from 1, so the event with seq s sits at index s - 1.
        let from = usize::try_from(after.0)
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
