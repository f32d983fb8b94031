//! The admin API's one error shape: `{"error": {"code": "...", "message": "..."}}`.
//!
//! Policy: low-level errors are classified once, here (`From<StoreError>`); handlers add the
//! context a user needs (which secret, which rule) where the store cannot know it. The user
//! sees a clear message; details of internal failures go to the log only. No message ever
//! quotes a secret value.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::rules::FieldError;
use crate::store::StoreError;

/// An error answer of the admin API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
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
            StoreError::NotFound => Self::not_found("not found"),
            StoreError::Conflict(detail) => {
                tracing::debug!(%detail, "unique constraint");
                Self::conflict("conflict", "already exists")
            }
            StoreError::SecretInUse(rules) => Self::conflict(
                "secret_in_use",
                format!("the secret is still used by rules {}", rules.join(", ")),
            ),
            StoreError::UnknownCredential(name) => Self::invalid(
                "credential",
                format!("no secret named '{name}' in this tenant"),
            ),
            StoreError::Stale => Self::conflict(
                "concurrent_update",
                "the resource was changed by another request; retry",
            ),
            StoreError::LastApiKey => Self::conflict(
                "last_api_key",
                "a tenant's last API key cannot be deleted; create another first",
            ),
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the database is unavailable; retry later",
                )
            }
            StoreError::Database(err) => {
                tracing::error!(error = %err, "database error");
                Self::internal()
            }
            StoreError::Migration(detail) => {
                tracing::error!(%detail, "migration error");
                Self::internal()
            }
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
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"runta\""),
            );
        }
        response
    }
}
