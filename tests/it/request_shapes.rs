//! Requests whose shape is wrong in ways serde or axum would let through or answer outside the
//! API's error shape: JSON bodies that are not objects, path parameters that are not UTF-8,
//! secret values with C1 controls or Unicode line separators.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestApp, assert_error, backend_tests};

backend_tests!(
    json_bodies_must_be_objects,
    path_parameters_not_utf8_answer_json,
    secret_values_refuse_c1_and_line_separators,
    whole_numbers_with_a_fraction_part_are_integers,
);

/// JSON Schema's `integer` is any number without a fraction: `600.0` is a TTL of 600 s, as the
/// OpenAPI document says; `1.5` is not a TTL.
async fn whole_numbers_with_a_fraction_part_are_integers(app: TestApp) {
    let tenant = app.tenant("acme").await;
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/secrets",
            Some(&tenant.key),
            Some(json!({"name": "x", "value": "sk-test", "cache_ttl_secs": 600.0})),
        )
        .await;
    assert_eq!(
        (status, &body["cache_ttl_secs"]),
        (StatusCode::CREATED, &json!(600)),
        "{body}"
    );
    let (status, body) = app
        .call(
            Method::PUT,
            "/v1/secrets/x",
            Some(&tenant.key),
            Some(json!({"cache_ttl_secs": 4545.0})),
        )
        .await;
    assert_eq!(
        (status, &body["cache_ttl_secs"]),
        (StatusCode::OK, &json!(4545)),
        "{body}"
    );
    let answer = app
        .call(
            Method::PUT,
            "/v1/secrets/x",
            Some(&tenant.key),
            Some(json!({"cache_ttl_secs": 1.5})),
        )
        .await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        &["cache_ttl_secs", "whole number"],
    );
}

/// `[]` and `["x"]` are JSON, and serde would read a struct from them field by position: a
/// key created, a secret given a new version. Every body-taking call refuses them.
async fn json_bodies_must_be_objects(app: TestApp) {
    let tenant = app.tenant("acme").await;
    app.secret(&tenant, "x", "sk-test-one").await;
    let calls: [(Method, &str, Option<&str>); 6] = [
        (Method::POST, "/v1/api-keys", Some(&tenant.key)),
        (Method::PUT, "/v1/secrets/x", Some(&tenant.key)),
        (Method::POST, "/v1/secrets", Some(&tenant.key)),
        (Method::POST, "/v1/runtimes/worker/rules", Some(&tenant.key)),
        (Method::POST, "/v1/rules/batch", Some(&tenant.key)),
        (
            Method::POST,
            "/v1/tenants",
            Some(crate::support::OPERATOR_TOKEN),
        ),
    ];
    for (method, path, key) in calls {
        for body in [
            "[]",
            "[\"v\"]",
            "[\"x\", \"sk-test-two\"]",
            "\"text\"",
            "1",
            "null",
        ] {
            let answer = app
                .call_raw(method.clone(), path, key, Some(body.as_bytes().to_vec()))
                .await;
            assert_error(
                &answer,
                StatusCode::BAD_REQUEST,
                &["body", "must be a JSON object"],
            );
            assert_eq!(
                answer.1["error"]["code"], "invalid_request",
                "{method} {path} {body}"
            );
        }
    }
    // Nothing happened: one key, the secret still at version 1.
    let (_, keys) = app
        .call(Method::GET, "/v1/api-keys", Some(&tenant.key), None)
        .await;
    assert_eq!(keys["data"].as_array().unwrap().len(), 1, "{keys}");
    let (_, secret) = app
        .call(Method::GET, "/v1/secrets/x", Some(&tenant.key), None)
        .await;
    assert_eq!(secret["version"], 1, "{secret}");
    // Not JSON at all is still told as such.
    let answer = app
        .call_raw(
            Method::POST,
            "/v1/api-keys",
            Some(&tenant.key),
            Some(b"[".to_vec()),
        )
        .await;
    assert_error(&answer, StatusCode::BAD_REQUEST, &["not valid JSON"]);
    // Objects and empty bodies work as before.
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/api-keys",
            Some(&tenant.key),
            Some(json!({"name": "ci"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .call_raw(
            Method::POST,
            "/v1/api-keys",
            Some(&tenant.key),
            Some(b"  ".to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// `%FF` decodes to a byte that is not UTF-8: the answer is the JSON error shape, 400.
async fn path_parameters_not_utf8_answer_json(app: TestApp) {
    let tenant = app.tenant("acme").await;
    for (method, path) in [
        (Method::GET, "/v1/secrets/%FF"),
        (Method::PUT, "/v1/secrets/a%C3%28"),
        (Method::DELETE, "/v1/secrets/%FF"),
        (Method::GET, "/v1/rules/%FF"),
        (Method::DELETE, "/v1/rules/%FF"),
        (Method::GET, "/v1/runtimes/%FF/rules"),
        (Method::POST, "/v1/runtimes/%FF/tokens"),
        (Method::GET, "/v1/runtimes/%FF/tokens"),
        (Method::DELETE, "/v1/runtime-tokens/%FF"),
        (Method::DELETE, "/v1/api-keys/%FF"),
    ] {
        let body = (method == Method::PUT).then(|| json!({"value": "sk-test"}));
        let answer = app
            .call(method.clone(), path, Some(&tenant.key), body)
            .await;
        assert!(
            answer.1.is_object(),
            "{method} {path}: not JSON: {}",
            answer.1
        );
        assert_error(&answer, StatusCode::BAD_REQUEST, &["path"]);
        assert_eq!(
            answer.1["error"]["code"], "invalid_request",
            "{method} {path}"
        );
    }
}

/// C1 controls (U+0080–U+009F) and U+2028/U+2029 are refused in values, on create and update,
/// and the message does not quote the value.
async fn secret_values_refuse_c1_and_line_separators(app: TestApp) {
    let tenant = app.tenant("acme").await;
    app.secret(&tenant, "x", "sk-test-one").await;
    for (value, named) in [
        ("sk-secret\u{85}tail", "U+0085"),
        ("sk-secret\u{80}tail", "U+0080"),
        ("sk-secret\u{9f}tail", "U+009F"),
        ("sk-secret\u{2028}tail", "U+2028"),
        ("sk-secret\u{2029}tail", "U+2029"),
    ] {
        let created = app
            .call(
                Method::POST,
                "/v1/secrets",
                Some(&tenant.key),
                Some(json!({"name": "y", "value": value})),
            )
            .await;
        assert_error(&created, StatusCode::BAD_REQUEST, &["value", named]);
        let updated = app
            .call(
                Method::PUT,
                "/v1/secrets/x",
                Some(&tenant.key),
                Some(json!({"value": value})),
            )
            .await;
        assert_error(&updated, StatusCode::BAD_REQUEST, &["value", named]);
        for answer in [created, updated] {
            assert!(!answer.1.to_string().contains("sk-secret"), "{}", answer.1);
        }
    }
    // Non-ASCII text that is not a control character is a value like any other.
    let (status, body) = app
        .call(
            Method::PUT,
            "/v1/secrets/x",
            Some(&tenant.key),
            Some(json!({"value": "sk-ünïcødé\t€"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
