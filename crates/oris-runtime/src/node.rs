//! What a node is: an async function `(state, ctx) -> Result<update, NodeError>`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use oris_core::event::{EventBody, Failure, FailureKind, Payload, StepResult};
use oris_core::id::{InterruptId, RunId, ThreadId, Timestamp};
use oris_core::state::State;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clock::Clock;
use crate::record::{
    GOTO_STEP, Record, RecordRequest, Recorder, SLEEP_STEP, StepBody, WAIT_STEP, in_step_body,
};
use crate::retry::RetryPolicy;
use tokio_util::sync::CancellationToken;

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The type-erased node function stored in a compiled graph.
pub(crate) type NodeFn<S> =
    Arc<dyn Fn(S, Context) -> BoxFuture<Result<NodeOutput<S>, NodeError>> + Send + Sync + 'static>;

/// What a node attempt produced: its partial update (later: routing commands).
#[derive(Debug, Clone)]
pub struct NodeOutput<S: State> {
    /// The fields the node sets.
    pub update: S::Update,
}

impl<S: State> NodeOutput<S> {
    /// An output that only updates state.
    pub fn update(update: S::Update) -> Self {
        NodeOutput { update }
    }
}

/// An error returned by a node. Retryable unless built with [`NodeError::permanent`]; the
/// node's [`RetryPolicy`](crate::RetryPolicy) decides whether a retry happens.
///
/// Any `std::error::Error` converts into it with `?`, keeping its source chain.
pub struct NodeError {
    pub(crate) kind: FailureKind,
    retryable: bool,
    message: String,
    chain: Vec<String>,
    /// Set when the node paused (interrupt, timer, event wait): not a failure.
    pub(crate) paused: bool,
}

impl NodeError {
    /// A retryable error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        NodeError {
            kind: FailureKind::NodeError,
            retryable: true,
            message: message.into(),
            chain: Vec::new(),
            paused: false,
        }
    }

    /// An error no retry policy will retry.
    pub fn permanent(message: impl Into<String>) -> Self {
        NodeError {
            retryable: false,
            ..NodeError::new(message)
        }
    }

    pub(crate) fn with_kind(kind: FailureKind, message: impl Into<String>) -> Self {
        NodeError {
            kind,
            ..NodeError::new(message)
        }
    }

    pub(crate) fn pause(what: String) -> Self {
        NodeError {
            paused: true,
            ..NodeError::permanent(format!(
                "paused ({what}); propagate this error with `?` so the run can wait"
            ))
        }
    }

    fn from_failure(f: &Failure) -> Self {
        NodeError {
            kind: f.kind,
            retryable: false,
            message: f.message.clone(),
            chain: f.chain.clone(),
            paused: false,
        }
    }

    /// Whether this error is the node pausing — at an interrupt, a durable sleep or a wait
    /// for an event — rather than a failure. Propagate it with `?`.
    pub fn is_pause(&self) -> bool {
        self.paused
    }

    /// Marks the error permanent.
    pub fn into_permanent(mut self) -> Self {
        self.retryable = false;
        self
    }

    /// Whether a retry may help (before the node's policy is consulted).
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The classification: `node_error`, `node_timeout` or `node_panicked`.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The causes, outermost first.
    pub fn chain(&self) -> &[String] {
        &self.chain
    }

    pub(crate) fn to_failure(&self, node: &str) -> Failure {
        Failure {
            kind: self.kind,
            message: self.message.clone(),
            node: Some(node.to_owned()),
            chain: self.chain.clone(),
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for NodeError {
    fn from(e: E) -> Self {
        let mut chain = Vec::new();
        let mut source = e.source();
        while let Some(s) = source {
            chain.push(s.to_string());
            source = s.source();
        }
        NodeError {
            chain,
            ..NodeError::new(e.to_string())
        }
    }
}

impl fmt::Debug for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeError")
            .field("kind", &self.kind)
            .field("retryable", &self.retryable)
            .field("message", &self.message)
            .field("chain", &self.chain)
            .finish()
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        for c in &self.chain {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

/// What a node can see and do besides its state: who it is, its fan-out input, and
/// cancellation.
#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Arc<ContextInner>,
}

pub(crate) struct ContextInner {
    pub thread_id: ThreadId,
    pub run_id: RunId,
    pub node: String,
    pub superstep: u32,
    pub task: u32,
    pub attempt: u32,
    pub input: Option<Payload>,
    pub cancel: CancellationToken,
    pub recorder: Recorder,
    pub clock: Arc<dyn Clock>,
}

/// What a recorded step returns on re-execution.
fn recorded_result<T: DeserializeOwned>(name: &str, result: &StepResult) -> Result<T, NodeError> {
    match result {
        StepResult::Ok(v) => v
            .decode()
            .map_err(|e| NodeError::permanent(format!("recorded result of step `{name}` {e}"))),
        StepResult::Err(f) => Err(NodeError::from_failure(f)),
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("thread_id", &self.inner.thread_id)
            .field("run_id", &self.inner.run_id)
            .field("node", &self.inner.node)
            .field("superstep", &self.inner.superstep)
            .field("task", &self.inner.task)
            .field("attempt", &self.inner.attempt)
            .finish()
    }
}

impl Context {
    /// The thread this run belongs to.
    pub fn thread_id(&self) -> &ThreadId {
        &self.inner.thread_id
    }

    /// The run.
    pub fn run_id(&self) -> RunId {
        self.inner.run_id
    }

    /// The node being executed.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The superstep, counted from 0 within the run.
    pub fn superstep(&self) -> u32 {
        self.inner.superstep
    }

    /// Index of this task in its superstep.
    pub fn task(&self) -> u32 {
        self.inner.task
    }

    /// The attempt, from 1; greater after retries.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    /// The task's own input when it was started by a fan-out ([`Route::send`](crate::Route::send)).
    ///
    /// # Errors
    /// A permanent [`NodeError`] naming the field when the input does not deserialize into `T`.
    pub fn input<T: DeserializeOwned>(&self) -> Result<Option<T>, NodeError> {
        match &self.inner.input {
            None => Ok(None),
            Some(p) => p.decode().map(Some).map_err(|e| {
                NodeError::permanent(format!("task input of node `{}` {e}", self.inner.node))
            }),
        }
    }

    /// Whether the run was cancelled (or timed out); long loops should check it.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Completes when the run is cancelled.
    pub async fn cancelled(&self) {
        self.inner.cancel.cancelled().await
    }

    fn non_determinism(&self, index: u32, expected: &Record, found: String) -> NodeError {
        NodeError {
            kind: FailureKind::NonDeterminism,
            ..NodeError::permanent(format!(
                "node `{}` (superstep {}, task {}) made call #{index} {found}, but the log records {} at that position: the node's code changed while this run was in flight; finish the run with the old version or fork the thread from a checkpoint before this node",
                self.inner.node,
                self.inner.superstep,
                self.inner.task,
                expected.describe()
            ))
        }
    }

    /// Recorded calls inside a step's body are refused: see [`in_step_body`].
    fn refuse_nesting(&self, call: &str) -> Result<(), NodeError> {
        if in_step_body() {
            return Err(NodeError::permanent(format!(
                "{call} was called inside the body of a recorded step in node `{}`; recorded calls (steps, interrupts, sleeps, waits, goto) cannot be nested — make them siblings",
                self.inner.node
            )));
        }
        Ok(())
    }

    /// A stable idempotency key for the next recorded call (`ctx.step`), the same on every
    /// re-execution of this node in this run: pass it to the remote service so that a step
    /// body that runs twice (a crash between its call and its record) cannot act twice.
    pub fn step_key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.inner.run_id,
            self.inner.superstep,
            self.inner.task,
            self.inner.recorder.peek_index()
        )
    }

    /// Runs an external call once and records its result (or error) in the thread's log
    /// before returning it. When the node runs again (retry, crash recovery, resume after an
    /// interrupt) the recorded result is returned without running `call`.
    ///
    /// The body is at-least-once: if the process dies after `call` finished but before the
    /// record is durable, it runs again; give the remote side [`Context::step_key`]. Steps
    /// are matched by call order; a different name at a recorded position is a
    /// `non_determinism` failure.
    ///
    /// # Errors
    /// The step's own error (recorded, returned again on re-execution, kind `step_failed`),
    /// or a permanent error if the result cannot be recorded.
    pub async fn step<T, F>(&self, name: &str, call: F) -> Result<T, NodeError>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = Result<T, NodeError>>,
    {
        let mut call = Some(call);
        self.step_with(name, &RetryPolicy::none(), move || {
            call.take()
                .expect("invariant: a step without retries is called once")
        })
        .await
    }

    /// [`Context::step`] with a retry policy of its own: `make` is called for every try; only
    /// the final result or error is recorded.
    ///
    /// # Errors
    /// As [`Context::step`].
    pub async fn step_with<T, F, Fut>(
        &self,
        name: &str,
        policy: &RetryPolicy,
        mut make: F,
    ) -> Result<T, NodeError>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, NodeError>>,
    {
        self.refuse_nesting(&format!("ctx.step(\"{name}\")"))?;
        let rec = &self.inner.recorder;
        let index = rec.next_index();
        if let Some(recorded) = rec.get(index) {
            return match &recorded {
                Record::Step { name: n, result } if n == name => recorded_result(name, result),
                other => Err(self.non_determinism(index, other, format!("step `{name}`"))),
            };
        }
        // A replay returns the original run's result for the same step at the same position
        // (recording it in this run's log) instead of executing the body again.
        if let Some(Record::Step { name: n, result }) = rec.prior.get(&index)
            && n == name
        {
            let body = EventBody::StepRecorded {
                superstep: self.inner.superstep,
                task: self.inner.task,
                node: self.inner.node.clone(),
                index,
                name: name.to_owned(),
                result: result.clone(),
            };
            rec.record(index, body).await.map_err(|e| {
                NodeError::permanent(format!("could not record step `{name}`: {e}"))
            })?;
            return recorded_result(name, result);
        }
        let mut attempt = 1;
        let outcome = loop {
            match StepBody::new(make()).await {
                Ok(v) => break Ok(v),
                Err(e) if policy.should_retry(&e, attempt) => {
                    tokio::time::sleep(policy.delay(attempt)).await;
                    attempt += 1;
                }
                Err(e) => break Err(e),
            }
        };
        let (result, ret) = match outcome {
            Ok(v) => {
                // Return what a re-execution will return: the value as recorded.
                let p = Payload::encode(&v).map_err(|e| {
                    NodeError::permanent(format!("result of step `{name}` does not serialize: {e}"))
                })?;
                let back: T = p.decode().map_err(|e| {
                    NodeError::permanent(format!(
                        "result of step `{name}` does not read back from JSON {e}"
                    ))
                })?;
                (StepResult::Ok(p), Ok(back))
            }
            Err(e) => {
                let mut f = e.to_failure(&self.inner.node);
                f.kind = FailureKind::StepFailed;
                let err = NodeError::from_failure(&f);
                (StepResult::Err(f), Err(err))
            }
        };
        let body = EventBody::StepRecorded {
            superstep: self.inner.superstep,
            task: self.inner.task,
            node: self.inner.node.clone(),
            index,
            name: name.to_owned(),
            result,
        };
        rec.record(index, body)
            .await
            .map_err(|e| NodeError::permanent(format!("could not record step `{name}`: {e}")))?;
        ret
    }

    /// The current time, recorded: every re-execution of the node sees the same value.
    ///
    /// # Errors
    /// If the value cannot be recorded.
    pub async fn now(&self) -> Result<Timestamp, NodeError> {
        self.step("oris.now", async { Ok(Timestamp::now()) }).await
    }

    /// A random number, recorded: every re-execution of the node sees the same value.
    ///
    /// # Errors
    /// If the value cannot be recorded.
    pub async fn random(&self) -> Result<u64, NodeError> {
        self.step("oris.random", async { Ok(rand::random::<u64>()) })
            .await
    }

    /// A routing command: when this node's task completes, the run continues with `targets`
    /// (node names, or `END`) instead of following the node's edges — like LangGraph's
    /// `Command(goto=…)`. The choice is recorded, so recovery and replay route the same way.
    /// Call it at most once per execution; the last call wins.
    ///
    /// # Errors
    /// If the choice cannot be recorded. An unknown node fails the run with `invalid_route`.
    pub async fn goto<I>(&self, targets: I) -> Result<(), NodeError>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let targets: Vec<String> = targets.into_iter().map(Into::into).collect();
        let _: Vec<String> = self.step(GOTO_STEP, async move { Ok(targets) }).await?;
        Ok(())
    }

    /// Sleeps durably for `duration`: the wake-up time is recorded, the task pauses, and the
    /// run waits (status `waiting`) without holding a task or a thread. The node runs again
    /// once the time has come — also after a restart — and this call then returns.
    ///
    /// # Errors
    /// The pause (propagate it with `?`), or a recording failure.
    pub async fn sleep(&self, duration: std::time::Duration) -> Result<(), NodeError> {
        let clock = self.inner.clock.clone();
        let wake: Timestamp = self
            .step(SLEEP_STEP, async move { Ok(clock.now().plus(duration)) })
            .await?;
        self.sleep_until_recorded(wake)
    }

    /// Sleeps durably until `at` (wall clock). See [`Context::sleep`].
    ///
    /// # Errors
    /// As [`Context::sleep`].
    pub async fn sleep_until(&self, at: Timestamp) -> Result<(), NodeError> {
        let wake: Timestamp = self.step(SLEEP_STEP, async move { Ok(at) }).await?;
        self.sleep_until_recorded(wake)
    }

    fn sleep_until_recorded(&self, wake: Timestamp) -> Result<(), NodeError> {
        if self.inner.clock.now() >= wake {
            Ok(())
        } else {
            Err(NodeError::pause(format!("sleeping until {}", wake.0)))
        }
    }

    /// Waits for the external event `name` (sent with `Engine::send_event`) for at most
    /// `timeout`, durably: returns `Some(payload)` of the oldest such event not consumed yet
    /// — including one sent before the wait started — or `None` once the timeout passed.
    /// While waiting, the run is `waiting` and holds no task or thread.
    ///
    /// # Errors
    /// The pause (propagate it with `?`), a payload that does not deserialize into `T`, or a
    /// recording failure.
    pub async fn wait_for_event<T: DeserializeOwned>(
        &self,
        name: &str,
        timeout: std::time::Duration,
    ) -> Result<Option<T>, NodeError> {
        let step = format!("{WAIT_STEP}{name}");
        let clock = self.inner.clock.clone();
        let deadline: Timestamp = self
            .step(&step, async move { Ok(clock.now().plus(timeout)) })
            .await?;
        let rec = &self.inner.recorder;
        let index = rec.next_index();
        let got = match rec.get(index) {
            Some(r @ Record::Received { .. }) => Some(r),
            Some(other) => {
                return Err(self.non_determinism(index, &other, format!("wait for `{name}`")));
            }
            None => {
                let inner = &self.inner;
                rec.receive(
                    |ack| RecordRequest::Receive {
                        superstep: inner.superstep,
                        task: inner.task,
                        node: inner.node.clone(),
                        index,
                        name: name.to_owned(),
                        deadline,
                        ack,
                    },
                    index,
                )
                .await
                .map_err(|e| NodeError::permanent(format!("could not receive event: {e}")))?
            }
        };
        match got {
            Some(Record::Received { payload: None, .. }) => Ok(None),
            Some(Record::Received {
                payload: Some(p), ..
            }) => p
                .decode()
                .map(Some)
                .map_err(|e| NodeError::permanent(format!("payload of event `{name}` {e}"))),
            _ => Err(NodeError::pause(format!("waiting for event `{name}`"))),
        }
    }

    /// Pauses the run until someone resumes this interrupt with a value, and returns that
    /// value. Propagate the error with `?`: it is how the node yields.
    ///
    /// The first execution records the interrupt (a unique, stable `InterruptId`) and
    /// returns an error that suspends the task. When the run is resumed, the node runs again
    /// from its first line: recorded steps return their results, earlier interrupts return
    /// their values, and this call returns the resume value. A node may interrupt any number
    /// of times.
    ///
    /// # Errors
    /// The suspension (see above), a non-determinism error, or a value that does not
    /// deserialize into `T`.
    pub async fn interrupt<T, P>(&self, payload: &P) -> Result<T, NodeError>
    where
        T: DeserializeOwned,
        P: Serialize + ?Sized,
    {
        self.refuse_nesting("ctx.interrupt")?;
        let rec = &self.inner.recorder;
        let index = rec.next_index();
        match rec.get(index) {
            Some(Record::Interrupt {
                resumed: Some(v), ..
            }) => v.decode().map_err(|e| {
                NodeError::permanent(format!(
                    "resume value of interrupt #{index} in node `{}` {e}",
                    self.inner.node
                ))
            }),
            Some(Record::Interrupt {
                id, resumed: None, ..
            }) => Err(NodeError::pause(format!("interrupt {id}"))),
            Some(other) => Err(self.non_determinism(index, &other, "interrupt".to_owned())),
            None => {
                let payload = Payload::encode(payload).map_err(|e| {
                    NodeError::permanent(format!("interrupt payload does not serialize: {e}"))
                })?;
                let id = InterruptId::generate();
                let body = EventBody::InterruptRaised {
                    superstep: self.inner.superstep,
                    task: self.inner.task,
                    node: self.inner.node.clone(),
                    index,
                    interrupt_id: id,
                    payload,
                };
                rec.record(index, body).await.map_err(|e| {
                    NodeError::permanent(format!("could not record interrupt: {e}"))
                })?;
                Err(NodeError::pause(format!("interrupt {id}")))
            }
        }
    }
}
