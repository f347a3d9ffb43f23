//! What a node is: an async function `(state, ctx) -> Result<update, NodeError>`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use oris_core::event::{Failure, FailureKind, Payload};
use oris_core::id::{RunId, ThreadId};
use oris_core::state::State;
use serde::de::DeserializeOwned;
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
}

impl NodeError {
    /// A retryable error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        NodeError {
            kind: FailureKind::NodeError,
            retryable: true,
            message: message.into(),
            chain: Vec::new(),
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
}
