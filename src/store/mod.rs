//! The database: SQLite (embedded default, one replica) or PostgreSQL (production, many
//! replicas), chosen from the URL at start-up.
//!
//! Both backends share one schema (`schema.rs`) and one set of queries: `with_conn!` expands a
//! query body once per backend, so the diesel DSL is written once and type-checked against
//! each; where the SQL really differs it takes one arm per backend. Every change that touches
//! several rows runs in a transaction, and a change that reads before it writes runs in
//! `write_transaction!`. Errors are classified here, once, into `StoreError`, which names the
//! resource concerned; callers never see a diesel or pool error.
//!
//! (The `LISTEN` side of change notifications lives with its only user, the engine's follower
//! task, on a connection of its own outside the pool.)
//!
//! The store knows nothing of encryption: it keeps sealed values as the crypto module made them.

mod api_keys;
pub mod models;
mod rules;
pub mod schema;
mod secrets;
mod tenants;
pub mod tls;
mod tokens;

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::{Connection, SqliteConnection};
use diesel_async::pooled_connection::deadpool::{Pool, PoolError};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub use models::*;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgresql");

type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

/// The PostgreSQL channel replicas announce changes on.
pub const CHANGES_CHANNEL: &str = "runta_changes";

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
    /// The database cannot be reached or is busy: worth retrying.
    #[error("store unavailable: {0}")]
    Unavailable(String),
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
            DieselError::DatabaseError(_, ref info)
                if info.message().contains("database is locked")
                    || info.message().contains("database is busy") =>
            {
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
    Sqlite(Pool<SqliteConn>),
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
    ($store:expr, $conn:ident => sqlite => $sqlite:block postgres => $postgres:block) => {
        match &$store.backend {
            $crate::store::Backend::Sqlite(pool) => {
                let mut pooled = pool.get().await?;
                let $conn = &mut *pooled;
                $sqlite
            }
            $crate::store::Backend::Postgres(pool) => {
                let mut pooled = pool.get().await?;
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

/// Runs `$body` in a transaction that reads, then writes. On SQLite it begins `IMMEDIATE`: the
/// write lock is taken before the first read, so concurrent writers queue (busy timeout)
/// instead of the later one finding its read stale at its first write, which SQLite answers
/// with "database is locked" at once. On PostgreSQL writers serialise per row; a read that
/// must hold rows still unchanged locks them (`FOR UPDATE`, in its own per-backend arm).
macro_rules! write_transaction {
    ($store:expr, $conn:ident => $body:expr) => {
        with_conn!($store, conn => sqlite => {
            conn.immediate_transaction::<_, $crate::store::StoreError, _>(async |$conn| $body)
                .await
        } postgres => {
            ::diesel_async::AsyncConnection::transaction::<_, $crate::store::StoreError, _>(
                conn,
                async |$conn| $body,
            )
            .await
        })
    };
}
pub(crate) use write_transaction;

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
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.kind())
            .finish()
    }
}

impl Store {
    /// Opens a pool on the database the URL names. Nothing is queried yet.
    pub async fn connect(url: &str, max_connections: usize) -> Result<Self, StoreError> {
        let kind = BackendKind::from_url(url).map_err(StoreError::InvalidUrl)?;
        let backend = match kind {
            BackendKind::Sqlite => {
                let mut config = ManagerConfig::<SqliteConn>::default();
                config.custom_setup = Box::new(|path| {
                    let path = path.to_owned();
                    Box::pin(async move {
                        tokio::task::spawn_blocking(move || establish_sqlite(&path))
                            .await
                            .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?
                    })
                });
                let manager =
                    AsyncDieselConnectionManager::new_with_config(sqlite_path(url), config);
                Backend::Sqlite(build_pool(manager, max_connections)?)
            }
            BackendKind::Postgres => {
                // TLS settings and root certificates are read once, here; every pooled
                // connection is made by the same connector.
                let connector = tls::PgConnector::from_url(url)
                    .map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
                let mut config = ManagerConfig::<AsyncPgConnection>::default();
                config.custom_setup = Box::new(move |_url| {
                    let connector = connector.clone();
                    Box::pin(async move { connector.connect().await })
                });
                let manager = AsyncDieselConnectionManager::new_with_config(url, config);
                Backend::Postgres(build_pool(manager, max_connections)?)
            }
        };
        Ok(Self { backend })
    }

    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Backend::Sqlite(_) => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    /// Applies the embedded migrations of this backend that have not run yet.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        // The harness blocks on the runtime internally (block_in_place): needs a
        // multi-threaded runtime, which `runta` and the tests use.
        match &self.backend {
            Backend::Sqlite(pool) => run_migrations(pool.get().await?, SQLITE_MIGRATIONS),
            Backend::Postgres(pool) => run_migrations(pool.get().await?, POSTGRES_MIGRATIONS),
        }
    }

    /// Tells the other replicas sharing this database that something changed (PostgreSQL
    /// `NOTIFY` on `CHANGES_CHANNEL`). SQLite serves one replica: nothing to tell.
    pub async fn notify_change(&self, payload: &str) -> Result<(), StoreError> {
        with_conn!(self, conn => sqlite => {
            let _ = conn;
            Ok(())
        } postgres => {
            use diesel::sql_types::Text;
            diesel::sql_query("SELECT pg_notify($1, $2)")
                .bind::<Text, _>(CHANGES_CHANNEL)
                .bind::<Text, _>(payload)
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    /// A trivial query: is the database there?
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_conn!(self, conn => {
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
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

/// Opens a SQLite connection with the settings every connection needs: foreign keys enforced,
/// a busy timeout instead of immediate `database is locked`, WAL for concurrent readers.
fn establish_sqlite(path: &str) -> diesel::ConnectionResult<SqliteConn> {
    let mut conn = SqliteConnection::establish(path)?;
    conn.batch_execute(
        "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000; \
         PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;",
    )
    .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
    Ok(SyncConnectionWrapper::new(conn))
}

fn run_migrations<C>(conn: C, migrations: EmbeddedMigrations) -> Result<usize, StoreError>
where
    C: diesel_async::AsyncConnection + 'static,
    AsyncMigrationHarness<C>: MigrationHarness<<C as diesel_async::AsyncConnectionCore>::Backend>,
{
    let mut harness = AsyncMigrationHarness::new(conn);
    harness
        .run_pending_migrations(migrations)
        .map(|applied| applied.len())
        .map_err(|e| StoreError::Migration(e.to_string()))
}

/// Milliseconds since the Unix epoch: the stored form of every timestamp.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
