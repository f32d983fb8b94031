//! Request extractors whose failures answer in the API's error shape: JSON bodies (objects
//! only, with the failing field named), path parameters, list parameters, and the two kinds of
//! caller (a tenant's API key, the operator token).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::crypto;
use crate::store::{
    Actor, ApiKeyRow, AuditAction, AuditEntry, AuditTarget, Outcome, Page, TenantRow,
};

/// A JSON body, which must be an object. An empty body reads as `{}`, so calls whose fields are
/// all optional need none. (serde would also read a struct from an array, `[]` or `["x"]`,
/// field by position: that is refused before it gets the chance.)
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "the request body is larger than the limit of {} bytes",
                        state.max_body_bytes
                    ),
                )
            } else {
                ApiError::new(rejection.status(), "invalid_request", rejection.body_text())
            }
        })?;
        let bytes: &[u8] = match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            None => b"{}",
            Some(b'{') => &bytes,
            Some(_) => {
                // Not an object: say whether it is JSON at all.
                return Err(
                    match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
                        Ok(_) => ApiError::invalid("body", "must be a JSON object"),
                        Err(err) => not_json(&err),
                    },
                );
            }
        };
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                return not_json(&inner);
            }
            let field = if path == "." { "body" } else { path.as_str() };
            ApiError::invalid(field, describe_data_error(&inner.to_string()))
        })?;
        deserializer.end().map_err(|e| not_json(&e))?;
        Ok(Self(value))
    }
}

fn not_json(err: &serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        format!("the request body is not valid JSON for this call: {err}"),
    )
}

/// A data error without its position (noise once the field is named) and without the value
/// that was sent: serde quotes it in "invalid type: string \"...\"", and it may be a secret.
fn describe_data_error(message: &str) -> String {
    let message = message.split(" at line ").next().unwrap_or(message);
    if message.starts_with("invalid type") || message.starts_with("invalid value") {
        match message.rsplit_once(", expected ") {
            Some((_, expected)) => format!("invalid type or value, expected {expected}"),
            None => "invalid type or value".to_owned(),
        }
    } else {
        message.to_owned()
    }
}

/// The one path parameter of a route (`{name}`, `{id}`, `{runtime}`). A parameter that is not
/// valid UTF-8 once percent-decoded answers 400 in the API's error shape, not axum's plain text.
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("path: {}", rejection.body_text()),
            )),
        }
    }
}

/// `?limit=&cursor=` of list calls.
pub struct ListParams(pub Page);

/// Items per page when no limit is given, and the largest limit accepted.
pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

impl<S: Send + Sync> FromRequestParts<S> for ListParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let mut page = Page {
            limit: DEFAULT_LIMIT,
            cursor: None,
        };
        let query = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded_pairs(query)?;
        for (key, value) in pairs {
            match key.as_str() {
                "limit" => {
                    page.limit = value
                        .parse::<i64>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            ApiError::invalid(
                                "limit",
                                format!("must be a number from 1 to {MAX_LIMIT}"),
                            )
                        })?;
                }
                "cursor" if !value.is_empty() => page.cursor = Some(value),
                _ => {}
            }
        }
        Ok(Self(page))
    }
}

fn serde_urlencoded_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(
        &format!("/?{query}")
            .parse()
            .map_err(|_| ApiError::invalid("query", "is not valid"))?,
    )
    .map(|q| q.0)
    .map_err(|e| ApiError::invalid("query", e.body_text()))
}

/// The bearer token of the `Authorization` header, if there is one.
fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthenticated("the Authorization header is not valid text"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthenticated(
            "the Authorization header must be 'Bearer <api key>'",
        ));
    }
    Ok(Some(token.trim()))
}

/// The id of the request being served: made by the request middleware for every request
/// (never taken from the client), answered as the `x-request-id` header, and recorded with
/// the audit event of the change the request makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    pub fn generate() -> Self {
        Self(crypto::new_id("req"))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Self>()
            .cloned()
            .unwrap_or_else(Self::generate))
    }
}

/// A caller holding one of a tenant's API keys; everything it does stays in that tenant.
pub struct TenantAuth {
    pub tenant: TenantRow,
    pub key: ApiKeyRow,
}

impl TenantAuth {
    /// The audit entry of a change this caller makes in its tenant.
    pub fn audit(
        &self,
        request: &RequestId,
        action: AuditAction,
        target: AuditTarget,
    ) -> AuditEntry {
        AuditEntry {
            tenant_id: Some(self.tenant.id.clone()),
            actor: Actor::ApiKey(self.key.id.clone()),
            request_id: Some(request.0.clone()),
            action,
            target,
            outcome: Outcome::Ok,
        }
    }

    /// The tenant and key a presented API key belongs to, if it is one.
    async fn of_key(state: &AppState, token: &str) -> Result<Option<Self>, ApiError> {
        let found = state
            .store
            .authenticate_api_key(&crypto::hash_token(token))
            .await?;
        Ok(found.map(|(tenant, key)| Self { tenant, key }))
    }
}

impl FromRequestParts<AppState> for TenantAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?.ok_or_else(|| {
            ApiError::unauthenticated("missing API key: send 'Authorization: Bearer <api key>'")
        })?;
        match state
            .store
            .authenticate_api_key(&crypto::hash_token(token))
            .await?
        {
            Some((tenant, key)) => {
                if let Some(slot) = parts.extensions.get::<super::RequestTenant>() {
                    slot.set(&tenant.name);
                }
                Ok(Self { tenant, key })
            }
            None => Err(ApiError::unauthenticated("invalid API key")),
        }
    }
}

/// A caller holding the operator token: manages tenants, nothing inside them.
pub struct OperatorAuth;

impl OperatorAuth {
    /// The audit entry of a change the operator makes (to `tenant_id`'s tenant).
    pub fn audit(
        &self,
        request: &RequestId,
        tenant_id: &str,
        action: AuditAction,
        target: AuditTarget,
    ) -> AuditEntry {
        AuditEntry {
            tenant_id: Some(tenant_id.to_owned()),
            actor: Actor::Operator,
            request_id: Some(request.0.clone()),
            action,
            target,
            outcome: Outcome::Ok,
        }
    }
}

impl FromRequestParts<AppState> for OperatorAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?.ok_or_else(|| {
            ApiError::unauthenticated(
                "missing operator token: send 'Authorization: Bearer <operator token>'",
            )
        })?;
        let Some(operator) = &state.operator_token else {
            return Err(ApiError::forbidden(
                "tenant management is disabled: no operator token is configured (admin.operator_token)",
            ));
        };
        if crypto::tokens_equal(token, operator) {
            return Ok(Self);
        }
        if TenantAuth::of_key(state, token).await?.is_some() {
            return Err(ApiError::forbidden(
                "this call needs the operator token; a tenant's API key cannot manage tenants",
            ));
        }
        Err(ApiError::unauthenticated("invalid operator token"))
    }
}

/// A caller of a call both kinds of caller may make (the audit trail): a tenant's API key,
/// which sees its tenant only, or the operator token, which sees every tenant.
pub enum AnyCaller {
    Tenant(TenantAuth),
    Operator,
}

impl FromRequestParts<AppState> for AnyCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?.ok_or_else(|| {
            ApiError::unauthenticated(
                "missing credential: send 'Authorization: Bearer <api key or operator token>'",
            )
        })?;
        if let Some(operator) = &state.operator_token
            && crypto::tokens_equal(token, operator)
        {
            return Ok(Self::Operator);
        }
        match TenantAuth::of_key(state, token).await? {
            Some(auth) => {
                if let Some(slot) = parts.extensions.get::<super::RequestTenant>() {
                    slot.set(&auth.tenant.name);
                }
                Ok(Self::Tenant(auth))
            }
            None => Err(ApiError::unauthenticated(
                "invalid API key or operator token",
            )),
        }
    }
}

/// The query pairs of a request, or a 400.
pub fn query_pairs(parts: &Parts) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded_pairs(parts.uri.query().unwrap_or(""))
}
