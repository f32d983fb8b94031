//! Runtime tokens: shown once, stored as hashes, revoked.

use axum::http::{Method, StatusCode};
use serde_json::Value;

use crate::support::{TestApp, assert_error, backend_tests};

backend_tests!(runtime_tokens,);

async fn runtime_tokens(app: TestApp) {
    let t = app.tenant("acme").await;
    let key = Some(t.key.as_str());
    let (status, created) = app
        .call(Method::POST, "/v1/runtimes/worker/tokens", key, None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(token.starts_with("runta_rt_") && id.starts_with("rtk_"));
    assert!(
        token.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "usable as a proxy URL's user name"
    );
    assert_eq!(created["revoked_at"], Value::Null);

    let list = app
        .ok(Method::GET, "/v1/runtimes/worker/tokens", key, None)
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(&token));
    // The store finds it by hash only.
    let found = stored_token(&app, &token).await;
    assert_eq!(
        (found.id.as_str(), found.runtime.as_str(), found.revoked_at),
        (id.as_str(), "worker", None)
    );

    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/runtime-tokens/{id}"),
            key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let list = app
        .ok(Method::GET, "/v1/runtimes/worker/tokens", key, None)
        .await;
    assert!(list["data"][0]["revoked_at"].is_string());
    let found = stored_token(&app, &token).await;
    assert!(found.revoked_at.is_some());
    let answer = app
        .call(Method::DELETE, "/v1/runtime-tokens/rtk_nope", key, None)
        .await;
    assert_error(&answer, StatusCode::NOT_FOUND, &["rtk_nope"]);
}

/// The stored row of a runtime token, found by its hash (the only form the store keeps).
async fn stored_token(app: &TestApp, token: &str) -> runta::store::RuntimeTokenRow {
    let hash = runta::crypto::hash_token(token);
    let all = app.store.all_runtime_tokens().await.unwrap();
    all.into_iter().find(|(_, h)| *h == hash).unwrap().0
}
