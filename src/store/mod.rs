//! The database: SQLite (embedded default, one replica) or PostgreSQL (production, many
//! replicas), chosen from the URL at start-up.
//!
//! Both backends share one schema (`schema.rs`) and one set of queries: `with_conn!` expands a
//! query body once per backend, so the diesel DSL is written once and type-checked against
//! each; where the SQL really differs it takes one arm per backend. Every admin change runs in
//! `audited_write!` (`audit.rs`): one transaction that makes the change and appends its audit
//! event, or does neither. Errors are classified here, once, into `StoreError`, which names
//! the resource concerned; callers never see a diesel or pool error.
//!
//! Every write that changes what the ext_proc path sees answers `Committed<T>`: its result
//! and the `Change` it made, which the caller hands to the engine. On PostgreSQL the change is
//! also announced to the other replicas in the same transaction (`changes.rs`), and
//! `ChangeFeed` follows their announcements on a connection of its own outside the pool.
//!
//! A lookup by a unique key reads with `get_result`, never `first`: `first` binds its `LIMIT 1`
//! as a parameter, and the bundled SQLite marks a statement whose `LIMIT` is a parameter to be
//! prepared again every time one is bound (it plans with the value), which was a tenth of the
//! CPU of an admin write.
//!
//! Faults are errors, never silent: a database that refuses writes is `ReadOnly`, one that
//! cannot be reached or fails is `Unavailable`. A SQLite file is opened by path once (created
//! if absent), its identity (device, inode) noted, and every pooled connection opens it without
//! the right to create it; before each call the path is checked to still name that file. A file
//! removed or replaced under a running server is `FileMissing` for every call, logged once as
//! an error: nothing is written into the unlinked file or into a new empty one. PostgreSQL
//! migrations run under an advisory lock, so replicas starting at once migrate one at a time.
//!
//! The store knows nothing of encryption: it keeps sealed values as the crypto module made them.

mod api_keys;
pub mod audit;
mod blocking;
pub mod changes;
pub mod models;
mod rules;
pub mod schema;
mod secrets;
mod tenants;
pub mod tls;
mod tokens;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadpool::managed::Timeouts;
use diesel::connection::SimpleConnection;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::{Connection, SqliteConnection};
use diesel_async::pooled_connection::deadpool::{Pool, PoolError};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::rules::snapshot::RuntimeDigest;

pub use audit::{
    Actor, AuditAction, AuditEntry, AuditEventRow, AuditFilter, AuditPage, AuditSink, AuditTarget,
    ChainVerdict, Outcome, TargetKind,
};
pub(crate) use blocking::{immediate_transaction, in_one_hop};
pub use changes::{CHANGES_CHANNEL, Change, ChangeFeed, Committed, Created, Followed};
pub use models::*;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgresql");

type SqliteConn = SyncConnectionWrapper<SqliteConnection, blocking::Inline>;

/// What a store error is about, so the caller's message can name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    /// By name.
    Tenant(String),
    /// By id.
    ApiKey(String),
    /// By name, within a tenant.
    Secret(String),
    /// By id.
    Rule(String),
    /// By id.
    RuntimeToken(String),
}

impl Resource {
    /// How a user names it: `secret named 'x'`, `rule with id 'x'`.
    pub fn described(&self) -> String {
        match self {
            Self::Tenant(name) => format!("tenant named '{name}'"),
            Self::ApiKey(id) => format!("API key with id '{id}'"),
            Self::Secret(name) => format!("secret named '{name}'"),
            Self::Rule(id) => format!("rule with id '{id}'"),
            Self::RuntimeToken(id) => format!("runtime token with id '{id}'"),
        }
    }
}

/// `secret 'x'`, `rule 'x'`.
impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, key) = match self {
            Self::Tenant(key) => ("tenant", key),
            Self::ApiKey(key) => ("API key", key),
            Self::Secret(key) => ("secret", key),
            Self::Rule(key) => ("rule", key),
            Self::RuntimeToken(key) => ("runtime token", key),
        };
        write!(f, "{kind} '{key}'")
    }
}

/// Why a store call failed, classified for the caller, naming the resource where there is one.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no {}", .0.described())]
    NotFound(Resource),
    /// A unique constraint on a name the caller chose.
    #[error("a {} already exists", .0.described())]
    AlreadyExists(Resource),
    /// Any other unique constraint (a generated id or hash): the detail is for the log.
    #[error("already exists ({0})")]
    Conflict(String),
    /// The secret is still referenced by these rules.
    #[error("secret '{secret}' is still used by rules {rules:?}")]
    SecretInUse { secret: String, rules: Vec<String> },
    /// Rule number `rule` of an insert names a secret that does not exist in its tenant.
    #[error("rule {rule} names no secret of its tenant ('{name}')")]
    UnknownCredential { name: String, rule: usize },
    /// The row changed between read and write.
    #[error("{0} was changed concurrently")]
    Stale(Resource),
    /// A tenant's last API key cannot be deleted.
    #[error("the last API key of a tenant cannot be deleted")]
    LastApiKey,
    /// The database cannot be reached, is busy or fails (I/O error, disk full, corrupt file):
    /// worth retrying once an operator had a look.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The database refuses writes: a read-only file or mount, a read-only PostgreSQL
    /// transaction (a standby).
    #[error("the database is read-only: {0}")]
    ReadOnly(String),
    /// The SQLite file this process opened was removed or replaced while it ran: nothing is
    /// read from or written into it (or a new empty one) until a restart.
    #[error("the database file is gone: {0}")]
    FileMissing(String),
    /// The database URL cannot work: a configuration error, not worth retrying.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    #[error("database error: {0}")]
    Database(DieselError),
    #[error("migration failed: {0}")]
    Migration(String),
}

impl From<DieselError> for StoreError {
    /// Classifies what any query can meet. A row that is not there is `Database` here: queries
    /// that may legitimately find nothing use `.optional()` and say which resource is missing.
    fn from(err: DieselError) -> Self {
        match err {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                Self::Conflict(info.message().to_owned())
            }
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                Self::Unavailable(info.message().to_owned())
            }
            DieselError::DatabaseError(_, ref info) if is_read_only(info.message()) => {
                Self::ReadOnly(info.message().to_owned())
            }
            DieselError::DatabaseError(_, ref info) if is_unavailable(info.message()) => {
                Self::Unavailable(info.message().to_owned())
            }
            DieselError::BrokenTransactionManager => {
                Self::Unavailable("broken transaction manager".into())
            }
            other => Self::Database(other),
        }
    }
}

impl From<PoolError> for StoreError {
    fn from(err: PoolError) -> Self {
        use diesel::ConnectionError;
        use diesel_async::pooled_connection::PoolError as ManagerError;
        match &err {
            PoolError::Backend(ManagerError::ConnectionError(
                ConnectionError::InvalidConnectionUrl(message),
            )) => Self::InvalidUrl(message.clone()),
            // tokio-postgres parses the URL when connecting; its parse and configuration
            // errors say so in their first words.
            PoolError::Backend(ManagerError::ConnectionError(
                ConnectionError::CouldntSetupConfiguration(cause),
            )) if cause.to_string().starts_with("invalid connection string")
                || cause.to_string().starts_with("invalid configuration") =>
            {
                Self::InvalidUrl(cause.to_string())
            }
            _ => Self::Unavailable(err.to_string()),
        }
    }
}

/// SQLite's `SQLITE_READONLY` ("attempt to write a readonly database") and PostgreSQL's
/// read_only_sql_transaction (a standby).
fn is_read_only(message: &str) -> bool {
    message.contains("readonly database") || message.contains("read-only transaction")
}

/// Errors of the database's state rather than of the query: a locked or busy SQLite file, I/O
/// errors, a full disk, a file that is not (or no longer) a database; a PostgreSQL server
/// shutting down, starting up, or closing the connection (pg_terminate_backend). diesel has
/// no code for them, only SQLite's and PostgreSQL's fixed messages.
fn is_unavailable(message: &str) -> bool {
    const MESSAGES: &[&str] = &[
        "database is locked",
        "database is busy",
        "disk I/O error",
        "database or disk is full",
        "unable to open database file",
        "database disk image is malformed",
        "file is not a database",
        "terminating connection due to administrator command",
        "the database system is shutting down",
        "the database system is starting up",
        "the database system is in recovery mode",
        "server closed the connection",
        "connection closed",
        "no connection to the server",
    ];
    MESSAGES.iter().any(|m| message.contains(m))
}

/// A unique violation of the insert that creates `resource` becomes `AlreadyExists`.
fn unique_names(resource: impl FnOnce() -> Resource) -> impl FnOnce(DieselError) -> StoreError {
    move |err| match err {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
            StoreError::AlreadyExists(resource())
        }
        other => other.into(),
    }
}

/// Whether the database refused a write for a foreign key.
fn is_foreign_key_violation(err: &DieselError) -> bool {
    matches!(
        err,
        DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _)
    )
}

/// Which database, and its connection pool.
#[derive(Clone)]
pub(crate) enum Backend {
    Sqlite {
        /// Reads.
        pool: Pool<SqliteConn>,
        /// The one connection every write of this process runs on (a pool of one, so writers
        /// queue for it in arrival order). SQLite lets one writer at a time in, and one that
        /// finds the lock taken sleeps in its busy handler (1 ms, then longer) however soon the
        /// lock is freed; and a connection's page cache is dropped whenever another connection
        /// wrote. One writer connection never waits on this process's other writers inside
        /// SQLite, and keeps the pages writes touch cached. (Other processes' writers still
        /// meet the busy timeout.)
        writer: Pool<SqliteConn>,
    },
    Postgres(Pool<AsyncPgConnection>),
}

/// Which kind of database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

impl BackendKind {
    /// Reads the backend from a database URL: `postgres://` / `postgresql://`, or
    /// `sqlite://PATH` / `sqlite:PATH`.
    pub fn from_url(url: &str) -> Result<Self, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else {
            Err("must start with postgres://, postgresql:// or sqlite://".into())
        }
    }
}

/// The SQLite file a `sqlite:` URL names.
pub fn sqlite_path(url: &str) -> &str {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url)
}

/// The tenants and runtime tokens (each with its hash) a snapshot holds.
pub type Identities = (Vec<TenantRow>, Vec<(RuntimeTokenRow, Vec<u8>)>);

/// Runs `$body` on a connection named `$conn` in one read transaction (repeatable read on
/// PostgreSQL, a read transaction on SQLite's WAL), so everything it reads is one state.
macro_rules! read_consistently {
    ($store:expr, $conn:ident => $body:block) => {{
        use diesel_async::AsyncConnection;
        $crate::store::with_conn!($store, $conn => sqlite => {
            $conn.transaction::<_, StoreError, _>(async |$conn| $body).await
        } postgres => {
            $conn
                .build_transaction()
                .read_only()
                .repeatable_read()
                .run::<_, StoreError, _>(async |$conn| $body)
                .await
        })
    }};
}

/// Reads every tenant and runtime token (`Identities`), in id order.
macro_rules! read_identities {
    ($conn:ident) => {{
        use diesel::{QueryDsl, SelectableHelper};
        use schema::{runtime_tokens, tenants};
        async {
            let tenants: Vec<TenantRow> = tenants::table
                .select(TenantRow::as_select())
                .order(tenants::id)
                .load($conn)
                .await?;
            let tokens: Vec<(RuntimeTokenRow, Vec<u8>)> = runtime_tokens::table
                .select((RuntimeTokenRow::as_select(), runtime_tokens::token_hash))
                .order(runtime_tokens::id)
                .load($conn)
                .await?;
            Ok::<Identities, StoreError>((tenants, tokens))
        }
        .await
    }};
}

/// Runs a query body with `$conn` bound to a pooled connection of whichever backend the store
/// has (vaultwarden's `db_run!` shape). One body is expanded once per backend, so the diesel DSL
/// is written once and type-checked against each:
///
/// ```ignore
/// with_conn!(self, conn => { query.load(conn).await })
/// ```
///
/// Where the SQL really differs, one arm per backend:
///
/// ```ignore
/// with_conn!(self, conn => sqlite => { .. } postgres => { .. })
/// ```
macro_rules! with_conn {
    // A write: on SQLite, on the writer connection (`Backend::Sqlite::writer`).
    (@write $store:expr, $conn:ident => sqlite => $sqlite:block postgres => $postgres:block) => {
        $crate::store::with_conn!(@on writer, $store, $conn => sqlite => $sqlite postgres => $postgres)
    };
    ($store:expr, $conn:ident => sqlite => $sqlite:block postgres => $postgres:block) => {
        $crate::store::with_conn!(@on pool, $store, $conn => sqlite => $sqlite postgres => $postgres)
    };
    // On SQLite, a connection of the pool named `$sqlite_pool` (a field of `Backend::Sqlite`).
    (@on $sqlite_pool:ident, $store:expr, $conn:ident => sqlite => $sqlite:block postgres => $postgres:block) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite { $sqlite_pool: pool, .. } => {
                $store.check_sqlite_file()?;
                let mut pooled = pool.timeout_get(&$store.timeouts).await?;
                let $conn = &mut *pooled;
                $sqlite
            }
            $crate::store::Backend::Postgres(pool) => {
                let mut pooled = pool.timeout_get(&$store.timeouts).await?;
                let $conn = &mut *pooled;
                $postgres
            }
        }
    };
    ($store:expr, $conn:ident => $body:expr) => {
        with_conn!($store, $conn => sqlite => { $body } postgres => { $body })
    };
}
pub(crate) use with_conn;

/// Loads one page of `$query` (a boxed select on the table whose key column is `$id`),
/// ordered by id, after the page's cursor, with one extra row that tells whether there is more.
macro_rules! load_page {
    ($query:expr, $id:expr, $page:expr, $conn:expr) => {{
        let mut query = $query.order($id);
        if let Some(cursor) = &$page.cursor {
            query = query.filter($id.gt(cursor));
        }
        query.limit($page.limit + 1).load($conn).await?
    }};
}
pub(crate) use load_page;

/// A page request: at most `limit` items with ids after `cursor`.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub limit: i64,
    pub cursor: Option<String>,
}

/// One page of a list, and the cursor for the next, if there is one.
#[derive(Debug, Clone)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Paged<T> {
    /// Builds a page from up to `limit + 1` rows (the extra row only says there is more).
    fn from_rows(mut rows: Vec<T>, page: &Page, id: impl Fn(&T) -> &str) -> Self {
        let limit = page.limit.max(0) as usize;
        let next_cursor = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|r| id(r).to_owned())
        } else {
            None
        };
        Self {
            items: rows,
            next_cursor,
        }
    }
}

/// The handle the rest of the service uses; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) backend: Backend,
    /// SQLite opened by path: the file, to check it is still there before each call.
    sqlite_file: Option<Arc<SqliteFile>>,
    /// How long a call waits for a pooled connection (and for a new one to be made).
    pub(crate) timeouts: Timeouts,
    /// Where committed audit events go besides the table (`audit.stream`), if anywhere.
    audit_sink: Option<AuditSink>,
    /// This process's id in change announcements (its own are skipped when they come back).
    pub(crate) replica: Arc<str>,
}

/// How long a call waits for a pooled connection, and for a new connection, by default.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// The SQLite file a store opened, and what tells it is still the same file.
struct SqliteFile {
    path: PathBuf,
    /// (device, inode) when the store was opened.
    identity: (u64, u64),
    /// Whether the loss was logged already (it is logged once).
    reported: AtomicBool,
}

impl SqliteFile {
    fn identity(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).map(|m| (m.dev(), m.ino()))
    }

    /// `FileMissing` unless the path still names the file that was opened.
    fn check(&self) -> Result<(), StoreError> {
        let what = match Self::identity(&self.path) {
            Ok(identity) if identity == self.identity => return Ok(()),
            Ok(_) => "was replaced by another file".to_owned(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => "was removed".to_owned(),
            Err(err) => format!("cannot be checked ({err})"),
        };
        let detail = format!("{} {what} while the server ran", self.path.display());
        if !self.reported.swap(true, Ordering::Relaxed) {
            tracing::error!(
                path = %self.path.display(),
                "the SQLite database file {what} while the server runs: every database call is refused (nothing is written) until the server is restarted with its database"
            );
        }
        Err(StoreError::FileMissing(detail))
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.kind())
            .finish()
    }
}

impl Store {
    /// Opens a pool on the database the URL names. Nothing is queried yet; a SQLite file that
    /// does not exist is created (empty), and from then on only that file is used.
    pub async fn connect(url: &str, max_connections: usize) -> Result<Self, StoreError> {
        let kind = BackendKind::from_url(url).map_err(StoreError::InvalidUrl)?;
        let mut sqlite_file = None;
        let backend = match kind {
            BackendKind::Sqlite => {
                let path = sqlite_path(url);
                // A path (not `:memory:` or a `file:` URI of the caller's): open it once, with
                // the right to create it, then only ever the same file, without that right.
                let open = if path == ":memory:" || path.starts_with("file:") {
                    path.to_owned()
                } else {
                    let owned = path.to_owned();
                    tokio::task::spawn_blocking(move || {
                        establish_sqlite(&owned, SqliteRole::Reader).map(drop)
                    })
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?
                    .map_err(|e| StoreError::Unavailable(format!("{path}: {e}")))?;
                    let path = PathBuf::from(path);
                    let identity = SqliteFile::identity(&path)
                        .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
                    let open = format!("file:{}?mode=rw", sqlite_uri_path(&path.to_string_lossy()));
                    sqlite_file = Some(Arc::new(SqliteFile {
                        path,
                        identity,
                        reported: AtomicBool::new(false),
                    }));
                    open
                };
                Backend::Sqlite {
                    pool: build_pool(sqlite_manager(&open, SqliteRole::Reader), max_connections)?,
                    writer: build_pool(sqlite_manager(&open, SqliteRole::Writer), 1)?,
                }
            }
            BackendKind::Postgres => {
                // TLS settings and root certificates are read once, here; every pooled
                // connection is made by the same connector.
                let connector = tls::PgConnector::from_url(url)
                    .map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
                let mut config = ManagerConfig::<AsyncPgConnection>::default();
                // No test query per checkout (a round trip before every call): a connection the
                // server closed is known closed and replaced; one that fails in use answers
                // `Unavailable` (503, retried by clients) and is dropped as broken.
                config.recycling_method = RecyclingMethod::Fast;
                // Connections are made on the runtime that opened the store (the server's
                // main one), whichever task asks first: a connection's socket and driver task
                // belong to the runtime it was made on, and the data path's reads must not
                // depend on the control plane's lower-priority threads (`serve::control`).
                let home = tokio::runtime::Handle::try_current().ok();
                config.custom_setup = Box::new(move |_url| {
                    let connector = connector.clone();
                    let home = home.clone();
                    Box::pin(async move {
                        match home {
                            Some(home) => home
                                .spawn(async move { connector.connect().await })
                                .await
                                .map_err(|join| {
                                    diesel::ConnectionError::BadConnection(format!(
                                        "connecting stopped: {join}"
                                    ))
                                })?,
                            None => connector.connect().await,
                        }
                    })
                });
                let manager = AsyncDieselConnectionManager::new_with_config(url, config);
                Backend::Postgres(build_pool(manager, max_connections)?)
            }
        };
        Ok(Self {
            backend,
            sqlite_file,
            timeouts: Timeouts {
                wait: Some(POOL_WAIT),
                create: Some(POOL_WAIT),
                recycle: None,
            },
            audit_sink: None,
            replica: crate::crypto::new_id("replica").into(),
        })
    }

    /// Follows the other replicas' change announcements (PostgreSQL): `url` is this store's
    /// database, on a connection of the feed's own.
    pub fn change_feed(&self, url: secrecy::SecretString) -> ChangeFeed {
        ChangeFeed::new(url, self.replica.clone())
    }

    /// Reads everything the rule snapshot is built from in one consistent read (one read
    /// transaction: repeatable read on PostgreSQL, a read transaction on SQLite's WAL): the
    /// tenants and runtime tokens are answered, the rules are sent to `rules` in pages of
    /// `page` rows in id order, so they are never all in memory at once.
    pub async fn read_everything(
        &self,
        page: i64,
        rules: tokio::sync::mpsc::Sender<Vec<RuleRow>>,
    ) -> Result<Identities, StoreError> {
        use diesel::{ExpressionMethods, QueryDsl, SelectableHelper};
        use schema::rules as rule_table;
        read_consistently!(self, conn => {
            let identities = read_identities!(conn)?;
            let mut after: Option<String> = None;
            loop {
                let mut query = rule_table::table
                    .select(RuleRow::as_select())
                    .order(rule_table::id)
                    .limit(page)
                    .into_boxed();
                if let Some(after) = &after {
                    query = query.filter(rule_table::id.gt(after.clone()));
                }
                let rows: Vec<RuleRow> = query.load(conn).await?;
                let full = rows.len() as i64 == page;
                after = rows.last().map(|r| r.id.clone());
                if !rows.is_empty() && rules.send(rows).await.is_err() {
                    return Err(StoreError::Unavailable(
                        "the snapshot builder stopped".into(),
                    ));
                }
                if !full {
                    break;
                }
            }
            Ok::<_, StoreError>(identities)
        })
    }

    /// Reads what the periodic safety net compares with the snapshot, in one consistent read:
    /// the tenants and runtime tokens, and every runtime's rules summarised as a count and a
    /// digest of their ids (`RuntimeDigest`), one row per runtime instead of every rule.
    pub async fn read_digests(&self) -> Result<(Identities, Vec<RuntimeDigest>), StoreError> {
        use rules::{DIGESTS_POSTGRES, DIGESTS_SQLITE, DigestRow};
        let sql = match self.backend {
            Backend::Sqlite { .. } => DIGESTS_SQLITE,
            Backend::Postgres(_) => DIGESTS_POSTGRES,
        };
        read_consistently!(self, conn => {
            let identities = read_identities!(conn)?;
            let rows: Vec<DigestRow> = diesel::sql_query(sql).load(conn).await?;
            let digests = rows
                .into_iter()
                .map(DigestRow::parse)
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok::<_, StoreError>((identities, digests))
        })
    }

    /// The same store (same pool) whose calls wait at most `wait` for a pooled connection, or
    /// for a new one: for callers with a deadline of their own, such as the ext_proc path,
    /// which must answer Envoy before its message timeout.
    pub fn with_pool_wait(&self, wait: Duration) -> Self {
        let mut store = self.clone();
        store.timeouts.wait = Some(wait);
        store.timeouts.create = Some(wait);
        store
    }

    /// `FileMissing` if this is a SQLite store whose file was removed or replaced.
    pub(crate) fn check_sqlite_file(&self) -> Result<(), StoreError> {
        match &self.sqlite_file {
            Some(file) => file.check(),
            None => Ok(()),
        }
    }

    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Backend::Sqlite { .. } => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// Applies the embedded migrations of this backend that have not run yet.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        // The harness blocks on the runtime internally (block_in_place): needs a
        // multi-threaded runtime, which `runta` and the tests use.
        match &self.backend {
            Backend::Sqlite { writer, .. } => {
                self.check_sqlite_file()?;
                run_migrations(writer.get().await?, SQLITE_MIGRATIONS).0
            }
            Backend::Postgres(pool) => {
                // Replicas starting at once on a fresh database would each create the same
                // tables: the migrations run under a session-level advisory lock, so the
                // others wait, then find nothing left to apply.
                let mut conn = pool.get().await?;
                diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
                    .execute(&mut *conn)
                    .await?;
                let (applied, mut conn) = run_migrations(conn, POSTGRES_MIGRATIONS);
                // Released whatever the outcome: the connection goes back to the pool.
                diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
                    .execute(&mut *conn)
                    .await?;
                applied
            }
        }
    }

    /// Whether the store can be used, writes included: a query on PostgreSQL; on SQLite the
    /// file's identity and a write that changes nothing (`DELETE ... WHERE 0` needs the write
    /// lock and fails on a read-only file, where a `SELECT` would pass).
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_conn!(self, conn => sqlite => {
            diesel::sql_query("DELETE FROM tenants WHERE 0").execute(conn).await?;
            Ok(())
        } postgres => {
            diesel::sql_query("SELECT 1").execute(conn).await?;
            Ok(())
        })
    }
}

fn build_pool<C>(
    manager: AsyncDieselConnectionManager<C>,
    max_connections: usize,
) -> Result<Pool<C>, StoreError>
where
    AsyncDieselConnectionManager<C>: deadpool::managed::Manager,
{
    Pool::builder(manager)
        .max_size(max_connections.max(1))
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(POOL_WAIT))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

/// What a pooled SQLite connection is for: the one writer, or one of the readers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SqliteRole {
    Reader,
    Writer,
}

/// The writer's page cache, in KiB (SQLite's default is 2,000 KiB, and readers keep it).
///
/// A batch of rules spread over a thousand runtimes changes the last leaf page of each runtime's
/// range of the runtime index: about a thousand pages per commit, more than the default cache
/// holds (500 pages of 4 KiB). The writer then wrote dirty pages to the WAL in the middle of
/// the transaction to make room (and again at commit) and read each page back from the file
/// at the next batch. 16 MiB holds four times that working set; it is only filled by pages the
/// writer touches, and at 1M rules it costs those 16 MiB once.
const WRITER_CACHE_KIB: u32 = 16 * 1024;

/// The pool manager of SQLite connections to `open`.
fn sqlite_manager(open: &str, role: SqliteRole) -> AsyncDieselConnectionManager<SqliteConn> {
    let mut config = ManagerConfig::<SqliteConn>::default();
    // No test query per checkout (diesel-async's default runs `SELECT 1`, a hop to a blocking
    // thread and a statement parsed anew, for every call): a file does not drop connections,
    // and its loss is what `check_sqlite_file` catches.
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |path| {
        let path = path.to_owned();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || establish_sqlite(&path, role))
                .await
                .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?
        })
    });
    AsyncDieselConnectionManager::new_with_config(open, config)
}

/// Opens a SQLite connection with the settings every connection needs: foreign keys enforced,
/// a busy timeout instead of immediate `database is locked`, WAL for concurrent readers.
///
/// Checkpoints every 10,000 pages of WAL (about 40 MiB) rather than SQLite's 1,000: a batch of
/// rules spread over many runtimes dirties a page of the runtime index per runtime, so at the
/// default every such commit also copied its pages into the database file and synced it; a page
/// written by ten commits is now copied once. The WAL file is truncated back to 64 MiB after a
/// checkpoint, if it grew past that.
fn establish_sqlite(path: &str, role: SqliteRole) -> diesel::ConnectionResult<SqliteConn> {
    let mut conn = SqliteConnection::establish(path)?;
    conn.batch_execute(
        "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; \
         PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         PRAGMA wal_autocheckpoint = 10000; PRAGMA journal_size_limit = 67108864;",
    )
    .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
    if role == SqliteRole::Writer {
        conn.batch_execute(&format!(
            "PRAGMA cache_size = -{WRITER_CACHE_KIB}; PRAGMA temp_store = MEMORY;"
        ))
        .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
    }
    rules::register_sqlite_functions(&mut conn)
        .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
    Ok(SyncConnectionWrapper::new(conn))
}

/// A `file:` URI path: SQLite decodes `%HH`, and `?` and `#` would end the path.
fn sqlite_uri_path(path: &str) -> String {
    path.replace('%', "%25")
        .replace('?', "%3f")
        .replace('#', "%23")
}

/// The advisory lock key PostgreSQL migrations run under (arbitrary, fixed: "runta" in ASCII).
const MIGRATION_LOCK: i64 = 0x72_75_6e_74_61;

/// Applies pending migrations; answers how many (or why not), and the connection.
fn run_migrations<C>(conn: C, migrations: EmbeddedMigrations) -> (Result<usize, StoreError>, C)
where
    C: diesel_async::AsyncConnection + 'static,
    AsyncMigrationHarness<C>: MigrationHarness<<C as diesel_async::AsyncConnectionCore>::Backend>,
{
    let mut harness = AsyncMigrationHarness::new(conn);
    let applied = harness
        .run_pending_migrations(migrations)
        .map(|applied| applied.len())
        .map_err(|e| StoreError::Migration(e.to_string()));
    (applied, harness.into_inner())
}

/// Milliseconds since the Unix epoch: the stored form of every timestamp.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
