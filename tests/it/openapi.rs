//! The OpenAPI document describes exactly the routes the server serves, and the server serves
//! it.

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use runta::admin::ROUTES;
use serde_json::Value;

use crate::support::{Backend, TestApp};

fn documented() -> (Value, BTreeSet<(String, String)>) {
    let doc: Value = serde_saphyr::from_str(runta::admin::OPENAPI_YAML)
        .expect("docs/openapi.yaml is valid YAML");
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

#[test]
fn document_matches_the_routes() {
    let (doc, documented) = documented();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
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
