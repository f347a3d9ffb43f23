//! Keys, roles, bootstrap, revocation, and the audit log of denied calls.

use oris_server::Server;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_enforced_and_denials_audited() {
    let dir = tempfile::tempdir().unwrap();
    let counts = Counts::new();
    let store = sqlite(&dir).await;
    let mut h = Harness::start(
        store.clone(),
        Server::builder().graph(count(counts.clone(), None)),
    )
    .await;
    let admin_token = h
        .token
        .clone()
        .expect("a first start prints a bootstrap token");
    assert!(admin_token.starts_with("oris_"));

    // No credentials, bad credentials.
    let anon = h.with_token("x");
    let r = Harness::send(h.http.get(format!("{}/v1/jobs", h.url))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "unauthorized");
    assert!(
        r.body["error"]["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert_eq!(anon.get("/v1/jobs").await.code(), "unauthorized");
    let forged = format!("{}x", &admin_token[..admin_token.len() - 1]);
    assert_eq!(
        h.with_token(&forged).get("/v1/jobs").await.status,
        StatusCode::UNAUTHORIZED
    );
    let denied = Harness::send(
        h.http
            .post(format!("{}/v1/jobs", h.url))
            .json(&json!({ "graph": "count", "thread_id": "a" })),
    )
    .await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);

    // Public routes need nothing.
    assert_eq!(
        Harness::send(h.http.get(format!("{}/healthz", h.url)))
            .await
            .status,
        StatusCode::OK
    );

    // Keys per role.
    let mut tokens = std::collections::HashMap::new();
    for role in ["viewer", "operator", "worker", "admin"] {
        let r = h
            .post("/v1/keys", json!({ "name": role, "role": role }))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.body["role"], role);
        tokens.insert(role, r.body["token"].as_str().unwrap().to_owned());
    }
    let viewer = h.with_token(&tokens["viewer"]);
    let operator = h.with_token(&tokens["operator"]);
    let worker = h.with_token(&tokens["worker"]);

    let r = viewer
        .post("/v1/jobs", json!({ "graph": "count", "thread_id": "v1" }))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "forbidden");
    assert_eq!(viewer.get("/v1/jobs").await.status, StatusCode::OK);
    assert_eq!(viewer.get("/v1/keys").await.status, StatusCode::FORBIDDEN);
    assert_eq!(worker.get("/v1/graphs").await.status, StatusCode::OK);
    assert_eq!(worker.get("/v1/jobs").await.status, StatusCode::FORBIDDEN);
    assert_eq!(
        operator.get("/v1/audit").await.status,
        StatusCode::FORBIDDEN
    );
    let r = operator
        .post("/v1/jobs", json!({ "graph": "count", "thread_id": "op1" }))
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(operator.settle("op1").await["status"], "completed");
    assert_eq!(counts.get("inc"), 1);

    // The audit log names who did what, also when denied.
    let audit = h.get("/v1/audit?action=jobs.create").await;
    let entries = audit.body["entries"].as_array().unwrap();
    let outcomes: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().into(),
                e["role"].as_str().unwrap().into(),
                e["outcome"].as_str().unwrap().into(),
            )
        })
        .collect();
    let viewer_id = tokens["viewer"].split('_').nth(1).unwrap().to_owned();
    let op_id = tokens["operator"].split('_').nth(1).unwrap().to_owned();
    assert!(
        outcomes.contains(&("anonymous".into(), "none".into(), "unauthorized".into())),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&(viewer_id.clone(), "viewer".into(), "forbidden".into())),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&(op_id.clone(), "operator".into(), "ok".into())),
        "{outcomes:?}"
    );
    let ok = entries
        .iter()
        .find(|e| e["actor"] == op_id.as_str())
        .unwrap();
    assert_eq!(ok["target"], "op1");
    assert_eq!(ok["status"], 202);
    let by_actor = h.get(&format!("/v1/audit?actor={viewer_id}")).await;
    assert!(
        by_actor.body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == viewer_id.as_str())
    );

    // Revocation works at once; the last admin key cannot be revoked.
    let r = h
        .call(Method::DELETE, &format!("/v1/keys/{viewer_id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.body["revoked_at"].is_string());
    assert_eq!(
        viewer.get("/v1/jobs").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.call(Method::DELETE, &format!("/v1/keys/{viewer_id}"), None)
            .await
            .code(),
        "conflict"
    );
    assert_eq!(
        h.call(Method::DELETE, "/v1/keys/nosuchkey", None)
            .await
            .code(),
        "not_found"
    );
    let second_admin = tokens["admin"].split('_').nth(1).unwrap().to_owned();
    assert_eq!(
        h.call(Method::DELETE, &format!("/v1/keys/{second_admin}"), None)
            .await
            .status,
        StatusCode::OK
    );
    let first_admin = admin_token.split('_').nth(1).unwrap().to_owned();
    let last = h
        .call(Method::DELETE, &format!("/v1/keys/{first_admin}"), None)
        .await;
    assert_eq!(last.code(), "conflict", "{}", last.text);
    let keys = h.get("/v1/keys").await;
    assert_eq!(keys.body["keys"].as_array().unwrap().len(), 5);
    assert!(
        !keys.text.contains(&tokens["operator"]),
        "secrets never listed"
    );

    // A second start on the same store creates no key; a configured admin token is
    // provisioned, and must have the token format.
    h.stop().await;
    let again = Server::builder()
        .store(store.clone())
        .graph(count(counts.clone(), None))
        .build()
        .await
        .unwrap();
    assert!(again.bootstrap_token().is_none());
    let provisioned = "oris_ci0admin_abcdefghijklmnopqrstuvwxyz0123";
    let s = Server::builder()
        .store(store.clone())
        .admin_token(provisioned.into())
        .build()
        .await
        .unwrap();
    assert!(s.bootstrap_token().is_none());
    let served = Harness::serve(store.clone(), s).await;
    let h2 = served.with_token(provisioned);
    assert_eq!(h2.get("/v1/keys").await.status, StatusCode::OK);
    assert!(
        Server::builder()
            .store(store.clone())
            .admin_token("not-a-token".into())
            .build()
            .await
            .is_err()
    );
    assert!(
        Server::builder()
            .store(store)
            .admin_token("oris_ci0admin_differentsecret0000000000".into())
            .build()
            .await
            .is_err()
    );
}
