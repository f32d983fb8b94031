//! Injection rules: created one at a time under a runtime, or in a batch that is created
//! whole or not at all. Validation (`RuleSpec`) happens before the store is touched; the store
//! checks in the same transaction that every credential names a secret of the tenant.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{JsonBody, ListParams, PathParam, RequestId, TenantAuth};
use super::views::{List, Rule};
use crate::crypto;
use crate::names::validate_name;
use crate::rules::{DraftFields, FieldError, RuleDraft, RuleSpec, TargetFields};
use crate::store::{
    AuditAction, AuditTarget, Resource, RuleRow, StoreError, TargetKind, now_millis,
};

/// The largest batch accepted.
pub const MAX_BATCH: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRule {
    host: String,
    #[serde(default)]
    path: Option<String>,
    injection: InjectionBody,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectionBody {
    credential: String,
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    param: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    rules: Vec<BatchRule>,
}

/// One rule of a batch (and of a YAML rule file): the seed's shape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRule {
    runtime: String,
    host: String,
    #[serde(default)]
    path: Option<String>,
    credential: String,
    inject: InjectBody,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectBody {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    param: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

fn new_row(tenant_id: &str, spec: RuleSpec, created_at: i64) -> RuleRow {
    let rule = crate::rules::Rule {
        id: crypto::new_id("rule"),
        tenant_id: tenant_id.to_owned(),
        spec,
    };
    RuleRow::from_rule(&rule, created_at)
}

fn runtime_param(runtime: &str) -> ApiResult<()> {
    validate_name(runtime).map_err(|m| ApiError::invalid("runtime", m))
}

pub async fn create_rule(
    auth: TenantAuth,
    request: RequestId,
    State(state): State<AppState>,
    PathParam(runtime): PathParam,
    JsonBody(body): JsonBody<CreateRule>,
) -> ApiResult<(StatusCode, Json<Rule>)> {
    runtime_param(&runtime)?;
    let draft = RuleDraft {
        runtime: &runtime,
        host: &body.host,
        path: body.path.as_deref(),
        credential: &body.injection.credential,
        target: TargetFields {
            header: body.injection.header,
            param: body.injection.param,
        },
        value: body.injection.value.as_deref(),
    };
    let spec = RuleSpec::from_draft(&draft, &DraftFields::SINGLE)?;
    let row = new_row(&auth.tenant.id, spec, now_millis());
    let audit = auth.audit(
        &request,
        AuditAction::RuleCreate,
        AuditTarget::new(TargetKind::Rule, Some(&row.id), Some(&row.runtime)),
    );
    let committed = state
        .store
        .insert_rules(&auth.tenant.id, std::slice::from_ref(&row), &audit)
        .await?;
    state.engine.applied(committed).await;
    tracing::info!(tenant = %auth.tenant.name, runtime = %row.runtime, rule = %row.id, "rule created");
    Ok((StatusCode::CREATED, Json(row.into())))
}

pub async fn create_rules_batch(
    auth: TenantAuth,
    request: RequestId,
    State(state): State<AppState>,
    JsonBody(body): JsonBody<BatchBody>,
) -> ApiResult<(StatusCode, Json<List<Rule>>)> {
    if body.rules.is_empty() {
        return Err(ApiError::invalid("rules", "must hold at least one rule"));
    }
    if body.rules.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "rules",
            format!(
                "at most {MAX_BATCH} rules per batch, got {}",
                body.rules.len()
            ),
        ));
    }
    let now = now_millis();
    let mut rows = Vec::with_capacity(body.rules.len());
    for (i, rule) in body.rules.iter().enumerate() {
        let draft = RuleDraft {
            runtime: &rule.runtime,
            host: &rule.host,
            path: rule.path.as_deref(),
            credential: &rule.credential,
            target: TargetFields {
                header: rule.inject.header.clone(),
                param: rule.inject.param.clone(),
            },
            value: rule.inject.value.as_deref(),
        };
        let spec = RuleSpec::from_draft(&draft, &DraftFields::BATCH)
            .map_err(|e: FieldError| e.within(&format!("rules[{i}]")))?;
        rows.push(new_row(&auth.tenant.id, spec, now));
    }
    // One event for the batch: its rules' ids, and the runtimes they go to.
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let runtimes: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r.runtime.as_str()).collect();
    let runtimes: Vec<&str> = runtimes.into_iter().collect();
    let audit = auth.audit(
        &request,
        AuditAction::RuleBatchCreate,
        AuditTarget::new(
            TargetKind::Rule,
            Some(&ids.join(",")),
            Some(&runtimes.join(",")),
        ),
    );
    // The rules are compiled into the snapshot while the store writes them.
    let prepared = state.engine.prepare_rules(&rows);
    let committed = state
        .store
        .insert_rules(&auth.tenant.id, &rows, &audit)
        .await
        .map_err(|err| match err {
            StoreError::UnknownCredential { name, rule } => ApiError::invalid(
                &format!("rules[{rule}].credential"),
                format!(
                    "no secret named '{name}' in this tenant; create it first (no rule was created)"
                ),
            ),
            other => other.into(),
        })?;
    state.engine.applied_with(committed, prepared).await;
    tracing::info!(tenant = %auth.tenant.name, count = rows.len(), "rules created in a batch");
    Ok((
        StatusCode::CREATED,
        Json(List {
            data: rows.into_iter().map(Rule::from).collect(),
            next_cursor: None,
        }),
    ))
}

pub async fn list_runtime_rules(
    auth: TenantAuth,
    State(state): State<AppState>,
    PathParam(runtime): PathParam,
    ListParams(page): ListParams,
) -> ApiResult<Json<List<Rule>>> {
    runtime_param(&runtime)?;
    let page = state
        .store
        .list_rules(&auth.tenant.id, Some(&runtime), &page)
        .await?;
    Ok(Json(List::from_page(page, Rule::from)))
}

pub async fn list_rules(
    auth: TenantAuth,
    State(state): State<AppState>,
    ListParams(page): ListParams,
) -> ApiResult<Json<List<Rule>>> {
    let page = state.store.list_rules(&auth.tenant.id, None, &page).await?;
    Ok(Json(List::from_page(page, Rule::from)))
}

pub async fn get_rule(
    auth: TenantAuth,
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> ApiResult<Json<Rule>> {
    let row = state
        .store
        .get_rule(&auth.tenant.id, &id)
        .await?
        .ok_or_else(|| StoreError::NotFound(Resource::Rule(id)))?;
    Ok(Json(row.into()))
}

pub async fn delete_rule(
    auth: TenantAuth,
    request: RequestId,
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> ApiResult<StatusCode> {
    let audit = auth.audit(
        &request,
        AuditAction::RuleDelete,
        AuditTarget::new(TargetKind::Rule, Some(&id), None),
    );
    let committed = state
        .store
        .delete_rule(&auth.tenant.id, &id, &audit)
        .await?;
    let runtime = state.engine.applied(committed).await;
    tracing::info!(tenant = %auth.tenant.name, runtime = %runtime, rule = %id, "rule deleted");
    Ok(StatusCode::NO_CONTENT)
}
