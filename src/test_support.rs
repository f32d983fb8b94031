//! Synthetic rule sets and Envoy-shaped messages for benchmarks, load generators and tests
//! (not used by the service).
//!
//! `rules(count)`: runtime `rt-0` of tenant `ten_bench` always has the same ten rules, one of
//! which matches `POST http://api.openai.com/v1/chat/completions`; the other rules are spread
//! over 999 other runtimes. Sizes then differ only in other runtimes' rules.

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpHeaders, ProcessingRequest};

use crate::rules::Rule;
use crate::store::{RuleRow, TenantRow};

/// Request headers as Envoy sends them: values in `raw_value`.
pub fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue {
                key: (*k).to_owned(),
                value: String::new(),
                raw_value: v.as_bytes().to_vec(),
            })
            .collect(),
    }
}

/// A request-headers message as Envoy sends it, for a request without a body.
pub fn request_headers(pairs: &[(&str, &str)]) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Message::RequestHeaders(HttpHeaders {
            headers: Some(header_map(pairs)),
            end_of_stream: true,
            ..HttpHeaders::default()
        })),
        ..ProcessingRequest::default()
    }
}

pub const TENANT_ID: &str = "ten_bench";
pub const TENANT_NAME: &str = "bench";
pub const RUNTIME: &str = "rt-0";
pub const CREDENTIAL: &str = "openai-api-key";
const OWN_RULES: usize = 10;
const RUNTIMES: usize = 1_000;

pub fn tenants() -> Vec<TenantRow> {
    vec![TenantRow {
        id: TENANT_ID.into(),
        name: TENANT_NAME.into(),
        created_at: 0,
    }]
}

/// The rule set as stored rows (to load into a database).
pub fn rule_rows(count: usize) -> Vec<RuleRow> {
    rule_rows_in(0..count)
}

/// Rules `range` of the rule set, as stored rows (a page of it).
pub fn rule_rows_in(range: std::ops::Range<usize>) -> Vec<RuleRow> {
    range
        .map(|i| {
            let runtime = if i < OWN_RULES {
                RUNTIME.to_owned()
            } else {
                format!("rt-{}", 1 + i % (RUNTIMES - 1))
            };
            let host = if i == 0 {
                "api.openai.com".to_owned()
            } else if i % 3 == 0 {
                format!("*.svc{i}.example.com")
            } else {
                format!("api{i}.example.com")
            };
            RuleRow {
                // The form runta gives ids (so the snapshot keeps them packed).
                id: crate::crypto::id_text("rule", i as u128),
                tenant_id: TENANT_ID.into(),
                runtime,
                host_pattern: host,
                path_pattern: Some(if i % 2 == 0 {
                    "/v1/*".into()
                } else {
                    format!("/p{i}/*")
                }),
                credential: CREDENTIAL.into(),
                header: Some("Authorization".into()),
                param: None,
                value_template: "Bearer ${credential}".into(),
                created_at: 0,
            }
        })
        .collect()
}

/// The rule set as the snapshot takes it.
pub fn rules(count: usize) -> Vec<Rule> {
    rules_in(0..count)
}

/// Rules `range` of the rule set, as the snapshot takes them (a page of it).
pub fn rules_in(range: std::ops::Range<usize>) -> Vec<Rule> {
    rule_rows_in(range)
        .iter()
        .map(|row| row.to_rule().expect("bench rules are valid"))
        .collect()
}

/// The tenants as the snapshot takes them: (id, name).
pub fn tenant_names() -> Vec<(String, String)> {
    tenants().into_iter().map(|t| (t.id, t.name)).collect()
}
