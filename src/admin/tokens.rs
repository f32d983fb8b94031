//! Runtime (egress) tokens: what a runtime behind a shared gateway presents as its proxy
//! credentials. Shown once, when created; revocation keeps the record.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use secrecy::ExposeSecret;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{ListParams, PathParam, RequestId, TenantAuth};
use super::views::{CreatedRuntimeToken, List, RuntimeToken};
use crate::crypto::{self, TokenKind};
use crate::names::validate_name;
use crate::store::{AuditAction, AuditTarget, NewRuntimeToken, TargetKind, now_millis};

pub async fn create_runtime_token(
    auth: TenantAuth,
    request: RequestId,
    State(state): State<AppState>,
    PathParam(runtime): PathParam,
) -> ApiResult<(StatusCode, Json<CreatedRuntimeToken>)> {
    validate_name(&runtime).map_err(|m| ApiError::invalid("runtime", m))?;
    let token = crypto::generate_token(TokenKind::RuntimeToken);
    let row = NewRuntimeToken {
        id: crypto::new_id("rtk"),
        tenant_id: auth.tenant.id.clone(),
        runtime,
        token_hash: crypto::hash_token(token.expose_secret()).to_vec(),
        created_at: now_millis(),
    };
    let audit = auth.audit(
        &request,
        AuditAction::RuntimeTokenCreate,
        AuditTarget::new(TargetKind::RuntimeToken, Some(&row.id), Some(&row.runtime)),
    );
    let committed = state.store.create_runtime_token(&row, &audit).await?;
    state.engine.applied(committed).await;
    Ok((
        StatusCode::CREATED,
        Json(CreatedRuntimeToken {
            runtime_token: RuntimeToken {
                id: row.id,
                runtime: row.runtime,
                created_at: super::views::timestamp(row.created_at),
                revoked_at: None,
            },
            token: token.expose_secret().to_owned(),
        }),
    ))
}

pub async fn list_runtime_tokens(
    auth: TenantAuth,
    State(state): State<AppState>,
    PathParam(runtime): PathParam,
    ListParams(page): ListParams,
) -> ApiResult<Json<List<RuntimeToken>>> {
    validate_name(&runtime).map_err(|m| ApiError::invalid("runtime", m))?;
    let page = state
        .store
        .list_runtime_tokens(&auth.tenant.id, &runtime, &page)
        .await?;
    Ok(Json(List::from_page(page, RuntimeToken::from)))
}

pub async fn revoke_runtime_token(
    auth: TenantAuth,
    request: RequestId,
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> ApiResult<StatusCode> {
    let audit = auth.audit(
        &request,
        AuditAction::RuntimeTokenRevoke,
        AuditTarget::new(TargetKind::RuntimeToken, Some(&id), None),
    );
    let committed = state
        .store
        .revoke_runtime_token(&auth.tenant.id, &id, &audit)
        .await?;
    let row = state.engine.applied(committed).await;
    tracing::info!(id = %row.id, runtime = %row.runtime, "runtime token revoked");
    Ok(StatusCode::NO_CONTENT)
}
