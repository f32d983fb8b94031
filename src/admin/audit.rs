//! The audit trail, read-only: `GET /v1/audit-events`. A tenant's API key sees its tenant's
//! events; the operator token sees every tenant's, and the events of no tenant (key
//! rotations). Events are written by the store, with the changes they record.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{AnyCaller, DEFAULT_LIMIT, MAX_LIMIT, query_pairs};
use super::views::{AuditEvent, List};
use crate::store::{AuditAction, AuditFilter, AuditPage, TargetKind};

/// `?limit=&cursor=&since=&until=&action=&target_kind=&target_id=`. Unknown parameters are
/// refused: a misspelt filter must not silently widen an audit query.
pub struct AuditQuery {
    pub filter: AuditFilter,
    pub page: AuditPage,
}

impl<S: Send + Sync> FromRequestParts<S> for AuditQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let mut filter = AuditFilter::default();
        let mut page = AuditPage {
            limit: DEFAULT_LIMIT,
            after_seq: None,
        };
        for (key, value) in query_pairs(parts)? {
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
                "cursor" if value.is_empty() => {}
                "cursor" => {
                    page.after_seq = Some(value.parse::<i64>().map_err(|_| {
                        ApiError::invalid("cursor", "must be the next_cursor of a previous page")
                    })?);
                }
                "since" => filter.since = Some(time_param("since", &value)?),
                "until" => filter.until = Some(time_param("until", &value)?),
                "action" => {
                    filter.action = Some(AuditAction::parse(&value).ok_or_else(|| {
                        ApiError::invalid(
                            "action",
                            format!("must be one of {}", AuditAction::ALL.join(", ")),
                        )
                    })?);
                }
                "target_kind" => {
                    filter.target_kind = Some(TargetKind::parse(&value).ok_or_else(|| {
                        ApiError::invalid(
                            "target_kind",
                            format!("must be one of {}", TargetKind::ALL.join(", ")),
                        )
                    })?);
                }
                "target_id" => {
                    // Ids are ASCII (`rule_…`; a batch's comma-separated): anything else names
                    // nothing, and is refused rather than sent to the database.
                    let valid = !value.is_empty()
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_.,-".contains(&b));
                    if !valid {
                        return Err(ApiError::invalid(
                            "target_id",
                            "must be an id: letters, digits, '_', '.', '-' and ','",
                        ));
                    }
                    filter.target_id = Some(value);
                }
                other => {
                    return Err(ApiError::invalid(
                        "query",
                        format!(
                            "unknown parameter '{other}'; known: limit, cursor, since, until, action, target_kind, target_id"
                        ),
                    ));
                }
            }
        }
        Ok(Self { filter, page })
    }
}

/// An RFC 3339 time as Unix milliseconds.
fn time_param(field: &str, value: &str) -> ApiResult<i64> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            ApiError::invalid(
                field,
                "must be an RFC 3339 time, such as 2026-01-31T12:00:00Z",
            )
        })
}

pub async fn list_audit_events(
    caller: AnyCaller,
    State(state): State<AppState>,
    AuditQuery { mut filter, page }: AuditQuery,
) -> ApiResult<Json<List<AuditEvent>>> {
    filter.tenant_id = match caller {
        AnyCaller::Tenant(auth) => Some(auth.tenant.id),
        AnyCaller::Operator => None,
    };
    let page = state.store.list_audit_events(&filter, &page).await?;
    Ok(Json(List::from_page(page, AuditEvent::from)))
}
