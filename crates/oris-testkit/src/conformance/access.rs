//! API keys (stored by id, listed oldest first, revoked once) and the audit log (appended
//! with increasing ids, listed oldest first with filters and a cursor).

use std::sync::Arc;

use oris_core::store::{ApiKeyRecord, AuditFilter, AuditRecord, Error, Store};

use crate::build::{self, payload};
use crate::check::{err, ok};

fn key(id: &str, name: &str, role: &str, created: u64) -> ApiKeyRecord {
    ApiKeyRecord {
        key_id: id.to_owned(),
        name: name.to_owned(),
        role: role.to_owned(),
        secret_hash: format!("{:0>64}", id.len()),
        created_at: build::at(created),
        revoked_at: None,
    }
}

/// Keys read back exactly by id (unknown: `None`) and are listed oldest first (equal
/// creation times by key id); a second key with a taken id fails with `AlreadyExists`
/// naming it and leaves the first untouched. Revoking sets `revoked_at` once and returns
/// `true`; revoking again or an unknown key returns `false` and changes nothing; revoked
/// keys are still read and listed.
pub async fn api_keys_are_stored_listed_and_revoked(store: Arc<dyn Store>) {
    let s = &*store;
    assert_eq!(ok(s.api_keys().await, "api_keys()"), vec![], "no keys yet");
    let k1 = key("key_b", "CI — déploiement \"prod\"", "operator", 3);
    let k2 = key("key_z", "admin", "admin", 1);
    let k3 = key("key_m", "worker 1", "worker", 2);
    let k4 = key("key_a", "viewer", "viewer", 2);
    for k in [&k1, &k2, &k3, &k4] {
        ok(s.create_api_key(k).await, &format!("create {}", k.key_id));
    }
    for k in [&k1, &k2, &k3, &k4] {
        assert_eq!(
            ok(s.api_key(&k.key_id).await, "api_key()").as_ref(),
            Some(k),
            "{} reads back",
            k.key_id
        );
    }
    assert_eq!(ok(s.api_key("key_q").await, "api_key(unknown)"), None);
    assert_eq!(
        ok(s.api_key("KEY_B").await, "api_key(other case)"),
        None,
        "ids are case-sensitive"
    );
    let listed = ok(s.api_keys().await, "api_keys()");
    assert_eq!(
        listed,
        vec![k2.clone(), k4.clone(), k3.clone(), k1.clone()],
        "oldest first, ties by key id"
    );

    let dup = key("key_b", "impostor", "admin", 9);
    match err(s.create_api_key(&dup).await, "a duplicate key id") {
        Error::AlreadyExists { id, .. } if id == "key_b" => {}
        other => panic!("a duplicate key id: expected AlreadyExists for key_b, got {other:?}"),
    }
    assert_eq!(
        ok(s.api_key("key_b").await, "api_key()"),
        Some(k1.clone()),
        "the duplicate replaced nothing"
    );

    assert!(ok(s.revoke_api_key("key_m", build::at(10)).await, "revoke"));
    let revoked = ApiKeyRecord {
        revoked_at: Some(build::at(10)),
        ..k3.clone()
    };
    assert_eq!(
        ok(s.api_key("key_m").await, "api_key()"),
        Some(revoked.clone())
    );
    assert!(
        !ok(
            s.revoke_api_key("key_m", build::at(11)).await,
            "revoke again"
        ),
        "a revoked key is not revoked again"
    );
    assert!(
        !ok(
            s.revoke_api_key("key_q", build::at(11)).await,
            "revoke unknown"
        ),
        "an unknown key"
    );
    assert_eq!(
        ok(s.api_keys().await, "api_keys()"),
        vec![k2, k4, revoked, k1],
        "revoked keys stay listed; the second revocation changed nothing"
    );
}

fn entry(actor: &str, action: &str, target: Option<&str>, n: u64) -> AuditRecord {
    AuditRecord {
        id: 0,
        at: build::at(n),
        actor: actor.to_owned(),
        role: if actor == "anonymous" {
            "viewer"
        } else {
            "admin"
        }
        .to_owned(),
        action: action.to_owned(),
        target: target.map(str::to_owned),
        request_id: format!("req-{n}"),
        status: if n.is_multiple_of(2) { 200 } else { 403 },
        outcome: if n.is_multiple_of(2) {
            "ok"
        } else {
            "forbidden"
        }
        .to_owned(),
        details: n
            .is_multiple_of(3)
            .then(|| payload(&format!(r#"{{"n": {n}, "why":"ça"}}"#))),
    }
}

/// `append_audit` returns increasing ids (positive; whatever id the record carried is
/// ignored); `audit` lists entries oldest first, each exactly as appended with its id,
/// filtered by actor and/or action, after an id cursor, at most `limit` (0: no limit);
/// walking pages yields every matching entry once.
pub async fn audit_log_appends_and_filters(store: Arc<dyn Store>) {
    let s = &*store;
    assert_eq!(
        ok(s.audit(&AuditFilter::default()).await, "audit()"),
        vec![]
    );
    let specs = [
        ("key_a", "jobs.create", Some("thread-1")),
        ("anonymous", "jobs.create", None),
        ("key_a", "keys.revoke", Some("key_b")),
        ("key_b", "jobs.create", Some("thread-2")),
        ("key_a", "jobs.create", Some("thread-3")),
        ("key_b", "interrupts.answer", Some("int_1")),
    ];
    let mut appended = Vec::new();
    let mut last = 0;
    for (n, (actor, action, target)) in specs.into_iter().enumerate() {
        let mut e = entry(actor, action, target, n as u64);
        e.id = 999 - n as u64;
        let id = ok(s.append_audit(&e).await, "append_audit");
        assert!(id > last, "ids increase: {id} after {last}");
        last = id;
        e.id = id;
        appended.push(e);
    }
    let list = async |f: AuditFilter| ok(s.audit(&f).await, &format!("audit({f:?})"));
    let pick = |idx: &[usize]| idx.iter().map(|i| appended[*i].clone()).collect::<Vec<_>>();
    assert_eq!(list(AuditFilter::default()).await, appended, "everything");
    let cases: Vec<(&str, AuditFilter, Vec<AuditRecord>)> = vec![
        (
            "actor key_a",
            AuditFilter {
                actor: Some("key_a".into()),
                ..AuditFilter::default()
            },
            pick(&[0, 2, 4]),
        ),
        (
            "action jobs.create",
            AuditFilter {
                action: Some("jobs.create".into()),
                ..AuditFilter::default()
            },
            pick(&[0, 1, 3, 4]),
        ),
        (
            "key_b creating jobs",
            AuditFilter {
                actor: Some("key_b".into()),
                action: Some("jobs.create".into()),
                ..AuditFilter::default()
            },
            pick(&[3]),
        ),
        (
            "an unknown actor",
            AuditFilter {
                actor: Some("key_".into()),
                ..AuditFilter::default()
            },
            vec![],
        ),
        (
            "after the second",
            AuditFilter {
                after: Some(appended[1].id),
                ..AuditFilter::default()
            },
            pick(&[2, 3, 4, 5]),
        ),
        (
            "jobs.create after the second, limit 1",
            AuditFilter {
                after: Some(appended[1].id),
                action: Some("jobs.create".into()),
                limit: 1,
                ..AuditFilter::default()
            },
            pick(&[3]),
        ),
        (
            "after the last",
            AuditFilter {
                after: Some(last),
                ..AuditFilter::default()
            },
            vec![],
        ),
        (
            "limit 2",
            AuditFilter {
                limit: 2,
                ..AuditFilter::default()
            },
            pick(&[0, 1]),
        ),
    ];
    for (what, filter, want) in cases {
        assert_eq!(list(filter).await, want, "audit({what})");
    }
    for page in 1..=4 {
        let (mut after, mut walked) = (None, Vec::new());
        for _ in 0..10 {
            let got = list(AuditFilter {
                after,
                limit: page,
                ..AuditFilter::default()
            })
            .await;
            assert!(got.len() <= page, "a page of {page}");
            let Some(l) = got.last() else { break };
            after = Some(l.id);
            walked.extend(got);
        }
        assert_eq!(walked, appended, "pages of {page}");
    }
}
