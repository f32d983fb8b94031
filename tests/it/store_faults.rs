//! The store under concurrency and faults: races between requests that read, then write; a
//! rule whose secret vanishes while it is created; a database URL that cannot work; the
//! digests the safety net compares, over rules written behind the store's back too.

use axum::http::{Method, StatusCode};
use runta::store::{Page, StoreError};
use serde_json::json;

use crate::support::{TestApp, assert_error, backend_tests};

backend_tests!(
    concurrent_deletes_keep_the_last_api_key,
    rule_whose_secret_vanishes_is_400,
    secret_deleted_while_a_rule_is_created_is_409,
    writes_whose_caller_hangs_up_leave_no_transaction_open,
    the_store_digests_its_rules_as_the_snapshot_does,
);

/// Two requests deleting a tenant's last two keys at once: one wins, the other is told the
/// tenant's last key cannot go. Never both (that would lock the tenant out).
async fn concurrent_deletes_keep_the_last_api_key(app: TestApp) {
    for round in 0..20 {
        let tenant = app.tenant(&format!("race{round}")).await;
        let (status, body) = app
            .call(Method::POST, "/v1/api-keys", Some(&tenant.key), None)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let page = Page {
            limit: 10,
            cursor: None,
        };
        let keys = app.store.list_api_keys(&tenant.id, &page).await.unwrap();
        let [first, second] = &keys.items[..] else {
            panic!("two keys: {keys:?}")
        };
        let deletes = [first.id.clone(), second.id.clone()].map(|id| {
            let store = app.store.clone();
            let tenant_id = tenant.id.clone();
            let audit =
                crate::support::audit_entry(&tenant_id, runta::store::AuditAction::ApiKeyDelete);
            tokio::spawn(async move { store.delete_api_key(&tenant_id, &id, &audit).await })
        });
        let mut deleted = 0;
        let mut refused = 0;
        for delete in deletes {
            match delete.await.unwrap() {
                Ok(()) => deleted += 1,
                Err(StoreError::LastApiKey) => refused += 1,
                Err(other) => panic!("round {round}: unexpected {other:?}"),
            }
        }
        let left = app.store.list_api_keys(&tenant.id, &page).await.unwrap();
        assert_eq!(
            (deleted, refused, left.items.len()),
            (1, 1, 1),
            "round {round}: one delete wins, one is refused, one key is left"
        );
    }
}

/// A secret deleted between the check that a rule's credential exists and the rule's insert
/// (simulated with a trigger that deletes it just before the insert): the foreign key refuses
/// the rule, and the caller hears that the secret does not exist, not an internal error.
async fn rule_whose_secret_vanishes_is_400(app: TestApp) {
    let tenant = app.tenant("acme").await;
    app.secret(&tenant, "vanishing", "sk-test-value").await;
    install_trigger(
        &app,
        "CREATE TRIGGER vanish BEFORE INSERT ON rules BEGIN \
           DELETE FROM secrets WHERE tenant_id = NEW.tenant_id AND name = NEW.credential; \
         END;",
        "CREATE FUNCTION vanish() RETURNS trigger AS $$ BEGIN \
           DELETE FROM secrets WHERE tenant_id = NEW.tenant_id AND name = NEW.credential; \
           RETURN NEW; \
         END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER vanish BEFORE INSERT ON rules FOR EACH ROW EXECUTE FUNCTION vanish();",
    )
    .await;
    let answer = app
        .call(
            Method::POST,
            "/v1/runtimes/worker/rules",
            Some(&tenant.key),
            Some(json!({
                "host": "api.example.com",
                "injection": {"credential": "vanishing", "header": "Authorization"},
            })),
        )
        .await;
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        &["injection.credential", "no secret named 'vanishing'"],
    );
    let answer = app
        .call(
            Method::POST,
            "/v1/rules/batch",
            Some(&tenant.key),
            Some(json!({"rules": [{
                "runtime": "worker",
                "host": "api.example.com",
                "credential": "vanishing",
                "inject": {"header": "Authorization"},
            }]})),
        )
        .await;
    // The first request's trigger already deleted it: the ordinary check answers here.
    assert_error(
        &answer,
        StatusCode::BAD_REQUEST,
        &["rules[0].credential", "no secret named 'vanishing'"],
    );
}

/// A secret deleted while another request creates a rule that uses it (the rule inserted, not
/// yet committed, on a connection of its own): the delete waits for it and answers 409 naming
/// the rule, not an internal error (PostgreSQL: the foreign key refuses the delete) or 503
/// (SQLite: a read gone stale).
async fn secret_deleted_while_a_rule_is_created_is_409(app: TestApp) {
    let tenant = app.tenant("acme").await;
    app.secret(&tenant, "contested", "sk-test-value").await;
    let mut other = Raw::open(&app).await;
    let begin = if app.db.sqlite_dir().is_some() {
        "BEGIN IMMEDIATE"
    } else {
        "BEGIN"
    };
    other
        .run(&format!(
            "{begin}; INSERT INTO rules (id, tenant_id, runtime, host_pattern, path_pattern, \
             credential, header, param, value_template, created_at) VALUES ('rule_concurrent', \
             '{}', 'worker', 'api.example.com', NULL, 'contested', 'Authorization', NULL, \
             'Bearer ${{credential}}', 0);",
            tenant.id
        ))
        .await;
    // The other writer is a task of its own, as another client is: the delete's transaction
    // waits on this thread for the lock (SQLite's busy timeout), and would hold up anything
    // sharing its task.
    let committer = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        other.run("COMMIT").await;
    });
    let answer = app
        .call(
            Method::DELETE,
            "/v1/secrets/contested",
            Some(&tenant.key),
            None,
        )
        .await;
    committer.await.expect("the other writer committed");
    assert_error(
        &answer,
        StatusCode::CONFLICT,
        &["secret 'contested' is still used by rules rule_concurrent"],
    );
}

/// Callers that hang up while their change is written (the handler dropped at any point, as
/// hyper drops it when a client closes its connection) leave no transaction open behind them:
/// the next change goes through, no session sits idle in a transaction, every change that
/// committed has its event and the chain is intact. (A transaction left open would hold SQLite's
/// write lock, or on PostgreSQL the audit chain head's row lock: every later write would wait
/// for it.)
async fn writes_whose_caller_hangs_up_leave_no_transaction_open(app: TestApp) {
    use std::time::Duration;
    let tenant = app.tenant("acme").await;
    app.secret(&tenant, "k", "sk-test-value").await;
    let events_before = chain_events(&app).await;
    let create = |i: u64| {
        let (app, key) = (&app, &tenant.key);
        async move {
            let path = format!("/v1/runtimes/r{}/rules", i % 7);
            let body = json!({
                "host": format!("h{i}.example.com"),
                "injection": {"credential": "k", "header": "x-k"},
            });
            app.call(Method::POST, &path, Some(key), Some(body)).await
        }
    };
    // Dropped from before the first statement to after the commit (a call that was dropped
    // may leave its connection to be made again by the next one, which takes longer).
    for i in 0..80 {
        let _ = tokio::time::timeout(Duration::from_micros(i * 200), create(i)).await;
    }
    let page = Page {
        limit: 1000,
        cursor: None,
    };
    let ids: Vec<String> = app
        .store
        .list_rules(&tenant.id, None, &page)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|r| r.id)
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let path = format!("/v1/rules/{id}");
        let delete = app.call(Method::DELETE, &path, Some(&tenant.key), None);
        let _ = tokio::time::timeout(Duration::from_micros(i as u64 * 200), delete).await;
    }
    // Bounded so that a write held up forever fails here instead of hanging the suite.
    let (status, body) = tokio::time::timeout(Duration::from_secs(60), create(1000))
        .await
        .expect("a write was held up by a transaction left open");
    assert_eq!(status, StatusCode::CREATED, "{body}");
    if let Some(url) = app.db.postgres_url() {
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn =
            <diesel_async::AsyncPgConnection as diesel_async::AsyncConnection>::establish(url)
                .await
                .unwrap();
        let open: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
        )
        .get_result(&mut conn)
        .await
        .unwrap();
        assert_eq!(open.n, 0, "sessions left idle in a transaction");
    }
    // One event per change that committed: the creates whose rule exists or was deleted, the
    // deletes that took a rule away.
    let left = app
        .store
        .list_rules(&tenant.id, None, &page)
        .await
        .unwrap()
        .items
        .len() as i64;
    let deleted = ids.len() as i64 + 1 - left;
    assert_eq!(
        chain_events(&app).await - events_before,
        ids.len() as i64 + 1 + deleted,
        "an event for every change that committed, and none for a change that did not"
    );
}

/// The number of events in the audit chain, which must be intact.
async fn chain_events(app: &TestApp) -> i64 {
    match app.store.verify_audit_chain().await.unwrap() {
        runta::store::ChainVerdict::Intact { events } => events,
        broken => panic!("{broken:?}"),
    }
}

/// A connection of the test's own to the app's database, for SQL the API would not send.
enum Raw {
    Sqlite(diesel::SqliteConnection),
    Postgres(Box<diesel_async::AsyncPgConnection>),
}

impl Raw {
    async fn open(app: &TestApp) -> Self {
        use diesel_async::AsyncConnection;
        match app.db.sqlite_dir() {
            Some(dir) => {
                let path = dir.join("runta.db");
                Self::Sqlite(
                    <diesel::SqliteConnection as diesel::Connection>::establish(
                        path.to_str().unwrap(),
                    )
                    .unwrap(),
                )
            }
            None => Self::Postgres(Box::new(
                diesel_async::AsyncPgConnection::establish(app.db.postgres_url().unwrap())
                    .await
                    .unwrap(),
            )),
        }
    }

    async fn run(&mut self, sql: &str) {
        match self {
            Self::Sqlite(conn) => {
                diesel::connection::SimpleConnection::batch_execute(conn, sql).unwrap()
            }
            Self::Postgres(conn) => {
                diesel_async::SimpleAsyncConnection::batch_execute(&mut **conn, sql)
                    .await
                    .unwrap()
            }
        }
    }
}

/// Runs test-only DDL on the app's database, in the backend's dialect.
async fn install_trigger(app: &TestApp, sqlite: &str, postgres: &str) {
    let sql = if app.db.sqlite_dir().is_some() {
        sqlite
    } else {
        postgres
    };
    Raw::open(app).await.run(sql).await;
}

/// An internal failure after authentication: the answer says nothing of the cause; the request
/// log has it, once, in the line that names the route, method, status and tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_cause_is_logged_once_with_route_and_tenant() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Log {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let app = TestApp::new(crate::support::Backend::Sqlite).await.unwrap();
    let tenant = app.tenant("acme").await;
    Raw::open(&app).await.run("DROP TABLE runtime_tokens").await;
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The request runs on this thread (the router is called in place, not spawned).
    let answer = {
        let _default = tracing::subscriber::set_default(subscriber);
        app.call(
            Method::GET,
            "/v1/runtimes/worker/tokens",
            Some(&tenant.key),
            None,
        )
        .await
    };
    assert_error(&answer, StatusCode::INTERNAL_SERVER_ERROR, &["server log"]);
    assert!(
        !answer.1.to_string().contains("runtime_tokens"),
        "{}",
        answer.1
    );
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("runtime_tokens"))
        .collect();
    assert_eq!(lines.len(), 1, "the cause is logged once:\n{text}");
    for part in [
        "ERROR",
        "method=GET",
        "route=/v1/runtimes/{runtime}/tokens",
        "status=500",
        "tenant=\"acme\"",
        "cause=",
    ] {
        assert!(lines[0].contains(part), "'{part}' not in {}", lines[0]);
    }
}

/// The per-runtime digests the periodic safety net reads (`Store::read_digests`: SQL on
/// PostgreSQL, runta's aggregate on SQLite) equal the ones computed from the rules themselves,
/// for ids runta makes and for odd ones written behind its back (multi-byte, long, quoted);
/// a snapshot of exactly those rules finds no runtime differing, and one missing a rule, or
/// holding one the store no longer has, finds exactly that runtime.
async fn the_store_digests_its_rules_as_the_snapshot_does(app: TestApp) {
    use runta::rules::snapshot::{RuntimeDigest, Snapshot};
    let tenant = app.tenant("acme").await;
    app.secret(&tenant, "key", "sk-test-digest").await;
    let rules: Vec<_> = (0..50)
        .map(|i| {
            json!({"runtime": format!("rt-{}", i % 7), "host": format!("h{i}.example.com"),
                         "credential": "key", "inject": {"header": "x-key"}})
        })
        .collect();
    app.ok(
        Method::POST,
        "/v1/rules/batch",
        Some(&tenant.key),
        Some(json!({"rules": rules})),
    )
    .await;
    let long = "z".repeat(500);
    for (id, runtime) in [
        ("rule_\u{fc}ber-\u{1f511}", "rt-1"),
        (long.as_str(), "odd"),
        ("rule_it''s", "odd"),
        ("rule_0zzzzzzzzzzzzzzzzzzzzzzzzz", "rt-8"),
    ] {
        let changed = crate::support::behind_the_store(
            &app.db,
            &format!(
                "INSERT INTO rules (id, tenant_id, runtime, host_pattern, credential, header, \
                 value_template, created_at) VALUES ('{id}', '{}', '{runtime}', \
                 'odd.example.com', 'key', 'x-key', '${{credential}}', 0)",
                tenant.id
            ),
        )
        .await;
        assert_eq!(changed, 1);
    }

    // One page of them: the channel holds it.
    let (pages, mut arriving) = tokio::sync::mpsc::channel(1);
    let identities = app.store.read_everything(1000, pages).await.unwrap();
    let mut stored = Vec::new();
    while let Ok(rows) = arriving.try_recv() {
        stored.extend(rows.iter().map(|row| row.to_rule().unwrap()));
    }
    assert_eq!(stored.len(), 54);
    let ((tenants, _), mut digests) = app.store.read_digests().await.unwrap();
    assert_eq!(tenants.len(), identities.0.len());
    digests.sort_by(|a, b| (&a.tenant_id, &a.runtime).cmp(&(&b.tenant_id, &b.runtime)));
    assert_eq!(digests, RuntimeDigest::of(&stored), "the store's digests");
    assert_eq!(digests.len(), 9, "rt-0..rt-6, rt-8 and odd");

    let names = [(tenant.id.clone(), "acme".to_owned())];
    let exact = Snapshot::build(names.clone(), &stored, Vec::new());
    assert_eq!(
        exact.runtimes_differing(&digests),
        Vec::<(String, String)>::new()
    );
    let without_odd_rule = Snapshot::build(
        names.clone(),
        &stored
            .iter()
            .filter(|r| r.id != "rule_it's")
            .cloned()
            .collect::<Vec<_>>(),
        Vec::new(),
    );
    assert_eq!(
        without_odd_rule.runtimes_differing(&digests),
        [(tenant.id.clone(), "odd".to_owned())]
    );
    let mut extra = stored.clone();
    let mut gone = extra
        .iter()
        .find(|r| r.spec.runtime == "rt-3")
        .unwrap()
        .clone();
    gone.id = "rule_gone".into();
    extra.push(gone);
    let with_a_deleted_rule = Snapshot::build(names, &extra, Vec::new());
    assert_eq!(
        with_a_deleted_rule.runtimes_differing(&digests),
        [(tenant.id.clone(), "rt-3".to_owned())]
    );
}
