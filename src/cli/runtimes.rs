//! `runta runtime token`: a runtime's egress tokens (its proxy credentials at a shared
//! gateway). A token is shown once, when created; revoking keeps the record.

use reqwest::Method;
use serde_json::json;

use super::client::{Caller, CliError, Client, segment};
use super::output::{self, or_dash};
use super::{Output, TokenCommand};
use crate::admin::views::{CreatedRuntimeToken, RuntimeToken};

const TOKEN_HEADERS: &[&str] = &["ID", "RUNTIME", "CREATED", "REVOKED"];

fn token_row(token: &RuntimeToken) -> Vec<String> {
    vec![
        token.id.clone(),
        token.runtime.clone(),
        token.created_at.clone(),
        or_dash(token.revoked_at.as_deref()),
    ]
}

/// Creates a runtime token: the server's answer, and the same as its typed view.
pub async fn create_token(
    client: &Client,
    runtime: &str,
) -> Result<(serde_json::Value, CreatedRuntimeToken), CliError> {
    let created = client
        .call(
            Caller::Tenant,
            Method::POST,
            &format!("/v1/runtimes/{}/tokens", segment(runtime)),
            None::<&()>,
        )
        .await?;
    let view = output::view(&created)?;
    Ok((created, view))
}

/// Runs one `runta runtime token` command.
pub async fn token(command: TokenCommand, client: &Client, out: Output) -> Result<(), CliError> {
    match command {
        TokenCommand::Create { runtime } => {
            let (created, _) = create_token(client, &runtime).await?;
            output::one(out, &created, |created: CreatedRuntimeToken| {
                format!(
                    "Created token {} for runtime {}. It is shown only this once:\n{}",
                    created.runtime_token.id, created.runtime_token.runtime, created.token,
                )
            })
        }
        TokenCommand::List { runtime } => {
            let tokens = client
                .list_all(
                    Caller::Tenant,
                    &format!("/v1/runtimes/{}/tokens", segment(&runtime)),
                )
                .await?;
            output::list(out, &tokens, TOKEN_HEADERS, token_row)
        }
        TokenCommand::Revoke { token_id } => {
            client
                .call(
                    Caller::Tenant,
                    Method::DELETE,
                    &format!("/v1/runtime-tokens/{}", segment(&token_id)),
                    None::<&()>,
                )
                .await?;
            output::done(out, &json!({"revoked": token_id}), || {
                format!("Revoked token {token_id}.")
            });
            Ok(())
        }
    }
}
