//! Injection rules: single and batch, validation, and the seed SDK's calls.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use super::VALUE;
use crate::support::{TestApp, assert_error, assert_error_in, backend_tests};

backend_tests!(
    rule_lifecycle,
    param_rule_and_defaults,
    batch_is_all_or_nothing,
    invalid_rules_rejected,
    seed_sdk_calls,
);

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

    let list = app
        .ok(Method::GET, "/v1/runtimes/worker/rules", key, None)
        .await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id.as_str()]);
    let all = app.ok(Method::GET, "/v1/rules", key, None).await;
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
    let all = app.ok(Method::GET, "/v1/rules", key, None).await;
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
    let all = app.ok(Method::GET, "/v1/rules", key, None).await;
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
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
        let case = format!("POST {body}");
        let answer = app
            .call(Method::POST, "/v1/runtimes/worker/rules", key, Some(body))
            .await;
        assert_error_in(&case, &answer, StatusCode::BAD_REQUEST, words);
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
    let all = app.ok(Method::GET, "/v1/rules", key, None).await;
    assert_eq!(all["data"], json!([]), "no invalid rule was stored");
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
    let rules = app
        .ok(Method::GET, "/v1/runtimes/worker/rules", key, None)
        .await;
    assert_eq!(rules["data"][0]["host_pattern"], "api.openai.com");
    assert_eq!(rules["data"][0]["path_pattern"], "/v1/*");
    // runta.secrets.list_rules() (tenant-wide), then runtime.secrets.delete_rules(rule.id)
    let all = app.ok(Method::GET, "/v1/rules", key, None).await;
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
