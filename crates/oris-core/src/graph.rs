//! Graph topology, validation, Mermaid rendering and superstep planning.
//!
//! The topology is the shape of a graph without its code: nodes, plain edges, conditional
//! edges (with the targets their router may return), and join edges. The runtime's typed
//! builder fills one in; [`Topology::validate`] checks it at compile time and
//! [`Topology::plan`] computes the next superstep's tasks from what finished. Both are pure.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;

use crate::event::{Barriers, Payload, Task};

/// The virtual entry node.
pub const START: &str = "__start__";
/// The virtual exit node.
pub const END: &str = "__end__";

/// Where a router sends the run next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Run a node (once per superstep, however many times it is targeted).
    Node(String),
    /// Run a node as a separate task with its own input (dynamic fan-out).
    Send {
        /// The node.
        node: String,
        /// The task's input.
        input: Payload,
    },
    /// Finish this path.
    End,
}

impl Target {
    /// The node targeted, or [`END`].
    pub fn node(&self) -> &str {
        match self {
            Target::Node(n) | Target::Send { node: n, .. } => n,
            Target::End => END,
        }
    }
}

impl From<&str> for Target {
    fn from(n: &str) -> Self {
        if n == END {
            Target::End
        } else {
            Target::Node(n.to_owned())
        }
    }
}

impl From<String> for Target {
    fn from(n: String) -> Self {
        if n == END {
            Target::End
        } else {
            Target::Node(n)
        }
    }
}

/// A conditional edge: after `from` runs, a router picks among `targets`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    /// Source node (or [`START`]).
    pub from: String,
    /// Every target the router may return (nodes or [`END`]).
    pub targets: Vec<String>,
}

/// A join edge: `target` runs once after every node of `sources` has finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// The nodes to wait for.
    pub sources: Vec<String>,
    /// The node to run.
    pub target: String,
}

/// The shape of a graph.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Nodes in declaration order (this order is the merge order within a superstep).
    pub nodes: Vec<String>,
    /// Plain edges `(from, to)`; `from` may be [`START`], `to` may be [`END`].
    pub edges: Vec<(String, String)>,
    /// Conditional edges; a branch's index is its position here.
    pub branches: Vec<Branch>,
    /// Join edges; a join's index is its position here.
    pub joins: Vec<Join>,
    /// Routing commands a node may issue at run time (`ctx.goto`): its possible targets.
    pub gotos: Vec<Branch>,
}

/// A graph that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// Two nodes share a name.
    #[error("node `{0}` is defined twice")]
    DuplicateNode(String),
    /// A node name is reserved or malformed.
    #[error("node name `{name}` is not allowed: {reason}")]
    InvalidNodeName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// An edge names a node that does not exist.
    #[error("{edge} refers to unknown node `{node}`")]
    UnknownNode {
        /// The missing node.
        node: String,
        /// The edge, e.g. `edge a -> b`.
        edge: String,
    },
    /// An edge that can never be valid (into START, out of END).
    #[error("{0}")]
    InvalidEdge(String),
    /// Nothing leaves START.
    #[error("the graph has no entry: add an edge from START")]
    NoEntry,
    /// A node cannot be reached from START.
    #[error("node `{0}` is unreachable from START")]
    Unreachable(String),
    /// A node has no path to END.
    #[error("node `{0}` has no path to END (every node must be able to finish)")]
    NoPathToEnd(String),
    /// A conditional edge was declared with no targets.
    #[error("conditional edge from `{0}` declares no targets")]
    EmptyBranch(String),
    /// A join was declared with no sources.
    #[error("join into `{0}` has no sources")]
    EmptyJoin(String),
}

/// A router returned something the graph does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "router of the conditional edge from `{from}` returned `{target}`, which is not among its declared targets {allowed:?}"
)]
pub struct RouteError {
    /// The branch's source node.
    pub from: String,
    /// What it returned.
    pub target: String,
    /// What it may return.
    pub allowed: Vec<String>,
}

fn check_name(name: &str) -> Result<(), GraphError> {
    let invalid = |reason| {
        Err(GraphError::InvalidNodeName {
            name: name.to_owned(),
            reason,
        })
    };
    if name == START || name == END || name.starts_with("__") {
        return invalid("names starting with `__` (START, END) are reserved");
    }
    if name.is_empty() || name.len() > 100 {
        return invalid("must be 1 to 100 bytes long");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return invalid("use ASCII letters, digits and `-_.`");
    }
    Ok(())
}

impl Topology {
    /// Position of a node in declaration order.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n == name)
    }

    /// Every edge out of `from` as (target, is_conditional).
    fn successors<'a>(&'a self, from: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let plain = self
            .edges
            .iter()
            .filter(move |(f, _)| f == from)
            .map(|(_, t)| t.as_str());
        let cond = self
            .branches
            .iter()
            .filter(move |b| b.from == from)
            .flat_map(|b| b.targets.iter().map(String::as_str));
        let joins = self
            .joins
            .iter()
            .filter(move |j| j.sources.iter().any(|s| s == from))
            .map(|j| j.target.as_str());
        let gotos = self
            .gotos
            .iter()
            .filter(move |b| b.from == from)
            .flat_map(|b| b.targets.iter().map(String::as_str));
        plain.chain(cond).chain(joins).chain(gotos)
    }

    /// Checks the graph: names, edges, entry, reachability, and a path to END from every
    /// node.
    ///
    /// # Errors
    /// The first [`GraphError`] found, in a stable order.
    pub fn validate(&self) -> Result<(), GraphError> {
        let mut seen = BTreeSet::new();
        for n in &self.nodes {
            check_name(n)?;
            if !seen.insert(n.as_str()) {
                return Err(GraphError::DuplicateNode(n.clone()));
            }
        }
        let known = |n: &str| seen.contains(n);
        let unknown = |node: &str, edge: String| {
            Err(GraphError::UnknownNode {
                node: node.to_owned(),
                edge,
            })
        };
        for (from, to) in &self.edges {
            let edge = format!("edge {from} -> {to}");
            if from == END {
                return Err(GraphError::InvalidEdge(format!(
                    "{edge}: nothing can leave END"
                )));
            }
            if to == START {
                return Err(GraphError::InvalidEdge(format!(
                    "{edge}: nothing can enter START"
                )));
            }
            if from != START && !known(from) {
                return unknown(from, edge);
            }
            if to != END && !known(to) {
                return unknown(to, edge);
            }
        }
        for b in &self.branches {
            let edge = format!("conditional edge from {}", b.from);
            if b.from == END {
                return Err(GraphError::InvalidEdge(format!(
                    "{edge}: nothing can leave END"
                )));
            }
            if b.from != START && !known(&b.from) {
                return unknown(&b.from, edge);
            }
            if b.targets.is_empty() {
                return Err(GraphError::EmptyBranch(b.from.clone()));
            }
            for t in &b.targets {
                if t == START {
                    return Err(GraphError::InvalidEdge(format!(
                        "{edge}: nothing can enter START"
                    )));
                }
                if t != END && !known(t) {
                    return unknown(t, edge.clone());
                }
            }
        }
        for b in &self.gotos {
            let edge = format!("goto targets of {}", b.from);
            if !known(&b.from) {
                return unknown(&b.from, edge);
            }
            for t in &b.targets {
                if t != END && !known(t) {
                    return unknown(t, edge.clone());
                }
            }
        }
        for j in &self.joins {
            let edge = format!("join into {}", j.target);
            if j.sources.is_empty() {
                return Err(GraphError::EmptyJoin(j.target.clone()));
            }
            if !known(&j.target) {
                return unknown(&j.target, edge);
            }
            for s in &j.sources {
                if !known(s) {
                    return unknown(s, edge.clone());
                }
            }
        }
        if self.successors(START).next().is_none() {
            return Err(GraphError::NoEntry);
        }
        // Forward reachability from START. A join's target counts as reachable once any
        // source is; the join itself then waits for the rest at run time.
        let mut reached = BTreeSet::from([START]);
        let mut queue = VecDeque::from([START]);
        while let Some(n) = queue.pop_front() {
            for s in self.successors(n) {
                if reached.insert(s) {
                    queue.push_back(s);
                }
            }
        }
        if let Some(n) = self.nodes.iter().find(|n| !reached.contains(n.as_str())) {
            return Err(GraphError::Unreachable(n.clone()));
        }
        // Backward reachability from END.
        let mut preds: HashMap<&str, Vec<&str>> = HashMap::new();
        for from in std::iter::once(START).chain(self.nodes.iter().map(String::as_str)) {
            for to in self.successors(from) {
                preds.entry(to).or_default().push(from);
            }
        }
        let mut finishing = BTreeSet::from([END]);
        let mut queue = VecDeque::from([END]);
        while let Some(n) = queue.pop_front() {
            for p in preds.get(n).into_iter().flatten() {
                if finishing.insert(p) {
                    queue.push_back(p);
                }
            }
        }
        if let Some(n) = self.nodes.iter().find(|n| !finishing.contains(n.as_str())) {
            return Err(GraphError::NoPathToEnd(n.clone()));
        }
        Ok(())
    }

    /// The graph as a Mermaid flowchart: plain edges solid, conditional edges dotted,
    /// joins as `a & b --> c`.
    pub fn mermaid(&self) -> String {
        // `-` and `.` cannot appear in a Mermaid id; `_` is escaped as well so that the
        // mapping stays one-to-one (`a-b`, `a_b` and `a.b` are three nodes, not one). An
        // escaped name never contains `__`, so it cannot collide with START or END either.
        let id = |n: &str| match n {
            START => "__start__".to_owned(),
            END => "__end__".to_owned(),
            n => n.chars().fold(String::with_capacity(n.len()), |mut id, c| {
                match c {
                    '_' | '-' | '.' => {
                        let _ = write!(id, "_{:02x}", u32::from(c));
                    }
                    c => id.push(c),
                }
                id
            }),
        };
        let mut out = String::from("flowchart TD\n");
        out.push_str("    __start__([START])\n");
        for n in &self.nodes {
            let _ = writeln!(out, "    {}[\"{n}\"]", id(n));
        }
        out.push_str("    __end__([END])\n");
        for (from, to) in &self.edges {
            let _ = writeln!(out, "    {} --> {}", id(from), id(to));
        }
        for b in &self.branches {
            for t in &b.targets {
                let _ = writeln!(out, "    {} -.-> {}", id(&b.from), id(t));
            }
        }
        for b in &self.gotos {
            for t in &b.targets {
                let _ = writeln!(out, "    {} -. goto .-> {}", id(&b.from), id(t));
            }
        }
        for j in &self.joins {
            let sources: Vec<String> = j.sources.iter().map(|s| id(s)).collect();
            let _ = writeln!(out, "    {} --> {}", sources.join(" & "), id(&j.target));
        }
        out
    }

    /// Computes the next superstep's tasks.
    ///
    /// `finished` are the nodes whose tasks finished in this superstep (for the first
    /// superstep: `[START]`), `route(branch_index)` evaluates a conditional edge's router on
    /// the merged state (called once per branch whose source finished, in branch order),
    /// and `barriers` is the join progress, updated in place.
    ///
    /// Order of the result — which is also the merge order of the next superstep — is:
    /// triggered nodes (deduplicated) in declaration order, then fan-out tasks in the order
    /// their routers returned them.
    ///
    /// # Errors
    /// A [`RouteError`] when a router returns an undeclared target, or the router's own
    /// error.
    pub fn plan<E: From<RouteError>>(
        &self,
        finished: &[&str],
        barriers: &mut Barriers,
        route: impl FnMut(usize) -> Result<Vec<Target>, E>,
    ) -> Result<Vec<Task>, E> {
        self.plan_with(finished, &[], &[], barriers, route)
    }

    /// [`Topology::plan`] with routing commands: nodes in `overridden` finished but chose
    /// their successors themselves (`goto`), so their plain and conditional edges are not
    /// followed (joins still count them); `goto` are the nodes they chose (or [`END`]).
    ///
    /// # Errors
    /// As [`Topology::plan`], and a [`RouteError`] for a `goto` naming an unknown node.
    pub fn plan_with<E: From<RouteError>>(
        &self,
        finished: &[&str],
        overridden: &[&str],
        goto: &[&str],
        barriers: &mut Barriers,
        mut route: impl FnMut(usize) -> Result<Vec<Target>, E>,
    ) -> Result<Vec<Task>, E> {
        let finished_set: BTreeSet<&str> = finished.iter().copied().collect();
        let follows = |n: &str| finished_set.contains(n) && !overridden.contains(&n);
        let mut triggered = vec![false; self.nodes.len()];
        let mut sends = Vec::new();
        let trigger = |name: &str, triggered: &mut Vec<bool>| {
            if let Some(i) = self.node_index(name) {
                triggered[i] = true;
            }
        };
        for target in goto {
            if *target == END {
                continue;
            }
            if self.node_index(target).is_none() {
                return Err(RouteError {
                    from: "goto".to_owned(),
                    target: (*target).to_owned(),
                    allowed: self.nodes.clone(),
                }
                .into());
            }
            trigger(target, &mut triggered);
        }
        for (from, to) in &self.edges {
            if follows(from.as_str()) {
                trigger(to, &mut triggered);
            }
        }
        for (i, b) in self.branches.iter().enumerate() {
            if !follows(b.from.as_str()) {
                continue;
            }
            for t in route(i)? {
                let name = t.node();
                if !b.targets.iter().any(|a| a == name) {
                    return Err(RouteError {
                        from: b.from.clone(),
                        target: name.to_owned(),
                        allowed: b.targets.clone(),
                    }
                    .into());
                }
                match t {
                    Target::End => {}
                    Target::Node(n) => trigger(&n, &mut triggered),
                    Target::Send { node, input } => sends.push(Task::Send { node, input }),
                }
            }
        }
        for (i, j) in self.joins.iter().enumerate() {
            let arrived: Vec<&str> = j
                .sources
                .iter()
                .map(String::as_str)
                .filter(|s| finished_set.contains(s))
                .collect();
            if arrived.is_empty() {
                continue;
            }
            let set = barriers.entry(i as u32).or_default();
            set.extend(arrived.iter().map(|s| (*s).to_owned()));
            if j.sources.iter().all(|s| set.contains(s)) {
                barriers.remove(&(i as u32));
                trigger(&j.target, &mut triggered);
            }
        }
        let mut tasks: Vec<Task> = self
            .nodes
            .iter()
            .zip(&triggered)
            .filter(|(_, t)| **t)
            .map(|(n, _)| Task::Node(n.clone()))
            .collect();
        tasks.extend(sends);
        Ok(tasks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linear(n: usize) -> Topology {
        let nodes: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        let mut edges = vec![(START.to_owned(), nodes[0].clone())];
        for w in nodes.windows(2) {
            edges.push((w[0].clone(), w[1].clone()));
        }
        edges.push((nodes[n - 1].clone(), END.to_owned()));
        Topology {
            nodes,
            edges,
            ..Default::default()
        }
    }

    fn e(a: &str, b: &str) -> (String, String) {
        (a.to_owned(), b.to_owned())
    }

    #[test]
    fn valid_linear_graph() {
        linear(3).validate().unwrap();
    }

    #[test]
    fn validation_errors() {
        let mut t = linear(2);
        t.nodes.push("n0".into());
        assert_eq!(t.validate(), Err(GraphError::DuplicateNode("n0".into())));

        let mut t = linear(2);
        t.edges.push(e("n1", "ghost"));
        assert_eq!(
            t.validate(),
            Err(GraphError::UnknownNode {
                node: "ghost".into(),
                edge: "edge n1 -> ghost".into()
            })
        );

        let mut t = linear(2);
        t.nodes.push("__secret".into());
        assert!(matches!(
            t.validate(),
            Err(GraphError::InvalidNodeName { .. })
        ));
        let mut t = linear(2);
        t.nodes.push("has space".into());
        assert!(matches!(
            t.validate(),
            Err(GraphError::InvalidNodeName { .. })
        ));

        let mut t = linear(2);
        t.nodes.push("island".into());
        t.edges.push(e("island", END));
        assert_eq!(t.validate(), Err(GraphError::Unreachable("island".into())));

        let mut t = linear(2);
        t.nodes.push("sink".into());
        t.edges.push(e("n0", "sink"));
        assert_eq!(t.validate(), Err(GraphError::NoPathToEnd("sink".into())));

        let t = Topology {
            nodes: vec!["a".into()],
            edges: vec![e("a", END)],
            ..Default::default()
        };
        assert_eq!(t.validate(), Err(GraphError::NoEntry));

        let mut t = linear(2);
        t.edges.push(e("n1", START));
        assert!(matches!(t.validate(), Err(GraphError::InvalidEdge(_))));

        let mut t = linear(2);
        t.branches.push(Branch {
            from: "n0".into(),
            targets: vec![],
        });
        assert_eq!(t.validate(), Err(GraphError::EmptyBranch("n0".into())));
    }

    #[test]
    fn loop_through_branch_is_valid() {
        let t = Topology {
            nodes: vec!["step".into()],
            edges: vec![e(START, "step")],
            branches: vec![Branch {
                from: "step".into(),
                targets: vec!["step".into(), END.into()],
            }],
            joins: vec![],
            gotos: vec![],
        };
        t.validate().unwrap();
        let mut b = Barriers::new();
        let next = t
            .plan::<RouteError>(&["step"], &mut b, |_| Ok(vec![Target::Node("step".into())]))
            .unwrap();
        assert_eq!(next, vec![Task::Node("step".into())]);
        let next = t
            .plan::<RouteError>(&["step"], &mut b, |_| Ok(vec![Target::End]))
            .unwrap();
        assert!(next.is_empty());
    }

    fn fan() -> Topology {
        let workers: Vec<String> = (0..3).map(|i| format!("w{i}")).collect();
        let mut nodes = vec!["fan".to_owned()];
        nodes.extend(workers.clone());
        nodes.push("join".into());
        let mut edges = vec![e(START, "fan"), e("join", END)];
        for w in &workers {
            edges.push(e("fan", w));
        }
        Topology {
            nodes,
            edges,
            branches: vec![],
            joins: vec![Join {
                sources: workers,
                target: "join".into(),
            }],
            gotos: vec![],
        }
    }

    #[test]
    fn fan_out_and_join() {
        let t = fan();
        t.validate().unwrap();
        let mut b = Barriers::new();
        let none = |_| -> Result<Vec<Target>, RouteError> { unreachable!() };
        let first = t.plan(&[START], &mut b, none).unwrap();
        assert_eq!(first, vec![Task::Node("fan".into())]);
        let workers = t.plan(&["fan"], &mut b, none).unwrap();
        assert_eq!(workers.len(), 3);
        // Two of three workers finish (e.g. the third was retried later): no join yet.
        let partial = t.plan(&["w0", "w2"], &mut b, none).unwrap();
        assert!(partial.is_empty());
        assert_eq!(b[&0].len(), 2);
        let joined = t.plan(&["w1"], &mut b, none).unwrap();
        assert_eq!(joined, vec![Task::Node("join".into())]);
        assert!(b.is_empty());
    }

    #[test]
    fn sends_follow_nodes_and_undeclared_targets_fail() {
        let t = Topology {
            nodes: vec!["a".into(), "w".into()],
            edges: vec![e(START, "a"), e("w", END)],
            branches: vec![Branch {
                from: "a".into(),
                targets: vec!["w".into()],
            }],
            joins: vec![],
            gotos: vec![],
        };
        t.validate().unwrap();
        let mut b = Barriers::new();
        let p = |v: i32| Payload::encode(&v).unwrap();
        let next = t
            .plan::<RouteError>(&["a"], &mut b, |_| {
                Ok(vec![
                    Target::Send {
                        node: "w".into(),
                        input: p(1),
                    },
                    Target::Node("w".into()),
                    Target::Send {
                        node: "w".into(),
                        input: p(2),
                    },
                ])
            })
            .unwrap();
        assert_eq!(
            next,
            vec![
                Task::Node("w".into()),
                Task::Send {
                    node: "w".into(),
                    input: p(1)
                },
                Task::Send {
                    node: "w".into(),
                    input: p(2)
                },
            ]
        );
        let err = t
            .plan::<RouteError>(&["a"], &mut b, |_| Ok(vec![Target::End]))
            .unwrap_err();
        assert_eq!(err.target, END);
    }

    #[test]
    fn mermaid_lists_every_edge_kind() {
        let mut t = fan();
        t.branches.push(Branch {
            from: "join".into(),
            targets: vec!["fan".into(), END.into()],
        });
        let m = t.mermaid();
        assert!(m.starts_with("flowchart TD\n"));
        assert!(m.contains("__start__ --> fan"));
        assert!(m.contains("join -.-> fan"));
        assert!(m.contains("w0 & w1 & w2 --> join"));
    }
}
