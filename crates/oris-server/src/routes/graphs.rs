//! `/v1/graphs`.

use axum::extract::State;
use oris_runtime::GraphInfo;
use serde_json::json;

use super::query::Params;
use crate::error::{ApiError, ErrorCode, Json, Path, Query};
use crate::state::AppState;
use crate::wire::{EdgeView, GraphList, GraphSummary, GraphView};

/// Registered graphs and their versions.
#[utoipa::path(get, path = "/v1/graphs", tag = "graphs",
    responses((status = 200, description = "Registered graphs", body = GraphList)))]
pub(crate) async fn list(State(app): State<AppState>) -> Json<GraphList> {
    let mut graphs: Vec<GraphSummary> = Vec::new();
    for g in app.engine.graphs() {
        match graphs.last_mut() {
            Some(s) if s.name == g.name => s.versions.push(g.version),
            _ => graphs.push(GraphSummary {
                latest: app
                    .engine
                    .graph_info(&g.name, None)
                    .map_or_else(|| g.version.clone(), |l| l.version),
                name: g.name,
                versions: vec![g.version],
            }),
        }
    }
    Json(GraphList { graphs })
}

/// One graph: nodes, edges, Mermaid diagram and input schema.
#[utoipa::path(get, path = "/v1/graphs/{name}", tag = "graphs",
    params(("name" = String, Path, description = "Graph name"),
        ("version" = Option<String>, Query, description = "A version (default: the latest)")),
    responses((status = 200, description = "The graph", body = GraphView),
        (status = 404, description = "`graph_not_found`", body = crate::error::ErrorEnvelope)))]
pub(crate) async fn get(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<GraphView>, ApiError> {
    let p = Params::new(pairs, &["version"])?;
    let version = p.get("version");
    let info: GraphInfo = app.engine.graph_info(&name, version).ok_or_else(|| {
        ApiError::new(
            ErrorCode::GraphNotFound,
            match version {
                Some(v) => format!("graph `{name}` version `{v}` is not registered"),
                None => format!("graph `{name}` is not registered"),
            },
        )
        .details(json!({ "graph": name, "version": version }))
    })?;
    let versions = app
        .engine
        .graphs()
        .into_iter()
        .filter(|g| g.name == info.name)
        .map(|g| g.version)
        .collect();
    let input_schema = app
        .schemas
        .get(&(info.name.clone(), info.version.clone()))
        .cloned();
    Ok(Json(GraphView {
        versions,
        edges: info
            .edges
            .iter()
            .map(|e| EdgeView {
                from: e.from.clone(),
                to: e.to.clone(),
                kind: serde_json::to_value(e.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            })
            .collect(),
        name: info.name,
        version: info.version,
        nodes: info.nodes,
        entry: info.entry,
        mermaid: info.mermaid,
        interrupt_before: info.interrupt_before,
        interrupt_after: info.interrupt_after,
        input_schema,
    }))
}
