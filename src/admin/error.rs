//! The admin API's one error shape: `{"error": {"code": "...", "message": "..."}}`.
//!
//! Policy: low-level errors are classified once, here (`From<StoreError>`). Store errors name
//! the resource they are about, so handlers use `?` and do not re-match them; a handler adds
//! context only where the request's shape decides it (a batch's field paths). The user sees a
//! clear message; an internal cause travels with the answer (`ErrorCause`, a response
//! extension) to the request-logging middleware, which logs it once with the route, status
//! and tenant. Conversions do not log. No message ever quotes a secret value.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::rules::FieldError;
use crate::store::{Resource, StoreError};

/// An error answer of the admin API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// What went wrong inside, for the log only.
    pub cause: Option<String>,
}

pub type ApiResult<T> = Result<T, ApiError>;

/// The internal cause of an error answer, for the request log: set on the response by
/// `ApiError`, taken off by the middleware that logs the request.
#[derive(Debug, Clone)]
pub struct ErrorCause(pub String);

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            cause: None,
        }
    }

    /// The same answer, with what went wrong inside for the log.
    pub fn with_cause(mut self, cause: impl std::fmt::Display) -> Self {
        self.cause = Some(cause.to_string());
        self
    }

    /// 400: the request is invalid; the message names the field.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{field}: {message}"),
        )
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the details",
        )
    }
}

impl From<FieldError> for ApiError {
    fn from(err: FieldError) -> Self {
        Self::invalid(&err.field, err.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(resource) => {
                Self::not_found(format!("no {}", resource.described()))
            }
            StoreError::AlreadyExists(resource) => {
                let mut message = format!("a {} already exists", resource.described());
                if let Resource::Secret(name) = &resource {
                    message.push_str(&format!("; update it with PUT /v1/secrets/{name}"));
                }
                Self::conflict("already_exists", message)
            }
            StoreError::Conflict(detail) => Self::conflict("conflict", "already exists")
                .with_cause(format_args!("unique constraint: {detail}")),
            StoreError::SecretInUse { secret, rules } => Self::conflict(
                "secret_in_use",
                format!(
                    "secret '{secret}' is still used by rules {}; delete those rules first",
                    rules.join(", ")
                ),
            ),
            // A single rule's credential; a batch names its own field (`rules[i].credential`).
            StoreError::UnknownCredential { name, .. } => Self::invalid(
                "injection.credential",
                format!("no secret named '{name}' in this tenant; create it first"),
            ),
            StoreError::Stale(resource) => Self::conflict(
                "concurrent_update",
                format!("{resource} was changed by another request; retry"),
            ),
            StoreError::LastApiKey => Self::conflict(
                "last_api_key",
                "a tenant's last API key cannot be deleted; create another first",
            ),
            err @ StoreError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the database is unavailable; retry later",
            )
            .with_cause(err),
            err @ StoreError::ReadOnly(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_read_only",
                "the database refuses writes (it is read-only); nothing was changed",
            )
            .with_cause(err),
            err @ StoreError::FileMissing(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_file_missing",
                "the database file was removed or replaced while the server ran; nothing was changed, and nothing will be until the server is restarted with its database",
            )
            .with_cause(err),
            err @ (StoreError::InvalidUrl(_)
            | StoreError::Database(_)
            | StoreError::Migration(_)) => Self::internal().with_cause(err),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(ErrorCause(cause));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"runta\""),
            );
        }
        response
    }
}
