//! The test harness: an in-process `TestApp` (the real router over a real database: a SQLite
//! file or a fresh PostgreSQL database), `admin_router`, the one place the tests wire the admin
//! API's state, and `backend_tests!`, the one way to run a test body on both backends (the body
//! takes whatever `OnBackend` fixture it needs: a `TestApp`, a served `Gateway`, or the bare
//! `Backend`).
//!
//! PostgreSQL comes from `RUNTA_TEST_DATABASE_URL` (a server `scripts/test` starts). Without it
//! the PostgreSQL half is skipped locally, with a warning per test on the terminal, and fails
//! under CI (`CI=true`).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use http_body_util::BodyExt;
use runta::admin::{self, AppState};
use runta::crypto::{Keyring, MasterKey};
use runta::metrics::Metrics;
use runta::store::Store;
use secrecy::SecretString;
use serde_json::Value;
use tower::ServiceExt;

pub const OPERATOR_TOKEN: &str = "runta_op_test-operator-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where a test's database lives; removed (SQLite) when the test ends.
pub enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres { url: String },
}

impl TestDb {
    /// A fresh, empty database on the backend, or `None` when PostgreSQL is not available
    /// outside CI.
    pub async fn create(backend: Backend) -> Option<(Self, String)> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("runta.db").display());
                Some((Self::Sqlite(dir), url))
            }
            Backend::Postgres => {
                let admin_url = postgres_url()?;
                let name = format!(
                    "runta_test_{}",
                    runta::crypto::new_id("db")
                        .to_lowercase()
                        .replace("db_", "")
                );
                let mut conn = AsyncPgConnection::establish(&admin_url)
                    .await
                    .expect("connect to the test PostgreSQL server");
                diesel::sql_query(format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create a test database");
                let url = replace_database(&admin_url, &name);
                Some((Self::Postgres { url: url.clone() }, url))
            }
        }
    }

    /// The database's URL, for a connection of the test's own.
    pub fn url(&self) -> String {
        match self {
            Self::Sqlite(dir) => format!("sqlite://{}", dir.path().join("runta.db").display()),
            Self::Postgres { url } => url.clone(),
        }
    }

    /// The SQLite directory (database and journal files), if this is SQLite.
    pub fn sqlite_dir(&self) -> Option<&std::path::Path> {
        match self {
            Self::Sqlite(dir) => Some(dir.path()),
            Self::Postgres { .. } => None,
        }
    }

    pub fn postgres_url(&self) -> Option<&str> {
        match self {
            Self::Postgres { url } => Some(url),
            Self::Sqlite(_) => None,
        }
    }
}

/// The PostgreSQL server URL for tests; panics under CI when there is none.
pub fn postgres_url() -> Option<String> {
    match std::env::var("RUNTA_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "CI=true but RUNTA_TEST_DATABASE_URL is not set: run the suite with scripts/test, which starts PostgreSQL"
            )
        }
        _ => {
            skipped_loudly();
            None
        }
    }
}

/// Says on the terminal that a PostgreSQL half did not run. The test still passes (a local run
/// without PostgreSQL is allowed), so this must be seen: it writes to the process's standard
/// error directly, past the test harness's output capture (which `eprintln!` goes through, and
/// which shows nothing of a passing test).
fn skipped_loudly() {
    use std::io::Write as _;
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(
        std::io::stderr(),
        "WARNING: {test}: PostgreSQL half NOT RUN (RUNTA_TEST_DATABASE_URL is not set; scripts/test sets it); it reports ok without testing anything"
    );
}

fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// The real admin router over a real, migrated database.
pub struct TestApp {
    pub router: Router,
    pub store: Store,
    pub keyring: Arc<Keyring>,
    pub db: TestDb,
    pub backend: Backend,
}

/// A tenant made through the operator API, with its first API key.
pub struct TestTenant {
    pub id: String,
    pub key: String,
}

/// The admin router over `store`, wired the way `runta serve` wires it, with the test operator
/// token: every in-process router of the tests is built here.
pub fn admin_router(store: Store, keyring: Arc<Keyring>) -> Router {
    let metrics = Arc::new(Metrics::new());
    let engine = Arc::new(runta::engine::Engine::new(
        store.clone(),
        keyring.clone(),
        metrics.clone(),
    ));
    admin::router(AppState {
        store,
        keyring,
        operator_token: Some(Arc::new(SecretString::from(OPERATOR_TOKEN))),
        metrics,
        engine,
        max_body_bytes: 64 * 1024,
        interception_ca: Some(Arc::from(test_ca_pem())),
    })
}

/// An answer of the router: status, headers, and the body as JSON (`Null` when empty, a
/// string when not JSON).
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

/// Sends one request through a router, with an API key or token and a JSON body.
pub async fn send(
    router: &Router,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<Vec<u8>>,
) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// A TCP port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Asserts that none of the markers (unique pieces of the test's secret values) is in `text`.
#[track_caller]
pub fn assert_no_marker(markers: &[&str], what: &str, text: &str) {
    for marker in markers {
        assert!(
            !text.contains(marker),
            "a secret value ({marker}) appears in {what}:\n{text}"
        );
    }
}

/// An audit entry for a store write a test makes directly (actor `server`, no request).
pub fn audit_entry(tenant_id: &str, action: runta::store::AuditAction) -> runta::store::AuditEntry {
    use runta::store::{Actor, AuditEntry, AuditTarget, TargetKind};
    AuditEntry::new(
        Some(tenant_id),
        Actor::Server,
        action,
        AuditTarget::new(TargetKind::Tenant, Some(tenant_id), None),
    )
}

pub fn keyring_with(ids: &[&str], active: &str) -> Keyring {
    Keyring::new(
        ids.iter().map(|id| (id.to_string(), MasterKey::generate())),
        active,
    )
    .unwrap()
}

impl TestApp {
    pub async fn new(backend: Backend) -> Option<Self> {
        Self::with_keyring(backend, keyring_with(&["k1"], "k1")).await
    }

    pub async fn with_keyring(backend: Backend, keyring: Keyring) -> Option<Self> {
        let (db, url) = TestDb::create(backend).await?;
        let store = Store::connect(&url, 4).await.expect("connect");
        store.migrate().await.expect("migrate");
        let keyring = Arc::new(keyring);
        Some(Self {
            router: admin_router(store.clone(), keyring.clone()),
            store,
            keyring,
            db,
            backend,
        })
    }

    /// Sends a request through the router; answers the status and the JSON body (`Null` when
    /// empty, a string when not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string().into_bytes());
        self.call_raw(method, path, key, body).await
    }

    /// `call`, asserting a success; answers the body.
    pub async fn ok(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let what = format!("{method} {path}");
        let (status, body) = self.call(method, path, key, body).await;
        assert!(status.is_success(), "{what}: {status} {body}");
        body
    }

    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let answer = send(&self.router, method, path, key, body).await;
        (answer.status, answer.body)
    }

    pub async fn tenant(&self, name: &str) -> TestTenant {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/tenants",
                Some(OPERATOR_TOKEN),
                Some(serde_json::json!({"name": name})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        TestTenant {
            id: body["tenant"]["id"].as_str().unwrap().to_owned(),
            key: body["api_key"].as_str().unwrap().to_owned(),
        }
    }

    /// Creates a secret, asserting success.
    pub async fn secret(&self, tenant: &TestTenant, name: &str, value: &str) -> Value {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/secrets",
                Some(&tenant.key),
                Some(serde_json::json!({"name": name, "value": value})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }
}

/// Asserts an error answer: its status, the one error shape, and words its message contains.
#[track_caller]
pub fn assert_error(answer: &(StatusCode, Value), status: StatusCode, words: &[&str]) {
    assert_error_in("", answer, status, words);
}

/// `assert_error` for one case of a table of cases: a failure names the case.
#[track_caller]
pub fn assert_error_in(
    case: &str,
    answer: &(StatusCode, Value),
    status: StatusCode,
    words: &[&str],
) {
    let (got, body) = answer;
    assert_eq!(*got, status, "{case}: {body}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{case}: no error message in {body}"));
    assert!(body["error"]["code"].is_string(), "{case}: {body}");
    for word in words {
        assert!(
            message.contains(word),
            "{case}: '{message}' does not mention '{word}'"
        );
    }
}

/// What a test run on both backends is given: built for the backend, or `None` when the
/// backend is not available (PostgreSQL outside CI; `postgres_url` says so loudly).
pub trait OnBackend: Sized {
    fn on(backend: Backend) -> impl Future<Output = Option<Self>> + Send;
}

impl OnBackend for TestApp {
    async fn on(backend: Backend) -> Option<Self> {
        Self::new(backend).await
    }
}

/// The bare backend, for a test that builds its own fixture (it must skip when that fixture
/// is `None`).
impl OnBackend for Backend {
    async fn on(backend: Backend) -> Option<Self> {
        Some(backend)
    }
}

/// Runs one test body on one backend, if it is there. SQLite always is.
pub async fn run_on<F: OnBackend, T: Future<Output = ()>>(
    backend: Backend,
    test: impl FnOnce(F) -> T,
) {
    match F::on(backend).await {
        Some(fixture) => test(fixture).await,
        None => assert_eq!(backend, Backend::Postgres, "SQLite is always there"),
    }
}

/// Runs each `async fn name(fixture: F)` on SQLite and on PostgreSQL, as the tests
/// `name::sqlite` and `name::postgres`; `F` is any `OnBackend`.
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use $crate::support::{Backend, run_on};

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    run_on(Backend::Sqlite, super::$name).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    run_on(Backend::Postgres, super::$name).await;
                }
            }
        )*
    };
}
pub(crate) use backend_tests;

/// A self-signed CA certificate (PEM), as the admin API serves the interception CA.
pub fn test_ca_pem() -> String {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap()
        .pem()
}

/// Runs one SQL statement on a test's database behind the store's back (a connection of its
/// own); answers how many rows it changed.
pub async fn behind_the_store(db: &TestDb, sql: &str) -> usize {
    match db.postgres_url() {
        Some(url) => {
            let mut conn = AsyncPgConnection::establish(url).await.unwrap();
            diesel::sql_query(sql).execute(&mut conn).await.unwrap()
        }
        None => {
            use diesel::Connection;
            let path = db.sqlite_dir().unwrap().join("runta.db");
            let mut conn = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
            // runta may be writing meanwhile: wait for its lock as runta's own connections do.
            diesel::connection::SimpleConnection::batch_execute(
                &mut conn,
                "PRAGMA busy_timeout = 5000;",
            )
            .unwrap();
            diesel::RunQueryDsl::execute(diesel::sql_query(sql), &mut conn).unwrap()
        }
    }
}

/// Retries `attempt` until it says yes, 200 times at most, 50 ms apart.
pub async fn eventually<F: AsyncFnMut() -> bool>(mut attempt: F) -> bool {
    for _ in 0..200 {
        if attempt().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// The admin router over a fresh database, with its engine at hand (`TestApp` keeps it inside
/// the router): the engine a test looks at is the one the API's changes reach.
pub async fn app_with_engine(
    backend: Backend,
) -> Option<(TestApp, Arc<runta::engine::Engine>, Arc<Metrics>)> {
    app_with_engine_and_pool(backend, 4).await
}

/// The same, with a pool of `max_connections`.
pub async fn app_with_engine_and_pool(
    backend: Backend,
    max_connections: usize,
) -> Option<(TestApp, Arc<runta::engine::Engine>, Arc<Metrics>)> {
    let (db, url) = TestDb::create(backend).await?;
    let store = Store::connect(&url, max_connections).await.unwrap();
    store.migrate().await.unwrap();
    let keyring = Arc::new(keyring_with(&["k1"], "k1"));
    let metrics = Arc::new(Metrics::new());
    let engine = Arc::new(runta::engine::Engine::new(
        store.clone(),
        keyring.clone(),
        metrics.clone(),
    ));
    // As the server does: batches compile, and replaced snapshots are freed, on that thread.
    engine.start_snapshot_thread();
    let state = AppState {
        store: store.clone(),
        keyring: keyring.clone(),
        operator_token: Some(Arc::new(SecretString::from(OPERATOR_TOKEN))),
        metrics: metrics.clone(),
        engine: engine.clone(),
        max_body_bytes: 64 * 1024,
        interception_ca: None,
    };
    let app = TestApp {
        router: admin::router(state),
        store,
        keyring,
        db,
        backend,
    };
    Some((app, engine, metrics))
}

/// A connection of its own to a test's PostgreSQL database (to lock tables, or to watch
/// `pg_stat_activity`, beside the store's pool).
pub async fn pg_connection(url: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(url).await.unwrap()
}

/// The single `n` (a `bigint`) that `sql` answers.
pub async fn pg_count(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(sql)
        .get_result::<Count>(conn)
        .await
        .unwrap()
        .n
}
