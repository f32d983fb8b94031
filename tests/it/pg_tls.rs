//! PostgreSQL over TLS against a real server: a throwaway PostgreSQL cluster of the test's own
//! with `ssl = on`, a certificate for `localhost` signed by a test CA, and a `pg_hba.conf` that
//! accepts TLS connections only (with a password). Every `sslmode` is tried through the real
//! pool (`Store::connect`) and the change follower's connection (`Engine::follow_changes`).
//!
//! The cluster needs the PostgreSQL server binaries (`initdb`, `pg_ctl`); without them the test
//! is skipped locally and fails under CI (`CI=true`). It is stopped when the test ends, also
//! on failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::Bool;
use diesel_async::RunQueryDsl;
use runta::engine::Engine;
use runta::metrics::Metrics;
use runta::store::{
    Actor, AuditAction, AuditEntry, AuditTarget, Change, NewApiKey, Store, TargetKind, TenantRow,
};
use secrecy::SecretString;

use crate::support::{free_port, keyring_with};

const PASSWORD: &str = "tls-test-password-7f3a9c";

/// A PostgreSQL cluster with TLS, stopped and removed when dropped.
struct TlsCluster {
    pg_ctl: PathBuf,
    data: PathBuf,
    port: u16,
    /// The CA that signed the server's certificate.
    ca: PathBuf,
    /// A CA that signed nothing the server has.
    other_ca: PathBuf,
    // Dropped after `Drop::drop` has stopped the server.
    dir: tempfile::TempDir,
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        let _ = as_owner(&self.pg_ctl)
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// The directory of PostgreSQL's server binaries, if the machine has them.
fn pg_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file() && bin.join("pg_ctl").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
    })
}

/// A command run as the cluster's owner: `postgres` when the test runs as root (initdb
/// refuses root), else the test's own user.
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Gives a file or directory to the cluster's owner (when running as root).
fn give_to_owner(path: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .arg("postgres:")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success(), "chown postgres: {}", path.display());
    }
}

fn skip_or_fail(why: &str) -> Option<TlsCluster> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but {why}: the PostgreSQL TLS test needs the PostgreSQL server binaries");
    }
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "WARNING: pg_tls: NOT RUN ({why}); it reports ok without testing anything"
    );
    None
}

impl TlsCluster {
    fn start() -> Option<Self> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        use std::os::unix::fs::PermissionsExt;

        let Some(bin) = pg_bin_dir() else {
            return skip_or_fail("no PostgreSQL server binaries under /usr/lib/postgresql");
        };
        if is_root()
            && !Command::new("id")
                .arg("postgres")
                .output()
                .is_ok_and(|o| o.status.success())
        {
            return skip_or_fail("running as root without a 'postgres' user to own the cluster");
        }
        let dir = tempfile::Builder::new()
            .prefix("runta-pg-tls")
            .tempdir()
            .unwrap();
        give_to_owner(dir.path());
        let write = |name: &str, text: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            give_to_owner(&path);
            path
        };

        let ca_issuer = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let ca = ca_issuer("runta pg-tls test CA");
        let other_ca = ca_issuer("runta pg-tls other CA");
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "runta pg-tls server");
        let cert = leaf.signed_by(&key, &ca).unwrap();
        let ca_path = write("ca.pem", &ca.pem(), 0o644);
        let other_ca_path = write("other-ca.pem", &other_ca.pem(), 0o644);
        let cert_path = write("server.crt", &cert.pem(), 0o644);
        let key_path = write("server.key", &key.serialize_pem(), 0o600);
        let pwfile = write("pwfile", PASSWORD, 0o600);

        let data = dir.path().join("data");
        let initdb = as_owner(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--encoding=UTF8", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            initdb.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        // TLS connections only: a plain one finds no pg_hba.conf entry.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let port = free_port();
        let settings = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{dir}'\n\
             ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n",
            dir = dir.path().display(),
            cert = cert_path.display(),
            key = key_path.display(),
        );
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str(&settings);
        std::fs::write(&conf, text).unwrap();

        let cluster = Self {
            pg_ctl: bin.join("pg_ctl"),
            data: data.clone(),
            port,
            ca: ca_path,
            other_ca: other_ca_path,
            dir,
        };
        let log = cluster.dir.path().join("server.log");
        let started = as_owner(&cluster.pg_ctl)
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "30", "start"])
            .output()
            .unwrap();
        assert!(
            started.status.success(),
            "pg_ctl start: {}\n{}",
            String::from_utf8_lossy(&started.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Some(cluster)
    }

    /// A URL for `host` (connecting to 127.0.0.1 whatever the name resolves to) with these
    /// extra query parameters.
    fn url(&self, host: &str, params: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@{host}:{}/postgres?hostaddr=127.0.0.1&{params}",
            self.port
        )
    }

    fn root_cert(&self, ca: &Path) -> String {
        format!("sslrootcert={}", ca.display())
    }
}

/// A pool on `url` and one query through it.
async fn store_query(url: &str) -> Result<Store, String> {
    let store = Store::connect(url, 2).await.map_err(|e| e.to_string())?;
    store.ping().await.map_err(|e| e.to_string())?;
    Ok(store)
}

#[derive(QueryableByName)]
struct SslInUse {
    #[diesel(sql_type = Bool)]
    ssl: bool,
}

/// Whether the connection `url` makes (as the change follower makes it) uses TLS.
async fn connection_uses_tls(url: &str) -> Result<bool, String> {
    let mut conn = runta::store::tls::establish(url)
        .await
        .map_err(|e| e.to_string())?;
    let row: SslInUse =
        diesel::sql_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .get_result(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
    Ok(row.ssl)
}

#[track_caller]
fn assert_refused(case: &str, result: Result<impl Sized, String>, words: &[&str]) {
    let Err(message) = result else {
        panic!("{case}: connected, but must be refused");
    };
    eprintln!("{case}: refused: {message}");
    for word in words {
        assert!(
            message.contains(word),
            "{case}: '{message}' does not mention '{word}'"
        );
    }
    assert!(
        !message.contains(PASSWORD),
        "{case}: the password is in '{message}'"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_pool_and_notifications() {
    let Some(cluster) = TlsCluster::start() else {
        return;
    };
    let right_ca = cluster.root_cert(&cluster.ca);
    let wrong_ca = cluster.root_cert(&cluster.other_ca);

    // verify-full with the right CA: the pool works, and the change follower hears a NOTIFY
    // another replica sends through its pool.
    let url = cluster.url("localhost", &format!("sslmode=verify-full&{right_ca}"));
    let store = store_query(&url)
        .await
        .expect("verify-full with the right CA");
    store.migrate().await.expect("migrate over TLS");
    assert!(connection_uses_tls(&url).await.unwrap());
    let follower_metrics = Arc::new(Metrics::new());
    let follower = Arc::new(Engine::new(
        store.clone(),
        Arc::new(keyring_with(&["k1"], "k1")),
        follower_metrics.clone(),
    ));
    // Another replica: a store of its own (its own replica id), writing through its pool.
    let other_replica = store_query(&url).await.expect("a second replica's pool");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let following = tokio::spawn(follower.clone().follow_changes(
        SecretString::from(url.clone()),
        async move {
            let _ = stopped.await;
        },
    ));
    // Once the follower listens, it applies the tenant the other replica creates, announced
    // in that write's transaction.
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        while follower_metrics.change_listener_connected.get() != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let tenant = TenantRow {
            id: runta::crypto::new_id("ten"),
            name: "heard-over-tls".into(),
            created_at: 0,
        };
        let (key, _) = NewApiKey::generate(&tenant.id, None);
        let audit = AuditEntry::new(
            Some(&tenant.id),
            Actor::Server,
            AuditAction::TenantCreate,
            AuditTarget::new(TargetKind::Tenant, Some(&tenant.id), Some(&tenant.name)),
        );
        let (_, announced) = other_replica
            .create_tenant(&tenant, &key, &audit)
            .await
            .expect("create a tenant over TLS")
            .into_parts();
        assert_eq!(announced, Change::Tenants);
        while follower.snapshot().tenant_id("heard-over-tls").is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let _ = stop.send(());
    following.await.unwrap();
    assert!(
        heard.is_ok(),
        "the follower heard no NOTIFY over TLS (listening: {})",
        follower_metrics.change_listener_connected.get()
    );

    // A CA that did not sign the server's certificate: refused, in the pool and the follower's
    // connection alike.
    let url = cluster.url("localhost", &format!("sslmode=verify-full&{wrong_ca}"));
    let words = [
        "TLS handshake",
        "certificate not trusted by sslrootcert",
        "other-ca.pem",
    ];
    assert_refused("wrong CA, pool", store_query(&url).await, &words);
    assert_refused(
        "wrong CA, follower",
        connection_uses_tls(&url).await,
        &words,
    );
    // require with a root certificate checks the chain too (as libpq does).
    let url = cluster.url("localhost", &format!("sslmode=require&{wrong_ca}"));
    assert_refused("require, wrong CA", store_query(&url).await, &words);

    // The certificate is for localhost, not 127.0.0.1: verify-full refuses, verify-ca accepts.
    let url = cluster.url("127.0.0.1", &format!("sslmode=verify-full&{right_ca}"));
    let words = [
        "connecting to PostgreSQL at 127.0.0.1:",
        "TLS handshake: host name mismatch",
    ];
    assert_refused(
        "verify-full, wrong host name",
        store_query(&url).await,
        &words,
    );
    assert_refused(
        "verify-full, wrong host name, follower",
        connection_uses_tls(&url).await,
        &words,
    );
    let url = cluster.url("127.0.0.1", &format!("sslmode=verify-ca&{right_ca}"));
    store_query(&url)
        .await
        .expect("verify-ca ignores the host name");
    assert!(connection_uses_tls(&url).await.unwrap());

    // require without a root certificate: encrypted, the certificate unchecked.
    let url = cluster.url("127.0.0.1", "sslmode=require");
    store_query(&url)
        .await
        .expect("require without sslrootcert");
    assert!(connection_uses_tls(&url).await.unwrap());

    // prefer: TLS when the server offers it.
    let url = cluster.url("localhost", "sslmode=prefer");
    store_query(&url).await.expect("prefer");
    assert!(
        connection_uses_tls(&url).await.unwrap(),
        "prefer must use TLS when offered"
    );

    // disable: the server accepts TLS connections only, and says so.
    let url = cluster.url("localhost", "sslmode=disable");
    let words = [
        "connecting to PostgreSQL at localhost:",
        "refused by the server",
        "no encryption",
    ];
    assert_refused("disable", store_query(&url).await, &words);
    assert_refused("disable, follower", connection_uses_tls(&url).await, &words);

    // A root certificate file that is not there is a configuration error, found at once.
    let url = cluster.url(
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    );
    let words = [
        "invalid database URL",
        "reading sslrootcert /nonexistent/ca.pem",
    ];
    assert_refused(
        "missing sslrootcert",
        Store::connect(&url, 1).await.map_err(|e| e.to_string()),
        &words,
    );
}
