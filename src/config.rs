//! Configuration: built-in defaults < TOML file (`--config` / `RUNTA_CONFIG`) < `RUNTA_*`
//! environment (nested keys joined with `__`) < command-line flags.
//!
//! Loaded once, validated whole before any port is bound, then passed down; nothing else in
//! the service reads the environment for settings. Every secret-bearing setting has a `_file`
//! form, and is held as a `SecretString` from the moment it is read.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::store::BackendKind;

/// The top-level sections; `RUNTA_*` variables outside them (client settings such as
/// `RUNTA_API_URL`) are not configuration of the server and are left alone.
const SECTIONS: &[&str] = &[
    "data_dir",
    "database",
    "admin",
    "grpc",
    "encryption",
    "injection",
    "interception",
    "log",
    "audit",
];

/// Everything `runta serve` can be told.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the embedded default keeps its database and generated credentials.
    pub data_dir: PathBuf,
    pub database: DatabaseConfig,
    pub admin: AdminConfig,
    pub grpc: GrpcConfig,
    pub encryption: EncryptionConfig,
    pub injection: InjectionConfig,
    pub interception: InterceptionConfig,
    pub log: LogConfig,
    pub audit: AuditConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./runta-data"),
            database: DatabaseConfig::default(),
            admin: AdminConfig::default(),
            grpc: GrpcConfig::default(),
            encryption: EncryptionConfig::default(),
            injection: InjectionConfig::default(),
            interception: InterceptionConfig::default(),
            log: LogConfig::default(),
            audit: AuditConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://...`; unset: SQLite in `data_dir/runta.db`.
    #[serde(skip_serializing)]
    pub url: Option<SecretString>,
    #[serde(skip_serializing)]
    pub url_file: Option<PathBuf>,
    pub max_connections: usize,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            url_file: None,
            max_connections: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin REST API (and `/metrics`, `/healthz`, `/readyz`).
    #[serde(with = "listen_addr")]
    pub listen: SocketAddr,
    /// Token that manages tenants; unset in the embedded default: generated into the data dir.
    #[serde(skip_serializing)]
    pub operator_token: Option<SecretString>,
    #[serde(skip_serializing)]
    pub operator_token_file: Option<PathBuf>,
    /// Largest request body accepted, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// The nice value (0-19) of the control plane's threads (the admin API, the periodic
    /// reload, the secret sweep): above the data path's, so that admin writes take the CPU
    /// decisions leave. 0: the same priority.
    pub thread_nice: u8,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            operator_token: None,
            operator_token_file: None,
            max_body_bytes: 1024 * 1024,
            thread_nice: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Address of the gRPC port (ext_proc and the other services Envoy calls): `HOST:PORT`,
    /// or `unix:PATH` for a Unix socket.
    pub listen: GrpcListen,
    /// Tokens gateways authenticate with (`authorization: Bearer ...`).
    #[serde(skip_serializing)]
    pub gateway_tokens: Vec<SecretString>,
    #[serde(skip_serializing)]
    pub gateway_token_file: Option<PathBuf>,
    /// TLS for the gRPC listener; with `client_ca_file`, a client certificate signed by that
    /// CA authenticates a gateway.
    pub tls: Option<GrpcTlsConfig>,
    /// Gateways with a name (`[[grpc.gateways]]`: `name` and `token` or `token_file`), so that
    /// `identity_gateways` can trust one of them.
    pub gateways: Vec<NamedGateway>,
    /// Gateways allowed to name the tenant and runtime of a stream (`x-runta-tenant`,
    /// `x-runta-runtime`): names from `gateways`, or subject names (CN or DNS name) of client
    /// certificates. Any other gateway asserting an identity is refused: such a credential
    /// would be a master key to every runtime's secrets. Sidecars authenticate with a runtime
    /// token instead (`x-runta-runtime-token`), which fixes their identity.
    pub identity_gateways: Vec<String>,
    /// Development only: answer every caller, authenticated or not.
    pub insecure_no_auth: bool,
    /// HTTP/2 streams per gateway connection (one per in-flight request).
    pub max_concurrent_streams: u32,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: GrpcListen::Tcp(SocketAddr::from(([127, 0, 0, 1], 50051))),
            gateway_tokens: Vec::new(),
            gateway_token_file: None,
            tls: None,
            gateways: Vec::new(),
            identity_gateways: Vec::new(),
            insecure_no_auth: false,
            max_concurrent_streams: 4096,
        }
    }
}

/// A gateway credential with a name.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NamedGateway {
    pub name: String,
    #[serde(default, skip_serializing)]
    pub token: Option<SecretString>,
    #[serde(default, skip_serializing)]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

/// Where the gRPC service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for GrpcListen {
    type Err = String;

    /// `HOST:PORT` or `unix:PATH`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.strip_prefix("unix:") {
            Some("") => {
                Err("'unix:' needs a socket path, as in unix:/run/runta/extproc.sock".into())
            }
            Some(path) => Ok(Self::Unix(PathBuf::from(path))),
            None => parse_listen(text).map(Self::Tcp),
        }
    }
}

impl std::fmt::Display for GrpcListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Serialize for GrpcListen {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GrpcListen {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `admin.listen` as text in files and flags, a `SocketAddr` once loaded: parsed once, with
/// the message `parse_listen` gives.
mod listen_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(addr: &SocketAddr, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(addr)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_listen(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// Id of the key new values are sealed with; default: the last key listed.
    pub active_key: Option<String>,
    #[serde(skip_serializing)]
    pub keys: Vec<KeyConfig>,
}

/// One key of the keyring: inline base64 or a file holding it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub id: String,
    pub key: Option<SecretString>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InjectionConfig {
    /// What happens to a request whose runtime cannot be identified.
    pub unidentified: Unidentified,
    /// Every so many seconds the snapshot is compared with the store (a digest per runtime)
    /// and what differs is re-read: the safety net behind the changes applied as they are made
    /// and announced.
    pub reload_interval_secs: u64,
}

impl Default for InjectionConfig {
    fn default() -> Self {
        Self {
            unidentified: Unidentified::Pass,
            reload_interval_secs: 30,
        }
    }
}

/// HTTPS interception: CONNECT tunnels to a host the runtime has rules for are terminated
/// with a leaf certificate signed by runta's CA, so their requests can be injected into.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct InterceptionConfig {
    /// The CA certificate (PEM) leaves are signed with; every replica must use the same one.
    /// Unset in the embedded default: `ca.pem` in the data directory, generated on first start.
    pub ca_cert_file: Option<PathBuf>,
    /// Its private key (PEM, PKCS#8).
    pub ca_key_file: Option<PathBuf>,
    /// How long a leaf certificate is valid; it is re-minted when a third of that is left.
    pub leaf_ttl_secs: u64,
    /// What happens to a tunnel to a host the runtime has no rule for.
    pub unmatched_connect: UnmatchedConnect,
}

impl Default for InterceptionConfig {
    fn default() -> Self {
        Self {
            ca_cert_file: None,
            ca_key_file: None,
            leaf_ttl_secs: 24 * 3600,
            unmatched_connect: UnmatchedConnect::Tunnel,
        }
    }
}

/// A CONNECT to a target no rule of the runtime covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnmatchedConnect {
    /// Passed through as a plain TCP tunnel: the client talks TLS with the real server.
    #[default]
    Tunnel,
    /// Refused with 403.
    Deny,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unidentified {
    /// Forwarded without injection.
    #[default]
    Pass,
    /// Refused with 403.
    Deny,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter (`info`, `runta=debug`, ...).
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The audit trail is always written to the database; this adds a copy for log shippers.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Also write each committed event as one JSON line: `"stdout"` or a file path
    /// (appended to, created with mode 0600).
    pub stream: Option<AuditStream>,
}

/// Where the JSON lines of the audit trail go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum AuditStream {
    Stdout,
    File(PathBuf),
}

impl TryFrom<String> for AuditStream {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.trim() {
            "" => Err("must be \"stdout\" or a file path".into()),
            "stdout" => Ok(Self::Stdout),
            path => Ok(Self::File(PathBuf::from(path))),
        }
    }
}

impl From<AuditStream> for String {
    fn from(stream: AuditStream) -> Self {
        match stream {
            AuditStream::Stdout => "stdout".into(),
            AuditStream::File(path) => path.display().to_string(),
        }
    }
}

/// Values given on the command line; they win over every other source.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub grpc_listen: Option<String>,
    pub admin_listen: Option<String>,
}

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Loads and validates the configuration from all sources: `file` (`--config`) or else
    /// the file `RUNTA_CONFIG` names, the `RUNTA_*` environment, then `overrides`.
    pub fn load(file: Option<PathBuf>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let file = file.or_else(|| std::env::var_os("RUNTA_CONFIG").map(PathBuf::from));
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::string(&read_config_file(&file)?));
        }
        figment = figment.merge(Env::prefixed("RUNTA_").split("__").filter(|key| {
            // The key is already split into a dotted path here ("grpc.listen").
            let section = key.as_str().split('.').next().unwrap_or_default();
            SECTIONS.iter().any(|s| section.eq_ignore_ascii_case(s))
        }));
        if let Some(dir) = &overrides.data_dir {
            figment = figment.merge(Serialized::default("data_dir", dir));
        }
        if let Some(url) = &overrides.database_url {
            figment = figment.merge(Serialized::default("database.url", url));
        }
        if let Some(listen) = &overrides.grpc_listen {
            figment = figment.merge(Serialized::default("grpc.listen", listen));
        }
        if let Some(listen) = &overrides.admin_listen {
            figment = figment.merge(Serialized::default("admin.listen", listen));
        }
        let config: Config = figment.extract().map_err(|e| {
            let key = e.path.join(".");
            let key = if key.is_empty() {
                "config".to_owned()
            } else {
                key
            };
            ConfigError::new(key, describe_error(&e.kind))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks everything that can be checked without touching the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.grpc.tls.is_some() && matches!(self.grpc.listen, GrpcListen::Unix(_)) {
            return Err(ConfigError::new(
                "grpc.tls",
                "TLS is for TCP listeners; a Unix socket is protected by its file permissions",
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, gateway) in self.grpc.gateways.iter().enumerate() {
            let field = format!("grpc.gateways[{i}]");
            crate::names::validate_name(&gateway.name)
                .map_err(|m| ConfigError::new(format!("{field}.name"), m))?;
            if !names.insert(gateway.name.as_str()) {
                return Err(ConfigError::new(
                    format!("{field}.name"),
                    format!("the gateway name '{}' is listed twice", gateway.name),
                ));
            }
            if gateway.token.is_some() == gateway.token_file.is_some() {
                return Err(ConfigError::new(
                    field,
                    "set exactly one of token and token_file",
                ));
            }
        }
        for (i, name) in self.grpc.identity_gateways.iter().enumerate() {
            if name.trim().is_empty() {
                return Err(ConfigError::new(
                    format!("grpc.identity_gateways[{i}]"),
                    "must not be empty",
                ));
            }
        }
        if self.grpc.max_concurrent_streams == 0 {
            return Err(ConfigError::new(
                "grpc.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if self.injection.reload_interval_secs == 0 {
            return Err(ConfigError::new(
                "injection.reload_interval_secs",
                "must be at least 1",
            ));
        }
        if self.database.url.is_some() && self.database.url_file.is_some() {
            return Err(ConfigError::new(
                "database.url",
                "set database.url or database.url_file, not both",
            ));
        }
        if let Some(url) = &self.database.url {
            use secrecy::ExposeSecret;
            BackendKind::from_url(url.expose_secret())
                .map_err(|m| ConfigError::new("database.url", m))?;
        }
        if self.database.max_connections == 0 || self.database.max_connections > 1000 {
            return Err(ConfigError::new(
                "database.max_connections",
                "must be between 1 and 1000",
            ));
        }
        if self.admin.operator_token.is_some() && self.admin.operator_token_file.is_some() {
            return Err(ConfigError::new(
                "admin.operator_token",
                "set admin.operator_token or admin.operator_token_file, not both",
            ));
        }
        if self.admin.max_body_bytes < 1024 {
            return Err(ConfigError::new(
                "admin.max_body_bytes",
                "must be at least 1024",
            ));
        }
        if self.admin.thread_nice > 19 {
            return Err(ConfigError::new(
                "admin.thread_nice",
                format!(
                    "must be a nice value from 0 to 19 (got {})",
                    self.admin.thread_nice
                ),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, key) in self.encryption.keys.iter().enumerate() {
            let field = format!("encryption.keys[{i}]");
            if key.id.is_empty()
                || key.id.len() > 64
                || !key
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(ConfigError::new(
                    format!("{field}.id"),
                    "must be 1-64 letters, digits, '-', '_' or '.'",
                ));
            }
            if !seen.insert(key.id.as_str()) {
                return Err(ConfigError::new(
                    format!("{field}.id"),
                    format!("the key id '{}' is listed twice", key.id),
                ));
            }
            if key.key.is_some() == key.key_file.is_some() {
                return Err(ConfigError::new(
                    field,
                    "set exactly one of key and key_file",
                ));
            }
        }
        if let Some(active) = &self.encryption.active_key
            && !self.encryption.keys.iter().any(|k| &k.id == active)
        {
            return Err(ConfigError::new(
                "encryption.active_key",
                format!("no key with id '{active}' is listed in encryption.keys"),
            ));
        }
        if self.interception.ca_cert_file.is_some() != self.interception.ca_key_file.is_some() {
            return Err(ConfigError::new(
                "interception.ca_cert_file",
                "set both interception.ca_cert_file and interception.ca_key_file, or neither",
            ));
        }
        if !(300..=90 * 24 * 3600).contains(&self.interception.leaf_ttl_secs) {
            return Err(ConfigError::new(
                "interception.leaf_ttl_secs",
                "must be between 300 (5 minutes) and 7776000 (90 days)",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError::new("log.level", e.to_string()))?;
        Ok(())
    }

    /// The database URL: configured, read from its file, or SQLite in the data directory.
    pub fn database_url(&self) -> Result<SecretString, ConfigError> {
        if let Some(url) = &self.database.url {
            return Ok(url.clone());
        }
        if let Some(file) = &self.database.url_file {
            let url =
                read_secret_file(file).map_err(|m| ConfigError::new("database.url_file", m))?;
            use secrecy::ExposeSecret;
            BackendKind::from_url(url.expose_secret())
                .map_err(|m| ConfigError::new("database.url_file", m))?;
            return Ok(url);
        }
        Ok(SecretString::from(format!(
            "sqlite://{}",
            self.data_dir.join("runta.db").display()
        )))
    }
}

/// The text of the configuration file. Anything readable is one (a regular file, `/dev/null`,
/// a pipe such as the shell's `<(...)`), read once, since a pipe can be read only once; a
/// directory is not.
fn read_config_file(file: &Path) -> Result<String, ConfigError> {
    if file.is_dir() {
        return Err(ConfigError::new(
            "config",
            format!(
                "{} is a directory, not a configuration file",
                file.display()
            ),
        ));
    }
    std::fs::read_to_string(file).map_err(|e| {
        ConfigError::new(
            "config",
            format!("cannot read the configuration file {}: {e}", file.display()),
        )
    })
}

/// A figment error without the value it found: a token, key or URL written with the wrong
/// type must not be echoed into a terminal or a log.
fn describe_error(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::InvalidType(_, expected) => format!("invalid type, expected {expected}"),
        Kind::InvalidValue(_, expected) => format!("invalid value, expected {expected}"),
        other => other.to_string(),
    }
}

/// A listen address: `HOST:PORT` (port 0 picks a free port).
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>().map_err(|_| {
        format!("'{text}' is not an address and port such as 127.0.0.1:8080 or [::1]:8080")
    })
}

/// Reads a secret from a file, trimming surrounding white space (a trailing newline).
pub fn read_secret_file(path: &Path) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[allow(clippy::result_large_err)] // figment's Jail API returns figment::Error.
    /// Loads with exactly these `RUNTA_*` variables set (figment's Jail isolates and
    /// serialises tests that touch the environment).
    fn load(
        file: Option<&str>,
        env: &[(&str, &str)],
        overrides: Overrides,
    ) -> Result<Config, ConfigError> {
        let mut result = None;
        figment::Jail::expect_with(|jail| {
            for (key, value) in env {
                jail.set_env(key, value);
            }
            let path = file.map(|text| {
                jail.create_file("runta.toml", text).unwrap();
                PathBuf::from("runta.toml")
            });
            result = Some(Config::load(path, &overrides));
            Ok(())
        });
        result.unwrap()
    }

    #[test]
    fn defaults_are_the_quickstart() {
        let config = load(None, &[], Overrides::default()).unwrap();
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.grpc.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(config.data_dir, PathBuf::from("./runta-data"));
        assert_eq!(
            config.database_url().unwrap().expose_secret(),
            "sqlite://./runta-data/runta.db"
        );
    }

    #[test]
    fn precedence_is_defaults_file_env_flags() {
        let file = "[admin]\nlisten = \"127.0.0.1:1000\"\n[grpc]\nlisten = \"127.0.0.1:2000\"\n[database]\nmax_connections = 3\n";
        let config = load(
            Some(file),
            &[
                ("RUNTA_GRPC__LISTEN", "127.0.0.1:3000"),
                ("RUNTA_DATABASE__MAX_CONNECTIONS", "7"),
            ],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:1000");
        assert_eq!(config.grpc.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(config.database.max_connections, 7);
        let config = load(
            Some(file),
            &[("RUNTA_ADMIN__LISTEN", "127.0.0.1:3000")],
            Overrides {
                admin_listen: Some("127.0.0.1:4000".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:4000");
    }

    #[test]
    fn client_variables_are_not_server_configuration() {
        let config = load(
            None,
            &[
                ("RUNTA_API_URL", "http://x"),
                ("RUNTA_API_KEY", "k"),
                ("RUNTA_TEST_DATABASE_URL", "x"),
            ],
            Overrides::default(),
        );
        assert!(config.is_ok());
    }

    #[test]
    fn errors_name_the_key() {
        for (file, env, key) in [
            (
                Some("[admin]\nlisten = \"nowhere\"\n"),
                vec![],
                "admin.listen",
            ),
            (Some("[admin]\nlisen = \"x\"\n"), vec![], "lisen"),
            (
                None,
                vec![("RUNTA_DATABASE__URL", "mysql://x")],
                "database.url",
            ),
            (
                None,
                vec![("RUNTA_DATABASE__MAX_CONNECTIONS", "many")],
                "database.max_connections",
            ),
            (
                Some("[injection]\nunidentified = \"maybe\"\n"),
                vec![],
                "injection.unidentified",
            ),
            (
                Some("[encryption]\nactive_key = \"k9\"\n"),
                vec![],
                "encryption.active_key",
            ),
            (
                Some("[[encryption.keys]]\nid = \"k1\"\n"),
                vec![],
                "encryption.keys[0]",
            ),
            (
                None,
                vec![("RUNTA_ADMIN__THREAD_NICE", "20")],
                "admin.thread_nice",
            ),
            (
                Some("[admin]\nthread_nice = -5\n"),
                vec![],
                "admin.thread_nice",
            ),
        ] {
            let err = load(file, &env, Overrides::default()).unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }

    #[allow(clippy::result_large_err)] // figment's Jail API returns figment::Error.
    /// Loads `file` as given, with no `RUNTA_*` variables.
    fn load_path(file: &str) -> Result<Config, ConfigError> {
        let mut result = None;
        figment::Jail::expect_with(|_| {
            result = Some(Config::load(
                Some(PathBuf::from(file)),
                &Overrides::default(),
            ));
            Ok(())
        });
        result.unwrap()
    }

    #[test]
    fn special_files_are_configuration_files() {
        // /dev/null: an empty configuration, the defaults.
        let config = load_path("/dev/null").unwrap();
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:8080");
        // A pipe (a FIFO, as the shell's `<(...)` gives), read once.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("runta.toml");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let writer = {
            let fifo = fifo.clone();
            std::thread::spawn(move || {
                std::fs::write(&fifo, "[admin]\nlisten = \"127.0.0.1:1000\"\n").unwrap()
            })
        };
        let loaded = load_path(fifo.to_str().unwrap());
        if loaded.is_err() {
            // Unblocks the writer, still waiting for a reader.
            let _ = std::fs::File::open(&fifo);
        }
        writer.join().unwrap();
        let config = loaded.unwrap();
        assert_eq!(config.admin.listen.to_string(), "127.0.0.1:1000");
    }

    #[test]
    fn unreadable_configuration_files_say_why() {
        let dir = tempfile::tempdir().unwrap();
        for (path, words) in [
            (dir.path().to_owned(), &["is a directory"][..]),
            (
                dir.path().join("missing.toml"),
                &["cannot read the configuration file", "missing.toml"],
            ),
        ] {
            let err = load_path(path.to_str().unwrap()).unwrap_err();
            assert_eq!(err.key, "config");
            for word in words {
                assert!(err.to_string().contains(word), "{err}");
            }
        }
    }

    #[test]
    fn errors_do_not_echo_values() {
        let err = load(
            Some("[admin]\noperator_token = 123456789\n"),
            &[],
            Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("admin.operator_token"), "{err}");
        assert!(!err.to_string().contains("123456789"), "{err}");
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let config = load(
            Some("[admin]\noperator_token = \"runta_op_sekrit\"\n"),
            &[("RUNTA_DATABASE__URL", "postgres://u:pw-sekrit@h/db")],
            Overrides::default(),
        )
        .unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("sekrit"), "{debug}");
    }
}
