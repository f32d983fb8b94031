//! `runta runtime token`: a runtime's egress tokens (its proxy credentials at a shared
//! gateway). A token is shown once, when created; revoking keeps the record.
//! `runta runtime env`: everything a runtime's unmodified clients need to go through the
//! gateway, as `export` lines.

use reqwest::Method;
use serde_json::json;

use super::client::{Caller, CliError, Client, segment};
use super::output::{self, or_dash};
use super::{Output, RuntimeEnvArgs, TokenCommand};
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

/// The variables each client family reads: proxies (curl reads only the lowercase
/// `http_proxy` for `http://` URLs; others read either), and trust stores (httpx, openai and
/// Python's ssl read `SSL_CERT_FILE`; requests `REQUESTS_CA_BUNDLE`; curl `CURL_CA_BUNDLE`;
/// git `GIT_SSL_CAINFO`; Node adds `NODE_EXTRA_CA_CERTS` to its own roots).
const PROXY_VARIABLES: [&str; 4] = ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"];
const NO_PROXY_VARIABLES: [&str; 2] = ["NO_PROXY", "no_proxy"];
const TRUST_VARIABLES: [&str; 5] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
];
/// Loopback stays direct.
const NO_PROXY: &str = "localhost,127.0.0.1,::1";

/// Runs `runta runtime env`: fetches runta's CA, writes the bundle, creates a token, prints.
pub async fn env(args: &RuntimeEnvArgs, client: &Client, out: Output) -> Result<(), CliError> {
    let (scheme, authority) = args
        .gateway
        .split_once("://")
        .filter(|(scheme, rest)| scheme.eq_ignore_ascii_case("http") && !rest.is_empty())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--gateway '{}' must be the gateway's plain-HTTP proxy URL, http://HOST:PORT",
                args.gateway
            ))
        })?;
    let authority = authority.trim_end_matches('/');
    if authority.is_empty() || authority.contains(['@', '/', '?', '#']) {
        return Err(CliError::Usage(format!(
            "--gateway '{}' must be http://HOST:PORT, without credentials or a path",
            args.gateway
        )));
    }
    let ca = client.get_public_text("/v1/ca.pem").await?;
    if !ca.trim_start().starts_with("-----BEGIN CERTIFICATE-----") {
        return Err(CliError::Answer(
            "GET /v1/ca.pem did not answer a PEM certificate".into(),
        ));
    }
    let roots = match &args.system_roots {
        Some(file) => std::fs::read_to_string(file)
            .map_err(|e| CliError::Usage(format!("--system-roots {}: {e}", file.display())))?,
        None => system_roots()?,
    };
    if !roots.contains("-----BEGIN CERTIFICATE-----") {
        return Err(CliError::Usage(
            "the system roots hold no certificate: pass --system-roots FILE".into(),
        ));
    }
    let bundle = format!(
        "{}\n# runta egress interception CA\n{}\n",
        roots.trim_end(),
        ca.trim_end()
    );
    let path = write_bundle(&args.ca_bundle_out, &bundle)?;
    let (created, view) = create_token(client, &args.runtime).await?;
    let proxy = format!("{scheme}://{}:x@{authority}", view.token);
    let path_text = path.display().to_string();
    let mut variables: Vec<(&str, &str)> = Vec::new();
    variables.extend(PROXY_VARIABLES.map(|name| (name, proxy.as_str())));
    variables.extend(NO_PROXY_VARIABLES.map(|name| (name, NO_PROXY)));
    variables.extend(TRUST_VARIABLES.map(|name| (name, path_text.as_str())));
    // Node 22.21+/24.5+: the built-in fetch follows the proxy variables.
    variables.push(("NODE_USE_ENV_PROXY", "1"));
    match out {
        Output::Json => output::json(&json!({
            "runtime_token": created["runtime_token"],
            "ca_bundle": path_text,
            "variables": variables.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        })),
        Output::Table => {
            println!(
                "# runtime {}: token {} (revoke: runta runtime token revoke {}); CA bundle {}",
                view.runtime_token.runtime, view.runtime_token.id, view.runtime_token.id, path_text
            );
            for (name, value) in variables {
                println!("export {name}={}", shell_quote(value));
            }
        }
    }
    Ok(())
}

/// This machine's trust store as PEM.
fn system_roots() -> Result<String, CliError> {
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        return Err(CliError::Usage(format!(
            "no system root certificates found ({}); pass --system-roots FILE",
            found
                .errors
                .first()
                .map_or_else(|| "the trust store is empty".to_owned(), |e| e.to_string())
        )));
    }
    Ok(found
        .certs
        .iter()
        .map(|cert| crate::interception::certificate_from_der(cert.as_ref()))
        .collect())
}

/// Writes the bundle (public: mode 0644) through a new temporary file beside it (created, never
/// an existing file or symlink followed), so a reader never sees half of it; answers its
/// absolute path.
fn write_bundle(path: &std::path::Path, bundle: &str) -> Result<std::path::PathBuf, CliError> {
    use std::io::Write as _;
    let fail =
        |e: std::io::Error| CliError::Usage(format!("--ca-bundle-out {}: {e}", path.display()));
    let absolute = std::path::absolute(path).map_err(fail)?;
    let mut temporary = absolute.clone().into_os_string();
    temporary.push(format!(".{:016x}.tmp", rand::random::<u64>()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temporary)
        .and_then(|mut file| file.write_all(bundle.as_bytes()))
        .and_then(|()| std::fs::rename(&temporary, &absolute));
    if let Err(err) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(fail(err));
    }
    Ok(absolute)
}

/// A value as one shell word.
fn shell_quote(value: &str) -> String {
    if value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_./:@,=+".contains(&b))
    {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', "'\\''"))
    }
}
