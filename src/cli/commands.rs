//! What each command does. Client commands are thin: build the request, call the admin API,
//! print the answer. Server commands load the configuration like `runta serve` does.

use std::io::Read as _;

use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::client::{Caller, CliError, Client};
use super::output::{self, RULE_HEADERS, SECRET_HEADERS};
use super::{
    ApiKeyCommand, Cli, Command, KeysCommand, Output, RuleAddArgs, RuleCommand, RuntimeCommand,
    SecretCommand, ServerArgs, TenantCommand, TokenCommand, ValueSource,
};
use crate::bootstrap;
use crate::config::{Config, Overrides};
use crate::crypto::MasterKey;
use crate::serve;

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let g = &cli.global;
    let client = || {
        Client::new(
            &g.api_url,
            g.api_key.clone(),
            g.operator_token.clone(),
            g.data_dir.clone(),
        )
    };
    match cli.command {
        Command::Serve(args) => {
            let config = load_config(&args, &cli.global)?;
            serve::init_logging(&config);
            serve::run(config).await.map_err(|e| {
                tracing::error!(error = %e, "runta serve failed");
                CliError::Usage(e.to_string())
            })
        }
        Command::Migrate(args) => {
            let config = load_config(&args, &cli.global)?;
            let database = bootstrap::existing_database(&config).map_err(usage)?;
            let (_, applied) = serve::open_store(&config, &database.url)
                .await
                .map_err(usage)?;
            println!("{applied} migration(s) applied; the schema is up to date");
            Ok(())
        }
        Command::Keys(command) => keys(command, &cli.global).await,
        Command::Secret(command) => secret(command, &client()?, g.output).await,
        Command::Runtime(RuntimeCommand::Token(command)) => {
            token(command, &client()?, g.output).await
        }
        Command::Tenant(command) => tenant(command, &client()?, g.output).await,
        Command::ApiKey(command) => api_key(command, &client()?, g.output).await,
        Command::Envoy(super::EnvoyCommand::Bootstrap(args)) => {
            envoy_bootstrap(&args, &cli.global, client).await
        }
    }
}

async fn envoy_bootstrap(
    args: &super::EnvoyBootstrapArgs,
    global: &super::GlobalArgs,
    client: impl FnOnce() -> Result<Client, CliError>,
) -> Result<(), CliError> {
    use crate::envoy::{AllowedUpstream, Bootstrap, ExtprocAddress, Mode};
    use secrecy::ExposeSecret;
    let allowed = args
        .allow_upstream_address
        .iter()
        .map(|a| AllowedUpstream::parse(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| CliError::Usage(format!("--allow-upstream-address: {m}")))?;
    let mode = match args.mode {
        super::EnvoyMode::Gateway => Mode::Gateway,
        super::EnvoyMode::Sidecar => {
            let runtime = args.runtime.clone().unwrap_or_default();
            crate::names::validate_name(&runtime)
                .map_err(|m| CliError::Usage(format!("--runtime: {m}")))?;
            let runtime_token = match (&args.runtime_token, args.example) {
                (Some(token), _) => token.trim().to_owned(),
                (None, true) => crate::envoy::EXAMPLE_RUNTIME_TOKEN.to_owned(),
                (None, false) => {
                    let created = client()?
                        .call(
                            Caller::Tenant,
                            Method::POST,
                            &format!("/v1/runtimes/{}/tokens", seg(&runtime)),
                            None::<&()>,
                        )
                        .await?;
                    eprintln!(
                        "created runtime token {} for runtime {runtime}; revoke it with `runta runtime token revoke {}`",
                        output::cell(&created, "/id"),
                        output::cell(&created, "/id"),
                    );
                    output::cell(&created, "/token")
                }
            };
            if runtime_token.is_empty() {
                return Err(CliError::Usage("--runtime-token: must not be empty".into()));
            }
            Mode::Sidecar {
                runtime,
                runtime_token,
            }
        }
    };
    let sidecar = matches!(mode, Mode::Sidecar { .. });
    let mut bootstrap = Bootstrap::defaults(mode);
    bootstrap.allowed_upstreams = allowed;
    if let Some(private) = args.private_upstreams {
        bootstrap.block_private_upstreams = private == super::PrivateUpstreams::Deny;
    }
    let listen = crate::config::parse_listen(&args.listen)
        .map_err(|m| CliError::Usage(format!("--listen: {m}")))?;
    bootstrap.listen_host = listen.ip().to_string();
    bootstrap.listen_port = listen.port();
    bootstrap.ca_bundle = args.ca_bundle.clone();
    bootstrap.message_timeout_ms = args.message_timeout_ms.max(1);
    if let Some(socket) = &args.admin_socket {
        bootstrap.admin_socket = socket.clone();
    }
    if let Some(resolver) = &args.dns_resolver {
        let addr = crate::config::parse_listen(resolver)
            .map_err(|m| CliError::Usage(format!("--dns-resolver: {m}")))?;
        bootstrap.dns_resolver = Some((addr.ip().to_string(), addr.port()));
    }
    // The server's own configuration gives the address and the real gateway token; an
    // example uses neither.
    let config = if args.example {
        None
    } else {
        Some(load_config(&args.server, global)?)
    };
    let extproc = match (&args.extproc_address, &config) {
        (Some(address), _) => Some(address.clone()),
        (None, Some(config)) => Some(match &config.grpc.listen {
            crate::config::GrpcListen::Tcp(addr) if addr.ip().is_unspecified() => {
                format!("127.0.0.1:{}", addr.port())
            }
            listen => listen.to_string(),
        }),
        (None, None) => None,
    };
    if let Some(extproc) = extproc {
        bootstrap.extproc = ExtprocAddress::parse(&extproc)
            .map_err(|m| CliError::Usage(format!("--extproc-address: {m}")))?;
    }
    if let Some(config) = config.as_ref().filter(|_| !sidecar) {
        let token = bootstrap::existing_gateway_token(config).map_err(usage)?.ok_or_else(|| {
            CliError::Usage(format!(
                "no gateway token: configure grpc.gateway_tokens, or run `runta serve` once so that it writes {}",
                config.data_dir.join(bootstrap::GATEWAY_TOKEN_FILE).display()
            ))
        })?;
        bootstrap.gateway_token = token.expose_secret().to_owned();
    }
    let yaml = bootstrap.render();
    match &args.out {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            bootstrap::write_new_file(path, yaml.trim_end().as_bytes()).map_err(usage)?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{yaml}"),
    }
    Ok(())
}

fn usage(err: impl std::fmt::Display) -> CliError {
    CliError::Usage(err.to_string())
}

fn load_config(args: &ServerArgs, global: &super::GlobalArgs) -> Result<Config, CliError> {
    Config::load(
        args.config.clone(),
        &Overrides {
            data_dir: global.data_dir.clone(),
            database_url: args.database_url.clone(),
            grpc_listen: args.grpc_listen.clone(),
            admin_listen: args.admin_listen.clone(),
        },
    )
    .map_err(usage)
}

async fn keys(command: KeysCommand, global: &super::GlobalArgs) -> Result<(), CliError> {
    match command {
        KeysCommand::Generate { out } => {
            let key = MasterKey::generate();
            match out {
                Some(path) => {
                    bootstrap::write_new_file(&path, key.to_base64().as_bytes()).map_err(usage)?;
                    eprintln!(
                        "wrote a new key to {}; list it under [[encryption.keys]] with an id and key_file = \"{}\"",
                        path.display(),
                        path.display()
                    );
                }
                None => println!("{}", key.to_base64().as_str()),
            }
            Ok(())
        }
        KeysCommand::Rotate(args) => {
            let (store, keyring) = open_for_keys(&args, global).await?;
            let report = crate::keys::rotate(&store, &keyring).await.map_err(usage)?;
            println!(
                "re-encrypted {} secret(s) under key '{}'{}",
                report.resealed,
                keyring.active_key_id(),
                if report.skipped > 0 {
                    format!(
                        " ({} changed meanwhile and were already under it)",
                        report.skipped
                    )
                } else {
                    String::new()
                }
            );
            print_key_counts(&store).await?;
            if report.failed.is_empty() {
                Ok(())
            } else {
                for (id, reason) in &report.failed {
                    eprintln!("error: secret {id}: {reason}");
                }
                Err(CliError::Usage(format!(
                    "{} secret(s) could not be re-encrypted; is every old key still listed in encryption.keys?",
                    report.failed.len()
                )))
            }
        }
        KeysCommand::Status(args) => {
            let (store, keyring) = open_for_keys(&args, global).await?;
            println!("active key: {}", keyring.active_key_id());
            print_key_counts(&store).await
        }
    }
}

async fn open_for_keys(
    args: &ServerArgs,
    global: &super::GlobalArgs,
) -> Result<(crate::store::Store, crate::crypto::Keyring), CliError> {
    let config = load_config(args, global)?;
    let database = bootstrap::existing_database(&config).map_err(usage)?;
    let keyring = bootstrap::load_keyring(&config, database.embedded()).map_err(usage)?;
    let (store, _) = serve::open_store(&config, &database.url)
        .await
        .map_err(usage)?;
    Ok((store, keyring))
}

async fn print_key_counts(store: &crate::store::Store) -> Result<(), CliError> {
    let counts = store.count_secrets_by_key().await.map_err(usage)?;
    let rows: Vec<Vec<String>> = counts
        .into_iter()
        .map(|(key, n)| vec![key, n.to_string()])
        .collect();
    output::table(&["KEY", "SECRETS"], &rows);
    Ok(())
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

/// A path segment, percent-encoded (names are validated by the server; this keeps a bad one
/// from changing the path).
fn seg(text: &str) -> String {
    crate::percent::encode(text)
}

async fn secret(command: SecretCommand, client: &Client, out: Output) -> Result<(), CliError> {
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
            print_one(out, &created, || {
                format!(
                    "Created secret {} ({}), version {}, cache TTL {}s.",
                    output::cell(&created, "/name"),
                    output::cell(&created, "/id"),
                    output::cell(&created, "/version"),
                    output::cell(&created, "/cache_ttl_secs"),
                )
            });
        }
        SecretCommand::List => {
            let secrets = client.list_all(Caller::Tenant, "/v1/secrets").await?;
            print_list(out, &secrets, SECRET_HEADERS, output::secret_row);
        }
        SecretCommand::Get { name } => {
            let secret = client
                .call(
                    Caller::Tenant,
                    Method::GET,
                    &format!("/v1/secrets/{}", seg(&name)),
                    None::<&()>,
                )
                .await?;
            print_item(out, &secret, SECRET_HEADERS, output::secret_row);
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
                    &format!("/v1/secrets/{}", seg(&name)),
                    Some(&body),
                )
                .await?;
            print_one(out, &updated, || {
                format!(
                    "Updated secret {}, now at version {}.",
                    output::cell(&updated, "/name"),
                    output::cell(&updated, "/version")
                )
            });
        }
        SecretCommand::Delete { name } => {
            client
                .call(
                    Caller::Tenant,
                    Method::DELETE,
                    &format!("/v1/secrets/{}", seg(&name)),
                    None::<&()>,
                )
                .await?;
            print_one(out, &json!({"deleted": name}), || {
                format!("Deleted secret {name}.")
            });
        }
        SecretCommand::Rule(command) => rule(command, client, out).await?,
    }
    Ok(())
}

async fn rule(command: RuleCommand, client: &Client, out: Output) -> Result<(), CliError> {
    match command {
        RuleCommand::Add(args) => add_rules(args, client, out).await,
        RuleCommand::List { runtime } => {
            let path = match &runtime {
                Some(runtime) => format!("/v1/runtimes/{}/rules", seg(runtime)),
                None => "/v1/rules".to_owned(),
            };
            let rules = client.list_all(Caller::Tenant, &path).await?;
            print_list(out, &rules, RULE_HEADERS, output::rule_row);
            Ok(())
        }
        RuleCommand::Get { rule_id } => {
            let rule = client
                .call(
                    Caller::Tenant,
                    Method::GET,
                    &format!("/v1/rules/{}", seg(&rule_id)),
                    None::<&()>,
                )
                .await?;
            print_item(out, &rule, RULE_HEADERS, output::rule_row);
            Ok(())
        }
        RuleCommand::Delete { rule_id } => {
            client
                .call(
                    Caller::Tenant,
                    Method::DELETE,
                    &format!("/v1/rules/{}", seg(&rule_id)),
                    None::<&()>,
                )
                .await?;
            print_one(out, &json!({"deleted": rule_id}), || {
                format!("Deleted rule {rule_id}.")
            });
            Ok(())
        }
    }
}

async fn add_rules(args: RuleAddArgs, client: &Client, out: Output) -> Result<(), CliError> {
    if let Some(file) = &args.file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
        let body: Value = serde_saphyr::from_str(&text).map_err(|e| {
            CliError::Usage(format!(
                "{}: not a valid YAML rule file: {e}",
                file.display()
            ))
        })?;
        if body.get("rules").is_none() {
            return Err(CliError::Usage(format!(
                "{}: a rule file holds a top-level 'rules:' list",
                file.display()
            )));
        }
        let created = client
            .call(Caller::Tenant, Method::POST, "/v1/rules/batch", Some(&body))
            .await?;
        let rules = created
            .get("data")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        match out {
            Output::Json => output::json(&created),
            Output::Table => {
                println!("Created {} rule(s) from {}.", rules.len(), file.display());
                output::table(
                    RULE_HEADERS,
                    &rules.iter().map(output::rule_row).collect::<Vec<_>>(),
                );
            }
        }
        return Ok(());
    }
    let (Some(runtime), Some(host), Some(credential)) =
        (&args.runtime, &args.host, &args.credential)
    else {
        return Err(CliError::Usage(
            "give RUNTIME, --host and --credential, or -f FILE".into(),
        ));
    };
    if args.inject_header.is_none() && args.inject_param.is_none() {
        return Err(CliError::Usage(
            "give --inject-header NAME or --inject-param NAME".into(),
        ));
    }
    let mut injection = json!({"credential": credential});
    if let Some(header) = &args.inject_header {
        injection["header"] = json!(header);
    }
    if let Some(param) = &args.inject_param {
        injection["param"] = json!(param);
    }
    if let Some(value) = &args.inject_value {
        injection["value"] = json!(value);
    }
    let mut body = json!({"host": host, "injection": injection});
    if let Some(path) = &args.path {
        body["path"] = json!(path);
    }
    let created = client
        .call(
            Caller::Tenant,
            Method::POST,
            &format!("/v1/runtimes/{}/rules", seg(runtime)),
            Some(&body),
        )
        .await?;
    print_one(out, &created, || {
        format!(
            "Created rule {} for runtime {}: {}{} gets {}.",
            output::cell(&created, "/id"),
            output::cell(&created, "/runtime"),
            output::cell(&created, "/host_pattern"),
            created
                .get("path_pattern")
                .and_then(Value::as_str)
                .unwrap_or(""),
            output::rule_row(&created)[5],
        )
    });
    Ok(())
}

async fn token(command: TokenCommand, client: &Client, out: Output) -> Result<(), CliError> {
    const HEADERS: &[&str] = &["ID", "RUNTIME", "CREATED", "REVOKED"];
    let row = |t: &Value| {
        vec![
            output::cell(t, "/id"),
            output::cell(t, "/runtime"),
            output::cell(t, "/created_at"),
            output::cell(t, "/revoked_at"),
        ]
    };
    match command {
        TokenCommand::Create { runtime } => {
            let created = client
                .call(
                    Caller::Tenant,
                    Method::POST,
                    &format!("/v1/runtimes/{}/tokens", seg(&runtime)),
                    None::<&()>,
                )
                .await?;
            print_one(out, &created, || {
                format!(
                    "Created token {} for runtime {}. It is shown only this once:\n{}",
                    output::cell(&created, "/id"),
                    output::cell(&created, "/runtime"),
                    output::cell(&created, "/token"),
                )
            });
        }
        TokenCommand::List { runtime } => {
            let tokens = client
                .list_all(
                    Caller::Tenant,
                    &format!("/v1/runtimes/{}/tokens", seg(&runtime)),
                )
                .await?;
            print_list(out, &tokens, HEADERS, row);
        }
        TokenCommand::Revoke { token_id } => {
            client
                .call(
                    Caller::Tenant,
                    Method::DELETE,
                    &format!("/v1/runtime-tokens/{}", seg(&token_id)),
                    None::<&()>,
                )
                .await?;
            print_one(out, &json!({"revoked": token_id}), || {
                format!("Revoked token {token_id}.")
            });
        }
    }
    Ok(())
}

async fn tenant(command: TenantCommand, client: &Client, out: Output) -> Result<(), CliError> {
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
            print_one(out, &created, || {
                format!(
                    "Created tenant {} ({}). Its API key is shown only this once:\n{}",
                    output::cell(&created, "/tenant/name"),
                    output::cell(&created, "/tenant/id"),
                    output::cell(&created, "/api_key"),
                )
            });
        }
        TenantCommand::List => {
            let tenants = client.list_all(Caller::Operator, "/v1/tenants").await?;
            print_list(out, &tenants, &["NAME", "ID", "CREATED"], |t| {
                vec![
                    output::cell(t, "/name"),
                    output::cell(t, "/id"),
                    output::cell(t, "/created_at"),
                ]
            });
        }
    }
    Ok(())
}

async fn api_key(command: ApiKeyCommand, client: &Client, out: Output) -> Result<(), CliError> {
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
            print_one(out, &created, || {
                format!(
                    "Created API key {}. It is shown only this once:\n{}",
                    output::cell(&created, "/id"),
                    output::cell(&created, "/key"),
                )
            });
        }
        ApiKeyCommand::List => {
            let keys = client.list_all(Caller::Tenant, "/v1/api-keys").await?;
            print_list(out, &keys, &["ID", "NAME", "CREATED"], |k| {
                vec![
                    output::cell(k, "/id"),
                    output::cell(k, "/name"),
                    output::cell(k, "/created_at"),
                ]
            });
        }
        ApiKeyCommand::Delete { key_id } => {
            client
                .call(
                    Caller::Tenant,
                    Method::DELETE,
                    &format!("/v1/api-keys/{}", seg(&key_id)),
                    None::<&()>,
                )
                .await?;
            print_one(out, &json!({"deleted": key_id}), || {
                format!("Deleted API key {key_id}.")
            });
        }
    }
    Ok(())
}

fn print_one(out: Output, value: &Value, human: impl FnOnce() -> String) {
    match out {
        Output::Json => output::json(value),
        Output::Table => println!("{}", human()),
    }
}

fn print_list(out: Output, items: &[Value], headers: &[&str], row: impl Fn(&Value) -> Vec<String>) {
    match out {
        Output::Json => output::json(&Value::Array(items.to_vec())),
        Output::Table => output::table(headers, &items.iter().map(row).collect::<Vec<_>>()),
    }
}

/// One object: itself as JSON, a one-row table for people.
fn print_item(out: Output, item: &Value, headers: &[&str], row: impl Fn(&Value) -> Vec<String>) {
    match out {
        Output::Json => output::json(item),
        Output::Table => output::table(headers, &[row(item)]),
    }
}
