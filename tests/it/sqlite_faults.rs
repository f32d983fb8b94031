//! A SQLite file that refuses writes, or that is removed or replaced under the running server:
//! writes answer 503 with a code that says which, `/readyz` is not ready, and nothing is
//! written anywhere (not into the unlinked file, not into a new one).

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use runta::admin::{self, AppState};
use runta::metrics::Metrics;
use runta::store::Store;
use secrecy::SecretString;
use serde_json::json;

use crate::support::{Backend, OPERATOR_TOKEN, TestApp, assert_error};

/// The same database opened read-only (`mode=ro`: what SQLite does with a file it may not
/// write; a chmod would not stop the root user the tests run as), served by a second router.
async fn read_only_twin(app: &TestApp) -> TestApp {
    let path = app.db.sqlite_dir().unwrap().join("runta.db");
    let store = Store::connect(&format!("sqlite://file:{}?mode=ro", path.display()), 2)
        .await
        .unwrap();
    let metrics = Arc::new(Metrics::new());
    let engine = Arc::new(runta::engine::Engine::new(
        store.clone(),
        app.keyring.clone(),
        metrics.clone(),
    ));
    let state = AppState {
        store: store.clone(),
        keyring: app.keyring.clone(),
        operator_token: Some(Arc::new(SecretString::from(OPERATOR_TOKEN))),
        metrics,
        engine,
        max_body_bytes: 64 * 1024,
        interception_ca: None,
    };
    let tempdir = tempfile::tempdir().unwrap();
    TestApp {
        router: admin::router(state),
        store,
        keyring: app.keyring.clone(),
        db: crate::support::TestDb::Sqlite(tempdir),
        backend: Backend::Sqlite,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_file_is_503_and_not_ready() {
    let app = TestApp::new(Backend::Sqlite).await.unwrap();
    let tenant = app.tenant("acme").await;
    app.secret(&tenant, "x", "sk-test-value").await;
    let ro = read_only_twin(&app).await;
    let (status, body) = ro.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "store_read_only", "{body}");
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/secrets",
            Some(json!({"name": "y", "value": "sk-test"})),
        ),
        (
            Method::PUT,
            "/v1/secrets/x",
            Some(json!({"value": "sk-new"})),
        ),
        (Method::DELETE, "/v1/secrets/x", None),
        (Method::POST, "/v1/api-keys", None),
        (Method::POST, "/v1/runtimes/worker/tokens", None),
        (
            Method::POST,
            "/v1/runtimes/worker/rules",
            Some(json!({"host": "api.example.com",
                        "injection": {"credential": "x", "header": "Authorization"}})),
        ),
    ] {
        let answer = ro.call(method.clone(), path, Some(&tenant.key), body).await;
        assert_error(&answer, StatusCode::SERVICE_UNAVAILABLE, &["read-only"]);
        assert_eq!(
            answer.1["error"]["code"], "store_read_only",
            "{method} {path}"
        );
    }
    // Reads still work; nothing changed.
    let (status, body) = ro
        .call(Method::GET, "/v1/secrets/x", Some(&tenant.key), None)
        .await;
    assert_eq!(
        (status, body["version"].as_i64()),
        (StatusCode::OK, Some(1)),
        "{body}"
    );
    // The writable original is ready.
    let (status, _) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

/// The database files deleted under the running server: every call is refused with
/// `store_file_missing`, and no new database file appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_file_is_refused_and_never_recreated() {
    let app = TestApp::new(Backend::Sqlite).await.unwrap();
    let tenant = app.tenant("acme").await;
    app.secret(&tenant, "x", "sk-test-value").await;
    let dir = app.db.sqlite_dir().unwrap().to_owned();
    for name in ["runta.db", "runta.db-wal", "runta.db-shm"] {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let (status, body) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "store_file_missing", "{body}");
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/secrets",
            Some(json!({"name": "y", "value": "sk-test"})),
        ),
        (
            Method::PUT,
            "/v1/secrets/x",
            Some(json!({"value": "sk-new"})),
        ),
        (Method::POST, "/v1/api-keys", None),
        (Method::GET, "/v1/secrets", None),
    ] {
        let answer = app
            .call(method.clone(), path, Some(&tenant.key), body)
            .await;
        assert_error(&answer, StatusCode::SERVICE_UNAVAILABLE, &["database file"]);
        assert_eq!(
            answer.1["error"]["code"], "store_file_missing",
            "{method} {path}"
        );
    }
    let answer = app
        .call(
            Method::POST,
            "/v1/tenants",
            Some(OPERATOR_TOKEN),
            Some(json!({"name": "other"})),
        )
        .await;
    assert_eq!(
        answer.1["error"]["code"], "store_file_missing",
        "{}",
        answer.1
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "no database file was made again: {left:?}");
}

/// The file replaced by another (a copy: same content, another inode) is not the database the
/// server opened: refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_file_is_refused() {
    let app = TestApp::new(Backend::Sqlite).await.unwrap();
    let tenant = app.tenant("acme").await;
    let path = app.db.sqlite_dir().unwrap().join("runta.db");
    let copy = path.with_extension("copy");
    std::fs::copy(&path, &copy).unwrap();
    std::fs::rename(&copy, &path).unwrap();
    let answer = app
        .call(Method::POST, "/v1/api-keys", Some(&tenant.key), None)
        .await;
    assert_error(&answer, StatusCode::SERVICE_UNAVAILABLE, &["replaced"]);
    assert_eq!(answer.1["error"]["code"], "store_file_missing");
}
