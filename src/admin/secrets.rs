//! Secrets: the value is write-only. It is validated, sealed under the active key bound to
//! (tenant, secret id, version), and never returned, logged or quoted in an error.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{JsonBody, ListParams, PathParam, RequestId, TenantAuth};
use super::tenants::validate_label;
use super::views::{List, Secret};
use crate::crypto::SealContext;
use crate::names::validate_name;
use crate::rules::injection::validate_secret_value;
use crate::store::{
    AuditAction, AuditTarget, Resource, SecretChanges, SecretRow, StoreError, TargetKind,
    now_millis,
};

// Field names are snake_case; the camelCase spellings a TypeScript client may send
// (`cacheTtlSecs`, `displayName`) are accepted as aliases.

/// Default and largest `cache_ttl_secs`.
pub const DEFAULT_CACHE_TTL_SECS: i64 = 300;
pub const MAX_CACHE_TTL_SECS: i64 = 86_400;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSecret {
    name: String,
    value: SecretString,
    #[serde(default, alias = "displayName")]
    display_name: Option<String>,
    #[serde(default, alias = "cacheTtlSecs", deserialize_with = "whole_number")]
    cache_ttl_secs: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSecret {
    /// Absent: unchanged; `null` is no value (400), not "unchanged".
    #[serde(default, deserialize_with = "not_null")]
    value: Option<SecretString>,
    /// Absent: unchanged; `null`: cleared.
    #[serde(default, alias = "displayName", deserialize_with = "present")]
    display_name: Option<Option<String>>,
    #[serde(default, alias = "cacheTtlSecs", deserialize_with = "whole_number")]
    cache_ttl_secs: Option<i64>,
}

/// A field that may be absent (`None`, by `#[serde(default)]`) but never `null`.
fn not_null<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// An integer as JSON Schema means it: any number without a fraction, `300.0` as well as
/// `300` (serde alone refuses the former for an `i64`).
fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(n) = number.as_i64() {
        return Ok(Some(n));
    }
    match number.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
        _ => Err(D::Error::custom(format!(
            "invalid type or value, expected a whole number of seconds, got {number}"
        ))),
    }
}

/// Tells a field that is present (even as `null`) from one that is absent.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn check_ttl(ttl: i64) -> ApiResult<i64> {
    if !(0..=MAX_CACHE_TTL_SECS).contains(&ttl) {
        return Err(ApiError::invalid(
            "cache_ttl_secs",
            format!("must be from 0 to {MAX_CACHE_TTL_SECS} seconds, got {ttl}"),
        ));
    }
    Ok(ttl)
}

fn check_value(value: &SecretString) -> ApiResult<()> {
    validate_secret_value(value.expose_secret()).map_err(|m| ApiError::invalid("value", m))
}

fn check_display_name(name: &Option<String>) -> ApiResult<()> {
    if let Some(name) = name {
        validate_label(name).map_err(|m| ApiError::invalid("display_name", m))?;
    }
    Ok(())
}

fn not_found(name: &str) -> ApiError {
    StoreError::NotFound(Resource::Secret(name.to_owned())).into()
}

fn sealing_failed(err: crate::crypto::CryptoError) -> ApiError {
    ApiError::internal().with_cause(format_args!("sealing a secret failed: {err}"))
}

fn secret_target(id: Option<&str>, name: &str) -> AuditTarget {
    AuditTarget::new(TargetKind::Secret, id, Some(name))
}

pub async fn create_secret(
    auth: TenantAuth,
    request: RequestId,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<CreateSecret>,
) -> ApiResult<(StatusCode, HeaderMap, Json<Secret>)> {
    validate_name(&body.name).map_err(|m| ApiError::invalid("name", m))?;
    check_value(&body.value)?;
    check_display_name(&body.display_name)?;
    let ttl = check_ttl(body.cache_ttl_secs.unwrap_or(DEFAULT_CACHE_TTL_SECS))?;
    let id = crate::crypto::new_id("sec");
    let sealed = state
        .keyring
        .seal(
            body.value.expose_secret().as_bytes(),
            SealContext {
                tenant_id: &auth.tenant.id,
                secret_id: &id,
                version: 1,
            },
        )
        .map_err(sealing_failed)?;
    let now = now_millis();
    let row = SecretRow {
        id,
        tenant_id: auth.tenant.id.clone(),
        name: body.name,
        display_name: body.display_name,
        cache_ttl_secs: ttl,
        version: 1,
        key_id: sealed.key_id,
        nonce: sealed.nonce,
        ciphertext: sealed.ciphertext,
        created_at: now,
        updated_at: now,
    };
    let audit = auth.audit(
        &request,
        AuditAction::SecretCreate,
        secret_target(Some(&row.id), &row.name),
    );
    state.store.insert_secret(&row, &audit).await?;
    tracing::info!(tenant = %auth.tenant.name, secret = %row.name, id = %row.id, "secret created");
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/secrets/{}", row.name)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(row.into())))
}

pub async fn list_secrets(
    auth: TenantAuth,
    State(state): State<AppState>,
    ListParams(page): ListParams,
) -> ApiResult<Json<List<Secret>>> {
    let page = state.store.list_secrets(&auth.tenant.id, &page).await?;
    Ok(Json(List::from_page(page, Secret::from)))
}

pub async fn get_secret(
    auth: TenantAuth,
    State(state): State<AppState>,
    PathParam(name): PathParam,
) -> ApiResult<Json<Secret>> {
    let row = state
        .store
        .get_secret(&auth.tenant.id, &name)
        .await?
        .ok_or_else(|| not_found(&name))?;
    Ok(Json(row.into()))
}

pub async fn update_secret(
    auth: TenantAuth,
    request: RequestId,
    State(state): State<AppState>,
    PathParam(name): PathParam,
    JsonBody(body): JsonBody<UpdateSecret>,
) -> ApiResult<Json<Secret>> {
    if body.value.is_none() && body.display_name.is_none() && body.cache_ttl_secs.is_none() {
        return Err(ApiError::invalid(
            "body",
            "nothing to update: give value, display_name or cache_ttl_secs",
        ));
    }
    if let Some(value) = &body.value {
        check_value(value)?;
    }
    if let Some(display_name) = &body.display_name {
        check_display_name(display_name)?;
    }
    let ttl = body.cache_ttl_secs.map(check_ttl).transpose()?;
    let current = state
        .store
        .get_secret(&auth.tenant.id, &name)
        .await?
        .ok_or_else(|| not_found(&name))?;
    let mut changes = SecretChanges {
        display_name: body.display_name,
        cache_ttl_secs: ttl,
        updated_at: Some(now_millis()),
        ..SecretChanges::default()
    };
    if let Some(value) = &body.value {
        let version = current.version + 1;
        let sealed = state
            .keyring
            .seal(
                value.expose_secret().as_bytes(),
                SealContext {
                    tenant_id: &auth.tenant.id,
                    secret_id: &current.id,
                    version,
                },
            )
            .map_err(|e| {
                tracing::error!(error = %e, "sealing a secret failed");
                ApiError::internal()
            })?;
        changes = changes.with_sealed(sealed, version);
    }
    let action = if body.value.is_some() {
        AuditAction::SecretUpdateValue
    } else {
        AuditAction::SecretUpdateMetadata
    };
    let audit = auth.audit(&request, action, secret_target(Some(&current.id), &name));
    let committed = state
        .store
        .update_secret(&auth.tenant.id, &name, current.version, &changes, &audit)
        .await?;
    let row = state.engine.applied(committed).await;
    tracing::info!(tenant = %auth.tenant.name, secret = %row.name, version = row.version, "secret updated");
    Ok(Json(row.into()))
}

pub async fn delete_secret(
    auth: TenantAuth,
    request: RequestId,
    State(state): State<AppState>,
    PathParam(name): PathParam,
) -> ApiResult<StatusCode> {
    let audit = auth.audit(
        &request,
        AuditAction::SecretDelete,
        secret_target(None, &name),
    );
    let committed = state
        .store
        .delete_secret(&auth.tenant.id, &name, &audit)
        .await?;
    state.engine.applied(committed).await;
    tracing::info!(tenant = %auth.tenant.name, secret = %name, "secret deleted");
    Ok(StatusCode::NO_CONTENT)
}
