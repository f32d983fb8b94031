//! What is not a resource: health, readiness, metrics, routing errors, a database down.

use axum::http::{Method, StatusCode};
use serde_json::json;

use super::VALUE;
use std::sync::Arc;

use crate::support::{
    TestApp, admin_router, assert_error, assert_error_in, backend_tests, free_port, keyring_with,
    send,
};

backend_tests!(health_metrics_and_routing_errors,);

async fn health_metrics_and_routing_errors(app: TestApp) {
    let t = app.tenant("acme").await;
    let (status, body) = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, _) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    app.secret(&t, "s", VALUE).await;
    let (status, metrics) = app.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let text = metrics.as_str().unwrap();
    assert!(
        text.contains(
            r#"runta_admin_requests_total{method="POST",route="/v1/secrets",status="201"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains("runta_admin_request_duration_seconds_bucket"));
    assert!(
        !text.contains("4f1d2a9c") && !text.contains("acme"),
        "no values, no tenant labels"
    );

    let answer = app
        .call(Method::GET, "/v1/nothing", Some(&t.key), None)
        .await;
    assert_error(&answer, StatusCode::NOT_FOUND, &["/v1/nothing"]);
    let answer = app
        .call(Method::PATCH, "/v1/secrets", Some(&t.key), None)
        .await;
    assert_error(&answer, StatusCode::METHOD_NOT_ALLOWED, &["PATCH"]);
}

/// A database nobody answers on: 503 with the error shape, and readiness says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_unavailable_is_503() {
    let url = format!("postgres://runta@127.0.0.1:{}/runta", free_port());
    let store = runta::store::Store::connect(&url, 2).await.unwrap();
    let router = admin_router(store, Arc::new(keyring_with(&["k1"], "k1")));
    for (path, key) in [("/readyz", None), ("/v1/secrets", Some("runta_ak_any"))] {
        let answer = send(&router, Method::GET, path, key, None).await;
        assert_eq!(answer.body["error"]["code"], "store_unavailable", "{path}");
        assert_error_in(
            path,
            &(answer.status, answer.body),
            StatusCode::SERVICE_UNAVAILABLE,
            &["database"],
        );
    }
}
