//! Tenants (operator only) and a tenant's API keys. Keys are shown once, when created.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use secrecy::ExposeSecret;
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{JsonBody, ListParams, OperatorAuth, PathParam, RequestId, TenantAuth};
use super::views::{ApiKey, CreatedApiKey, CreatedTenant, List, Tenant};
use crate::crypto;
use crate::names::validate_name;
use crate::store::{AuditAction, AuditTarget, NewApiKey, TargetKind, TenantRow, now_millis};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    name: String,
}

pub async fn create_tenant(
    operator: OperatorAuth,
    request: RequestId,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateTenant>,
) -> ApiResult<(StatusCode, Json<CreatedTenant>)> {
    validate_name(&body.name).map_err(|m| ApiError::invalid("name", m))?;
    let now = now_millis();
    let tenant = TenantRow {
        id: crypto::new_id("ten"),
        name: body.name,
        created_at: now,
    };
    let (new_key, key) = NewApiKey::generate(&tenant.id, Some("initial".into()));
    let audit = operator.audit(
        &request,
        &tenant.id,
        AuditAction::TenantCreate,
        AuditTarget::new(TargetKind::Tenant, Some(&tenant.id), Some(&tenant.name)),
    );
    let committed = state.store.create_tenant(&tenant, &new_key, &audit).await?;
    state.engine.applied(committed).await;
    tracing::info!(tenant = %tenant.name, id = %tenant.id, "tenant created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedTenant {
            tenant: tenant.into(),
            api_key: key.expose_secret().to_owned(),
        }),
    ))
}

pub async fn list_tenants(
    _: OperatorAuth,
    State(state): State<AppState>,
    ListParams(page): ListParams,
) -> ApiResult<Json<List<Tenant>>> {
    let page = state.store.list_tenants(&page).await?;
    Ok(Json(List::from_page(page, Tenant::from)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    #[serde(default)]
    name: Option<String>,
}

pub async fn create_api_key(
    auth: TenantAuth,
    request: RequestId,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateApiKey>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    if let Some(name) = &body.name {
        validate_label(name).map_err(|m| ApiError::invalid("name", m))?;
    }
    let (row, key) = NewApiKey::generate(&auth.tenant.id, body.name);
    let audit = auth.audit(
        &request,
        AuditAction::ApiKeyCreate,
        AuditTarget::new(TargetKind::ApiKey, Some(&row.id), row.name.as_deref()),
    );
    state.store.create_api_key(&row, &audit).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            api_key: ApiKey {
                id: row.id,
                name: row.name,
                created_at: super::views::timestamp(row.created_at),
            },
            key: key.expose_secret().to_owned(),
        }),
    ))
}

pub async fn list_api_keys(
    auth: TenantAuth,
    State(state): State<AppState>,
    ListParams(page): ListParams,
) -> ApiResult<Json<List<ApiKey>>> {
    let page = state.store.list_api_keys(&auth.tenant.id, &page).await?;
    Ok(Json(List::from_page(page, ApiKey::from)))
}

pub async fn delete_api_key(
    auth: TenantAuth,
    request: RequestId,
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> ApiResult<StatusCode> {
    let audit = auth.audit(
        &request,
        AuditAction::ApiKeyDelete,
        AuditTarget::new(TargetKind::ApiKey, Some(&id), None),
    );
    state
        .store
        .delete_api_key(&auth.tenant.id, &id, &audit)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A free-text label (key names, display names): 1–200 characters, no control characters.
pub fn validate_label(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if text.chars().count() > 200 {
        return Err("must be at most 200 characters".into());
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}
