//! PostgreSQL faults, each on a throwaway cluster the test starts itself (so stopping it
//! disturbs no other test): the server stopped and started again under running replicas, the
//! LISTEN connections terminated, three replicas started at once on an empty database.
//!
//! Like every PostgreSQL half, these run when `RUNTA_TEST_DATABASE_URL` says a PostgreSQL
//! server is there (`scripts/test` starts one; CI must have it) and are skipped loudly
//! otherwise; they need the PostgreSQL server binaries (`initdb`, `pg_ctl`).

use std::path::{Path, PathBuf};
use std::process::Command;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use runta::config::{Config, KeyConfig};
use runta::crypto::MasterKey;
use runta::serve;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::extproc::{GATEWAY_TOKEN, Gateway, Mutation, Outcome, WORKER, call, get};
use crate::support::{Backend, TestDb, eventually};

/// A PostgreSQL cluster of the test's own, removed when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
    pg_ctl: PathBuf,
}

fn pg_bin(name: &str) -> PathBuf {
    if let Ok(path) = which(name) {
        return path;
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|version| version.path().join("bin").join(name))
        .filter(|path| path.exists())
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("the PostgreSQL server binary {name} is not installed"))
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|path| path.exists())
        })
        .ok_or(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// Runs a PostgreSQL binary as the cluster's owner (initdb refuses root: as root, `postgres`).
fn as_owner(program: &Path, args: &[&str]) {
    let mut command = if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    };
    let out = command
        .args(args)
        .output()
        .expect("run a PostgreSQL binary");
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    /// A new cluster, running; `None` (skipped loudly) where the suite has no PostgreSQL.
    fn start() -> Option<Self> {
        crate::support::postgres_url()?;
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            let status = Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let data = dir.path().join("data");
        as_owner(
            &pg_bin("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            ],
        );
        let cluster = Self {
            dir,
            port,
            pg_ctl: pg_bin("pg_ctl"),
        };
        cluster.run();
        Some(cluster)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Starts the server (again), on the same port.
    fn run(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log").display().to_string();
        as_owner(
            &self.pg_ctl,
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        );
    }

    /// Stops the server: connected clients are disconnected (`-m fast`).
    fn stop(&self) {
        as_owner(
            &self.pg_ctl,
            &["-D", &self.data(), "-m", "fast", "-w", "stop"],
        );
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    async fn sql(&self, sql: &str) -> Vec<diesel::QueryResult<usize>> {
        let mut conn = AsyncPgConnection::establish(&self.url("postgres"))
            .await
            .unwrap();
        vec![diesel::sql_query(sql).execute(&mut conn).await]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(if is_root() { "runuser" } else { "true" })
            .args(if is_root() {
                vec!["-u", "postgres", "--"]
            } else {
                vec![]
            })
            .arg(&self.pg_ctl)
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// A served runta (tenant `acme`) on the cluster's `postgres` database.
async fn gateway_on(cluster: &Cluster, adjust: impl FnOnce(&mut Config)) -> Gateway {
    let url = cluster.url("postgres");
    let mut gw = Gateway::start_with(Backend::Postgres, |c| {
        c.database.url = Some(SecretString::from(url.clone()));
        adjust(c);
    })
    .await
    .expect("PostgreSQL is there");
    gw.db = TestDb::Postgres { url };
    gw
}

fn injected(value: &str) -> Outcome {
    Outcome::Continue(Mutation {
        set: vec![("authorization".into(), format!("Bearer {value}"))],
        removed: vec![],
    })
}

fn rule(host: &str, credential: &str) -> Value {
    json!({"host": host, "injection": {"credential": credential, "header": "Authorization",
           "value": "Bearer ${credential}"}})
}

/// PostgreSQL stopped under a running server: cached rules and secrets keep injecting, a
/// secret never read fails closed (503 naming its rule), writes and readiness answer 503
/// `store_unavailable`. Started again: writes work, and what they change reaches ext_proc.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_started_again() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let gw = gateway_on(&cluster, |_| {}).await;
    gw.secret("cached", "sk-test-cached", 3600).await;
    gw.secret("unread", "sk-test-unread", 3600).await;
    gw.rule("worker", rule("cached.example.com", "cached"))
        .await;
    let unread_rule = gw
        .rule("worker", rule("unread.example.com", "unread"))
        .await;
    let mut client = gw.client().await;
    let cached = get("cached.example.com", "/");
    assert_eq!(
        call(&mut client, WORKER, &cached).await,
        injected("sk-test-cached")
    );

    cluster.stop();
    for _ in 0..3 {
        assert_eq!(
            call(&mut client, WORKER, &cached).await,
            injected("sk-test-cached"),
            "a cached rule and secret keep injecting while the database is down"
        );
    }
    match call(&mut client, WORKER, &get("unread.example.com", "/")).await {
        Outcome::Immediate { status, body, .. } => {
            assert_eq!(status, 503);
            assert!(body.contains(&unread_rule), "{body}");
        }
        other => panic!("a secret that cannot be had fails closed: {other:?}"),
    }
    let (status, body) = gw
        .api(
            reqwest::Method::POST,
            "/v1/secrets",
            Some(json!({"name": "new", "value": "sk-test-new"})),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (503, &json!("store_unavailable")),
        "{body}"
    );
    let (status, body) = gw
        .api(
            reqwest::Method::PUT,
            "/v1/secrets/cached",
            Some(json!({"value": "x"})),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    let ready = gw
        .http
        .get(format!("{}/readyz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);

    cluster.run();
    assert!(
        eventually(async || {
            gw.http
                .get(format!("{}/readyz", gw.admin))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await,
        "ready again once PostgreSQL is back"
    );
    let (status, body) = gw
        .api(
            reqwest::Method::PUT,
            "/v1/secrets/cached",
            Some(json!({"value": "sk-test-after"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    gw.rule("worker", rule("new.example.com", "cached")).await;
    assert_eq!(
        call(&mut client, WORKER, &get("new.example.com", "/")).await,
        injected("sk-test-after")
    );
    assert_eq!(
        call(&mut client, WORKER, &cached).await,
        injected("sk-test-after")
    );
    gw.stop().await;
}

/// The replicas' LISTEN connections killed (`pg_terminate_backend`): they reconnect, catch up,
/// and later changes still reach the other replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_listen_connections_still_get_changes() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let first = gateway_on(&cluster, |c| c.injection.reload_interval_secs = 3600).await;
    let second = first.replica().await;
    let mut client = second.client().await;
    let request = get("api.example.com", "/");
    first.secret("key", "sk-test-one", 3600).await;
    first.rule("worker", rule("api.example.com", "key")).await;
    assert!(
        eventually(async || call(&mut client, WORKER, &request).await == injected("sk-test-one"))
            .await,
        "the rule reached the other replica"
    );

    let killed: i64 = {
        #[derive(diesel::QueryableByName)]
        struct Killed {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            killed: i64,
        }
        let mut conn = AsyncPgConnection::establish(&cluster.url("postgres"))
            .await
            .unwrap();
        diesel::sql_query(
            "SELECT count(pg_terminate_backend(pid)) AS killed FROM pg_stat_activity \
             WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()",
        )
        .get_result::<Killed>(&mut conn)
        .await
        .unwrap()
        .killed
    };
    assert_eq!(killed, 2, "each replica had one LISTEN connection");

    let (status, body) = first
        .api(
            reqwest::Method::PUT,
            "/v1/secrets/key",
            Some(json!({"value": "sk-test-two"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        eventually(async || call(&mut client, WORKER, &request).await == injected("sk-test-two"))
            .await,
        "the update reached the other replica after its LISTEN connection was killed"
    );
    // And a change made after the reconnect arrives as a notification.
    first.rule("worker", rule("later.example.com", "key")).await;
    let later = get("later.example.com", "/");
    assert!(
        eventually(async || call(&mut client, WORKER, &later).await == injected("sk-test-two"))
            .await,
        "a rule created after the reconnect reached the other replica"
    );
    let _ = cluster.sql("SELECT 1").await;
    second.stop().await;
    first.stop().await;
}

/// Three replicas started at the same moment on an empty database, five times over (a fresh
/// database each round): every one comes up (migrations ran once, the others waited).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_start_at_once_on_an_empty_database() {
    let Some(cluster) = Cluster::start() else {
        return;
    };
    let key = MasterKey::generate().to_base64().to_string();
    for round in 0..5 {
        let database = format!("empty{round}");
        for result in cluster.sql(&format!("CREATE DATABASE {database}")).await {
            result.unwrap();
        }
        let url = cluster.url(&database);
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let configs: Vec<Config> = dirs
            .iter()
            .map(|dir| {
                let mut config = Config {
                    data_dir: dir.path().join("data"),
                    ..Config::default()
                };
                config.database.url = Some(SecretString::from(url.clone()));
                config.admin.listen = "127.0.0.1:0".parse().unwrap();
                config.grpc.listen = "127.0.0.1:0".parse().unwrap();
                config.grpc.gateway_tokens = vec![SecretString::from(GATEWAY_TOKEN)];
                config.encryption.keys = vec![KeyConfig {
                    id: "k1".into(),
                    key: Some(SecretString::from(key.clone())),
                    key_file: None,
                }];
                config.validate().unwrap();
                config
            })
            .collect();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(3));
        let starts: Vec<_> = configs
            .into_iter()
            .map(|config| {
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    serve::start(config).await
                })
            })
            .collect();
        let mut running = Vec::new();
        for (i, start) in starts.into_iter().enumerate() {
            match start.await.unwrap() {
                Ok(replica) => running.push(replica),
                Err(err) => panic!("round {round}: replica {i} did not start: {err}"),
            }
        }
        for replica in running {
            replica.stop().await.unwrap();
        }
    }
}
