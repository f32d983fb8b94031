//! `runta secret`: store, list, show, update and delete secrets (metadata only comes back; a
//! value goes one way, from an environment variable, standard input or a prompt, never from
//! the command line).

use std::io::Read as _;

use reqwest::Method;
use serde::Serialize;
use serde_json::json;
use zeroize::Zeroizing;

use super::client::{Caller, CliError, Client, segment};
use super::output::{self, or_dash};
use super::{Output, SecretCommand, ValueSource};
use crate::admin::views::Secret;

const SECRET_HEADERS: &[&str] = &[
    "NAME",
    "ID",
    "DISPLAY NAME",
    "CACHE TTL",
    "VERSION",
    "UPDATED",
];

fn secret_row(secret: &Secret) -> Vec<String> {
    vec![
        secret.name.clone(),
        secret.id.clone(),
        or_dash(secret.display_name.as_deref()),
        secret.cache_ttl_secs.to_string(),
        secret.version.to_string(),
        secret.updated_at.clone(),
    ]
}

/// Reads a secret value from the chosen source; never from the command line.
fn read_value(source: &ValueSource, name: &str) -> Result<Zeroizing<String>, CliError> {
    if let Some(var) = &source.value_env {
        return std::env::var(var).map(Zeroizing::new).map_err(|_| {
            CliError::Usage(format!(
                "the environment variable {var} is not set (or not valid UTF-8)"
            ))
        });
    }
    if source.value_stdin {
        let mut text = Zeroizing::new(String::new());
        std::io::stdin().read_to_string(&mut text).map_err(|e| {
            CliError::Usage(format!("cannot read the value from standard input: {e}"))
        })?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        return Ok(text);
    }
    if source.prompt {
        return rpassword::prompt_password(format!("Value for secret {name}: "))
            .map(Zeroizing::new)
            .map_err(|e| {
                CliError::Usage(format!(
                    "--prompt needs a terminal ({e}); use --value-stdin or --value-env instead"
                ))
            });
    }
    Err(CliError::Usage(
        "give the value with --value-env VAR, --value-stdin or --prompt".into(),
    ))
}

#[derive(Serialize)]
struct NewSecret<'a> {
    name: &'a str,
    value: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    display_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_ttl_secs: Option<i64>,
}

#[derive(Serialize)]
struct SecretUpdate<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    display_name: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_ttl_secs: Option<i64>,
}

/// Runs one `runta secret` command (`secret rule` is in `rules`).
pub async fn run(command: SecretCommand, client: &Client, out: Output) -> Result<(), CliError> {
    match command {
        SecretCommand::Add {
            name,
            value,
            cache_ttl_secs,
            display_name,
        } => {
            let text = read_value(&value, &name)?;
            let body = NewSecret {
                name: &name,
                value: &text,
                display_name: display_name.as_deref(),
                cache_ttl_secs,
            };
            let created = client
                .call(Caller::Tenant, Method::POST, "/v1/secrets", Some(&body))
                .await?;
            output::one(out, &created, |s: Secret| {
                format!(
                    "Created secret {} ({}), version {}, cache TTL {}s.",
                    s.name, s.id, s.version, s.cache_ttl_secs,
                )
            })?;
        }
        SecretCommand::List => {
            let secrets = client.list_all(Caller::Tenant, "/v1/secrets").await?;
            output::list(out, &secrets, SECRET_HEADERS, secret_row)?;
        }
        SecretCommand::Get { name } => {
            let secret = client
                .call(
                    Caller::Tenant,
                    Method::GET,
                    &format!("/v1/secrets/{}", segment(&name)),
                    None::<&()>,
                )
                .await?;
            output::item(out, &secret, SECRET_HEADERS, secret_row)?;
        }
        SecretCommand::Update {
            name,
            value,
            cache_ttl_secs,
            display_name,
            clear_display_name,
        } => {
            let text = if value.given() {
                Some(read_value(&value, &name)?)
            } else {
                None
            };
            let display_name = if clear_display_name {
                Some(None)
            } else {
                display_name.as_deref().map(Some)
            };
            if text.is_none() && display_name.is_none() && cache_ttl_secs.is_none() {
                return Err(CliError::Usage(
                    "nothing to update: give a new value (--value-env, --value-stdin, --prompt), --display-name, --clear-display-name or --cache-ttl-secs".into(),
                ));
            }
            let body = SecretUpdate {
                value: text.as_deref().map(String::as_str),
                display_name,
                cache_ttl_secs,
            };
            let updated = client
                .call(
                    Caller::Tenant,
                    Method::PUT,
                    &format!("/v1/secrets/{}", segment(&name)),
                    Some(&body),
                )
                .await?;
            output::one(out, &updated, |s: Secret| {
                format!("Updated secret {}, now at version {}.", s.name, s.version)
            })?;
        }
        SecretCommand::Delete { name } => {
            client
                .call(
                    Caller::Tenant,
                    Method::DELETE,
                    &format!("/v1/secrets/{}", segment(&name)),
                    None::<&()>,
                )
                .await?;
            output::done(out, &json!({"deleted": name}), || {
                format!("Deleted secret {name}.")
            });
        }
        SecretCommand::Rule(command) => super::rules::run(command, client, out).await?,
    }
    Ok(())
}
