//! The OpenAPI 3.1 document, generated from the handlers' annotations and completed from the
//! route table (security and required role per operation, the error envelope as the default
//! response). A test checks that its operations are exactly the router's routes.

use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::auth::Access;
use crate::routes::{self, admin, dlq, graphs, interrupts, jobs, stream, system, verify, workers};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Oris control plane",
        description = "Durable graph runs: create jobs, follow them, answer their interrupts, inspect and steer their history. See docs/api.md for the contracts (auth, idempotency, errors, streams).",
        license(name = "Apache-2.0"),
    ),
    paths(
        jobs::create, jobs::list, jobs::get, jobs::history, jobs::checkpoint, jobs::timeline, verify::verify,
        jobs::wait, stream::stream, jobs::resume, jobs::replay, jobs::fork, jobs::cancel,
        jobs::update_state, jobs::send_event, jobs::cancel_bulk,
        interrupts::list, interrupts::get, interrupts::resume, interrupts::reject,
        workers::poll, workers::heartbeat, workers::report_step, workers::ack, workers::stop,
        workers::list,
        dlq::retries, dlq::list, dlq::get, dlq::replay,
        graphs::list, graphs::get,
        admin::audit, admin::create_key, admin::list_keys, admin::revoke_key,
        system::healthz, system::readyz, system::metrics, system::openapi,
    ),
    components(schemas(crate::error::ErrorEnvelope, crate::error::ErrorBody, crate::error::ErrorCode)),
    tags(
        (name = "jobs", description = "Runs keyed by their thread"),
        (name = "interrupts", description = "Pauses waiting for a value from outside"),
        (name = "workers", description = "The remote worker protocol and registered workers"),
        (name = "failures", description = "Task attempts (retries) and the dead-letter queue"),
        (name = "graphs", description = "Registered graphs"),
        (name = "admin", description = "API keys and the audit log"),
        (name = "system", description = "Health, readiness, metrics, this document"),
    )
)]
struct ApiDoc;

/// The document as JSON.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    doc["components"]["securitySchemes"]["bearer"] = json!({
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: `oris_<key_id>_<secret>`",
    });
    for spec in routes::specs() {
        let Some(op) = doc.pointer_mut(&format!(
            "/paths/{}/{}",
            escape(spec.path),
            spec.method.as_str()
        )) else {
            continue;
        };
        if spec.access == Access::Public {
            op["security"] = json!([]);
        } else {
            op["security"] = json!([{ "bearer": [] }]);
            op["x-required-role"] = json!(spec.access.roles());
        }
        if let Some(a) = spec.action {
            op["x-audit-action"] = json!(a);
        }
        op["responses"]["default"] = json!({
            "description": "An error (see the error codes in docs/api.md)",
            "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorEnvelope" } } }
        });
    }
    doc
}

/// JSON pointer escaping of a path template.
fn escape(path: &str) -> String {
    path.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn document_and_routes_match() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in ["get", "post", "put", "delete", "patch"] {
                if item.get(method).is_some() {
                    documented.insert((method.to_owned(), path.clone()));
                }
            }
        }
        let routed: BTreeSet<(String, String)> = routes::specs()
            .iter()
            .map(|s| (s.method.as_str().to_owned(), s.path.to_owned()))
            .collect();
        assert_eq!(
            routed.len(),
            routes::specs().len(),
            "a route is listed twice"
        );
        let missing: Vec<_> = routed.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&routed).collect();
        assert!(
            missing.is_empty(),
            "routes missing from the document: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "documented operations without a route: {extra:?}"
        );
    }

    #[test]
    fn every_operation_has_security_and_an_error_response() {
        let doc = document();
        for spec in routes::specs() {
            let op = doc
                .pointer(&format!(
                    "/paths/{}/{}",
                    escape(spec.path),
                    spec.method.as_str()
                ))
                .unwrap();
            assert!(op["security"].is_array(), "{}", spec.path);
            assert!(op["responses"]["default"].is_object(), "{}", spec.path);
        }
        assert!(doc.pointer("/components/schemas/JobView").is_some());
        assert!(doc.pointer("/components/schemas/ErrorEnvelope").is_some());
    }
}
