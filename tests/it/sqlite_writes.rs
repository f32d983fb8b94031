//! SQLite under concurrent writes: every write queues behind the others and succeeds; none
//! answers "database is locked".

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Backend, OPERATOR_TOKEN, TestApp, app_with_engine_and_pool};

/// The admin router over a SQLite file with a pool as large as the server's default (10
/// connections), so that writers really contend for the database rather than for the pool.
pub async fn sqlite_app(max_connections: usize) -> TestApp {
    app_with_engine_and_pool(Backend::Sqlite, max_connections)
        .await
        .expect("SQLite is always there")
        .0
}

/// 60 writes at once, of every kind that reads before it writes or writes several rows: rule
/// creates, batches, secret creates, updates and deletes, runtime tokens, API keys, tenants.
/// All succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_concurrent_writes_all_succeed() {
    let app = Arc::new(sqlite_app(10).await);
    let tenant = app.tenant("acme").await;
    for i in 0..10 {
        app.secret(&tenant, &format!("s{i}"), "sk-test-value").await;
    }
    let key = tenant.key.clone();
    let mut writes: Vec<(Method, String, Option<String>, Option<Value>)> = Vec::new();
    for i in 0..20 {
        writes.push((
            Method::POST,
            format!("/v1/runtimes/worker{i}/rules"),
            Some(key.clone()),
            Some(json!({
                "host": format!("api{i}.example.com"),
                "injection": {"credential": format!("s{}", i % 5), "header": "Authorization"},
            })),
        ));
    }
    for i in 0..10 {
        writes.push((
            Method::POST,
            "/v1/rules/batch".into(),
            Some(key.clone()),
            Some(json!({"rules": [
                {"runtime": "batch", "host": format!("b{i}.example.com"), "credential": "s0",
                 "inject": {"header": "X-Key"}},
                {"runtime": "batch", "host": format!("c{i}.example.com"), "credential": "s1",
                 "inject": {"param": "key"}},
            ]})),
        ));
    }
    for i in 0..8 {
        writes.push((
            Method::POST,
            "/v1/secrets".into(),
            Some(key.clone()),
            Some(json!({"name": format!("new{i}"), "value": "sk-test-value"})),
        ));
    }
    for i in 5..8 {
        writes.push((
            Method::PUT,
            format!("/v1/secrets/s{i}"),
            Some(key.clone()),
            Some(json!({"value": "sk-test-rotated"})),
        ));
    }
    for i in 8..10 {
        writes.push((
            Method::DELETE,
            format!("/v1/secrets/s{i}"),
            Some(key.clone()),
            None,
        ));
    }
    for i in 0..7 {
        writes.push((
            Method::POST,
            format!("/v1/runtimes/worker{i}/tokens"),
            Some(key.clone()),
            None,
        ));
    }
    for _ in 0..5 {
        writes.push((Method::POST, "/v1/api-keys".into(), Some(key.clone()), None));
    }
    for i in 0..5 {
        writes.push((
            Method::POST,
            "/v1/tenants".into(),
            Some(OPERATOR_TOKEN.into()),
            Some(json!({"name": format!("t{i}")})),
        ));
    }

    assert_eq!(writes.len(), 60);
    let barrier = Arc::new(tokio::sync::Barrier::new(writes.len()));
    let tasks: Vec<_> = writes
        .into_iter()
        .map(|(method, path, key, body)| {
            let app = app.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let answer = app.call(method.clone(), &path, key.as_deref(), body).await;
                (method, path, answer)
            })
        })
        .collect();
    let mut failures = Vec::new();
    for task in tasks {
        let (method, path, (status, body)) = task.await.unwrap();
        if !status.is_success() {
            failures.push(format!("{method} {path}: {status} {body}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 60 writes failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let (status, rules) = app
        .call(Method::GET, "/v1/rules?limit=1000", Some(&key), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        rules["data"].as_array().unwrap().len(),
        40,
        "20 single + 10 × 2"
    );
}
