//! The audit trail, on both backends: every admin change records exactly one event with its
//! actor, action, target and request id (the `x-request-id` the change was answered with); a
//! refused or failed change records none; the list is tenant-isolated, filtered and paged;
//! tampering with a stored event (edited, removed from the middle or the end) makes `runta
//! audit verify` exit 1 naming the seq; no secret value, API key or runtime token ever appears
//! in an event, in the API's answers or in the JSON-lines stream.

use std::process::{Command, Output};

use axum::http::{Method, StatusCode};
use runta::config::AuditStream;
use runta::store::{AuditAction, SecretChanges, StoreError};
use serde_json::{Value, json};

use crate::cli::{BIN, Server};
use crate::support::{
    OPERATOR_TOKEN, TestApp, TestDb, admin_router, assert_no_marker, audit_entry, backend_tests,
    send,
};

backend_tests!(
    each_change_records_one_event,
    failed_changes_record_no_event,
    the_list_is_isolated_filtered_and_paged,
    tampering_is_reported_by_verify,
    the_stream_holds_each_event_as_a_json_line,
    concurrent_changes_keep_one_chain,
    every_field_shape_hashes_alike,
);

const VALUE: &str = "sk-audit-VALUE-7c3e91aa";
const NEW_VALUE: &str = "sk-audit-NEWVALUE-5b20d4ee";

/// Every event the operator sees after `after_seq`, in seq order (following the cursors).
async fn events_after(app: &TestApp, after_seq: i64) -> Vec<Value> {
    let mut events = Vec::new();
    let mut cursor = after_seq.to_string();
    loop {
        let page = app
            .ok(
                Method::GET,
                &format!("/v1/audit-events?limit=3&cursor={cursor}"),
                Some(OPERATOR_TOKEN),
                None,
            )
            .await;
        events.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => return events,
        }
    }
}

/// The seq of the last event (0 when there is none).
async fn last_seq(app: &TestApp) -> i64 {
    events_after(app, 0)
        .await
        .last()
        .map_or(0, |e| e["seq"].as_i64().unwrap())
}

/// What one change should have recorded.
struct Expected<'a> {
    actor: &'a str,
    action: &'a str,
    tenant_id: Option<String>,
    target_kind: &'a str,
    target_id: Option<String>,
    target_name: Option<&'a str>,
}

/// `Some` of an id in an answer.
fn id_in(value: &Value) -> Option<String> {
    Some(value.as_str().expect("an id").to_owned())
}

/// Makes one request; asserts it succeeded and recorded exactly the expected event, with the
/// request id it was answered with. Answers the body.
async fn change<'a>(
    app: &TestApp,
    method: Method,
    path: &str,
    key: &str,
    body: Option<Value>,
    expected: impl FnOnce(&Value) -> Expected<'a>,
) -> Value {
    let before = last_seq(app).await;
    let answer = send(
        &app.router,
        method.clone(),
        path,
        Some(key),
        body.map(|b| b.to_string().into_bytes()),
    )
    .await;
    assert!(
        answer.status.is_success(),
        "{method} {path}: {} {}",
        answer.status,
        answer.body
    );
    let request_id = answer.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(request_id.starts_with("req_"), "{request_id}");
    let events = events_after(app, before).await;
    assert_eq!(events.len(), 1, "{method} {path}: {events:#?}");
    let event = &events[0];
    let expected = expected(&answer.body);
    let what = format!("{method} {path}: {event:#}");
    assert_eq!(event["seq"], before + 1, "{what}");
    assert_eq!(event["actor"], expected.actor, "{what}");
    assert_eq!(event["action"], expected.action, "{what}");
    assert_eq!(event["tenant_id"], json!(expected.tenant_id), "{what}");
    assert_eq!(event["target_kind"], expected.target_kind, "{what}");
    assert_eq!(event["target_id"], json!(expected.target_id), "{what}");
    assert_eq!(event["target_name"], json!(expected.target_name), "{what}");
    assert_eq!(event["request_id"], request_id, "{what}");
    assert_eq!(event["outcome"], "ok", "{what}");
    assert!(event["id"].as_str().unwrap().starts_with("aud_"), "{what}");
    answer.body
}

async fn each_change_records_one_event(app: TestApp) {
    use Method as M;
    let created = change(
        &app,
        M::POST,
        "/v1/tenants",
        OPERATOR_TOKEN,
        Some(json!({"name": "acme"})),
        |b| Expected {
            actor: "operator",
            action: "tenant.create",
            tenant_id: id_in(&b["tenant"]["id"]),
            target_kind: "tenant",
            target_id: id_in(&b["tenant"]["id"]),
            target_name: Some("acme"),
        },
    )
    .await;
    let tenant = created["tenant"]["id"].as_str().unwrap().to_owned();
    let t = Some(tenant.clone());
    let first_key = created["api_key"].as_str().unwrap().to_owned();
    let keys = app.ok(M::GET, "/v1/api-keys", Some(&first_key), None).await;
    let first_key_id = keys["data"][0]["id"].as_str().unwrap().to_owned();
    let actor = first_key_id.as_str();

    let new_key = change(
        &app,
        M::POST,
        "/v1/api-keys",
        &first_key,
        Some(json!({"name": "ci"})),
        |b| Expected {
            actor,
            action: "api_key.create",
            tenant_id: t.clone(),
            target_kind: "api_key",
            target_id: id_in(&b["id"]),
            target_name: Some("ci"),
        },
    )
    .await;
    let new_key_id = new_key["id"].as_str().unwrap().to_owned();
    change(
        &app,
        M::DELETE,
        &format!("/v1/api-keys/{new_key_id}"),
        &first_key,
        None,
        |_| Expected {
            actor,
            action: "api_key.delete",
            tenant_id: t.clone(),
            target_kind: "api_key",
            target_id: Some(new_key_id.clone()),
            target_name: None,
        },
    )
    .await;

    let secret = change(
        &app,
        M::POST,
        "/v1/secrets",
        &first_key,
        Some(json!({"name": "openai", "value": VALUE})),
        |b| Expected {
            actor,
            action: "secret.create",
            tenant_id: t.clone(),
            target_kind: "secret",
            target_id: id_in(&b["id"]),
            target_name: Some("openai"),
        },
    )
    .await;
    let secret_id = secret["id"].as_str().unwrap().to_owned();
    let on_secret = |action| Expected {
        actor,
        action,
        tenant_id: t.clone(),
        target_kind: "secret",
        target_id: Some(secret_id.clone()),
        target_name: Some("openai"),
    };
    change(
        &app,
        M::PUT,
        "/v1/secrets/openai",
        &first_key,
        Some(json!({"value": NEW_VALUE, "display_name": "OpenAI"})),
        |_| on_secret("secret.update_value"),
    )
    .await;
    change(
        &app,
        M::PUT,
        "/v1/secrets/openai",
        &first_key,
        Some(json!({"cache_ttl_secs": 0})),
        |_| on_secret("secret.update_metadata"),
    )
    .await;

    let rule = change(
        &app,
        M::POST,
        "/v1/runtimes/worker/rules",
        &first_key,
        Some(json!({"host": "api.openai.com", "injection": {"credential": "openai", "header": "Authorization", "value": "Bearer ${credential}"}})),
        |b| Expected {
            actor,
            action: "rule.create",
            tenant_id: t.clone(),
            target_kind: "rule",
            target_id: id_in(&b["id"]),
            target_name: Some("worker"),
        },
    )
    .await;
    let rule_id = rule["id"].as_str().unwrap().to_owned();
    let batch = change(
        &app,
        M::POST,
        "/v1/rules/batch",
        &first_key,
        Some(json!({"rules": [
            {"runtime": "ci", "host": "a.example.com", "credential": "openai", "inject": {"header": "x-a"}},
            {"runtime": "batch", "host": "b.example.com", "credential": "openai", "inject": {"param": "key"}},
        ]})),
        |b| Expected {
            actor,
            action: "rule.batch_create",
            tenant_id: t.clone(),
            target_kind: "rule",
            // One event for the batch: its rules' ids, and their runtimes.
            target_id: Some(
                b["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["id"].as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            target_name: Some("batch,ci"),
        },
    )
    .await;
    let batch_ids: Vec<String> = batch["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();

    let token = change(
        &app,
        M::POST,
        "/v1/runtimes/worker/tokens",
        &first_key,
        None,
        |b| Expected {
            actor,
            action: "runtime_token.create",
            tenant_id: t.clone(),
            target_kind: "runtime_token",
            target_id: id_in(&b["id"]),
            target_name: Some("worker"),
        },
    )
    .await;
    let token_id = token["id"].as_str().unwrap().to_owned();
    let runtime_token = token["token"].as_str().unwrap().to_owned();
    change(
        &app,
        M::DELETE,
        &format!("/v1/runtime-tokens/{token_id}"),
        &first_key,
        None,
        |_| Expected {
            actor,
            action: "runtime_token.revoke",
            tenant_id: t.clone(),
            target_kind: "runtime_token",
            target_id: Some(token_id.clone()),
            target_name: None,
        },
    )
    .await;
    for id in batch_ids
        .iter()
        .map(String::as_str)
        .chain([rule_id.as_str()])
    {
        change(
            &app,
            M::DELETE,
            &format!("/v1/rules/{id}"),
            &first_key,
            None,
            |_| Expected {
                actor,
                action: "rule.delete",
                tenant_id: t.clone(),
                target_kind: "rule",
                target_id: Some(id.to_owned()),
                target_name: None,
            },
        )
        .await;
    }
    change(
        &app,
        M::DELETE,
        "/v1/secrets/openai",
        &first_key,
        None,
        |_| on_secret_deleted(actor, t.clone()),
    )
    .await;

    // A key rotation: one event of no tenant, by the CLI, outside any request.
    let before = last_seq(&app).await;
    runta::keys::rotate(&app.store, &app.keyring).await.unwrap();
    let events = events_after(&app, before).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event["action"], "keys.rotate");
    assert_eq!(event["actor"], "cli");
    assert_eq!(event["tenant_id"], Value::Null);
    assert_eq!(event["target_kind"], "encryption_key");
    assert_eq!(event["target_id"], app.keyring.active_key_id());
    assert_eq!(event["request_id"], Value::Null);
    assert_eq!(event["outcome"], "ok");

    // The whole trail, as the operator and as the tenant read it: no value, key or token.
    let all = json!(events_after(&app, 0).await).to_string();
    let own = app
        .ok(M::GET, "/v1/audit-events", Some(&first_key), None)
        .await
        .to_string();
    let markers = [
        "7c3e91aa",
        "5b20d4ee",
        first_key.as_str(),
        new_key["key"].as_str().unwrap(),
        runtime_token.as_str(),
        OPERATOR_TOKEN,
    ];
    assert_no_marker(&markers, "the audit trail", &all);
    assert_no_marker(&markers, "the tenant's audit trail", &own);
}

fn on_secret_deleted(actor: &str, tenant_id: Option<String>) -> Expected<'_> {
    Expected {
        actor,
        action: "secret.delete",
        tenant_id,
        target_kind: "secret",
        target_id: None,
        target_name: Some("openai"),
    }
}

async fn failed_changes_record_no_event(app: TestApp) {
    use Method as M;
    let tenant = app.tenant("acme").await;
    let key = Some(tenant.key.as_str());
    app.secret(&tenant, "used", VALUE).await;
    app.ok(
        M::POST,
        "/v1/runtimes/worker/rules",
        key,
        Some(json!({"host": "api.example.com", "injection": {"credential": "used", "header": "x-key"}})),
    )
    .await;
    let before = events_after(&app, 0).await;

    let refused = [
        // A secret still used by a rule: 409.
        (M::DELETE, "/v1/secrets/used", None, StatusCode::CONFLICT),
        // A rule naming a secret that does not exist: 400.
        (
            M::POST,
            "/v1/runtimes/worker/rules",
            Some(
                json!({"host": "x.example.com", "injection": {"credential": "missing", "header": "x-key"}}),
            ),
            StatusCode::BAD_REQUEST,
        ),
        // A batch whose second rule names a missing secret: none of it.
        (
            M::POST,
            "/v1/rules/batch",
            Some(json!({"rules": [
                {"runtime": "a", "host": "a.example.com", "credential": "used", "inject": {"header": "x-a"}},
                {"runtime": "b", "host": "b.example.com", "credential": "missing", "inject": {"header": "x-b"}},
            ]})),
            StatusCode::BAD_REQUEST,
        ),
        // A taken name: 409.
        (
            M::POST,
            "/v1/secrets",
            Some(json!({"name": "used", "value": NEW_VALUE})),
            StatusCode::CONFLICT,
        ),
        // The tenant's last API key: 409.
        (M::DELETE, "/v1/api-keys/KEY", None, StatusCode::CONFLICT),
        // Things that are not there: 404.
        (
            M::DELETE,
            "/v1/rules/rule_missing",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            M::DELETE,
            "/v1/runtime-tokens/rtk_missing",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            M::PUT,
            "/v1/secrets/missing",
            Some(json!({"value": NEW_VALUE})),
            StatusCode::NOT_FOUND,
        ),
        // Invalid before the store is touched: 400.
        (
            M::PUT,
            "/v1/secrets/used",
            Some(json!({"value": "bad\nvalue"})),
            StatusCode::BAD_REQUEST,
        ),
    ];
    let keys = app.ok(M::GET, "/v1/api-keys", key, None).await;
    let key_id = keys["data"][0]["id"].as_str().unwrap().to_owned();
    for (method, path, body, status) in refused {
        let path = path.replace("KEY", &key_id);
        let (got, answer) = app.call(method.clone(), &path, key, body).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
    }
    // Unauthenticated and forbidden changes.
    let (got, _) = app
        .call(M::POST, "/v1/tenants", key, Some(json!({"name": "sneaky"})))
        .await;
    assert_eq!(got, StatusCode::FORBIDDEN);
    let (got, _) = app
        .call(M::POST, "/v1/runtimes/worker/tokens", Some("nope"), None)
        .await;
    assert_eq!(got, StatusCode::UNAUTHORIZED);

    // A concurrent conflict: an update sealed against a version that moved on is stale.
    let stale = app
        .store
        .update_secret(
            &tenant.id,
            "used",
            41,
            &SecretChanges {
                cache_ttl_secs: Some(1),
                ..SecretChanges::default()
            },
            &audit_entry(&tenant.id, AuditAction::SecretUpdateMetadata),
        )
        .await;
    assert!(matches!(stale, Err(StoreError::Stale(_))), "{stale:?}");

    assert_eq!(
        events_after(&app, 0).await,
        before,
        "a refused or failed change recorded an event"
    );
    // And the chain is still whole.
    assert_eq!(
        app.store.verify_audit_chain().await.unwrap(),
        runta::store::ChainVerdict::Intact {
            events: before.len() as i64
        }
    );
}

async fn the_list_is_isolated_filtered_and_paged(app: TestApp) {
    use Method as M;
    let acme = app.tenant("acme").await;
    let umbrella = app.tenant("umbrella").await;
    app.secret(&acme, "a1", VALUE).await;
    app.secret(&acme, "a2", VALUE).await;
    let umbrella_secret = app.secret(&umbrella, "u1", VALUE).await;
    app.ok(
        M::POST,
        "/v1/runtimes/worker/tokens",
        Some(&umbrella.key),
        None,
    )
    .await;

    let list = |key: String, query: &'static str| {
        let app = &app;
        async move {
            app.ok(
                M::GET,
                &format!("/v1/audit-events{query}"),
                Some(&key),
                None,
            )
            .await
        }
    };
    // Each tenant sees its own events (its creation included), the operator all of them.
    let own = list(acme.key.clone(), "").await;
    let data = own["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "{own:#}");
    assert!(data.iter().all(|e| e["tenant_id"] == acme.id.as_str()));
    let own = list(umbrella.key.clone(), "").await;
    let data = own["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "{own:#}");
    assert!(data.iter().all(|e| e["tenant_id"] == umbrella.id.as_str()));
    let all = events_after(&app, 0).await;
    assert_eq!(all.len(), 6);
    let seqs: Vec<i64> = all.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<_>>(), "seq order, no gap");

    // Filters.
    let created = list(OPERATOR_TOKEN.into(), "?action=secret.create").await;
    assert_eq!(created["data"].as_array().unwrap().len(), 3);
    let created = list(acme.key.clone(), "?action=secret.create&limit=1").await;
    assert_eq!(created["data"].as_array().unwrap().len(), 1);
    assert_eq!(created["data"][0]["target_name"], "a1");
    let cursor = created["next_cursor"].as_str().unwrap().to_owned();
    let next = app
        .ok(
            M::GET,
            &format!("/v1/audit-events?action=secret.create&limit=1&cursor={cursor}"),
            Some(&acme.key),
            None,
        )
        .await;
    assert_eq!(next["data"][0]["target_name"], "a2");
    assert_eq!(next["next_cursor"], Value::Null);
    let tokens = list(OPERATOR_TOKEN.into(), "?target_kind=runtime_token").await;
    assert_eq!(tokens["data"].as_array().unwrap().len(), 1);
    assert_eq!(tokens["data"][0]["tenant_id"], umbrella.id.as_str());
    let by_id = app
        .ok(
            M::GET,
            &format!(
                "/v1/audit-events?target_id={}",
                umbrella_secret["id"].as_str().unwrap()
            ),
            Some(OPERATOR_TOKEN),
            None,
        )
        .await;
    assert_eq!(by_id["data"].as_array().unwrap().len(), 1);
    assert_eq!(by_id["data"][0]["target_name"], "u1");
    // Another tenant's target id finds nothing for acme.
    let by_id = app
        .ok(
            M::GET,
            &format!(
                "/v1/audit-events?target_id={}",
                umbrella_secret["id"].as_str().unwrap()
            ),
            Some(&acme.key),
            None,
        )
        .await;
    assert_eq!(by_id["data"], json!([]));
    let future = list(OPERATOR_TOKEN.into(), "?since=2999-01-01T00:00:00Z").await;
    assert_eq!(future["data"], json!([]));
    let past = list(OPERATOR_TOKEN.into(), "?until=2000-01-01T00:00:00Z").await;
    assert_eq!(past["data"], json!([]));
    let window = list(
        OPERATOR_TOKEN.into(),
        "?since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00%2B02:00",
    )
    .await;
    assert_eq!(window["data"].as_array().unwrap().len(), 6);

    // Paging through everything, two at a time, gives the same events in the same order.
    let mut paged = Vec::new();
    let mut path = "/v1/audit-events?limit=2".to_owned();
    loop {
        let page = app.ok(M::GET, &path, Some(OPERATOR_TOKEN), None).await;
        paged.extend(page["data"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/audit-events?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(paged, all);

    // Bad queries and callers.
    for query in [
        "?action=secret.explode",
        "?target_kind=planet",
        "?since=yesterday",
        "?cursor=abc",
        "?limit=0",
        "?tenant_id=x",
        "?target_id=%00",
        "?target_id=",
    ] {
        let (status, body) = app
            .call(
                M::GET,
                &format!("/v1/audit-events{query}"),
                Some(OPERATOR_TOKEN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{query}: {body}");
    }
    let (status, _) = app.call(M::GET, "/v1/audit-events", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app
        .call(M::GET, "/v1/audit-events", Some("runta_ak_nope"), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Runs `runta audit verify` on a database.
fn verify(db: &TestDb) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["audit", "verify", "--database-url", &db.url()])
        .current_dir(dir.path());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RUNTA_") {
            command.env_remove(key);
        }
    }
    command.output().unwrap()
}

#[track_caller]
fn assert_broken_at(out: &Output, seq: i64) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("broken at seq {seq}:")),
        "does not name seq {seq}: {stderr}"
    );
}

/// Runs one SQL statement that changes one row, behind the store's back.
async fn tamper(db: &TestDb, sql: &str) {
    assert_eq!(crate::support::behind_the_store(db, sql).await, 1, "{sql}");
}

async fn tampering_is_reported_by_verify(app: TestApp) {
    let tenant = app.tenant("acme").await;
    for name in ["s1", "s2", "s3", "s4"] {
        app.secret(&tenant, name, VALUE).await;
    }
    // 5 events: the tenant, then four secrets.
    let out = verify(&app.db);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact: 5 event(s)"));

    // An edited event: its own hash no longer matches.
    tamper(
        &app.db,
        "UPDATE audit_events SET target_name = 'innocent' WHERE seq = 3",
    )
    .await;
    assert_broken_at(&verify(&app.db), 3);
    tamper(
        &app.db,
        "UPDATE audit_events SET target_name = 's2' WHERE seq = 3",
    )
    .await;
    assert_eq!(verify(&app.db).status.code(), Some(0), "restored");

    // An edited event whose hash was recomputed still breaks the next event's link; an edited
    // actor is caught like any field.
    tamper(
        &app.db,
        "UPDATE audit_events SET actor = 'operator' WHERE seq = 2",
    )
    .await;
    assert_broken_at(&verify(&app.db), 2);
    let original: String = {
        let filter = runta::store::AuditFilter::default();
        let page = runta::store::AuditPage {
            limit: 10,
            after_seq: None,
        };
        let events = app.store.list_audit_events(&filter, &page).await.unwrap();
        let mut row = events.items[1].clone();
        row.actor = "operator".into();
        row.content_hash()
    };
    tamper(
        &app.db,
        &format!("UPDATE audit_events SET hash = '{original}' WHERE seq = 2"),
    )
    .await;
    let out = verify(&app.db);
    assert_broken_at(&out, 3);
    assert!(String::from_utf8_lossy(&out.stderr).contains("prev_hash"));
    // The store's next append still follows the head (the chain is not repaired silently).
    drop(out);

    // A fresh database for the deletions.
    let app = TestApp::new(app.backend).await.unwrap();
    let tenant = app.tenant("acme").await;
    for name in ["s1", "s2", "s3", "s4"] {
        app.secret(&tenant, name, VALUE).await;
    }
    tamper(&app.db, "DELETE FROM audit_events WHERE seq = 3").await;
    assert_broken_at(&verify(&app.db), 3);
    tamper(&app.db, "DELETE FROM audit_events WHERE seq = 4").await;
    assert_broken_at(&verify(&app.db), 3);

    let app = TestApp::new(app.backend).await.unwrap();
    let tenant = app.tenant("acme").await;
    app.secret(&tenant, "s1", VALUE).await;
    app.secret(&tenant, "s2", VALUE).await;
    // The last event removed: the chain head still names it.
    tamper(&app.db, "DELETE FROM audit_events WHERE seq = 3").await;
    assert_broken_at(&verify(&app.db), 3);
}

async fn the_stream_holds_each_event_as_a_json_line(app: TestApp) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let sink = runta::serve::audit_stream::open(&AuditStream::File(path.clone())).unwrap();
    let store = app.store.clone().with_audit_sink(sink);
    let router = admin_router(store, app.keyring.clone());
    let operator = Some(OPERATOR_TOKEN);
    let created = send(
        &router,
        Method::POST,
        "/v1/tenants",
        operator,
        Some(br#"{"name": "acme"}"#.to_vec()),
    )
    .await
    .body;
    let key = created["api_key"].as_str().unwrap().to_owned();
    let body = json!({"name": "openai", "value": VALUE}).to_string();
    let answer = send(
        &router,
        Method::POST,
        "/v1/secrets",
        Some(&key),
        Some(body.into_bytes()),
    )
    .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let body = json!({"value": NEW_VALUE}).to_string();
    send(
        &router,
        Method::PUT,
        "/v1/secrets/openai",
        Some(&key),
        Some(body.into_bytes()),
    )
    .await;
    let token = send(
        &router,
        Method::POST,
        "/v1/runtimes/worker/tokens",
        Some(&key),
        None,
    )
    .await
    .body;
    // A refused change: nothing streamed for it.
    let refused = send(
        &router,
        Method::DELETE,
        "/v1/secrets/missing",
        Some(&key),
        None,
    )
    .await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);

    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        events_after(&app, 0).await,
        "one line per event, as the API shows it"
    );
    let actions: Vec<&str> = lines
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "tenant.create",
            "secret.create",
            "secret.update_value",
            "runtime_token.create"
        ]
    );
    assert_no_marker(
        &[
            "7c3e91aa",
            "5b20d4ee",
            &key,
            token["token"].as_str().unwrap(),
        ],
        "the audit stream",
        &text,
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

/// The binary: `runta serve` with `audit.stream` set, changes through the CLI, `runta audit
/// list` and `runta audit verify` in its data directory; the stream file and every output
/// grepped for the secret value and the keys.
#[test]
fn the_cli_lists_and_verifies_the_trail() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("runta.toml"),
        "[audit]\nstream = \"audit.jsonl\"\n",
    )
    .unwrap();
    let server = Server::start(dir.path(), &["--config", "runta.toml"]);
    let ok = |out: Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let add = server.shell(&format!(
        "printf %s '{VALUE}' | runta secret add openai --value-stdin"
    ));
    ok(add);
    ok(server.runta(&[
        "secret",
        "rule",
        "add",
        "worker",
        "--host",
        "api.openai.com",
        "--credential",
        "openai",
        "--inject-header",
        "Authorization",
    ]));
    let listed = ok(server.runta(&["audit", "list"]));
    assert!(
        listed.contains("secret.create") && listed.contains("rule.create"),
        "{listed}"
    );
    let json = ok(server.runta(&["audit", "list", "-o", "json", "--action", "rule.create"]));
    let events: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert_eq!(events.len(), 1, "{json}");
    let all = ok(server.runta(&["audit", "list", "--operator", "-o", "json"]));
    let all: Vec<Value> = serde_json::from_str(&all).unwrap();
    // The quickstart tenant and key (by the server), the secret and the rule.
    let actions: Vec<&str> = all.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["tenant.create", "secret.create", "rule.create"]);
    assert_eq!(all[0]["actor"], "server");
    let verified = ok(server.runta(&["audit", "verify"]));
    assert!(verified.contains("intact: 3 event(s)"), "{verified}");
    let log = server.stop();
    let stream = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert_eq!(stream.lines().count(), 3, "{stream}");
    let key = std::fs::read_to_string(dir.path().join("runta-data/api-key")).unwrap();
    let markers = ["7c3e91aa", key.trim()];
    for (what, text) in [
        ("the stream", &stream),
        ("the list", &listed),
        ("the server log", &log),
    ] {
        assert_no_marker(&markers, what, text);
    }
}

/// Concurrent changes (each a transaction of its own, on several pooled connections) append
/// to one chain: seq 1..n without a gap or a repeat, every link intact.
async fn concurrent_changes_keep_one_chain(app: TestApp) {
    let tenant = app.tenant("acme").await;
    let writes = (0..24).map(|i| {
        let router = app.router.clone();
        let key = tenant.key.clone();
        tokio::spawn(async move {
            let (method, path, body) = match i % 3 {
                0 => (
                    Method::POST,
                    "/v1/secrets".to_owned(),
                    Some(json!({"name": format!("s{i}"), "value": VALUE})),
                ),
                1 => (Method::POST, format!("/v1/runtimes/r{i}/tokens"), None),
                _ => (
                    Method::POST,
                    "/v1/api-keys".to_owned(),
                    Some(json!({"name": format!("k{i}")})),
                ),
            };
            let body = body.map(|b| b.to_string().into_bytes());
            send(&router, method, &path, Some(&key), body).await.status
        })
    });
    for write in writes.collect::<Vec<_>>() {
        assert!(write.await.unwrap().is_success());
    }
    let events = events_after(&app, 0).await;
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>());
    assert_eq!(
        app.store.verify_audit_chain().await.unwrap(),
        runta::store::ChainVerdict::Intact { events: 25 }
    );
}

/// Each event's hash is computed where it is appended (on PostgreSQL by the database, in the
/// statement that appends it) and recomputed by runta: nulls, empty texts, multi-byte UTF-8 and
/// long texts all hash alike, so every append succeeds and the chain verifies.
async fn every_field_shape_hashes_alike(app: TestApp) {
    use runta::store::{Actor, AuditEntry, AuditTarget, TargetKind};
    let long = "x".repeat(10_000);
    // (tenant, target id, target name, request id)
    type Shape<'a> = (
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
    );
    let shapes: [Shape; 5] = [
        (None, None, None, None),
        (Some("ten_1"), Some(""), Some(""), Some("")),
        (
            Some("ten_\u{e9}"),
            Some("rule_\u{1f511}"),
            Some("n\u{e4}me \u{4e2d}"),
            Some("req\\'\""),
        ),
        (Some("t"), Some(&long), None, Some(&long)),
        (None, Some("id"), Some("tab\tnew\nline"), None),
    ];
    for (tenant, target_id, target_name, request_id) in shapes {
        let mut entry = AuditEntry::new(
            tenant,
            Actor::Cli,
            AuditAction::KeysRotate,
            AuditTarget::new(TargetKind::Tenant, target_id, target_name),
        );
        entry.request_id = request_id.map(str::to_owned);
        app.store
            .record_audit(&entry)
            .await
            .unwrap_or_else(|e| panic!("{target_name:?}: {e}"));
    }
    let events = events_after(&app, 0).await;
    assert_eq!(events.len(), shapes.len());
    assert_eq!(events[2]["target_name"], "n\u{e4}me \u{4e2d}");
    assert_eq!(
        app.store.verify_audit_chain().await.unwrap(),
        runta::store::ChainVerdict::Intact {
            events: shapes.len() as i64
        }
    );
}
