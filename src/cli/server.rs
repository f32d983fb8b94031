//! The server-side commands: `serve`, `migrate`, `keys` and `envoy bootstrap`. They load the
//! configuration the way `runta serve` does and work on the database, the keys and the Envoy
//! configuration directly; only `envoy bootstrap` calls the admin API, for a sidecar's new
//! runtime token.

use std::path::Path;

use super::client::{CliError, Client};
use super::output;
use super::{
    ApiArgs, EnvoyBootstrapArgs, EnvoyInjection, EnvoyMode, KeysCommand, PrivateUpstreams,
    ServeArgs, StoreArgs,
};
use crate::bootstrap;
use crate::config::{Config, Overrides};
use crate::crypto::MasterKey;
use crate::serve;

/// `runta serve`: runs until a signal, or until one of its tasks fails.
pub async fn serve(args: &ServeArgs) -> Result<(), CliError> {
    let overrides = Overrides {
        grpc_listen: args.grpc_listen.clone(),
        admin_listen: args.admin_listen.clone(),
        ..store_overrides(&args.store)
    };
    let config = load_config(args.store.config.file.as_deref(), &overrides)?;
    serve::init_logging(&config);
    serve::run(config).await.map_err(|e| {
        tracing::error!(error = %e, "runta serve failed");
        CliError::Usage(e.to_string())
    })
}

/// `runta migrate`: applies the migrations to an existing database.
pub async fn migrate(args: &StoreArgs) -> Result<(), CliError> {
    let config = load_store_config(args)?;
    let database = bootstrap::existing_database(&config).map_err(usage)?;
    let (_, applied) = serve::open_store(&config, &database.url)
        .await
        .map_err(usage)?;
    println!("{applied} migration(s) applied; the schema is up to date");
    Ok(())
}

/// `runta ca export`: the interception CA certificate, from the files `runta serve` uses.
/// Reads only; a CA that does not exist yet is named, not generated.
pub fn ca_export(args: &StoreArgs) -> Result<(), CliError> {
    let config = load_store_config(args)?;
    let embedded = crate::bootstrap::database(&config)
        .map_err(usage)?
        .embedded();
    let Some((cert, _)) = crate::bootstrap::interception_ca_files(&config, embedded) else {
        return Err(usage(
            "no interception CA: a PostgreSQL deployment configures interception.ca_cert_file \
             and interception.ca_key_file",
        ));
    };
    let pem = std::fs::read_to_string(&cert).map_err(|e| {
        usage(format!(
            "cannot read the interception CA {}: {e}{}",
            cert.display(),
            if embedded && !cert.exists() {
                "; `runta serve` creates it on its first start (or point --data-dir / --config \
                 at an existing one)"
            } else {
                ""
            }
        ))
    })?;
    let certificate = crate::interception::certificate_pem(&pem)
        .map_err(|m| usage(format!("the interception CA {}: {m}", cert.display())))?;
    print!("{certificate}");
    Ok(())
}

/// `runta ca generate`: a new CA into two files that must not exist (the key 0600).
pub fn ca_generate(cert_out: &Path, key_out: &Path) -> Result<(), CliError> {
    for path in [cert_out, key_out] {
        if path.exists() {
            return Err(usage(format!(
                "{} exists; runta ca generate never overwrites a file",
                path.display()
            )));
        }
    }
    let ca = crate::interception::generate_ca().map_err(usage)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(cert_out)
        .and_then(|mut f| {
            use std::io::Write as _;
            f.write_all(ca.cert_pem.as_bytes())
        })
        .map_err(|e| usage(format!("{}: {e}", cert_out.display())))?;
    if let Err(err) = crate::bootstrap::write_new_file(key_out, ca.key_pem.trim_end().as_bytes()) {
        // No certificate without its key left behind to block the next attempt.
        let _ = std::fs::remove_file(cert_out);
        return Err(usage(err));
    }
    eprintln!(
        "wrote the CA certificate to {} and its key to {} (mode 0600); configure them as \
         [interception] ca_cert_file and ca_key_file on every replica",
        cert_out.display(),
        key_out.display()
    );
    Ok(())
}

/// `runta envoy bootstrap`: an Envoy configuration pointing at this server, printed or written.
/// A sidecar without `--runtime-token` gets a new token of its runtime, created through the
/// admin API (the only server command that calls it).
pub async fn envoy_bootstrap(
    args: &EnvoyBootstrapArgs,
    api: &ApiArgs,
    client: impl FnOnce() -> Result<Client, CliError>,
) -> Result<(), CliError> {
    use crate::envoy::{AllowedUpstream, Bootstrap, ExtprocAddress, Injection, Mode};
    use secrecy::ExposeSecret;
    let allowed = args
        .allow_upstream_address
        .iter()
        .map(|a| AllowedUpstream::parse(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| CliError::Usage(format!("--allow-upstream-address: {m}")))?;
    let mode = match args.mode {
        EnvoyMode::Gateway if args.injection == Some(EnvoyInjection::Native) => {
            return Err(CliError::Usage(
                "--injection native: only a sidecar injects natively (the gateway identifies \
                 runtimes per request, through ext_proc)"
                    .into(),
            ));
        }
        EnvoyMode::Gateway => Mode::Gateway,
        EnvoyMode::Sidecar => {
            let runtime = args.runtime.clone().unwrap_or_default();
            crate::names::validate_name(&runtime)
                .map_err(|m| CliError::Usage(format!("--runtime: {m}")))?;
            let runtime_token = match (&args.runtime_token, args.example) {
                (Some(token), _) => token.trim().to_owned(),
                (None, true) => crate::envoy::EXAMPLE_RUNTIME_TOKEN.to_owned(),
                (None, false) => {
                    let (_, created) = super::runtimes::create_token(&client()?, &runtime).await?;
                    eprintln!(
                        "created runtime token {} for runtime {runtime}; revoke it with `runta runtime token revoke {}`",
                        created.runtime_token.id, created.runtime_token.id,
                    );
                    created.token
                }
            };
            if runtime_token.is_empty() {
                return Err(CliError::Usage("--runtime-token: must not be empty".into()));
            }
            Mode::Sidecar {
                runtime,
                runtime_token,
                injection: match args.injection {
                    Some(EnvoyInjection::Extproc) => Injection::ExtProc,
                    Some(EnvoyInjection::Native) | None => Injection::Native,
                },
            }
        }
    };
    let sidecar = matches!(mode, Mode::Sidecar { .. });
    let mut bootstrap = Bootstrap::defaults(mode);
    bootstrap.allowed_upstreams = allowed;
    if let Some(private) = args.private_upstreams {
        bootstrap.block_private_upstreams = private == PrivateUpstreams::Deny;
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
        let overrides = Overrides {
            data_dir: api.data_dir.data_dir.clone(),
            grpc_listen: args.grpc_listen.clone(),
            ..Overrides::default()
        };
        Some(load_config(args.config.as_deref(), &overrides)?)
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

pub(super) fn usage(err: impl std::fmt::Display) -> CliError {
    CliError::Usage(err.to_string())
}

/// The configuration as `runta serve` loads it: the file (`--config`), then the command's
/// flags.
fn load_config(file: Option<&Path>, overrides: &Overrides) -> Result<Config, CliError> {
    Config::load(file.map(Path::to_owned), overrides).map_err(usage)
}

/// What the flags of a command that works on the database override.
fn store_overrides(args: &StoreArgs) -> Overrides {
    Overrides {
        data_dir: args.config.data_dir.data_dir.clone(),
        database_url: args.database_url.clone(),
        ..Overrides::default()
    }
}

/// The configuration of a command that works on the database.
pub(super) fn load_store_config(args: &StoreArgs) -> Result<Config, CliError> {
    load_config(args.config.file.as_deref(), &store_overrides(args))
}

/// `runta keys generate|rotate|status`.
pub async fn keys(command: KeysCommand) -> Result<(), CliError> {
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
            let (store, keyring) = open_for_keys(&args).await?;
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
            let (store, keyring) = open_for_keys(&args).await?;
            println!("active key: {}", keyring.active_key_id());
            print_key_counts(&store).await
        }
    }
}

async fn open_for_keys(
    args: &StoreArgs,
) -> Result<(crate::store::Store, crate::crypto::Keyring), CliError> {
    let config = load_store_config(args)?;
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
