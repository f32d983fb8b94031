//! `runta tenant` (with the operator token) and `runta api-key` (a tenant's own keys). A new
//! tenant's first key, and every new key, is shown once.

use reqwest::Method;
use serde_json::json;

use super::client::{Caller, CliError, Client, segment};
use super::output::{self, or_dash};
use super::{ApiKeyCommand, Output, TenantCommand};
use crate::admin::views::{ApiKey, CreatedApiKey, CreatedTenant, Tenant};

fn tenant_row(tenant: &Tenant) -> Vec<String> {
    vec![
        tenant.name.clone(),
        tenant.id.clone(),
        tenant.created_at.clone(),
    ]
}

fn api_key_row(key: &ApiKey) -> Vec<String> {
    vec![
        key.id.clone(),
        or_dash(key.name.as_deref()),
        key.created_at.clone(),
    ]
}

/// Runs one `runta tenant` command.
pub async fn tenant(command: TenantCommand, client: &Client, out: Output) -> Result<(), CliError> {
    match command {
        TenantCommand::Create { name } => {
            let created = client
                .call(
                    Caller::Operator,
                    Method::POST,
                    "/v1/tenants",
                    Some(&json!({"name": name})),
                )
                .await?;
            output::one(out, &created, |created: CreatedTenant| {
                format!(
                    "Created tenant {} ({}). Its API key is shown only this once:\n{}",
                    created.tenant.name, created.tenant.id, created.api_key,
                )
            })
        }
        TenantCommand::List => {
            let tenants = client.list_all(Caller::Operator, "/v1/tenants").await?;
            output::list(out, &tenants, &["NAME", "ID", "CREATED"], tenant_row)
        }
    }
}

/// Runs one `runta api-key` command.
pub async fn api_key(command: ApiKeyCommand, client: &Client, out: Output) -> Result<(), CliError> {
    match command {
        ApiKeyCommand::Create { name } => {
            let created = client
                .call(
                    Caller::Tenant,
                    Method::POST,
                    "/v1/api-keys",
                    Some(&json!({"name": name})),
                )
                .await?;
            output::one(out, &created, |created: CreatedApiKey| {
                format!(
                    "Created API key {}. It is shown only this once:\n{}",
                    created.api_key.id, created.key,
                )
            })
        }
        ApiKeyCommand::List => {
            let keys = client.list_all(Caller::Tenant, "/v1/api-keys").await?;
            output::list(out, &keys, &["ID", "NAME", "CREATED"], api_key_row)
        }
        ApiKeyCommand::Delete { key_id } => {
            client
                .call(
                    Caller::Tenant,
                    Method::DELETE,
                    &format!("/v1/api-keys/{}", segment(&key_id)),
                    None::<&()>,
                )
                .await?;
            output::done(out, &json!({"deleted": key_id}), || {
                format!("Deleted API key {key_id}.")
            });
            Ok(())
        }
    }
}
