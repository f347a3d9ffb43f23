//! Graphs.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// A registered graph name and its versions.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GraphSummary {
    /// Name.
    pub name: String,
    /// Registered versions, sorted.
    pub versions: Vec<String>,
    /// The version new jobs use when they name none.
    pub latest: String,
}

/// Registered graphs.
#[derive(Debug, Serialize, ToSchema)]
pub struct GraphList {
    /// Sorted by name.
    pub graphs: Vec<GraphSummary>,
}

/// An edge.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EdgeView {
    /// Source node (`__start__` for START).
    pub from: String,
    /// Target node (`__end__` for END).
    pub to: String,
    /// `edge`, `conditional`, `join` or `goto`.
    pub kind: String,
}

/// One version of a graph.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GraphView {
    /// Name.
    pub name: String,
    /// This version.
    pub version: String,
    /// Every registered version of the name.
    pub versions: Vec<String>,
    /// Nodes.
    pub nodes: Vec<String>,
    /// Edges.
    pub edges: Vec<EdgeView>,
    /// Nodes reached from START directly.
    pub entry: Vec<String>,
    /// The graph as a Mermaid flowchart.
    pub mermaid: String,
    /// Static breakpoints before these nodes.
    pub interrupt_before: Vec<String>,
    /// Static breakpoints after these nodes.
    pub interrupt_after: Vec<String>,
    /// JSON Schema of the input (the graph's state), when the graph was registered with
    /// one (`graph_with_schema`); referenced types are under `$defs`.
    pub input_schema: Option<Value>,
}
