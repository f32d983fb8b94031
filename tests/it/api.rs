//! The admin API, through the real router, on SQLite and on PostgreSQL.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{OPERATOR_TOKEN, TestApp, assert_error, backend_tests};

backend_tests!(
    secret_lifecycle,
    secret_value_never_in_answers,
    rule_lifecycle,
    param_rule_and_defaults,
    batch_is_all_or_nothing,
    tenant_isolation,
    invalid_rules_rejected,
    invalid_secrets_rejected,
    conflicts,
    authentication,
    pagination,
    api_keys,
    runtime_tokens,
    health_metrics_and_routing_errors,
    seed_sdk_calls,
);

const VALUE: &str = "sk-test-VALUE-4f1d2a9c";

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
    let (_, updated) = app
        .call(
            Method::PUT,
            "/v1/secrets/openai-api-key",
            key,
            Some(json!({"display_name": null})),
        )
        .await;
    assert_eq!(updated["display_name"], Value::Null);

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

async fn rule_lifecycle(app: TestApp) {
    let t = app.tenant("acme").await;
    let key = Some(t.key.as_str());
    app.secret(&t, "openai-api-key", VALUE).await;
    // The SDK's shape: a URL for the host.
    let (status, rule) = app
        .call(
            Method::POST,
            "/v1/runtimes/worker/rules",
            key,
            Some(json!({
                "host": "https://api.openai.com",
                "path": "/v1/*",
                "injection": {"credential": "openai-api-key", "header": "Authorization", "value": "Bearer ${credential}"}
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rule}");
    let id = rule["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("rule_"));
    assert_eq!(rule["runtime"], "worker");
    assert_eq!(rule["host_pattern"], "api.openai.com");
    assert_eq!(rule["path_pattern"], "/v1/*");
    assert_eq!(
        rule["injection"],
        json!({"credential": "openai-api-key", "header": "Authorization", "param": null, "value": "Bearer ${credential}"})
    );

    // Another runtime's rule, to see the per-runtime list filter.
    let (status, other) = app
        .call(
            Method::POST,
            "/v1/runtimes/ci-job/rules",
            key,
            Some(json!({"host": "*.example.com:8443", "injection": {"credential": "openai-api-key", "header": "x-api-key"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    assert_eq!(other["path_pattern"], Value::Null);

    let (_, list) = app
        .call(Method::GET, "/v1/runtimes/worker/rules", key, None)
        .await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()]);
    let (_, all) = app.call(Method::GET, "/v1/rules", key, None).await;
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    let (status, got) = app
        .call(Method::GET, &format!("/v1/rules/{id}"), key, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, rule);

    let (status, _) = app
        .call(Method::DELETE, &format!("/v1/rules/{id}"), key, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let answer = app
        .call(Method::GET, &format!("/v1/rules/{id}"), key, None)
        .await;
    assert_error(&answer, StatusCode::NOT_FOUND, &[&id]);
    let answer = app
        .call(Method::DELETE, &format!("/v1/rules/{id}"), key, None)
        .await;
    assert_error(&answer, StatusCode::NOT_FOUND, &[&id]);
}

async fn param_rule_and_defaults(app: TestApp) {
    let t = app.tenant("acme").await;
    let key = Some(t.key.as_str());
    app.secret(&t, "maps-key", VALUE).await;
    let (status, rule) = app
        .call(
            Method::POST,
            "/v1/runtimes/worker/rules",
            key,
            Some(json!({"host": "maps.example.com", "injection": {"credential": "maps-key", "param": "key"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rule}");
    assert_eq!(rule["injection"]["param"], "key");
    assert_eq!(rule["injection"]["header"], Value::Null);
    assert_eq!(rule["injection"]["value"], "${credential}");
}

async fn batch_is_all_or_nothing(app: TestApp) {
    let t = app.tenant("acme").await;
    let key = Some(t.key.as_str());
    app.secret(&t, "openai-api-key", VALUE).await;
    let good = json!({"runtime": "worker", "host": "api.openai.com", "path": "/v1/*", "credential": "openai-api-key",
                      "inject": {"header": "Authorization", "value": "Bearer ${credential}"}});
    let bad_host = json!({"runtime": "worker", "host": "*", "credential": "openai-api-key", "inject": {"header": "Authorization"}});
    let unknown = json!({"runtime": "worker", "host": "api.example.com", "credential": "nope", "inject": {"param": "k"}});

    let answer = app
        .call(
            Method::POST,
            "/v1/rules/batch",
            key,
            Some(json!({"rules": [good, bad_host]})),
        )
        .await;
    assert_error(&answer, StatusCode::BAD_REQUEST, &["rules[1].host"]);
    let answer = app
        .call(
            Method::POST,
            "/v1/rules/batch",
            key,
            Some(json!({"rules": [good, good, unknown]})),
        )
        .await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        &["rules[2].credential", "nope"],
    );
    let answer = app
        .call(
            Method::POST,
            "/v1/rules/batch",
            key,
            Some(json!({"rules": []})),
        )
        .await;
    assert_error(&answer, StatusCode::BAD_REQUEST, &["rules"]);
    let (_, all) = app.call(Method::GET, "/v1/rules", key, None).await;
    assert_eq!(
        all["data"],
        json!([]),
        "a failed batch leaves nothing behind"
    );

    let (status, created) = app
        .call(
            Method::POST,
            "/v1/rules/batch",
            key,
            Some(json!({"rules": [good, good]})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        created["data"][0]["injection"]["value"],
        "Bearer ${credential}"
    );
    let (_, all) = app.call(Method::GET, "/v1/rules", key, None).await;
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
}

async fn tenant_isolation(app: TestApp) {
    let a = app.tenant("tenant-a").await;
    let b = app.tenant("tenant-b").await;
    let ka = Some(a.key.as_str());
    let kb = Some(b.key.as_str());
    app.secret(&a, "shared-name", VALUE).await;
    let (_, rule) = app
        .call(
            Method::POST,
            "/v1/runtimes/worker/rules",
            ka,
            Some(json!({"host": "api.example.com", "injection": {"credential": "shared-name", "header": "x-key"}})),
        )
        .await;
    let rule_id = rule["id"].as_str().unwrap();
    let (_, token) = app
        .call(Method::POST, "/v1/runtimes/worker/tokens", ka, None)
        .await;
    let token_id = token["id"].as_str().unwrap();
    let (_, keys) = app.call(Method::GET, "/v1/api-keys", ka, None).await;
    let a_key_id = keys["data"][0]["id"].as_str().unwrap();

    // B sees none of A's things, and cannot touch them.
    for (method, path, body) in [
        (Method::GET, "/v1/secrets/shared-name".to_owned(), None),
        (
            Method::PUT,
            "/v1/secrets/shared-name".to_owned(),
            Some(json!({"value": "stolen"})),
        ),
        (Method::DELETE, "/v1/secrets/shared-name".to_owned(), None),
        (Method::GET, format!("/v1/rules/{rule_id}"), None),
        (Method::DELETE, format!("/v1/rules/{rule_id}"), None),
        (
            Method::DELETE,
            format!("/v1/runtime-tokens/{token_id}"),
            None,
        ),
        (Method::DELETE, format!("/v1/api-keys/{a_key_id}"), None),
    ] {
        let answer = app.call(method.clone(), &path, kb, body).await;
        assert_error(&answer, StatusCode::NOT_FOUND, &[]);
        let _ = (method, path);
    }
    for path in [
        "/v1/secrets",
        "/v1/rules",
        "/v1/runtimes/worker/rules",
        "/v1/runtimes/worker/tokens",
    ] {
        let (status, list) = app.call(Method::GET, path, kb, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["data"], json!([]), "{path}");
    }
    let (_, keys) = app.call(Method::GET, "/v1/api-keys", kb, None).await;
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

async fn invalid_rules_rejected(app: TestApp) {
    let t = app.tenant("acme").await;
    let key = Some(t.key.as_str());
    app.secret(&t, "cred", VALUE).await;
    let rule = |host: &str, path: Option<&str>, injection: Value| {
        let mut body = json!({"host": host, "injection": injection});
        if let Some(path) = path {
            body["path"] = json!(path);
        }
        body
    };
    let header = |name: &str| json!({"credential": "cred", "header": name});
    let cases: Vec<(Value, &[&str])> = vec![
        (rule("*", None, header("x-key")), &["host", "wildcard"]),
        (
            rule("a.*.com", None, header("x-key")),
            &["host", "leading '*.'"],
        ),
        (
            rule("api .example.com", None, header("x-key")),
            &["host", "white space"],
        ),
        (
            rule("bücher.example", None, header("x-key")),
            &["host", "punycode"],
        ),
        (
            rule("api.example.com:99999", None, header("x-key")),
            &["host", "port"],
        ),
        (
            rule("https://api.example.com/v1", None, header("x-key")),
            &["host", "path"],
        ),
        (
            rule("api.example.com", Some("v1/*"), header("x-key")),
            &["path", "start with '/'"],
        ),
        (
            rule("api.example.com", Some("/v1/../admin"), header("x-key")),
            &["path", ".."],
        ),
        (
            rule("api.example.com", Some("/v1%2Fx"), header("x-key")),
            &["path", "encoded"],
        ),
        (
            rule("api.example.com", Some("/v1?x=1"), header("x-key")),
            &["path", "query"],
        ),
        (
            rule("api.example.com", None, header(":path")),
            &["injection.header", "pseudo"],
        ),
        (
            rule("api.example.com", None, header("host")),
            &["injection.header", "host"],
        ),
        (
            rule("api.example.com", None, header("Content-Length")),
            &["injection.header", "Content-Length"],
        ),
        (
            rule("api.example.com", None, header("proxy-authorization")),
            &["injection.header", "proxy-authorization"],
        ),
        (
            rule("api.example.com", None, header("x-envoy-original-path")),
            &["injection.header", "x-envoy"],
        ),
        (
            rule("api.example.com", None, header("bad header")),
            &["injection.header"],
        ),
        (
            rule(
                "api.example.com",
                None,
                json!({"credential": "cred", "header": "x", "value": "Bearer ${token}"}),
            ),
            &["injection.value", "${token}"],
        ),
        (
            rule(
                "api.example.com",
                None,
                json!({"credential": "cred", "header": "x", "value": "Bearer ${credential}\r\nX: y"}),
            ),
            &["injection.value", "control"],
        ),
        (
            rule(
                "api.example.com",
                None,
                json!({"credential": "cred", "header": "x", "param": "k"}),
            ),
            &["injection", "exactly one"],
        ),
        (
            rule("api.example.com", None, json!({"credential": "cred"})),
            &["injection", "exactly one"],
        ),
        (
            rule(
                "api.example.com",
                None,
                json!({"credential": "cred", "param": "a&b"}),
            ),
            &["injection.param"],
        ),
        (
            rule(
                "api.example.com",
                None,
                json!({"credential": "nope", "header": "x"}),
            ),
            &["injection.credential", "nope"],
        ),
        (
            json!({"injection": {"credential": "cred", "header": "x"}}),
            &["host"],
        ),
        (
            json!({"host": "api.example.com", "injection": {"credential": "cred", "header": "x"}, "hots": 1}),
            &["hots"],
        ),
    ];
    for (body, words) in cases {
        let answer = app
            .call(
                Method::POST,
                "/v1/runtimes/worker/rules",
                key,
                Some(body.clone()),
            )
            .await;
        assert_error(&answer, StatusCode::BAD_REQUEST, words);
    }
    let answer = app
        .call(
            Method::POST,
            "/v1/runtimes/Bad_Runtime/rules",
            key,
            Some(rule("api.example.com", None, header("x"))),
        )
        .await;
    assert_error(&answer, StatusCode::BAD_REQUEST, &["runtime"]);
    let (_, all) = app.call(Method::GET, "/v1/rules", key, None).await;
    assert_eq!(all["data"], json!([]), "no invalid rule was stored");
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
        let answer = app.call(Method::POST, "/v1/secrets", key, Some(body)).await;
        assert_error(&answer, StatusCode::BAD_REQUEST, words);
    }
    app.secret(&t, "s", VALUE).await;
    for (body, words) in [
        (json!({"value": "x\r\ny"}), &["value", "CR"][..]),
        (json!({}), &["nothing to update"][..]),
    ] {
        let answer = app
            .call(Method::PUT, "/v1/secrets/s", key, Some(body))
            .await;
        assert_error(&answer, StatusCode::BAD_REQUEST, words);
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
    let (_, list) = app.call(Method::GET, "/v1/secrets", key, None).await;
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
        let (_, rule) = app
            .call(
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
        app.call(Method::DELETE, &format!("/v1/rules/{id}"), key, None)
            .await;
    }
    let (status, _) = app.call(Method::DELETE, "/v1/secrets/dup", key, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
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
        let answer = app
            .call(Method::GET, &format!("/v1/secrets?limit={bad}"), key, None)
            .await;
        assert_error(&answer, StatusCode::BAD_REQUEST, &["limit"]);
    }
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

    let (_, list) = app
        .call(Method::GET, "/v1/runtimes/worker/tokens", key, None)
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
    let (_, list) = app
        .call(Method::GET, "/v1/runtimes/worker/tokens", key, None)
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

/// The seed's SDK calls, as the JSON they send.
async fn seed_sdk_calls(app: TestApp) {
    let t = app.tenant("acme").await;
    let key = Some(t.key.as_str());
    // Python: runta.secrets.create("openai-api-key", os.environ["OPENAI_API_KEY"], cache_ttl_secs=0)
    let (status, secret) = app
        .call(
            Method::POST,
            "/v1/secrets",
            key,
            Some(json!({"name": "openai-api-key", "value": VALUE, "cache_ttl_secs": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{secret}");
    assert_eq!(secret["cache_ttl_secs"], 0);
    // TypeScript: runta.secrets.create("github-token", value, { cacheTtlSecs: 0 })
    let (status, secret) = app
        .call(
            Method::POST,
            "/v1/secrets",
            key,
            Some(json!({"name": "github-token", "value": VALUE, "cacheTtlSecs": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{secret}");
    assert_eq!(secret["cache_ttl_secs"], 0);
    // runtime.secrets.create_rule("https://api.openai.com", path="/v1/*", injection=Injection(...)),
    // with the unset field sent as null.
    let (status, rule) = app
        .call(
            Method::POST,
            "/v1/runtimes/worker/rules",
            key,
            Some(json!({"host": "https://api.openai.com", "path": "/v1/*", "injection": {
                "credential": "openai-api-key", "header": "Authorization", "param": null, "value": "Bearer ${credential}"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rule}");
    // for rule in runtime.secrets.list_rules(): print(rule.id, rule.host_pattern, rule.path_pattern)
    let (_, rules) = app
        .call(Method::GET, "/v1/runtimes/worker/rules", key, None)
        .await;
    assert_eq!(rules["data"][0]["host_pattern"], "api.openai.com");
    assert_eq!(rules["data"][0]["path_pattern"], "/v1/*");
    // runta.secrets.list_rules() (tenant-wide), then runtime.secrets.delete_rules(rule.id)
    let (_, all) = app.call(Method::GET, "/v1/rules", key, None).await;
    assert_eq!(all["data"][0]["id"], rule["id"]);
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/v1/rules/{}", rule["id"].as_str().unwrap()),
            key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// A database nobody answers on: 503 with the error shape, and readiness says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_unavailable_is_503() {
    use std::sync::Arc;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store =
        runta::store::Store::connect(&format!("postgres://runta@127.0.0.1:{port}/runta"), 2)
            .await
            .unwrap();
    let keyring = Arc::new(crate::support::keyring_with(&["k1"], "k1"));
    let metrics = Arc::new(runta::metrics::Metrics::new());
    let engine = Arc::new(runta::engine::Engine::new(
        store.clone(),
        keyring.clone(),
        metrics.clone(),
    ));
    let state = runta::admin::AppState {
        store,
        keyring,
        operator_token: None,
        metrics,
        engine,
        max_body_bytes: 1024 * 1024,
    };
    let router = runta::admin::router(state);
    for (path, key) in [("/readyz", None), ("/v1/secrets", Some("runta_ak_any"))] {
        let mut request = axum::http::Request::builder().uri(path);
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let response = tower::ServiceExt::oneshot(
            router.clone(),
            request.body(axum::body::Body::empty()).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"]["code"], "store_unavailable", "{path}");
    }
}
