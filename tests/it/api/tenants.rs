//! Tenants, API keys and authentication, and what one tenant cannot see of another.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use super::VALUE;
use crate::support::{OPERATOR_TOKEN, TestApp, assert_error, assert_error_in, backend_tests};

backend_tests!(tenant_isolation, authentication, api_keys,);

async fn tenant_isolation(app: TestApp) {
    let a = app.tenant("tenant-a").await;
    let b = app.tenant("tenant-b").await;
    let ka = Some(a.key.as_str());
    let kb = Some(b.key.as_str());
    app.secret(&a, "shared-name", VALUE).await;
    let rule = app
        .ok(
            Method::POST,
            "/v1/runtimes/worker/rules",
            ka,
            Some(json!({"host": "api.example.com", "injection": {"credential": "shared-name", "header": "x-key"}})),
        )
        .await;
    let rule_id = rule["id"].as_str().unwrap();
    let token = app
        .ok(Method::POST, "/v1/runtimes/worker/tokens", ka, None)
        .await;
    let token_id = token["id"].as_str().unwrap();
    let keys = app.ok(Method::GET, "/v1/api-keys", ka, None).await;
    let a_key_id = keys["data"][0]["id"].as_str().unwrap();

    // B sees none of A's things, and cannot touch them.
    // Each case: the call, and what its 404 names (as for a thing that does not exist at all).
    for (method, path, body, named) in [
        (
            Method::GET,
            "/v1/secrets/shared-name".to_owned(),
            None,
            "shared-name",
        ),
        (
            Method::PUT,
            "/v1/secrets/shared-name".to_owned(),
            Some(json!({"value": "stolen"})),
            "shared-name",
        ),
        (
            Method::DELETE,
            "/v1/secrets/shared-name".to_owned(),
            None,
            "shared-name",
        ),
        (Method::GET, format!("/v1/rules/{rule_id}"), None, rule_id),
        (
            Method::DELETE,
            format!("/v1/rules/{rule_id}"),
            None,
            rule_id,
        ),
        (
            Method::DELETE,
            format!("/v1/runtime-tokens/{token_id}"),
            None,
            token_id,
        ),
        (
            Method::DELETE,
            format!("/v1/api-keys/{a_key_id}"),
            None,
            a_key_id,
        ),
    ] {
        let case = format!("tenant B: {method} {path}");
        let answer = app.call(method, &path, kb, body).await;
        assert_error_in(&case, &answer, StatusCode::NOT_FOUND, &[named]);
    }
    for path in [
        "/v1/secrets",
        "/v1/rules",
        "/v1/runtimes/worker/rules",
        "/v1/runtimes/worker/tokens",
    ] {
        let (status, list) = app.call(Method::GET, path, kb, None).await;
        assert_eq!(status, StatusCode::OK, "tenant B: GET {path}: {list}");
        assert_eq!(list["data"], json!([]), "tenant B: GET {path}");
    }
    let keys = app.ok(Method::GET, "/v1/api-keys", kb, None).await;
    assert_eq!(keys["data"].as_array().unwrap().len(), 1);
    assert_ne!(keys["data"][0]["id"], a_key_id);

    // B cannot attach a rule to A's credential, singly or in a batch.
    let answer = app
        .call(
            Method::POST,
            "/v1/runtimes/worker/rules",
            kb,
            Some(json!({"host": "evil.example.com", "injection": {"credential": "shared-name", "header": "x-key"}})),
        )
        .await;
    assert_error(&answer, StatusCode::BAD_REQUEST, &["shared-name"]);
    let answer = app
        .call(
            Method::POST,
            "/v1/rules/batch",
            kb,
            Some(json!({"rules": [{"runtime": "worker", "host": "evil.example.com", "credential": "shared-name", "inject": {"header": "x"}}]})),
        )
        .await;
    assert_error(&answer, StatusCode::BAD_REQUEST, &["shared-name"]);

    // A's things are intact, and A's own rule still uses its secret.
    let row = app
        .store
        .get_secret(&a.id, "shared-name")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.version, 1);
    let answer = app
        .call(Method::DELETE, "/v1/secrets/shared-name", ka, None)
        .await;
    assert_error(&answer, StatusCode::CONFLICT, &[rule_id]);
    // B may use the same secret name for its own secret.
    app.secret(&b, "shared-name", "sk-test-b").await;
}

async fn authentication(app: TestApp) {
    let t = app.tenant("acme").await;
    let answer = app.call(Method::GET, "/v1/secrets", None, None).await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, &["missing API key"]);
    let answer = app
        .call(Method::GET, "/v1/secrets", Some("runta_ak_wrong"), None)
        .await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, &["invalid API key"]);
    // The operator token is not a tenant key.
    let answer = app
        .call(Method::GET, "/v1/secrets", Some(OPERATOR_TOKEN), None)
        .await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, &[]);
    // A tenant key cannot manage tenants; nothing can without a token.
    let answer = app
        .call(Method::GET, "/v1/tenants", Some(&t.key), None)
        .await;
    assert_error(&answer, StatusCode::FORBIDDEN, &["operator"]);
    let answer = app
        .call(
            Method::POST,
            "/v1/tenants",
            None,
            Some(json!({"name": "x"})),
        )
        .await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, &[]);
    let answer = app
        .call(
            Method::POST,
            "/v1/tenants",
            Some("runta_op_wrong"),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, &[]);
    let (status, list) = app
        .call(Method::GET, "/v1/tenants", Some(OPERATOR_TOKEN), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["data"][0]["name"], "acme");
    let answer = app
        .call(
            Method::POST,
            "/v1/tenants",
            Some(OPERATOR_TOKEN),
            Some(json!({"name": "Not Valid"})),
        )
        .await;
    assert_error(&answer, StatusCode::BAD_REQUEST, &["name"]);
}

async fn api_keys(app: TestApp) {
    let t = app.tenant("acme").await;
    let (status, created) = app
        .call(
            Method::POST,
            "/v1/api-keys",
            Some(&t.key),
            Some(json!({"name": "ci"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let second = created["key"].as_str().unwrap().to_owned();
    assert!(second.starts_with("runta_ak_"));
    assert_eq!(created["name"], "ci");
    let (status, list) = app
        .call(Method::GET, "/v1/api-keys", Some(&second), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let keys = list["data"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(!list.to_string().contains(&second), "keys are never listed");
    let first_id = keys.iter().find(|k| k["id"] != created["id"]).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/api-keys/{first_id}"),
            Some(&second),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let answer = app
        .call(Method::GET, "/v1/secrets", Some(&t.key), None)
        .await;
    assert_error(&answer, StatusCode::UNAUTHORIZED, &[]);
    let second_id = created["id"].as_str().unwrap();
    let answer = app
        .call(
            Method::DELETE,
            &format!("/v1/api-keys/{second_id}"),
            Some(&second),
            None,
        )
        .await;
    assert_error(&answer, StatusCode::CONFLICT, &["last API key"]);
    // An empty body is a key without a name.
    let (status, created) = app
        .call(Method::POST, "/v1/api-keys", Some(&second), None)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["name"], Value::Null);
}
