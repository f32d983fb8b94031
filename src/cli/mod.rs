//! The `runta` command: the server (`serve`, `migrate`, `keys`, `envoy`, `audit verify`), the
//! client of the admin API (`secret`, `runtime`, `tenant`, `api-key`, `audit list`) and
//! `completions`. Exit codes: 0 ok;
//! 1 usage or API error (the server's message is printed); 2 the server cannot be reached.
//!
//! Settings shared by several commands are small groups (`ApiArgs`, `ApiKeyArg`, `OutputArg`,
//! `ConfigArgs`, ...) flattened into exactly the commands that read them, so that `--help`
//! lists only what a command uses; a test walks every command and holds it to its list. The
//! client groups are `global` within the command family that takes them: `runta secret
//! --api-key K list` and `runta secret list --api-key K` both work.

mod audit;
mod client;
mod commands;
mod output;
mod rules;
mod runtimes;
mod secrets;
mod server;
mod tenants;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use client::CliError;

/// runta egress: credentials for sandboxed runtimes, injected at the egress gateway.
#[derive(Debug, Parser)]
#[command(name = "runta", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The data directory of the embedded default (server side: its database and generated
/// credentials; client side: where the generated API key and operator token are read).
#[derive(Debug, Args)]
pub struct DataDirArg {
    /// The data directory of the embedded default: its database and the credentials `runta
    /// serve` generates [default: ./runta-data].
    #[arg(long, global = true, env = "RUNTA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Where the admin API is, and the data directory its generated credentials are read from.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// URL of the admin API.
    #[arg(
        long,
        global = true,
        env = "RUNTA_API_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub api_url: String,
    #[command(flatten)]
    pub data_dir: DataDirArg,
}

/// The credential of a tenant's calls.
#[derive(Debug, Args)]
pub struct ApiKeyArg {
    /// A tenant API key [default: the key `runta serve` wrote into its data directory].
    #[arg(long, global = true, env = "RUNTA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// How answers are printed.
#[derive(Debug, Args)]
pub struct OutputArg {
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// The settings of a command family that calls the admin API as a tenant.
#[derive(Debug, Args)]
pub struct TenantClientArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub key: ApiKeyArg,
    #[command(flatten)]
    pub output: OutputArg,
}

/// The operator token, for the commands that call the admin API as the operator.
#[derive(Debug, Args)]
pub struct OperatorTokenArg {
    /// The operator token [default: the token `runta serve` wrote into its data directory].
    #[arg(
        long,
        global = true,
        env = "RUNTA_OPERATOR_TOKEN",
        hide_env_values = true
    )]
    pub operator_token: Option<String>,
}

/// The settings of a command family that calls the admin API as the operator.
#[derive(Debug, Args)]
pub struct OperatorClientArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub operator: OperatorTokenArg,
    #[command(flatten)]
    pub output: OutputArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables for people.
    Table,
    /// The server's JSON, for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (admin API; SQLite in ./runta-data by default).
    Serve(ServeArgs),
    /// Apply database migrations and exit.
    Migrate(StoreArgs),
    /// Encryption keys: generate one, or re-encrypt every secret under the active key.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Secrets and their injection rules.
    Secret(SecretArgs),
    /// Runtimes: egress tokens.
    Runtime(RuntimeArgs),
    /// Tenants (needs the operator token).
    Tenant(TenantArgs),
    /// API keys of your tenant.
    #[command(name = "api-key")]
    ApiKey(ApiKeyArgs),
    /// Envoy configurations pointing at this server.
    Envoy(EnvoyArgs),
    /// The audit trail of admin changes: list it, or verify its hash chain.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// runta's HTTPS interception CA: the certificate runtimes trust.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Print a shell completion script (`source <(runta completions bash)`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit events (your tenant's; every tenant's with --operator), oldest first.
    List(AuditListArgs),
    /// Check the hash chain in the database (server-side, read-only): exit 0 when intact,
    /// 1 naming the first event that does not hold.
    Verify(AuditVerifyArgs),
}

#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub output: OutputArg,
}

#[derive(Debug, Args)]
pub struct AuditListArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub key: ApiKeyArg,
    #[command(flatten)]
    pub operator_token: OperatorTokenArg,
    #[command(flatten)]
    pub output: OutputArg,
    /// Only events at or after this time (RFC 3339, e.g. 2026-01-31T12:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Only events before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// Only this action (secret.create, rule.delete, api_key.create, keys.rotate, ...).
    #[arg(long)]
    pub action: Option<String>,
    /// Only changes to this kind of target (tenant, api_key, secret, rule, runtime_token,
    /// encryption_key).
    #[arg(long)]
    pub target_kind: Option<String>,
    /// Only changes to the target with this id.
    #[arg(long)]
    pub target_id: Option<String>,
    /// Use the operator token: every tenant's events, and key rotations.
    #[arg(long)]
    pub operator: bool,
}

/// `runta secret`: its settings and subcommand.
#[derive(Debug, Args)]
pub struct SecretArgs {
    #[command(flatten)]
    pub client: TenantClientArgs,
    #[command(subcommand)]
    pub command: SecretCommand,
}

/// `runta runtime`: its settings and subcommand.
#[derive(Debug, Args)]
pub struct RuntimeArgs {
    #[command(flatten)]
    pub client: TenantClientArgs,
    #[command(subcommand)]
    pub command: RuntimeCommand,
}

/// `runta tenant`: its settings and subcommand.
#[derive(Debug, Args)]
pub struct TenantArgs {
    #[command(flatten)]
    pub client: OperatorClientArgs,
    #[command(subcommand)]
    pub command: TenantCommand,
}

/// `runta api-key`: its settings and subcommand.
#[derive(Debug, Args)]
pub struct ApiKeyArgs {
    #[command(flatten)]
    pub client: TenantClientArgs,
    #[command(subcommand)]
    pub command: ApiKeyCommand,
}

/// `runta envoy`: the admin API a sidecar's new runtime token is created through (JSON output
/// has no use: the answer is a configuration), and the subcommand.
#[derive(Debug, Args)]
pub struct EnvoyArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub key: ApiKeyArg,
    #[command(subcommand)]
    pub command: EnvoyCommand,
}

#[derive(Debug, Subcommand)]
pub enum EnvoyCommand {
    /// Print a ready Envoy configuration: a per-runtime sidecar or the shared edge gateway.
    Bootstrap(EnvoyBootstrapArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EnvoyMode {
    /// One Envoy per runtime, authenticated as that runtime by a runtime token.
    Sidecar,
    /// One Envoy for many runtimes, identified by runtime tokens (proxy credentials).
    Gateway,
}

/// How a sidecar injects credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EnvoyInjection {
    /// runta compiles the runtime's rules into Envoy routes (pushed over ADS): Envoy injects
    /// itself; what runta cannot compile goes through ext_proc.
    Native,
    /// Every request through runta's ext_proc service.
    Extproc,
}

/// Whether private address ranges are acceptable upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrivateUpstreams {
    Allow,
    Deny,
}

#[derive(Debug, Args)]
pub struct EnvoyBootstrapArgs {
    #[arg(long, value_enum)]
    pub mode: EnvoyMode,
    /// The runtime (sidecar mode).
    #[arg(long, required_if_eq("mode", "sidecar"))]
    pub runtime: Option<String>,
    /// The runtime token the sidecar authenticates with [default: a new one, created through
    /// the admin API].
    #[arg(long, env = "RUNTA_RUNTIME_TOKEN", hide_env_values = true)]
    pub runtime_token: Option<String>,
    /// An upstream address allowed although its range is refused (loopback, link-local,
    /// private): IP, CIDR, IP:PORT, CIDR:PORT, [IPv6]:PORT. Repeatable.
    #[arg(long = "allow-upstream-address", value_name = "IP_OR_CIDR[:PORT]")]
    pub allow_upstream_address: Vec<String>,
    /// Private ranges (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7) as upstreams
    /// [default: deny for the gateway, allow for a sidecar].
    #[arg(long, value_enum)]
    pub private_upstreams: Option<PrivateUpstreams>,
    /// The proxy listener runtimes use as HTTP_PROXY.
    #[arg(long, default_value = "127.0.0.1:10000")]
    pub listen: String,
    /// runta's ext_proc address as Envoy reaches it, HOST:PORT or unix:PATH [default: the
    /// server's grpc.listen].
    #[arg(long)]
    pub extproc_address: Option<String>,
    /// CA certificates upstream servers are validated against.
    #[arg(long, default_value = "/etc/ssl/certs/ca-certificates.crt")]
    pub ca_bundle: String,
    /// A DNS server (HOST:PORT) for upstream names [default: the system's resolver].
    #[arg(long)]
    pub dns_resolver: Option<String>,
    /// Envoy's admin interface, a Unix socket [default: /tmp/runta-envoy-MODE-admin.sock].
    #[arg(long)]
    pub admin_socket: Option<String>,
    /// How long runta may take per request before Envoy fails it.
    #[arg(long, default_value_t = 500)]
    pub message_timeout_ms: u32,
    /// Use the placeholder tokens of the examples in envoy/ instead of the server's gateway
    /// token or a new runtime token.
    #[arg(long)]
    pub example: bool,
    /// How a sidecar injects [default: native]; the gateway always uses ext_proc.
    #[arg(long, value_enum)]
    pub injection: Option<EnvoyInjection>,
    /// Write the configuration to this file (mode 0600: it holds a token).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A TOML configuration file [env: RUNTA_CONFIG]; gives the server's ext_proc address and
    /// gateway token.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address of the server's ext_proc gRPC service [default: from the configuration].
    #[arg(long)]
    pub grpc_listen: Option<String>,
}

/// Where the server's configuration comes from.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// A TOML configuration file [env: RUNTA_CONFIG].
    #[arg(long = "config", value_name = "CONFIG")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub data_dir: DataDirArg,
}

/// The commands that work on the database: `migrate`, `keys rotate`, `keys status`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Database URL: sqlite://PATH or postgres://... [default: SQLite in the data directory].
    #[arg(long)]
    pub database_url: Option<String>,
}

/// `runta serve`: the configuration, the database and the listeners.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address of the ext_proc gRPC service.
    #[arg(long)]
    pub grpc_listen: Option<String>,
    /// Address of the admin API.
    #[arg(long)]
    pub admin_listen: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new random key (base64 of 64 bytes) for `encryption.keys`.
    Generate {
        /// Write it to this file (mode 0600, must not exist) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Re-encrypt every secret not under the active key.
    Rotate(StoreArgs),
    /// How many secrets each key holds.
    Status(StoreArgs),
}

/// Where a secret's value comes from; never a command-line argument, so it stays out of shell
/// history and process listings.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct ValueSource {
    /// Read the value from this environment variable.
    #[arg(long, value_name = "VAR")]
    pub value_env: Option<String>,
    /// Read the value from standard input (one trailing newline is dropped).
    #[arg(long)]
    pub value_stdin: bool,
    /// Prompt for the value on the terminal, without echo.
    #[arg(long)]
    pub prompt: bool,
}

impl ValueSource {
    fn given(&self) -> bool {
        self.value_env.is_some() || self.value_stdin || self.prompt
    }
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a secret.
    Add {
        name: String,
        #[command(flatten)]
        value: ValueSource,
        /// How long the gateway may keep the decrypted value in memory (0: never).
        #[arg(long)]
        cache_ttl_secs: Option<i64>,
        #[arg(long)]
        display_name: Option<String>,
    },
    /// List secrets (metadata only; values are never returned).
    List,
    /// Show a secret's metadata.
    Get { name: String },
    /// Change a secret's value, display name or cache TTL.
    Update {
        name: String,
        #[command(flatten)]
        value: ValueSource,
        #[arg(long)]
        cache_ttl_secs: Option<i64>,
        #[arg(long, conflicts_with = "clear_display_name")]
        display_name: Option<String>,
        /// Remove the display name.
        #[arg(long)]
        clear_display_name: bool,
    },
    /// Delete a secret (refused while rules use it).
    Delete { name: String },
    /// Injection rules.
    #[command(subcommand)]
    Rule(RuleCommand),
}

#[derive(Debug, Subcommand)]
pub enum RuleCommand {
    /// Add a rule to a runtime, or every rule of a YAML file (-f).
    Add(RuleAddArgs),
    /// List the rules of a runtime, or of the whole tenant.
    List { runtime: Option<String> },
    /// Show one rule.
    Get { rule_id: String },
    /// Delete a rule.
    Delete { rule_id: String },
}

#[derive(Debug, Args)]
pub struct RuleAddArgs {
    /// The runtime the rule applies to.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub runtime: Option<String>,
    /// A YAML rule file (`rules: [{runtime, host, path, credential, inject: {...}}]`);
    /// all its rules are created, or none.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Destination host: api.example.com, *.example.com, with an optional :port, or a URL.
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    pub host: Option<String>,
    /// Path glob ('*' matches anything, '/' included); no path: every path.
    #[arg(long, conflicts_with = "file")]
    pub path: Option<String>,
    /// The secret to inject.
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    pub credential: Option<String>,
    /// Inject into this header.
    #[arg(long, conflicts_with_all = ["file", "inject_param"])]
    pub inject_header: Option<String>,
    /// Inject into this query parameter.
    #[arg(long, conflicts_with = "file")]
    pub inject_param: Option<String>,
    /// Value template; ${credential} stands for the secret [default: ${credential}].
    #[arg(long, conflicts_with = "file")]
    pub inject_value: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RuntimeCommand {
    /// Egress tokens of a runtime (its proxy credentials at a shared gateway).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the `export` lines a runtime needs: proxy variables with a new token, and trust
    /// variables pointing at a CA bundle (system roots and runta's CA) written to a file.
    Env(RuntimeEnvArgs),
}

#[derive(Debug, Args)]
pub struct RuntimeEnvArgs {
    pub runtime: String,
    /// The egress gateway's proxy URL, as the runtime reaches it.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:10000")]
    pub gateway: String,
    /// Where to write the CA bundle the trust variables name (replaced if it exists).
    #[arg(long, value_name = "FILE", default_value = "runta-ca-bundle.pem")]
    pub ca_bundle_out: PathBuf,
    /// The roots the bundle holds besides runta's CA (PEM) [default: this machine's trust
    /// store].
    #[arg(long, value_name = "FILE")]
    pub system_roots: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the interception CA certificate (PEM), found the way `runta serve` finds it.
    Export(StoreArgs),
    /// Generate a new interception CA (ECDSA P-256, ten years) for `[interception]
    /// ca_cert_file` / `ca_key_file`; neither file may exist.
    Generate {
        /// Where to write the certificate (PEM).
        #[arg(long, value_name = "FILE")]
        cert_out: PathBuf,
        /// Where to write the private key (PKCS#8 PEM, mode 0600).
        #[arg(long, value_name = "FILE")]
        key_out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token (shown once).
    Create { runtime: String },
    /// List a runtime's tokens.
    List { runtime: String },
    /// Revoke a token.
    Revoke { token_id: String },
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and its first API key (shown once).
    Create { name: String },
    /// List tenants.
    List,
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create an API key for your tenant (shown once).
    Create {
        #[arg(long)]
        name: Option<String>,
    },
    /// List your tenant's API keys.
    List,
    /// Delete an API key.
    Delete { key_id: String },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            // Help and version are successes; any other parse error is a usage error (1).
            return if err.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // A blocking thread that ran a full load of the rules (hundreds of MiB allocated and
        // freed at a million rules) keeps what it freed in the allocator's heap of that thread
        // until the thread ends: idle ones end after a second instead of tokio's ten, so the
        // server is back at its steady memory soon after a load (measured: 428 MiB for ten
        // seconds after a restart at a million rules, then 306 MiB).
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
