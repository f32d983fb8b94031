//! Turning a validated configuration into what the server runs with: the database URL, the
//! keyring, the operator and gateway tokens, and (in the embedded default) the quickstart files.
//!
//! Resolving reads and never writes (`database`, `existing_database`, `load_keyring`,
//! `resolve`): `runta migrate` and `runta keys` use only these, so running one in the wrong
//! directory creates nothing and says what is missing. Provisioning writes, and only
//! `runta serve` calls it (`provision_embedded`, `ensure_default_tenant`).
//!
//! Embedded default (SQLite, no keys configured): the data directory gets `master.key`,
//! `operator-token`, `gateway-token` and, once the database is up, a `default` tenant with its
//! key in `api-key`. Each file is created only when absent, mode 0600, and named in the log;
//! nothing it holds is ever logged. A PostgreSQL deployment generates nothing: it is shared by
//! many replicas, so its keys must come from configuration.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use crate::config::{Config, ConfigError, read_secret_file};
use crate::crypto::{self, Keyring, MasterKey, TokenKind};
use crate::store::{
    Actor, AuditAction, AuditEntry, AuditTarget, BackendKind, NewApiKey, Store, StoreError,
    TargetKind, TenantRow, now_millis,
};

/// File names inside the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";
pub const OPERATOR_TOKEN_FILE: &str = "operator-token";
pub const GATEWAY_TOKEN_FILE: &str = "gateway-token";
pub const API_KEY_FILE: &str = "api-key";
/// The key id of the generated master key.
pub const MASTER_KEY_ID: &str = "master";
/// The tenant the embedded default creates.
pub const DEFAULT_TENANT: &str = "default";

/// What the server runs with, resolved from configuration (and the data directory).
pub struct Resolved {
    pub database_url: SecretString,
    pub backend: BackendKind,
    pub keyring: Keyring,
    pub operator_token: Option<SecretString>,
    /// Every gateway token with the name `grpc.identity_gateways` knows it by.
    pub gateway_tokens: Vec<GatewayToken>,
    /// SQLite: the quickstart files live in the data directory.
    pub embedded: bool,
    /// The interception CA's certificate and key files; `None`: interception is off (a
    /// PostgreSQL deployment that configures none).
    pub interception_ca: Option<(PathBuf, PathBuf)>,
}

/// Which database the configuration names.
pub struct Database {
    pub url: SecretString,
    pub backend: BackendKind,
}

impl Database {
    /// SQLite: the embedded default, whose generated files live in the data directory.
    pub fn embedded(&self) -> bool {
        self.backend == BackendKind::Sqlite
    }

    /// The SQLite file, if this is SQLite and names a file.
    fn sqlite_file(&self) -> Option<&Path> {
        let path = Path::new(crate::store::sqlite_path(self.url.expose_secret()));
        let special = path.as_os_str() == ":memory:" || path.to_string_lossy().starts_with("file:");
        (self.embedded() && !special).then_some(path)
    }
}

/// A gateway token and its name: `[[grpc.gateways]]` entries by their `name`, unnamed ones by
/// where they are configured (`grpc.gateway_tokens[0]`, `grpc.gateway_token_file`, and the
/// embedded default's `generated`).
pub struct GatewayToken {
    pub name: std::sync::Arc<str>,
    pub token: SecretString,
}

/// Why start-up could not complete.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("data directory {path}: {message}")]
    DataDir { path: PathBuf, message: String },
    #[error("database: {0}")]
    Store(StoreError),
}

impl From<StoreError> for BootstrapError {
    /// A database URL that cannot work is the configuration's fault, not the database's.
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::InvalidUrl(message) => Self::Config(ConfigError {
                key: "database.url".into(),
                message: format!("is not a usable database URL ({message})"),
            }),
            other => Self::Store(other),
        }
    }
}

fn data_dir_error(path: &Path, err: impl std::fmt::Display) -> BootstrapError {
    BootstrapError::DataDir {
        path: path.to_owned(),
        message: err.to_string(),
    }
}

/// What `runta serve` creates on a first start, named for those who run anything else first.
const SERVE_CREATES: &str = "`runta serve` creates the embedded default on its first start \
                             (or point --data-dir / --config at an existing one)";

/// The database the configuration names. Reads nothing but the configuration (and
/// `database.url_file`).
pub fn database(config: &Config) -> Result<Database, BootstrapError> {
    let url = config.database_url()?;
    let backend = BackendKind::from_url(url.expose_secret()).map_err(|m| ConfigError {
        key: "database.url".into(),
        message: m,
    })?;
    Ok(Database { url, backend })
}

/// The database, for commands that work on an existing one (`migrate`, `keys`): a SQLite file
/// that does not exist is an error, since opening it would create it.
pub fn existing_database(config: &Config) -> Result<Database, BootstrapError> {
    let database = database(config)?;
    if let Some(file) = database.sqlite_file()
        && !file.exists()
    {
        return Err(data_dir_error(
            file,
            format!("no database here; {SERVE_CREATES}"),
        ));
    }
    Ok(database)
}

/// `runta serve` only: in the embedded default, creates the data directory, the database file
/// and the generated keys and tokens the configuration does not provide, each only when absent.
/// A PostgreSQL deployment gets nothing.
pub fn provision_embedded(config: &Config) -> Result<(), BootstrapError> {
    let database = database(config)?;
    if !database.embedded() {
        return Ok(());
    }
    ensure_dir(&config.data_dir)?;
    if let Some(file) = database.sqlite_file() {
        if let Some(parent) = file.parent()
            && !parent.as_os_str().is_empty()
        {
            ensure_dir(parent)?;
        }
        create_private_file(file)?;
    }
    if config.encryption.keys.is_empty() {
        let path = config.data_dir.join(MASTER_KEY_FILE);
        if !path.exists() {
            write_new_file(&path, MasterKey::generate().to_base64().as_bytes())?;
            tracing::warn!(
                path = %path.display(),
                "generated a master key for the embedded default; back it up: without it no stored secret can be read"
            );
        }
    }
    if config.interception.ca_cert_file.is_none() {
        let cert = config.data_dir.join(crate::interception::CA_CERT_FILE);
        let key = config.data_dir.join(crate::interception::CA_KEY_FILE);
        match (cert.exists(), key.exists()) {
            (true, false) | (false, true) => {
                let (present, missing) = if cert.exists() {
                    (&cert, &key)
                } else {
                    (&key, &cert)
                };
                return Err(data_dir_error(
                    missing,
                    format!(
                        "missing, but {} exists: restore it, or delete {} to have a new CA \
                         generated (runtimes must then trust the new one)",
                        present.display(),
                        present.display()
                    ),
                ));
            }
            _ => {}
        }
        if !cert.exists() && !key.exists() {
            let ca = crate::interception::generate_ca().map_err(|e| data_dir_error(&cert, e))?;
            write_new_file(&key, ca.key_pem.trim_end().as_bytes())?;
            if let Err(err) = write_new_file(&cert, ca.cert_pem.trim_end().as_bytes()) {
                let _ = std::fs::remove_file(&key);
                return Err(err);
            }
            tracing::info!(
                cert = %cert.display(),
                key = %key.display(),
                "generated the HTTPS interception CA; runtimes trust its certificate (runta ca export)"
            );
        }
    }
    if config.admin.operator_token.is_none() && config.admin.operator_token_file.is_none() {
        generate_token_file(
            &config.data_dir.join(OPERATOR_TOKEN_FILE),
            TokenKind::OperatorToken,
            "operator token",
        )?;
    }
    if config.grpc.gateway_tokens.is_empty()
        && config.grpc.gateway_token_file.is_none()
        && config.grpc.gateways.is_empty()
    {
        generate_token_file(
            &config.data_dir.join(GATEWAY_TOKEN_FILE),
            TokenKind::GatewayToken,
            "gateway token",
        )?;
    }
    Ok(())
}

/// Resolves the configuration: reads the keys and tokens it names and, in the embedded
/// default, the generated files (`provision_embedded` creates them). Writes nothing.
pub fn resolve(config: &Config) -> Result<Resolved, BootstrapError> {
    let database = database(config)?;
    let embedded = database.embedded();
    let keyring = load_keyring(config, embedded)?;
    let operator_token = match (
        &config.admin.operator_token,
        &config.admin.operator_token_file,
    ) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(file)) => Some(read_secret_file(file).map_err(|m| ConfigError {
            key: "admin.operator_token_file".into(),
            message: m,
        })?),
        (None, None) if embedded => {
            Some(read_generated(&config.data_dir.join(OPERATOR_TOKEN_FILE))?)
        }
        (None, None) => None,
    };
    let mut gateway_tokens = configured_gateway_tokens(config)?;
    if gateway_tokens.is_empty() && embedded {
        gateway_tokens.push(GatewayToken {
            name: "generated".into(),
            token: read_generated(&config.data_dir.join(GATEWAY_TOKEN_FILE))?,
        });
    }
    let client_certificates = config
        .grpc
        .tls
        .as_ref()
        .is_some_and(|tls| tls.client_ca_file.is_some());
    if gateway_tokens.is_empty() && !client_certificates && !config.grpc.insecure_no_auth {
        return Err(ConfigError {
            key: "grpc.gateway_tokens".into(),
            message: "no way for gateways to authenticate: set grpc.gateway_tokens (or \
                      grpc.gateway_token_file), or grpc.tls.client_ca_file"
                .into(),
        }
        .into());
    }
    Ok(Resolved {
        database_url: database.url,
        backend: database.backend,
        keyring,
        operator_token,
        gateway_tokens,
        interception_ca: interception_ca_files(config, embedded),
        embedded,
    })
}

/// The interception CA's files: configured, else the embedded default's in the data directory.
/// A PostgreSQL deployment without configured ones has none (its replicas must share one CA,
/// which nothing generated per replica could be).
pub fn interception_ca_files(config: &Config, embedded: bool) -> Option<(PathBuf, PathBuf)> {
    let interception = &config.interception;
    match (&interception.ca_cert_file, &interception.ca_key_file) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        _ if embedded => Some((
            config.data_dir.join(crate::interception::CA_CERT_FILE),
            config.data_dir.join(crate::interception::CA_KEY_FILE),
        )),
        _ => None,
    }
}

/// The gateway tokens the configuration names, in order (`grpc.gateway_tokens`,
/// `grpc.gateway_token_file`, `[[grpc.gateways]]`), each read from its file if it has one.
fn configured_gateway_tokens(config: &Config) -> Result<Vec<GatewayToken>, ConfigError> {
    let mut tokens: Vec<GatewayToken> = config
        .grpc
        .gateway_tokens
        .iter()
        .enumerate()
        .map(|(i, token)| GatewayToken {
            name: format!("grpc.gateway_tokens[{i}]").into(),
            token: token.clone(),
        })
        .collect();
    if let Some(file) = &config.grpc.gateway_token_file {
        tokens.push(GatewayToken {
            name: "grpc.gateway_token_file".into(),
            token: read_secret_file(file).map_err(|m| ConfigError {
                key: "grpc.gateway_token_file".into(),
                message: m,
            })?,
        });
    }
    for (i, gateway) in config.grpc.gateways.iter().enumerate() {
        let token = match (&gateway.token, &gateway.token_file) {
            (Some(token), _) => token.clone(),
            (None, Some(file)) => read_secret_file(file).map_err(|m| ConfigError {
                key: format!("grpc.gateways[{i}].token_file"),
                message: m,
            })?,
            (None, None) => unreachable!("validated: exactly one of token and token_file"),
        };
        tokens.push(GatewayToken {
            name: gateway.name.as_str().into(),
            token,
        });
    }
    Ok(tokens)
}

/// The gateway token Envoy should present, without creating anything: the first configured
/// one, else the embedded default's `gateway-token` if it exists.
pub fn existing_gateway_token(config: &Config) -> Result<Option<SecretString>, ConfigError> {
    if let Some(first) = configured_gateway_tokens(config)?.into_iter().next() {
        return Ok(Some(first.token));
    }
    let path = config.data_dir.join(GATEWAY_TOKEN_FILE);
    if path.exists() {
        return read_secret_file(&path).map(Some).map_err(|m| ConfigError {
            key: "data_dir".into(),
            message: m,
        });
    }
    Ok(None)
}

/// The keyring from `encryption.keys`; with none configured, the embedded default's
/// generated `master.key` (an error if it is missing), and a PostgreSQL deployment refuses to
/// start. Writes nothing.
pub fn load_keyring(config: &Config, embedded: bool) -> Result<Keyring, BootstrapError> {
    let enc = &config.encryption;
    if enc.keys.is_empty() {
        if !embedded {
            return Err(ConfigError {
                key: "encryption.keys".into(),
                message: "a PostgreSQL deployment needs at least one encryption key; \
                          create one with `runta keys generate`"
                    .into(),
            }
            .into());
        }
        let path = config.data_dir.join(MASTER_KEY_FILE);
        let text = read_generated(&path)?;
        let key = MasterKey::from_base64(MASTER_KEY_ID, text.expose_secret())
            .map_err(|e| data_dir_error(&path, e))?;
        return Ok(
            Keyring::new([(MASTER_KEY_ID.to_owned(), key)], MASTER_KEY_ID)
                .expect("the only key is active"),
        );
    }
    let mut keys = Vec::with_capacity(enc.keys.len());
    for (i, key) in enc.keys.iter().enumerate() {
        let field = format!("encryption.keys[{i}]");
        let text = match (&key.key, &key.key_file) {
            (Some(text), _) => text.clone(),
            (None, Some(file)) => read_secret_file(file).map_err(|m| ConfigError {
                key: format!("{field}.key_file"),
                message: m,
            })?,
            (None, None) => unreachable!("validated: exactly one of key and key_file"),
        };
        let master =
            MasterKey::from_base64(&key.id, text.expose_secret()).map_err(|e| ConfigError {
                key: field,
                message: e.to_string(),
            })?;
        keys.push((key.id.clone(), master));
    }
    let active = enc
        .active_key
        .clone()
        .unwrap_or_else(|| enc.keys.last().expect("not empty").id.clone());
    Keyring::new(keys, &active).map_err(|e| {
        ConfigError {
            key: "encryption.active_key".into(),
            message: e.to_string(),
        }
        .into()
    })
}

/// Embedded default: makes sure the `default` tenant exists and that `api-key` holds a valid
/// key of it. A missing file gets a new key (old keys stay valid until deleted).
pub async fn ensure_default_tenant(store: &Store, data_dir: &Path) -> Result<(), BootstrapError> {
    let path = data_dir.join(API_KEY_FILE);
    if path.exists() {
        return Ok(());
    }
    let audit = |tenant: &TenantRow, action, target| {
        AuditEntry::new(Some(&tenant.id), Actor::Server, action, target)
    };
    let key = match store.find_tenant_by_name(DEFAULT_TENANT).await? {
        Some(tenant) => {
            let (row, key) = NewApiKey::generate(&tenant.id, Some("quickstart".into()));
            let target = AuditTarget::new(TargetKind::ApiKey, Some(&row.id), row.name.as_deref());
            store
                .create_api_key(&row, &audit(&tenant, AuditAction::ApiKeyCreate, target))
                .await?;
            key
        }
        None => {
            let tenant = TenantRow {
                id: crypto::new_id("ten"),
                name: DEFAULT_TENANT.into(),
                created_at: now_millis(),
            };
            let (row, key) = NewApiKey::generate(&tenant.id, Some("quickstart".into()));
            let target = AuditTarget::new(TargetKind::Tenant, Some(&tenant.id), Some(&tenant.name));
            // Before the engine's first load, which reads it: nothing to apply.
            let _before_the_engine = store
                .create_tenant(
                    &tenant,
                    &row,
                    &audit(&tenant, AuditAction::TenantCreate, target),
                )
                .await?
                .into_parts();
            tracing::info!(tenant = DEFAULT_TENANT, "created the default tenant");
            key
        }
    };
    write_new_file(&path, key.expose_secret().as_bytes())?;
    tracing::info!(path = %path.display(), tenant = DEFAULT_TENANT, "wrote an API key for the default tenant");
    Ok(())
}

/// A file `provision_embedded` generates, read back; missing, it says who creates it.
fn read_generated(path: &Path) -> Result<SecretString, BootstrapError> {
    if !path.exists() {
        return Err(data_dir_error(path, format!("missing; {SERVE_CREATES}")));
    }
    read_secret_file(path).map_err(|m| data_dir_error(path, m))
}

/// Writes a new token to `path` unless the file exists.
fn generate_token_file(path: &Path, kind: TokenKind, what: &str) -> Result<(), BootstrapError> {
    if path.exists() {
        return Ok(());
    }
    let token = crypto::generate_token(kind);
    write_new_file(path, token.expose_secret().as_bytes())?;
    tracing::info!(path = %path.display(), "generated the {what}");
    Ok(())
}

fn ensure_dir(path: &Path) -> Result<(), BootstrapError> {
    use std::os::unix::fs::DirBuilderExt;
    if path.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| data_dir_error(path, e))
}

/// Creates an empty file readable by its owner only, unless it exists: SQLite then opens it as
/// a new database and its journal files inherit the mode.
fn create_private_file(path: &Path) -> Result<(), BootstrapError> {
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return Ok(());
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|e| data_dir_error(path, e))
}

/// Writes a file that must not exist yet, readable by its owner only.
pub fn write_new_file(path: &Path, contents: &[u8]) -> Result<(), BootstrapError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| data_dir_error(path, e))?;
    file.write_all(contents)
        .and_then(|_| file.write_all(b"\n"))
        .and_then(|_| file.sync_all())
        .map_err(|e| data_dir_error(path, e))
}
