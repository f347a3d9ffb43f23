//! The route table: every route once, with the role it needs and, for state-changing
//! routes, the audit action. The router, the guard, the OpenAPI check and `docs/api.md`'s
//! role table all follow this one list.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::MethodRouter;
use tower_http::catch_panic::CatchPanicLayer;

use crate::auth::Access;
use crate::error::{self, ApiError};
use crate::guard::{Guarded, guard};
use crate::request_id;
use crate::state::AppState;

pub(crate) mod admin;
pub(crate) mod dlq;
pub(crate) mod graphs;
pub(crate) mod interrupts;
pub(crate) mod jobs;
mod query;
pub(crate) mod stream;
pub(crate) mod system;
pub(crate) mod verify;
pub(crate) mod workers;

/// An HTTP method of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// GET.
    Get,
    /// POST.
    Post,
    /// DELETE.
    Delete,
}

impl Verb {
    /// Lower-case name (as in OpenAPI).
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Post => "post",
            Verb::Delete => "delete",
        }
    }
}

/// One route: what it needs and what it does.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    /// Method.
    pub method: Verb,
    /// Path template (`{param}` segments).
    pub path: &'static str,
    /// The role it needs.
    pub access: Access,
    /// The audit action of a state-changing route (`jobs.create`); `None` for reads.
    pub action: Option<&'static str>,
    /// Whether the body may carry `idempotency_key`.
    pub body_key: bool,
    /// Whether a success names a job whose Location is returned.
    pub location: bool,
    /// Whether the call is long-lived and mostly sleeps (long-poll, stream): not counted
    /// by load shedding.
    pub long_lived: bool,
}

impl RouteSpec {
    const fn read(method: Verb, path: &'static str, access: Access) -> Self {
        RouteSpec {
            method,
            path,
            access,
            action: None,
            body_key: false,
            location: false,
            long_lived: false,
        }
    }

    const fn write(method: Verb, path: &'static str, access: Access, action: &'static str) -> Self {
        RouteSpec {
            method,
            path,
            access,
            action: Some(action),
            body_key: false,
            location: false,
            long_lived: false,
        }
    }

    const fn with_location(mut self) -> Self {
        self.location = true;
        self
    }

    const fn long_lived(mut self) -> Self {
        self.long_lived = true;
        self
    }

    const fn with_body_key(mut self) -> Self {
        self.body_key = true;
        self
    }
}

pub(crate) struct Route {
    pub spec: RouteSpec,
    pub handler: MethodRouter<AppState>,
}

fn get(path: &'static str, access: Access) -> RouteSpec {
    RouteSpec::read(Verb::Get, path, access)
}

fn post(path: &'static str, access: Access, action: &'static str) -> RouteSpec {
    RouteSpec::write(Verb::Post, path, access, action)
}

/// A state-changing route that is not audited: the worker protocol's polls and heartbeats,
/// which every worker sends every few seconds and would flood the audit log.
fn post_unaudited(path: &'static str, access: Access) -> RouteSpec {
    RouteSpec::read(Verb::Post, path, access)
}

fn table() -> Vec<Route> {
    use axum::routing::{delete as d, get as g, post as p};
    let r = |spec: RouteSpec, handler| Route { spec, handler };
    vec![
        r(
            post("/v1/jobs", Access::Operate, "jobs.create")
                .with_body_key()
                .with_location(),
            p(jobs::create),
        ),
        r(get("/v1/jobs", Access::Read), g(jobs::list)),
        r(
            post("/v1/jobs/cancel", Access::Operate, "jobs.cancel_bulk"),
            p(jobs::cancel_bulk),
        ),
        r(get("/v1/jobs/{thread_id}", Access::Read), g(jobs::get)),
        r(
            get("/v1/jobs/{thread_id}/history", Access::Read),
            g(jobs::history),
        ),
        r(
            get(
                "/v1/jobs/{thread_id}/checkpoints/{checkpoint_id}",
                Access::Read,
            ),
            g(jobs::checkpoint),
        ),
        r(
            get("/v1/jobs/{thread_id}/timeline", Access::Read),
            g(jobs::timeline),
        ),
        r(
            get("/v1/jobs/{thread_id}/verify", Access::Read),
            g(verify::verify),
        ),
        r(
            get("/v1/jobs/{thread_id}/wait", Access::Read).long_lived(),
            g(jobs::wait),
        ),
        r(
            get("/v1/jobs/{thread_id}/stream", Access::Read).long_lived(),
            g(stream::stream),
        ),
        r(
            post(
                "/v1/jobs/{thread_id}/resume",
                Access::Operate,
                "jobs.resume",
            ),
            p(jobs::resume),
        ),
        r(
            post(
                "/v1/jobs/{thread_id}/replay",
                Access::Operate,
                "jobs.replay",
            )
            .with_location(),
            p(jobs::replay),
        ),
        r(
            post("/v1/jobs/{thread_id}/fork", Access::Operate, "jobs.fork").with_location(),
            p(jobs::fork),
        ),
        r(
            post(
                "/v1/jobs/{thread_id}/cancel",
                Access::Operate,
                "jobs.cancel",
            ),
            p(jobs::cancel),
        ),
        r(
            post(
                "/v1/jobs/{thread_id}/state",
                Access::Operate,
                "jobs.update_state",
            ),
            p(jobs::update_state),
        ),
        r(
            post(
                "/v1/jobs/{thread_id}/events",
                Access::Operate,
                "jobs.send_event",
            ),
            p(jobs::send_event),
        ),
        r(get("/v1/interrupts", Access::Read), g(interrupts::list)),
        r(
            get("/v1/interrupts/{interrupt_id}", Access::Read),
            g(interrupts::get),
        ),
        r(
            post(
                "/v1/interrupts/{interrupt_id}/resume",
                Access::Operate,
                "interrupts.resume",
            ),
            p(interrupts::resume),
        ),
        r(
            post(
                "/v1/interrupts/{interrupt_id}/reject",
                Access::Operate,
                "interrupts.reject",
            ),
            p(interrupts::reject),
        ),
        r(
            post_unaudited("/v1/workers/poll", Access::Worker).long_lived(),
            p(workers::poll),
        ),
        r(
            post_unaudited("/v1/workers/{worker_id}/heartbeat", Access::Worker),
            p(workers::heartbeat),
        ),
        r(
            post(
                "/v1/workers/{worker_id}/report-step",
                Access::Worker,
                "workers.report_step",
            ),
            p(workers::report_step),
        ),
        r(
            post("/v1/workers/{worker_id}/ack", Access::Worker, "workers.ack"),
            p(workers::ack),
        ),
        r(
            post(
                "/v1/workers/{worker_id}/stop",
                Access::Worker,
                "workers.stop",
            ),
            p(workers::stop),
        ),
        r(get("/v1/workers", Access::Read), g(workers::list)),
        r(
            get("/v1/attempts/{attempt_id}/retries", Access::Read),
            g(dlq::retries),
        ),
        r(get("/v1/dlq", Access::Read), g(dlq::list)),
        r(get("/v1/dlq/{run_id}", Access::Read), g(dlq::get)),
        r(
            post("/v1/dlq/{run_id}/replay", Access::Operate, "dlq.replay"),
            p(dlq::replay),
        ),
        r(get("/v1/graphs", Access::Graphs), g(graphs::list)),
        r(get("/v1/graphs/{name}", Access::Graphs), g(graphs::get)),
        r(get("/v1/audit", Access::Admin), g(admin::audit)),
        r(
            post("/v1/keys", Access::Admin, "keys.create"),
            p(admin::create_key),
        ),
        r(get("/v1/keys", Access::Admin), g(admin::list_keys)),
        r(
            RouteSpec::write(
                Verb::Delete,
                "/v1/keys/{key_id}",
                Access::Admin,
                "keys.revoke",
            ),
            d(admin::revoke_key),
        ),
        r(get("/healthz", Access::Public), g(system::healthz)),
        r(get("/readyz", Access::Public), g(system::readyz)),
        r(get("/metrics", Access::Public), g(system::metrics)),
        r(get("/v1/openapi.json", Access::Public), g(system::openapi)),
    ]
}

/// Every route of the API.
pub fn specs() -> Vec<RouteSpec> {
    table().into_iter().map(|r| r.spec).collect()
}

/// The application: the table's routes behind their guards, the envelope fallbacks, the
/// body limit, panic catching and the request-id middleware.
pub(crate) fn router(app: AppState) -> Router {
    let mut router = Router::new();
    for route in table() {
        let guarded = Guarded {
            app: app.clone(),
            spec: route.spec,
        };
        router = router.route(
            route.spec.path,
            route
                .handler
                .route_layer(from_fn_with_state(guarded, guard)),
        );
    }
    router
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(app.config.body_limit))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(from_fn_with_state(app.clone(), request_id::middleware))
        .with_state(app)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    ApiError::internal(&"a request handler panicked").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/api.md`'s route table lists exactly the routes, with their roles and actions.
    #[test]
    fn docs_route_table_matches() {
        let doc = include_str!("../../../../docs/api.md");
        let rows: Vec<&str> = doc
            .lines()
            .filter(|l| {
                ["| GET |", "| POST |", "| DELETE |"]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .collect();
        let specs = specs();
        assert_eq!(
            rows.len(),
            specs.len(),
            "docs/api.md lists {} routes",
            rows.len()
        );
        for s in specs {
            let action = s.action.map(|a| format!("`{a}`")).unwrap_or_default();
            let want = format!(
                "| {} | `{}` | {} | {} |",
                s.method.as_str().to_uppercase(),
                s.path,
                s.access.roles(),
                action
            );
            let want = want.replace("|  |", "| |");
            assert!(
                rows.iter().any(|r| r.starts_with(&want)),
                "docs/api.md has no row starting with {want}"
            );
        }
    }
}
