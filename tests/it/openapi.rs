//! The OpenAPI document and the server agree: the same routes; for every route, the success
//! status the document gives is the one the server answers; and real answers of the server
//! (each resource created, read, listed and deleted, and error answers) validate against the
//! documented response schemas, checked by a validator of the subset of JSON Schema the
//! document uses (`Schemas`, below; it refuses a keyword it does not know rather than
//! ignoring it).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::http::{Method, StatusCode};
use runta::admin::ROUTES;
use serde_json::{Value, json};

use crate::support::{
    Answer, Backend, OPERATOR_TOKEN, TestApp, admin_router, backend_tests, free_port, keyring_with,
    send,
};

fn document() -> Value {
    serde_saphyr::from_str(runta::admin::OPENAPI_YAML).expect("docs/openapi.yaml is valid YAML")
}

fn documented() -> (Value, BTreeSet<(String, String)>) {
    let doc = document();
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    (doc, routes)
}

fn served() -> BTreeSet<(String, String)> {
    ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect()
}

#[test]
fn document_matches_the_routes() {
    let (doc, documented) = documented();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let served = served();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:?}"
    );
    // Every operation documents its answers and every $ref resolves.
    let text = serde_json::to_string(&doc).unwrap();
    for piece in text.split("\"$ref\":\"#/").skip(1) {
        let target = piece.split('"').next().unwrap();
        let pointer = format!("/{target}");
        assert!(doc.pointer(&pointer).is_some(), "dangling $ref #/{target}");
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            assert!(
                op["responses"].is_object(),
                "{method} {path} has no responses"
            );
            assert!(
                op["operationId"].is_string(),
                "{method} {path} has no operationId"
            );
            let successes = success_statuses(op);
            assert_eq!(
                successes.len(),
                1,
                "{method} {path} documents one success status: {successes:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_is_routed() {
    let app = TestApp::new(Backend::Sqlite).await.unwrap();
    let (_, documented) = documented();
    for (method, path) in documented {
        let concrete = path
            .replace("{id}", "x")
            .replace("{name}", "x")
            .replace("{runtime}", "worker");
        let (status, body) = app
            .call(
                Method::from_bytes(method.as_bytes()).unwrap(),
                &concrete,
                None,
                None,
            )
            .await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_ne!(body["error"]["code"], "route_not_found", "{method} {path}");
    }
    let (status, body) = app.call(Method::GET, "/openapi.yaml", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_str().unwrap(), runta::admin::OPENAPI_YAML);
}

fn success_statuses(op: &Value) -> Vec<String> {
    op["responses"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|s| s.starts_with('2'))
        .cloned()
        .collect()
}

/// The JSON Schema keywords the validator checks.
const CHECKED: &[&str] = &[
    "$ref",
    "allOf",
    "type",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "enum",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
];

/// Keywords that say nothing about validity.
const ANNOTATIONS: &[&str] = &["description", "examples", "default", "writeOnly", "title"];

/// The document's schemas, and a check of a value against one of them.
struct Schemas<'a> {
    doc: &'a Value,
}

impl<'a> Schemas<'a> {
    fn resolve(&self, mut value: &'a Value) -> &'a Value {
        while let Some(target) = value.get("$ref").and_then(Value::as_str) {
            let pointer = target.strip_prefix('#').expect("a local $ref");
            value = self
                .doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {target}"));
        }
        value
    }

    /// What is wrong with `value` under `schema`, each with where (`at`); empty when valid.
    fn check(&self, schema: &Value, value: &Value, at: &str) -> Vec<String> {
        let mut errors = Vec::new();
        self.check_into(schema, value, at, &mut errors);
        errors
    }

    fn check_into(&self, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
        let schema = self.resolve(schema);
        let object = schema
            .as_object()
            .unwrap_or_else(|| panic!("a schema is an object: {schema}"));
        for keyword in object.keys() {
            assert!(
                CHECKED.contains(&keyword.as_str()) || ANNOTATIONS.contains(&keyword.as_str()),
                "the validator does not know the keyword '{keyword}' (at {at}); teach it"
            );
        }
        if let Some(all) = schema.get("allOf") {
            for part in all.as_array().unwrap() {
                self.check_into(part, value, at, errors);
            }
        }
        if let Some(types) = schema.get("type") {
            let types: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
                other => panic!("type is {other}"),
            };
            if !types.iter().any(|t| has_type(value, t)) {
                errors.push(format!("{at}: {value} is not of type {types:?}"));
                return;
            }
        }
        if let Some(allowed) = schema.get("enum")
            && !allowed.as_array().unwrap().contains(value)
        {
            errors.push(format!("{at}: {value} is not one of {allowed}"));
        }
        match value {
            Value::Object(fields) => {
                for name in schema["required"].as_array().into_iter().flatten() {
                    let name = name.as_str().unwrap();
                    if !fields.contains_key(name) {
                        errors.push(format!("{at}: required field '{name}' is missing"));
                    }
                }
                let properties = schema.get("properties").and_then(Value::as_object);
                for (name, field) in fields {
                    let at = format!("{at}.{name}");
                    match properties.and_then(|p| p.get(name)) {
                        Some(property) => self.check_into(property, field, &at, errors),
                        None => match schema.get("additionalProperties") {
                            Some(Value::Bool(false)) => {
                                errors.push(format!("{at}: not a documented field"))
                            }
                            Some(Value::Bool(true)) | None => {}
                            Some(other) => self.check_into(other, field, &at, errors),
                        },
                    }
                }
                if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
                    && (fields.len() as u64) < min
                {
                    errors.push(format!("{at}: fewer than {min} fields"));
                }
            }
            Value::Array(items) => {
                if let Some(item) = schema.get("items") {
                    for (i, element) in items.iter().enumerate() {
                        self.check_into(item, element, &format!("{at}[{i}]"), errors);
                    }
                }
                let len = items.len() as u64;
                if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                    && len < min
                {
                    errors.push(format!("{at}: fewer than {min} items"));
                }
                if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                    && len > max
                {
                    errors.push(format!("{at}: more than {max} items"));
                }
            }
            Value::String(text) => {
                let len = text.chars().count() as u64;
                if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                    && len < min
                {
                    errors.push(format!("{at}: shorter than {min}"));
                }
                if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                    && len > max
                {
                    errors.push(format!("{at}: longer than {max}"));
                }
                if let Some(pattern) = schema.get("pattern").and_then(Value::as_str)
                    && !regex::Regex::new(pattern).unwrap().is_match(text)
                {
                    errors.push(format!("{at}: '{text}' does not match {pattern}"));
                }
                if schema.get("format").and_then(Value::as_str) == Some("date-time")
                    && chrono::DateTime::parse_from_rfc3339(text).is_err()
                {
                    errors.push(format!("{at}: '{text}' is not an RFC 3339 date-time"));
                }
            }
            Value::Number(number) => {
                let number = number.as_f64().unwrap();
                if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
                    && number < min
                {
                    errors.push(format!("{at}: {number} is below {min}"));
                }
                if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
                    && number > max
                {
                    errors.push(format!("{at}: {number} is above {max}"));
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
    }
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        other => panic!("unknown type {other}"),
    }
}

/// Checks one real answer against the document: its status is documented for the route (and
/// is the route's one success status when it is a success), its content type and headers are
/// the documented ones, and its body validates against the documented schema.
fn check_answer(doc: &Value, method: &Method, route: &str, answer: &Answer) {
    let schemas = Schemas { doc };
    let what = format!("{method} {route} answered {}", answer.status);
    let op = &doc["paths"][route][method.as_str().to_lowercase()];
    assert!(op.is_object(), "{what}: the route is not documented");
    let status = answer.status.as_str();
    let documented = op["responses"]
        .get(status)
        .unwrap_or_else(|| panic!("{what}, which the document does not list: {}", answer.body));
    if answer.status.is_success() {
        assert_eq!(success_statuses(op), [status], "{what}");
    }
    let documented = schemas.resolve(documented);
    for header in documented["headers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|h| h.0)
    {
        assert!(
            answer.headers.contains_key(header.as_str()),
            "{what} without {header}"
        );
    }
    let Some(content) = documented.get("content").and_then(Value::as_object) else {
        assert_eq!(
            answer.body,
            Value::Null,
            "{what}: a body the document does not describe"
        );
        return;
    };
    let content_type = answer
        .headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let (_, media) = content
        .iter()
        .find(|(media, _)| content_type.starts_with(media.as_str()))
        .unwrap_or_else(|| panic!("{what} as {content_type}, not documented: {content:?}"));
    let errors = schemas.check(&media["schema"], &answer.body, "body");
    assert!(errors.is_empty(), "{what}: {errors:#?}\n{:#}", answer.body);
}

/// A test app that checks every answer against the document, and notes which routes answered
/// with success.
struct Checked {
    app: TestApp,
    doc: Value,
    succeeded: BTreeSet<(String, String)>,
}

impl Checked {
    async fn call(
        &mut self,
        method: Method,
        route: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let body = body.map(|b| b.to_string().into_bytes());
        let answer = send(&self.app.router, method.clone(), path, key, body).await;
        check_answer(&self.doc, &method, route, &answer);
        if answer.status.is_success() {
            self.succeeded
                .insert((method.as_str().to_owned(), route.to_owned()));
        }
        answer
    }

    /// A call that must succeed; answers the body.
    async fn ok(
        &mut self,
        method: Method,
        route: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let answer = self.call(method.clone(), route, path, key, body).await;
        assert!(
            answer.status.is_success(),
            "{method} {path}: {} {}",
            answer.status,
            answer.body
        );
        answer.body
    }

    /// A call that must fail with `status`.
    async fn fails(
        &mut self,
        status: StatusCode,
        method: Method,
        route: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) {
        let answer = self.call(method.clone(), route, path, key, body).await;
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.body);
    }
}

backend_tests!(
    success_answers_match_the_document,
    error_answers_match_the_document
);

/// Every route, called the way a client calls it, answers its documented success status with a
/// body of the documented shape.
async fn success_answers_match_the_document(app: TestApp) {
    use Method as M;
    let mut api = Checked {
        app,
        doc: document(),
        succeeded: BTreeSet::new(),
    };
    let op = Some(OPERATOR_TOKEN);
    let created = api
        .ok(
            M::POST,
            "/v1/tenants",
            "/v1/tenants",
            op,
            Some(json!({"name": "acme"})),
        )
        .await;
    let key = created["api_key"].as_str().unwrap().to_owned();
    let key = Some(key.as_str());
    api.ok(
        M::POST,
        "/v1/tenants",
        "/v1/tenants",
        op,
        Some(json!({"name": "umbrella"})),
    )
    .await;
    let page = api
        .ok(M::GET, "/v1/tenants", "/v1/tenants?limit=1", op, None)
        .await;
    assert!(
        page["next_cursor"].is_string(),
        "a page with a next one: {page}"
    );
    api.ok(M::GET, "/v1/tenants", "/v1/tenants", op, None).await;

    let created = api
        .ok(
            M::POST,
            "/v1/api-keys",
            "/v1/api-keys",
            key,
            Some(json!({"name": "ci"})),
        )
        .await;
    api.ok(M::POST, "/v1/api-keys", "/v1/api-keys", key, None)
        .await;
    api.ok(M::GET, "/v1/api-keys", "/v1/api-keys", key, None)
        .await;
    let id = created["id"].as_str().unwrap();
    api.ok(
        M::DELETE,
        "/v1/api-keys/{id}",
        &format!("/v1/api-keys/{id}"),
        key,
        None,
    )
    .await;

    let secret = "/v1/secrets/{name}";
    api.ok(
        M::POST,
        "/v1/secrets",
        "/v1/secrets",
        key,
        Some(
            json!({"name": "openai-api-key", "value": "sk-test-openapi", "display_name": "OpenAI"}),
        ),
    )
    .await;
    api.ok(
        M::POST,
        "/v1/secrets",
        "/v1/secrets",
        key,
        Some(json!({"name": "maps", "value": "k"})),
    )
    .await;
    api.ok(M::GET, "/v1/secrets", "/v1/secrets?limit=1", key, None)
        .await;
    api.ok(M::GET, "/v1/secrets", "/v1/secrets", key, None)
        .await;
    api.ok(M::GET, secret, "/v1/secrets/openai-api-key", key, None)
        .await;
    api.ok(
        M::PUT,
        secret,
        "/v1/secrets/openai-api-key",
        key,
        Some(json!({"value": "sk-test-openapi-2", "display_name": null, "cache_ttl_secs": 0})),
    )
    .await;

    let runtime_rules = "/v1/runtimes/{runtime}/rules";
    let header_rule = api
        .ok(
            M::POST,
            runtime_rules,
            "/v1/runtimes/worker/rules",
            key,
            Some(json!({"host": "https://api.openai.com", "path": "/v1/*",
                        "injection": {"credential": "openai-api-key", "header": "Authorization", "value": "Bearer ${credential}"}})),
        )
        .await;
    let param_rule = api
        .ok(
            M::POST,
            runtime_rules,
            "/v1/runtimes/worker/rules",
            key,
            Some(json!({"host": "maps.example.com", "injection": {"credential": "maps", "param": "key"}})),
        )
        .await;
    let batch = api
        .ok(
            M::POST,
            "/v1/rules/batch",
            "/v1/rules/batch",
            key,
            Some(json!({"rules": [{"runtime": "ci", "host": "*.example.com:8443", "credential": "maps",
                                   "inject": {"header": "x-api-key"}}]})),
        )
        .await;
    api.ok(
        M::GET,
        runtime_rules,
        "/v1/runtimes/worker/rules?limit=1",
        key,
        None,
    )
    .await;
    api.ok(M::GET, "/v1/rules", "/v1/rules", key, None).await;
    let mut rule_ids = vec![
        header_rule["id"].as_str().unwrap().to_owned(),
        param_rule["id"].as_str().unwrap().to_owned(),
    ];
    rule_ids.push(batch["data"][0]["id"].as_str().unwrap().to_owned());
    for id in &rule_ids {
        api.ok(
            M::GET,
            "/v1/rules/{id}",
            &format!("/v1/rules/{id}"),
            key,
            None,
        )
        .await;
    }

    let tokens = "/v1/runtimes/{runtime}/tokens";
    let token = api
        .ok(M::POST, tokens, "/v1/runtimes/worker/tokens", key, None)
        .await;
    api.ok(M::POST, tokens, "/v1/runtimes/worker/tokens", key, None)
        .await;
    let id = token["id"].as_str().unwrap();
    api.ok(
        M::DELETE,
        "/v1/runtime-tokens/{id}",
        &format!("/v1/runtime-tokens/{id}"),
        key,
        None,
    )
    .await;
    // Revoked and active tokens, so both forms of `revoked_at` are checked.
    let list = api
        .ok(M::GET, tokens, "/v1/runtimes/worker/tokens", key, None)
        .await;
    assert!(list["data"][0]["revoked_at"].is_string() && list["data"][1]["revoked_at"].is_null());

    for id in &rule_ids {
        api.ok(
            M::DELETE,
            "/v1/rules/{id}",
            &format!("/v1/rules/{id}"),
            key,
            None,
        )
        .await;
    }
    api.ok(M::DELETE, secret, "/v1/secrets/openai-api-key", key, None)
        .await;

    // The audit trail: the tenant's events, and (after a key rotation, an event of no
    // tenant and no request) every event, filtered, for the operator.
    let audit = "/v1/audit-events";
    let page = api
        .ok(M::GET, audit, "/v1/audit-events?limit=2", key, None)
        .await;
    assert!(page["next_cursor"].is_string(), "{page}");
    runta::keys::rotate(&api.app.store, &api.app.keyring)
        .await
        .unwrap();
    let all = api.ok(M::GET, audit, audit, op, None).await;
    assert_eq!(
        all["data"].as_array().unwrap().last().unwrap()["tenant_id"],
        Value::Null
    );
    api.ok(
        M::GET,
        audit,
        "/v1/audit-events?action=secret.create&target_kind=secret&since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z",
        op,
        None,
    )
    .await;

    for route in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.yaml",
        "/v1/ca.pem",
    ] {
        api.ok(M::GET, route, route, None, None).await;
    }
    let missed: Vec<_> = served().difference(&api.succeeded).cloned().collect();
    assert!(
        missed.is_empty(),
        "routes this test never called with success: {missed:?}"
    );
}

/// The errors each route can answer are documented for it, in the one error shape.
async fn error_answers_match_the_document(app: TestApp) {
    use Method as M;
    use StatusCode as S;
    let mut api = Checked {
        app,
        doc: document(),
        succeeded: BTreeSet::new(),
    };
    let op = Some(OPERATOR_TOKEN);
    let tenant = api.app.tenant("acme").await;
    let key = Some(tenant.key.as_str());
    api.app.secret(&tenant, "in-use", "sk-test-openapi").await;
    api.app
        .ok(
            M::POST,
            "/v1/runtimes/worker/rules",
            key,
            Some(json!({"host": "api.example.com", "injection": {"credential": "in-use", "header": "x-key"}})),
        )
        .await;

    let tenants = "/v1/tenants";
    api.fails(
        S::BAD_REQUEST,
        M::POST,
        tenants,
        tenants,
        op,
        Some(json!({"name": "Not Valid"})),
    )
    .await;
    api.fails(
        S::UNAUTHORIZED,
        M::POST,
        tenants,
        tenants,
        None,
        Some(json!({"name": "x"})),
    )
    .await;
    api.fails(
        S::FORBIDDEN,
        M::POST,
        tenants,
        tenants,
        key,
        Some(json!({"name": "x"})),
    )
    .await;
    api.fails(
        S::CONFLICT,
        M::POST,
        tenants,
        tenants,
        op,
        Some(json!({"name": "acme"})),
    )
    .await;
    api.fails(S::UNAUTHORIZED, M::GET, tenants, tenants, None, None)
        .await;
    api.fails(S::FORBIDDEN, M::GET, tenants, tenants, key, None)
        .await;

    // Every list refuses a bad page size.
    for (route, path, credential) in [
        (tenants, tenants, op),
        ("/v1/api-keys", "/v1/api-keys", key),
        ("/v1/secrets", "/v1/secrets", key),
        ("/v1/rules", "/v1/rules", key),
        (
            "/v1/runtimes/{runtime}/rules",
            "/v1/runtimes/worker/rules",
            key,
        ),
        (
            "/v1/runtimes/{runtime}/tokens",
            "/v1/runtimes/worker/tokens",
            key,
        ),
        ("/v1/audit-events", "/v1/audit-events", key),
        ("/v1/audit-events", "/v1/audit-events", op),
    ] {
        let path = format!("{path}?limit=0");
        api.fails(S::BAD_REQUEST, M::GET, route, &path, credential, None)
            .await;
        api.fails(S::UNAUTHORIZED, M::GET, route, &path, None, None)
            .await;
    }

    let keys = "/v1/api-keys";
    api.fails(
        S::BAD_REQUEST,
        M::POST,
        keys,
        keys,
        key,
        Some(json!({"name": ""})),
    )
    .await;
    api.fails(S::UNAUTHORIZED, M::POST, keys, keys, None, None)
        .await;
    let one_key = "/v1/api-keys/{id}";
    api.fails(
        S::NOT_FOUND,
        M::DELETE,
        one_key,
        "/v1/api-keys/key_nope",
        key,
        None,
    )
    .await;
    let page = api.app.ok(M::GET, keys, key, None).await;
    let last = format!("/v1/api-keys/{}", page["data"][0]["id"].as_str().unwrap());
    api.fails(S::CONFLICT, M::DELETE, one_key, &last, key, None)
        .await;
    api.fails(S::UNAUTHORIZED, M::DELETE, one_key, &last, None, None)
        .await;

    let secrets = "/v1/secrets";
    let secret = "/v1/secrets/{name}";
    api.fails(
        S::BAD_REQUEST,
        M::POST,
        secrets,
        secrets,
        key,
        Some(json!({"name": "s", "value": ""})),
    )
    .await;
    api.fails(
        S::CONFLICT,
        M::POST,
        secrets,
        secrets,
        key,
        Some(json!({"name": "in-use", "value": "v"})),
    )
    .await;
    api.fails(
        S::PAYLOAD_TOO_LARGE,
        M::POST,
        secrets,
        secrets,
        key,
        Some(json!({"name": "big", "value": "x".repeat(100 * 1024)})),
    )
    .await;
    api.fails(
        S::UNAUTHORIZED,
        M::POST,
        secrets,
        secrets,
        None,
        Some(json!({"name": "s", "value": "v"})),
    )
    .await;
    api.fails(S::NOT_FOUND, M::GET, secret, "/v1/secrets/nope", key, None)
        .await;
    api.fails(
        S::UNAUTHORIZED,
        M::GET,
        secret,
        "/v1/secrets/nope",
        None,
        None,
    )
    .await;
    api.fails(
        S::NOT_FOUND,
        M::PUT,
        secret,
        "/v1/secrets/nope",
        key,
        Some(json!({"value": "v"})),
    )
    .await;
    api.fails(
        S::BAD_REQUEST,
        M::PUT,
        secret,
        "/v1/secrets/in-use",
        key,
        Some(json!({})),
    )
    .await;
    api.fails(
        S::NOT_FOUND,
        M::DELETE,
        secret,
        "/v1/secrets/nope",
        key,
        None,
    )
    .await;
    api.fails(
        S::CONFLICT,
        M::DELETE,
        secret,
        "/v1/secrets/in-use",
        key,
        None,
    )
    .await;

    let runtime_rules = "/v1/runtimes/{runtime}/rules";
    api.fails(
        S::BAD_REQUEST,
        M::POST,
        runtime_rules,
        "/v1/runtimes/worker/rules",
        key,
        Some(json!({"host": "*", "injection": {"credential": "in-use", "header": "x"}})),
    )
    .await;
    api.fails(
        S::BAD_REQUEST,
        M::GET,
        runtime_rules,
        "/v1/runtimes/Bad_Runtime/rules",
        key,
        None,
    )
    .await;
    api.fails(
        S::BAD_REQUEST,
        M::POST,
        "/v1/rules/batch",
        "/v1/rules/batch",
        key,
        Some(json!({"rules": []})),
    )
    .await;
    api.fails(
        S::NOT_FOUND,
        M::GET,
        "/v1/rules/{id}",
        "/v1/rules/rule_nope",
        key,
        None,
    )
    .await;
    api.fails(
        S::NOT_FOUND,
        M::DELETE,
        "/v1/rules/{id}",
        "/v1/rules/rule_nope",
        key,
        None,
    )
    .await;

    let tokens = "/v1/runtimes/{runtime}/tokens";
    api.fails(
        S::BAD_REQUEST,
        M::POST,
        tokens,
        "/v1/runtimes/Bad_Runtime/tokens",
        key,
        None,
    )
    .await;
    api.fails(
        S::BAD_REQUEST,
        M::GET,
        tokens,
        "/v1/runtimes/Bad_Runtime/tokens",
        key,
        None,
    )
    .await;
    api.fails(
        S::NOT_FOUND,
        M::DELETE,
        "/v1/runtime-tokens/{id}",
        "/v1/runtime-tokens/rtk_nope",
        key,
        None,
    )
    .await;

    let audit = "/v1/audit-events";
    for query in ["?action=nope", "?since=yesterday", "?colour=blue"] {
        api.fails(
            S::BAD_REQUEST,
            M::GET,
            audit,
            &format!("{audit}{query}"),
            op,
            None,
        )
        .await;
    }
    api.fails(S::UNAUTHORIZED, M::GET, audit, audit, Some("nope"), None)
        .await;
}

/// A database nobody answers on: the 503 answers are documented too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_answers_match_the_document() {
    let doc = document();
    let url = format!("postgres://runta@127.0.0.1:{}/runta", free_port());
    let store = runta::store::Store::connect(&url, 2).await.unwrap();
    let router = admin_router(store, Arc::new(keyring_with(&["k1"], "k1")));
    let answer = send(&router, Method::GET, "/readyz", None, None).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    check_answer(&doc, &Method::GET, "/readyz", &answer);
    let body = json!({"name": "s", "value": "v"}).to_string().into_bytes();
    let answer = send(
        &router,
        Method::POST,
        "/v1/secrets",
        Some("runta_ak_any"),
        Some(body),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    check_answer(&doc, &Method::POST, "/v1/secrets", &answer);
}

/// The validator finds what the schemas exclude; without this, a validator that passes
/// everything would make the tests above pass too.
#[test]
fn the_validator_rejects_what_the_schemas_exclude() {
    let doc = document();
    let schemas = Schemas { doc: &doc };
    let rule = json!({"$ref": "#/components/schemas/Rule"});
    let good = json!({
        "id": "rule_1", "runtime": "worker", "host_pattern": "api.example.com",
        "path_pattern": null, "created_at": "2026-01-01T00:00:00.000Z",
        "injection": {"credential": "cred", "header": "x-key", "param": null, "value": "${credential}"}
    });
    assert_eq!(schemas.check(&rule, &good, "rule"), Vec::<String>::new());
    let mut bad = Vec::new();
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("path_pattern");
    bad.push(("a required field missing", missing));
    let mut wrong_type = good.clone();
    wrong_type["injection"]["value"] = json!(1);
    bad.push(("a nested field of the wrong type", wrong_type));
    let mut null = good.clone();
    null["host_pattern"] = Value::Null;
    bad.push(("null where it is not allowed", null));
    let mut pattern = good.clone();
    pattern["runtime"] = json!("Not A Name");
    bad.push(("a name off its pattern", pattern));
    let mut date = good.clone();
    date["created_at"] = json!("yesterday");
    bad.push(("a date that is not one", date));
    for (case, value) in bad {
        assert!(
            !schemas.check(&rule, &value, "rule").is_empty(),
            "{case} passed"
        );
    }
    let api_key = &doc["paths"]["/v1/api-keys"]["post"]["responses"]["201"]["content"]["application/json"]
        ["schema"];
    let created = json!({"id": "key_1", "name": null, "created_at": "2026-01-01T00:00:00Z"});
    assert!(
        !schemas.check(api_key, &created, "key").is_empty(),
        "allOf: the key itself is required"
    );
    let list = json!({"$ref": "#/components/schemas/RuleList"});
    assert!(
        !schemas
            .check(&list, &json!({"data": [{}], "next_cursor": null}), "list")
            .is_empty()
    );
}
