//! The typed graph builder and the compiled graph.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use oris_core::event::Payload;
use oris_core::graph::{Branch, GraphError, Join, Target, Topology};
use oris_core::state::State;
use serde::Serialize;

use crate::node::{BoxFuture, Context, NodeError, NodeFn, NodeOutput};
use crate::retry::RetryPolicy;

/// Where a router sends the run: one or more targets.
///
/// Build one from a node name (`"b"`, or [`END`](oris_core::graph::END) to finish),
/// a list of names, or with [`Route::send`] for fan-out tasks that carry their own input.
#[derive(Debug, Clone, Default)]
pub struct Route {
    pub(crate) targets: Vec<Target>,
    pub(crate) error: Option<String>,
}

impl Route {
    /// No targets: this path ends.
    pub fn end() -> Self {
        Route::default()
    }

    /// Adds a target node (run once per superstep however often it is named).
    pub fn to(mut self, node: impl Into<String>) -> Self {
        self.targets.push(Target::from(node.into()));
        self
    }

    /// Adds a fan-out task: `node` runs as its own task and reads `input` with
    /// [`Context::input`]. Several sends to one node make several tasks.
    pub fn send(mut self, node: impl Into<String>, input: &impl Serialize) -> Self {
        match Payload::encode(input) {
            Ok(input) => self.targets.push(Target::Send {
                node: node.into(),
                input,
            }),
            Err(e) => self.error = Some(format!("fan-out input does not serialize: {e}")),
        }
        self
    }
}

impl From<&str> for Route {
    fn from(n: &str) -> Self {
        Route::default().to(n)
    }
}

impl From<String> for Route {
    fn from(n: String) -> Self {
        Route::default().to(n)
    }
}

impl<T: Into<String>> From<Vec<T>> for Route {
    fn from(ns: Vec<T>) -> Self {
        ns.into_iter().fold(Route::default(), Route::to)
    }
}

impl<T: Into<String>, const N: usize> From<[T; N]> for Route {
    fn from(ns: [T; N]) -> Self {
        ns.into_iter().fold(Route::default(), Route::to)
    }
}

pub(crate) type RouterFn<S> = Arc<dyn Fn(&S) -> Route + Send + Sync + 'static>;

/// Per-node settings.
#[derive(Debug, Clone, Default)]
pub struct NodePolicy {
    /// Retry policy; default: no retry.
    pub retry: RetryPolicy,
    /// Time limit of one attempt; default: none.
    pub timeout: Option<Duration>,
}

pub(crate) struct NodeSpec<S: State> {
    pub run: NodeFn<S>,
    pub policy: NodePolicy,
}

/// Builds a graph over the state `S`.
///
/// ```
/// # use oris_runtime::{StateGraph, NodeError};
/// # use oris_core::graph::{START, END};
/// # #[derive(Clone, Default, serde::Serialize, serde::Deserialize)] struct S;
/// # impl oris_core::state::State for S { type Update = ();
/// #   fn apply(&mut self, _: Vec<(&str, ())>) -> Result<(), oris_core::state::ReduceError> { Ok(()) }
/// #   fn into_update(self) {} }
/// let graph = StateGraph::<S>::new("hello", "1")
///     .node("greet", |_s: S, _ctx| async move { Ok::<(), NodeError>(()) })
///     .edge(START, "greet")
///     .edge("greet", END)
///     .compile()
///     .unwrap();
/// assert!(graph.mermaid().contains("greet"));
/// ```
pub struct StateGraph<S: State> {
    name: String,
    version: String,
    topology: Topology,
    nodes: HashMap<String, NodeSpec<S>>,
    routers: Vec<RouterFn<S>>,
    default_policy: NodePolicy,
    errors: Vec<GraphError>,
    interrupt_before: Vec<String>,
    interrupt_after: Vec<String>,
}

impl<S: State> fmt::Debug for StateGraph<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateGraph")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("topology", &self.topology)
            .finish()
    }
}

impl<S: State> StateGraph<S> {
    /// A new graph named `name` at `version`. Runs are pinned to the version they started on.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        StateGraph {
            name: name.into(),
            version: version.into(),
            topology: Topology::default(),
            nodes: HashMap::new(),
            routers: Vec::new(),
            default_policy: NodePolicy::default(),
            errors: Vec::new(),
            interrupt_before: Vec::new(),
            interrupt_after: Vec::new(),
        }
    }

    /// Adds a node: an async function of the state (a copy as of the start of the superstep)
    /// and a [`Context`], returning the fields it updates.
    pub fn node<F, Fut>(self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(S, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S::Update, NodeError>> + Send + 'static,
    {
        let policy = self.default_policy.clone();
        self.node_with(name, policy, f)
    }

    /// Adds a node with its own retry policy and timeout.
    pub fn node_with<F, Fut>(mut self, name: impl Into<String>, policy: NodePolicy, f: F) -> Self
    where
        F: Fn(S, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S::Update, NodeError>> + Send + 'static,
    {
        let name = name.into();
        let run: NodeFn<S> = Arc::new(move |s, ctx| {
            let fut = f(s, ctx);
            Box::pin(async move { fut.await.map(NodeOutput::update) }) as BoxFuture<_>
        });
        if self.nodes.contains_key(&name) {
            self.errors.push(GraphError::DuplicateNode(name.clone()));
        }
        self.topology.nodes.push(name.clone());
        self.nodes.insert(name, NodeSpec { run, policy });
        self
    }

    /// The policy of nodes added after this call (without their own).
    pub fn default_policy(mut self, policy: NodePolicy) -> Self {
        self.default_policy = policy;
        self
    }

    /// A plain edge: after `from` finishes, `to` runs in the next superstep.
    pub fn edge(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.topology.edges.push((from.into(), to.into()));
        self
    }

    /// A conditional edge: after `from` finishes, `router` picks among `targets`
    /// (nodes or END) on the merged state of the superstep. Returning a target not in
    /// `targets` fails the run with `invalid_route`. Loops are allowed.
    pub fn conditional_edge<R, I, T>(
        mut self,
        from: impl Into<String>,
        targets: I,
        router: R,
    ) -> Self
    where
        R: Fn(&S) -> T + Send + Sync + 'static,
        T: Into<Route>,
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.topology.branches.push(Branch {
            from: from.into(),
            targets: targets.into_iter().map(Into::into).collect(),
        });
        self.routers.push(Arc::new(move |s| router(s).into()));
        self
    }

    /// Declares where `from` may route with `ctx.goto` (nodes or END): used to validate
    /// the graph (reachability, paths to END) and to draw it. A `goto` elsewhere fails the
    /// run with `invalid_route`.
    pub fn goto_targets<I>(mut self, from: impl Into<String>, targets: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.topology.gotos.push(Branch {
            from: from.into(),
            targets: targets.into_iter().map(Into::into).collect(),
        });
        self
    }

    /// A join edge: `to` runs once, in the superstep after every node of `sources` has
    /// finished (they may finish in different supersteps).
    pub fn join<I>(mut self, sources: I, to: impl Into<String>) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.topology.joins.push(Join {
            sources: sources.into_iter().map(Into::into).collect(),
            target: to.into(),
        });
        self
    }

    /// Static breakpoints: every run pauses before these nodes run, with an interrupt whose
    /// payload is `{"breakpoint": "before", "node": …}`; resuming it (any value) lets the node
    /// run. Per-run breakpoints: [`RunOptions`](crate::RunOptions).
    pub fn interrupt_before<I>(mut self, nodes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.interrupt_before
            .extend(nodes.into_iter().map(Into::into));
        self
    }

    /// Static breakpoints: every run pauses after these nodes ran and before their update
    /// counts; on resume the node runs again (its recorded steps return their results) and
    /// its update is merged.
    pub fn interrupt_after<I>(mut self, nodes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.interrupt_after
            .extend(nodes.into_iter().map(Into::into));
        self
    }

    /// Validates the graph.
    ///
    /// # Errors
    /// [`GraphError`]: duplicate or reserved node names, edges to unknown nodes, no entry,
    /// unreachable nodes, nodes with no path to END.
    pub fn compile(self) -> Result<CompiledGraph<S>, GraphError> {
        if let Some(e) = self.errors.into_iter().next() {
            return Err(e);
        }
        self.topology.validate()?;
        if let Some(n) = self
            .interrupt_before
            .iter()
            .chain(&self.interrupt_after)
            .find(|n| self.topology.node_index(n).is_none())
        {
            return Err(GraphError::UnknownNode {
                node: n.clone(),
                edge: "breakpoint".into(),
            });
        }
        if self.name.is_empty() || self.version.is_empty() {
            return Err(GraphError::InvalidNodeName {
                name: format!("{}@{}", self.name, self.version),
                reason: "graph name and version must not be empty",
            });
        }
        let nodes = self
            .topology
            .nodes
            .iter()
            .map(|n| self.nodes.get(n).map(|s| (s.run.clone(), s.policy.clone())))
            .collect::<Option<Vec<_>>>()
            .expect("invariant: every topology node has a spec");
        Ok(CompiledGraph {
            inner: Arc::new(GraphInner {
                name: self.name,
                version: self.version,
                topology: self.topology,
                nodes: nodes
                    .into_iter()
                    .map(|(run, policy)| NodeSpec { run, policy })
                    .collect(),
                routers: self.routers,
                interrupt_before: self.interrupt_before,
                interrupt_after: self.interrupt_after,
            }),
        })
    }
}

pub(crate) struct GraphInner<S: State> {
    pub name: String,
    pub version: String,
    pub topology: Topology,
    /// Indexed like `topology.nodes`.
    pub nodes: Vec<NodeSpec<S>>,
    /// Indexed like `topology.branches`.
    pub routers: Vec<RouterFn<S>>,
    /// Static breakpoints.
    pub interrupt_before: Vec<String>,
    pub interrupt_after: Vec<String>,
}

/// A validated graph, ready to run. Cheap to clone.
pub struct CompiledGraph<S: State> {
    pub(crate) inner: Arc<GraphInner<S>>,
}

impl<S: State> Clone for CompiledGraph<S> {
    fn clone(&self) -> Self {
        CompiledGraph {
            inner: self.inner.clone(),
        }
    }
}

impl<S: State> fmt::Debug for CompiledGraph<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledGraph")
            .field("name", &self.inner.name)
            .field("version", &self.inner.version)
            .finish()
    }
}

impl<S: State> CompiledGraph<S> {
    /// The graph's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The graph's version.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// The shape of the graph.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The graph as a Mermaid flowchart.
    pub fn mermaid(&self) -> String {
        self.inner.topology.mermaid()
    }
}
