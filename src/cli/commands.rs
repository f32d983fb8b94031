//! Which module runs each command. Client commands (`secrets` with its `rules`, `runtimes`,
//! `tenants`, `audit list`) are thin: build the request, call the admin API, print the answer
//! (`output`). Server commands (`server`, `audit verify`) load the configuration like `runta
//! serve` does.

use super::client::{CliError, Client};
use super::{AuditCommand, Cli, Command, EnvoyCommand, RuntimeCommand};
use super::{audit, runtimes, secrets, server, tenants};

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
        Command::Serve(args) => server::serve(&args, g).await,
        Command::Migrate(args) => server::migrate(&args, g).await,
        Command::Keys(command) => server::keys(command, g).await,
        Command::Envoy(EnvoyCommand::Bootstrap(args)) => {
            server::envoy_bootstrap(&args, g, client).await
        }
        Command::Secret(command) => secrets::run(command, &client()?, g.output).await,
        Command::Runtime(RuntimeCommand::Token(command)) => {
            runtimes::token(command, &client()?, g.output).await
        }
        Command::Tenant(command) => tenants::tenant(command, &client()?, g.output).await,
        Command::ApiKey(command) => tenants::api_key(command, &client()?, g.output).await,
        Command::Audit(AuditCommand::List(args)) => audit::list(&args, &client()?, g.output).await,
        Command::Audit(AuditCommand::Verify(args)) => audit::verify(&args, g).await,
    }
}
