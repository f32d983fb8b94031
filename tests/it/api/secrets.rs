//! Secrets: their lifecycle, the value never coming back, validation, conflicts, pages.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use super::VALUE;
use crate::support::{OPERATOR_TOKEN, TestApp, assert_error, assert_error_in, backend_tests};

backend_tests!(
    secret_lifecycle,
    secret_value_never_in_answers,
    invalid_secrets_rejected,
    conflicts,
    pagination,
);

async fn secret_lifecycle(app: TestApp) {
    let t = app.tenant("acme").await;
    let key = Some(t.key.as_str());
    let created = app.secret(&t, "openai-api-key", VALUE).await;
    assert!(created["id"].as_str().unwrap().starts_with("sec_"));
    assert_eq!(created["name"], "openai-api-key");
    assert_eq!(created["version"], 1);
    assert_eq!(created["cache_ttl_secs"], 300);
    assert_eq!(created["display_name"], Value::Null);
    assert!(created["created_at"].as_str().unwrap().ends_with('Z'));
    let fields: Vec<&String> = created.as_object().unwrap().keys().collect();
    assert_eq!(
        fields,
        [
            "cache_ttl_secs",
            "created_at",
            "display_name",
            "id",
            "name",
            "updated_at",
            "version"
        ]
    );

    let (status, got) = app
        .call(Method::GET, "/v1/secrets/openai-api-key", key, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, created);

    // Metadata only: same version.
    let (status, updated) = app
        .call(
            Method::PUT,
            "/v1/secrets/openai-api-key",
            key,
            Some(json!({"display_name": "OpenAI", "cache_ttl_secs": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["version"], 1);
    assert_eq!(updated["display_name"], "OpenAI");
    assert_eq!(updated["cache_ttl_secs"], 0);

    // A new value: version + 1, display name kept.
    let (status, updated) = app
        .call(
            Method::PUT,
            "/v1/secrets/openai-api-key",
            key,
            Some(json!({"value": "sk-test-new"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["display_name"], "OpenAI");
    let row = app
        .store
        .get_secret(&t.id, "openai-api-key")
        .await
        .unwrap()
        .unwrap();
    let ctx = runta::crypto::SealContext {
        tenant_id: &t.id,
        secret_id: &row.id,
        version: 2,
    };
    assert_eq!(
        app.keyring.open(&row.sealed(), ctx).unwrap().as_slice(),
        b"sk-test-new"
    );

    // null clears the display name.
    let updated = app
        .ok(
            Method::PUT,
            "/v1/secrets/openai-api-key",
            key,
            Some(json!({"display_name": null})),
        )
        .await;
    assert_eq!(updated["display_name"], Value::Null);
    // A null value is no value: refused, nothing changed (the value is a string, never null).
    let answer = app
        .call(
            Method::PUT,
            "/v1/secrets/openai-api-key",
            key,
            Some(json!({"value": null, "display_name": "kept out"})),
        )
        .await;
    assert_error(&answer, StatusCode::BAD_REQUEST, &["value"]);
    let unchanged = app
        .ok(Method::GET, "/v1/secrets/openai-api-key", key, None)
        .await;
    assert_eq!(
        (
            unchanged["display_name"].clone(),
            unchanged["version"].clone()
        ),
        (Value::Null, updated["version"].clone())
    );

    let (status, list) = app.call(Method::GET, "/v1/secrets", key, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["next_cursor"], Value::Null);

    let (status, _) = app
        .call(Method::DELETE, "/v1/secrets/openai-api-key", key, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let answer = app
        .call(Method::GET, "/v1/secrets/openai-api-key", key, None)
        .await;
    assert_error(&answer, StatusCode::NOT_FOUND, &["openai-api-key"]);
    let answer = app
        .call(Method::DELETE, "/v1/secrets/openai-api-key", key, None)
        .await;
    assert_error(&answer, StatusCode::NOT_FOUND, &["openai-api-key"]);
    let answer = app
        .call(
            Method::PUT,
            "/v1/secrets/openai-api-key",
            key,
            Some(json!({"value": "x"})),
        )
        .await;
    assert_error(&answer, StatusCode::NOT_FOUND, &["openai-api-key"]);
}

async fn secret_value_never_in_answers(app: TestApp) {
    let t = app.tenant("acme").await;
    let key = Some(t.key.as_str());
    let calls = [
        (
            Method::POST,
            "/v1/secrets",
            Some(json!({"name": "s1", "value": VALUE, "display_name": "one"})),
        ),
        (Method::GET, "/v1/secrets", None),
        (Method::GET, "/v1/secrets/s1", None),
        (Method::PUT, "/v1/secrets/s1", Some(json!({"value": VALUE}))),
        // Errors must not quote the value either: duplicate, bad characters, wrong types.
        (
            Method::POST,
            "/v1/secrets",
            Some(json!({"name": "s1", "value": VALUE})),
        ),
        (
            Method::POST,
            "/v1/secrets",
            Some(json!({"name": "s2", "value": format!("{VALUE}\r\nX: y")})),
        ),
        (
            Method::POST,
            "/v1/secrets",
            Some(json!({"name": "Bad Name", "value": VALUE})),
        ),
        (
            Method::POST,
            "/v1/secrets",
            Some(json!({"name": "s3", "value": [VALUE]})),
        ),
        (Method::POST, "/v1/secrets", Some(json!(VALUE))),
        (
            Method::POST,
            "/v1/secrets",
            Some(json!({"name": "s4", "value": VALUE, "cache_ttl_secs": -1})),
        ),
        (
            Method::PUT,
            "/v1/secrets/s1",
            Some(json!({"value": VALUE, "extra": 1})),
        ),
    ];
    let mut answers = Vec::new();
    for (method, path, body) in calls {
        answers.push(app.call(method, path, key, body).await);
    }
    for (status, body) in &answers {
        assert!(!body.to_string().contains("4f1d2a9c"), "{status}: {body}");
    }
    assert_eq!(answers[0].0, StatusCode::CREATED);
    assert_eq!(answers[5].0, StatusCode::BAD_REQUEST);
}

async fn invalid_secrets_rejected(app: TestApp) {
    let t = app.tenant("acme").await;
    let key = Some(t.key.as_str());
    let cases: Vec<(Value, &[&str])> = vec![
        (json!({"name": "s", "value": "a\rb"}), &["value", "CR"]),
        (json!({"name": "s", "value": "a\nb"}), &["value", "LF"]),
        (json!({"name": "s", "value": "a\u{0}b"}), &["value", "NUL"]),
        (json!({"name": "s", "value": ""}), &["value", "empty"]),
        (json!({"name": "Has Space", "value": "v"}), &["name"]),
        (json!({"name": "", "value": "v"}), &["name"]),
        (json!({"value": "v"}), &["name"]),
        (json!({"name": "s"}), &["value"]),
        (
            json!({"name": "s", "value": "v", "cache_ttl_secs": -1}),
            &["cache_ttl_secs"],
        ),
        (
            json!({"name": "s", "value": "v", "cache_ttl_secs": "soon"}),
            &["cache_ttl_secs"],
        ),
        (
            json!({"name": "s", "value": "v", "display_name": "a\nb"}),
            &["display_name"],
        ),
        (
            json!({"name": "s", "value": "v", "colour": "red"}),
            &["colour"],
        ),
    ];
    for (body, words) in cases {
        let case = format!("POST {body}");
        let answer = app.call(Method::POST, "/v1/secrets", key, Some(body)).await;
        assert_error_in(&case, &answer, StatusCode::BAD_REQUEST, words);
    }
    app.secret(&t, "s", VALUE).await;
    for (body, words) in [
        (json!({"value": "x\r\ny"}), &["value", "CR"][..]),
        (json!({}), &["nothing to update"][..]),
    ] {
        let case = format!("PUT {body}");
        let answer = app
            .call(Method::PUT, "/v1/secrets/s", key, Some(body))
            .await;
        assert_error_in(&case, &answer, StatusCode::BAD_REQUEST, words);
    }
    let row = app.store.get_secret(&t.id, "s").await.unwrap().unwrap();
    assert_eq!(row.version, 1, "a rejected update changes nothing");

    // Malformed JSON and oversized bodies.
    let answer = app
        .call_raw(
            Method::POST,
            "/v1/secrets",
            key,
            Some(b"{\"name\": ".to_vec()),
        )
        .await;
    assert_error(&answer, StatusCode::BAD_REQUEST, &["JSON"]);
    let answer = app
        .call_raw(
            Method::POST,
            "/v1/secrets",
            key,
            Some(b"{\"name\":\"a\",\"value\":\"b\"} trailing".to_vec()),
        )
        .await;
    assert_error(&answer, StatusCode::BAD_REQUEST, &["JSON"]);
    let big = json!({"name": "big", "value": "x".repeat(100 * 1024)})
        .to_string()
        .into_bytes();
    let answer = app
        .call_raw(Method::POST, "/v1/secrets", key, Some(big))
        .await;
    assert_error(&answer, StatusCode::PAYLOAD_TOO_LARGE, &["limit"]);
    let answer = app
        .call(
            Method::POST,
            "/v1/secrets",
            key,
            Some(json!({"name": "big", "value": "x".repeat(17 * 1024)})),
        )
        .await;
    assert_error(&answer, StatusCode::BAD_REQUEST, &["value", "16384"]);
    let list = app.ok(Method::GET, "/v1/secrets", key, None).await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        1,
        "only the valid secret exists"
    );
}

async fn conflicts(app: TestApp) {
    let t = app.tenant("acme").await;
    let key = Some(t.key.as_str());
    app.secret(&t, "dup", VALUE).await;
    let answer = app
        .call(
            Method::POST,
            "/v1/secrets",
            key,
            Some(json!({"name": "dup", "value": "other"})),
        )
        .await;
    assert_error(&answer, StatusCode::CONFLICT, &["dup", "already exists"]);
    let row = app.store.get_secret(&t.id, "dup").await.unwrap().unwrap();
    let ctx = runta::crypto::SealContext {
        tenant_id: &t.id,
        secret_id: &row.id,
        version: 1,
    };
    assert_eq!(
        app.keyring.open(&row.sealed(), ctx).unwrap().as_slice(),
        VALUE.as_bytes(),
        "the original is kept"
    );

    let answer = app
        .call(
            Method::POST,
            "/v1/tenants",
            Some(OPERATOR_TOKEN),
            Some(json!({"name": "acme"})),
        )
        .await;
    assert_error(&answer, StatusCode::CONFLICT, &["acme"]);

    let mut rule_ids = Vec::new();
    for runtime in ["worker", "ci"] {
        let rule = app
            .ok(
                Method::POST,
                &format!("/v1/runtimes/{runtime}/rules"),
                key,
                Some(json!({"host": "api.example.com", "injection": {"credential": "dup", "header": "x-key"}})),
            )
            .await;
        rule_ids.push(rule["id"].as_str().unwrap().to_owned());
    }
    let answer = app.call(Method::DELETE, "/v1/secrets/dup", key, None).await;
    assert_error(
        &answer,
        StatusCode::CONFLICT,
        &["dup", &rule_ids[0], &rule_ids[1]],
    );
    assert!(app.store.get_secret(&t.id, "dup").await.unwrap().is_some());
    for id in &rule_ids {
        app.ok(Method::DELETE, &format!("/v1/rules/{id}"), key, None)
            .await;
    }
    let (status, _) = app.call(Method::DELETE, "/v1/secrets/dup", key, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

async fn pagination(app: TestApp) {
    let t = app.tenant("acme").await;
    let key = Some(t.key.as_str());
    for i in 0..5 {
        app.secret(&t, &format!("s{i}"), VALUE).await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/secrets?limit=2".to_owned();
    loop {
        let (status, page) = app.call(Method::GET, &path, key, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|s| s["name"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/secrets?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["s0", "s1", "s2", "s3", "s4"],
        "creation order, each once"
    );
    for bad in ["0", "1001", "x"] {
        let path = format!("/v1/secrets?limit={bad}");
        let answer = app.call(Method::GET, &path, key, None).await;
        assert_error_in(&path, &answer, StatusCode::BAD_REQUEST, &["limit"]);
    }
}
