//! Which module runs each command. Client commands (`secrets` with its `rules`, `runtimes`,
//! `tenants`) are thin: build the request, call the admin API, print the answer (`output`).
//! Server commands (`server`) load the configuration like `runta serve` does.

use std::io::Write as _;

use clap::CommandFactory as _;

use super::client::{CliError, Client};
use super::{ApiArgs, AuditCommand, CaCommand, Cli, Command, EnvoyCommand, RuntimeCommand};
use super::{audit, runtimes, secrets, server, tenants};

pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => server::serve(&args).await,
        Command::Migrate(args) => server::migrate(&args).await,
        Command::Keys(command) => server::keys(command).await,
        Command::Envoy(envoy) => match envoy.command {
            EnvoyCommand::Bootstrap(args) => {
                let client = || tenant_client(&envoy.api, envoy.key.api_key.clone());
                server::envoy_bootstrap(&args, &envoy.api, client).await
            }
        },
        Command::Secret(secret) => {
            let client = tenant_client(&secret.client.api, secret.client.key.api_key)?;
            secrets::run(secret.command, &client, secret.client.output.output).await
        }
        Command::Runtime(runtime) => {
            let client = tenant_client(&runtime.client.api, runtime.client.key.api_key)?;
            let out = runtime.client.output.output;
            match runtime.command {
                RuntimeCommand::Token(command) => runtimes::token(command, &client, out).await,
                RuntimeCommand::Env(args) => runtimes::env(&args, &client, out).await,
            }
        }
        Command::Tenant(tenant) => {
            let api = &tenant.client.api;
            let client = Client::new(
                &api.api_url,
                None,
                tenant.client.operator.operator_token,
                api.data_dir.data_dir.clone(),
            )?;
            tenants::tenant(tenant.command, &client, tenant.client.output.output).await
        }
        Command::ApiKey(api_key) => {
            let client = tenant_client(&api_key.client.api, api_key.client.key.api_key)?;
            tenants::api_key(api_key.command, &client, api_key.client.output.output).await
        }
        Command::Audit(AuditCommand::List(args)) => {
            let client = Client::new(
                &args.api.api_url,
                args.key.api_key.clone(),
                args.operator_token.operator_token.clone(),
                args.api.data_dir.data_dir.clone(),
            )?;
            audit::list(&args, &client, args.output.output).await
        }
        Command::Audit(AuditCommand::Verify(args)) => audit::verify(&args).await,
        Command::Ca(CaCommand::Export(args)) => server::ca_export(&args),
        Command::Ca(CaCommand::Generate { cert_out, key_out }) => {
            server::ca_generate(&cert_out, &key_out)
        }
        Command::Completions { shell } => {
            // Into a buffer first: clap_complete panics when its writer fails (`| head`).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "runta", &mut script);
            std::io::stdout()
                .write_all(&script)
                .map_err(|e| CliError::Usage(format!("cannot write the script: {e}")))
        }
    }
}

/// A client of the admin API that calls as a tenant.
fn tenant_client(api: &ApiArgs, api_key: Option<String>) -> Result<Client, CliError> {
    Client::new(&api.api_url, api_key, None, api.data_dir.data_dir.clone())
}
