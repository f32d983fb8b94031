//! The admin REST API (`/v1`): tenants, API keys, secrets, rules and runtime tokens, the audit
//! trail of their changes, plus `/healthz`, `/readyz`, `/metrics` and the OpenAPI document.
//!
//! One routing table (`routes!` below) builds the router and the list of served routes that the
//! OpenAPI test compares with `docs/openapi.yaml`. Handlers extract, call the store, map to a
//! view; every failure leaves as an `ApiError` in the one JSON error shape, including unknown
//! routes, wrong methods, oversized bodies and malformed JSON.

mod audit;
pub mod error;
pub mod extract;
mod rules;
mod secrets;
mod tenants;
mod tokens;
pub mod views;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter};
use secrecy::SecretString;

use crate::crypto::Keyring;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::store::Store;
use error::{ApiError, ErrorCause};

pub use secrets::{DEFAULT_CACHE_TTL_SECS, MAX_CACHE_TTL_SECS};

/// The OpenAPI document of this API, served at `/openapi.yaml`.
pub const OPENAPI_YAML: &str = include_str!("../../docs/openapi.yaml");

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub keyring: Arc<Keyring>,
    pub operator_token: Option<Arc<SecretString>>,
    pub metrics: Arc<Metrics>,
    /// The ext_proc engine: told about every change so the next request sees it.
    pub engine: Arc<Engine>,
    pub max_body_bytes: usize,
    /// The HTTPS interception CA certificate (PEM), served at `/v1/ca.pem`; `None`: no CA.
    pub interception_ca: Option<Arc<str>>,
}

macro_rules! routes {
    ($($path:literal => [$($method:ident => $handler:expr),+ $(,)?]),+ $(,)?) => {
        /// Every (method, path pattern) the admin API serves.
        pub const ROUTES: &[(&str, &str)] = &[$($((stringify!($method), $path)),+),+];

        fn api_routes() -> Router<AppState> {
            Router::new()
                $(.route($path, MethodRouter::new()$(.on(MethodFilter::$method, $handler))+))+
        }
    };
}

routes! {
    "/v1/tenants" => [POST => tenants::create_tenant, GET => tenants::list_tenants],
    "/v1/api-keys" => [POST => tenants::create_api_key, GET => tenants::list_api_keys],
    "/v1/api-keys/{id}" => [DELETE => tenants::delete_api_key],
    "/v1/secrets" => [POST => secrets::create_secret, GET => secrets::list_secrets],
    "/v1/secrets/{name}" => [
        GET => secrets::get_secret,
        PUT => secrets::update_secret,
        DELETE => secrets::delete_secret,
    ],
    "/v1/runtimes/{runtime}/rules" => [POST => rules::create_rule, GET => rules::list_runtime_rules],
    "/v1/rules" => [GET => rules::list_rules],
    "/v1/rules/batch" => [POST => rules::create_rules_batch],
    "/v1/rules/{id}" => [GET => rules::get_rule, DELETE => rules::delete_rule],
    "/v1/runtimes/{runtime}/tokens" => [
        POST => tokens::create_runtime_token,
        GET => tokens::list_runtime_tokens,
    ],
    "/v1/runtime-tokens/{id}" => [DELETE => tokens::revoke_runtime_token],
    "/v1/audit-events" => [GET => audit::list_audit_events],
    "/v1/ca.pem" => [GET => ca_certificate],
    "/healthz" => [GET => healthz],
    "/readyz" => [GET => readyz],
    "/metrics" => [GET => metrics],
    "/openapi.yaml" => [GET => openapi],
}

/// The admin API's router, ready to serve.
pub fn router(state: AppState) -> Router {
    api_routes()
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Who a request acted for, as far as the request got: the tenant's name once its API key
/// was accepted. The logging middleware puts an empty one into the request's extensions; the
/// tenant extractor fills it.
#[derive(Clone, Default)]
pub struct RequestTenant(Arc<std::sync::OnceLock<String>>);

impl RequestTenant {
    pub fn set(&self, name: &str) {
        let _ = self.0.set(name.to_owned());
    }
}

/// The response header that carries the request's id (`extract::RequestId`).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Counts and times every request by route pattern (never by raw path), and logs it: one line
/// per request with route, method, status, tenant and request id, and the internal cause of an
/// error answer (`ErrorCause`). This is the one place error causes are logged. It also gives
/// every request its id (`extract::RequestId`), answered as `x-request-id`.
async fn track(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let tenant = RequestTenant::default();
    request.extensions_mut().insert(tenant.clone());
    let request_id = extract::RequestId::generate();
    request.extensions_mut().insert(request_id.clone());
    let mut response = next.run(request).await;
    if let Ok(value) = header::HeaderValue::from_str(&request_id.0) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let request_id = request_id.0;
    let elapsed = started.elapsed();
    let status = response.status();
    state
        .metrics
        .admin_requests
        .with_label_values(&[route.as_str(), method.as_str(), status.as_str()])
        .inc();
    state
        .metrics
        .admin_request_seconds
        .with_label_values(&[route.as_str()])
        .observe(elapsed.as_secs_f64());
    let cause = response
        .extensions_mut()
        .remove::<ErrorCause>()
        .map(|c| c.0);
    let tenant = tenant.0.get().map(String::as_str);
    let micros = elapsed.as_micros() as u64;
    let status = status.as_u16();
    match status {
        503 => {
            tracing::warn!(%method, %route, status, tenant, %request_id, cause, micros, "admin request failed")
        }
        500.. => {
            tracing::error!(%method, %route, status, tenant, %request_id, cause, micros, "admin request failed")
        }
        _ if cause.is_some() => {
            tracing::info!(%method, %route, status, tenant, %request_id, cause, micros, "admin request refused")
        }
        _ => tracing::debug!(%method, %route, status, tenant, %request_id, micros, "admin request"),
    }
    response
}

async fn route_not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        format!("no route {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Ready when the store can be used, writes included (`Store::ping`). Not ready answers 503
/// with the store error's code (`store_unavailable`, `store_read_only`, `store_file_missing`).
async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => axum::Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(err) => {
            let detail = err.to_string();
            let answer = ApiError::from(err);
            if answer.status == StatusCode::SERVICE_UNAVAILABLE {
                answer
            } else {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the database is unavailable",
                )
            }
            .with_cause(format_args!("readiness check failed: {detail}"))
            .into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// The interception CA certificate, for runtimes to trust; no key needed (it is public).
async fn ca_certificate(State(state): State<AppState>) -> Response {
    match &state.interception_ca {
        Some(pem) => (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            pem.to_string(),
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "interception_disabled",
            "this server has no HTTPS interception CA (interception.ca_cert_file is not configured)",
        )
        .into_response(),
    }
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML)
}
