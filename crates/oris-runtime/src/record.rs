//! Recorded calls inside a node: steps and interrupts.
//!
//! A node's recorded calls are numbered in call order (`index`, from 0) within its task.
//! The first execution of a call records its outcome through the driver (one durable commit,
//! awaited before the call returns); every later execution of the node — a retry, a
//! re-execution after a crash, a resume after an interrupt — finds the record at the same
//! index and returns it without running anything. A record whose kind or name differs from
//! the call at that index means the node's code changed under a running run: a
//! non-determinism error naming the node, the position, what was recorded and what was called.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context as TaskContext, Poll};

use oris_core::event::{EventBody, Payload, StepResult};
use oris_core::id::{InterruptId, Timestamp};
use tokio::sync::{mpsc, oneshot};

/// Index of the interrupt raised by a static breakpoint before a node runs.
pub(crate) const BREAKPOINT_BEFORE: u32 = u32::MAX;
/// Index of the interrupt raised by a static breakpoint after a node ran.
pub(crate) const BREAKPOINT_AFTER: u32 = u32::MAX - 1;

thread_local! {
    /// Set while the body of a recorded step is being polled on this thread.
    static IN_STEP_BODY: Cell<bool> = const { Cell::new(false) };
}

/// Whether the caller runs inside the body of a recorded step. Recorded calls made there
/// would take call positions that a re-execution (which returns the step's record without
/// running its body) cannot reproduce, so they are refused. Sibling steps polled together
/// (`join!`) are not inside each other's bodies and are fine.
pub(crate) fn in_step_body() -> bool {
    IN_STEP_BODY.with(Cell::get)
}

/// A step body, marked as such while it is polled.
pub(crate) struct StepBody<F> {
    inner: Pin<Box<F>>,
}

impl<F> StepBody<F> {
    pub fn new(f: F) -> Self {
        StepBody { inner: Box::pin(f) }
    }
}

impl<F: Future> Future for StepBody<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let outer = IN_STEP_BODY.with(|f| f.replace(true));
        let r = self.inner.as_mut().poll(cx);
        IN_STEP_BODY.with(|f| f.set(outer));
        r
    }
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Record {
    Step {
        name: String,
        result: StepResult,
    },
    Interrupt {
        id: InterruptId,
        payload: Payload,
        /// The value it was resumed with, once applied to the run.
        resumed: Option<Payload>,
    },
    /// The end of a wait for an external event: the payload, or `None` on timeout.
    Received {
        name: String,
        payload: Option<Payload>,
    },
}

/// Step name under which `ctx.goto` records the nodes a task routes to.
pub(crate) const GOTO_STEP: &str = "oris.goto";
/// Step name under which `ctx.sleep` records its wake-up time.
pub(crate) const SLEEP_STEP: &str = "oris.sleep";
/// Prefix of the step name under which `ctx.wait_for_event` records its deadline.
pub(crate) const WAIT_STEP: &str = "oris.wait:";

/// What a paused task waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Block {
    Interrupt(InterruptId),
    Timer(Timestamp),
    Event { name: String, deadline: Timestamp },
}

/// What keeps `task` from running, judged from its records alone: an unanswered interrupt,
/// or — when its last recorded call is a sleep or the start of a wait — that timer or event.
/// Whether a timer is due or an event has arrived is for the caller to decide.
pub(crate) fn blocked_on(records: &Records, task: u32) -> Option<Block> {
    let recs = records.get(&task)?;
    if let Some(id) = recs.values().find_map(Record::pending_interrupt) {
        return Some(Block::Interrupt(id));
    }
    // Breakpoint records sit at the top of the index range; the node's own calls below.
    let (_, last) = recs.range(..BREAKPOINT_AFTER).next_back()?;
    match last {
        Record::Step {
            name,
            result: StepResult::Ok(p),
        } if name == SLEEP_STEP => p.decode().ok().map(Block::Timer),
        Record::Step {
            name,
            result: StepResult::Ok(p),
        } => {
            let event = name.strip_prefix(WAIT_STEP)?;
            p.decode().ok().map(|deadline| Block::Event {
                name: event.to_owned(),
                deadline,
            })
        }
        _ => None,
    }
}

impl Record {
    pub fn describe(&self) -> String {
        match self {
            Record::Step { name, .. } => format!("step `{name}`"),
            Record::Interrupt { .. } => "interrupt".to_owned(),
            Record::Received { name, .. } => format!("receipt of event `{name}`"),
        }
    }

    /// The pending interrupt of this record, if it is one.
    pub fn pending_interrupt(&self) -> Option<InterruptId> {
        match self {
            Record::Interrupt {
                id, resumed: None, ..
            } => Some(*id),
            _ => None,
        }
    }
}

/// Recorded calls of every task of the current superstep: task → index → record.
pub(crate) type Records = BTreeMap<u32, BTreeMap<u32, Record>>;

/// Adds the record an event carries, if any. Returns false for events that are not records.
pub(crate) fn apply_record(records: &mut Records, body: &EventBody) -> bool {
    match body {
        EventBody::StepRecorded {
            task,
            index,
            name,
            result,
            ..
        } => {
            records.entry(*task).or_default().insert(
                *index,
                Record::Step {
                    name: name.clone(),
                    result: result.clone(),
                },
            );
            true
        }
        EventBody::InterruptRaised {
            task,
            index,
            interrupt_id,
            payload,
            ..
        } => {
            records.entry(*task).or_default().insert(
                *index,
                Record::Interrupt {
                    id: *interrupt_id,
                    payload: payload.clone(),
                    resumed: None,
                },
            );
            true
        }
        EventBody::EventReceived {
            task,
            index,
            name,
            payload,
            ..
        } => {
            records.entry(*task).or_default().insert(
                *index,
                Record::Received {
                    name: name.clone(),
                    payload: payload.clone(),
                },
            );
            true
        }
        EventBody::InterruptResumed {
            interrupt_id,
            value,
        } => {
            for r in records.values_mut().flat_map(|t| t.values_mut()) {
                if let Record::Interrupt { id, resumed, .. } = r
                    && id == interrupt_id
                {
                    *resumed = Some(value.clone());
                }
            }
            true
        }
        _ => false,
    }
}

/// A node asking the driver to record something durably.
#[derive(Debug)]
pub(crate) enum RecordRequest {
    /// Record this event.
    Record {
        body: EventBody,
        ack: oneshot::Sender<Result<(), String>>,
    },
    /// Consume the oldest pending delivery of `name` (recording an `EventReceived`), or
    /// record a timeout if `deadline` passed; `Ok(None)` when the task must wait.
    Receive {
        superstep: u32,
        task: u32,
        node: String,
        index: u32,
        name: String,
        deadline: Timestamp,
        ack: oneshot::Sender<Result<Option<Record>, String>>,
    },
}

/// The recorded calls one node attempt can see, and the way to add more.
#[derive(Debug)]
pub(crate) struct Recorder {
    pub records: Mutex<BTreeMap<u32, Record>>,
    pub next: Mutex<u32>,
    pub tx: mpsc::UnboundedSender<RecordRequest>,
    /// Steps recorded by the original run of a replay, at the same position.
    pub prior: BTreeMap<u32, Record>,
}

impl Recorder {
    /// Claims the next call index.
    pub fn next_index(&self) -> u32 {
        let mut n = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let i = *n;
        *n += 1;
        i
    }

    /// The index the next call will get.
    pub fn peek_index(&self) -> u32 {
        *self.next.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the driver to deliver a pending event of `name` to call `index`.
    pub async fn receive(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<Option<Record>, String>>) -> RecordRequest,
        index: u32,
    ) -> Result<Option<Record>, String> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(request(ack))
            .map_err(|_| "the run's driver stopped".to_owned())?;
        let got = done
            .await
            .map_err(|_| "the run's driver stopped".to_owned())??;
        if let Some(r) = &got {
            self.records
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(index, r.clone());
        }
        Ok(got)
    }

    pub fn get(&self, index: u32) -> Option<Record> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&index)
            .cloned()
    }

    /// Records `body` durably (through the run's driver) and remembers it locally.
    pub async fn record(&self, index: u32, body: EventBody) -> Result<(), String> {
        let mut local = BTreeMap::new();
        let mut as_records = Records::new();
        apply_record(&mut as_records, &body);
        if let Some(r) = as_records
            .into_values()
            .next()
            .and_then(|m| m.into_values().next())
        {
            local.insert(index, r);
        }
        let (ack, done) = oneshot::channel();
        self.tx
            .send(RecordRequest::Record { body, ack })
            .map_err(|_| "the run's driver stopped".to_owned())?;
        done.await
            .map_err(|_| "the run's driver stopped".to_owned())??;
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(local);
        Ok(())
    }
}
