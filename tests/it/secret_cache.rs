//! The engine's secret cache keeps its promises: a value leaves memory when its TTL ends,
//! asked for again or not (shown on a paused clock); an update racing a fetch never leaves the
//! old value cached; concurrent misses on one key make one store read.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use runta::engine::Engine;
use runta::metrics::Metrics;
use runta::rules::snapshot::secret_key;
use runta::store::Store;
use secrecy::ExposeSecret;
use serde_json::json;

use crate::support::{Backend, TestApp, TestTenant, app_with_engine};

async fn secret_with_ttl(app: &TestApp, tenant: &TestTenant, name: &str, value: &str, ttl: i64) {
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/secrets",
            Some(&tenant.key),
            Some(json!({"name": name, "value": value, "cache_ttl_secs": ttl})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// A SQLite database holding tenant `acme` with secret `x` (TTL 5 s). Made on a thread of its
/// own: migrations need a multi-threaded runtime, the paused clock a current-thread one.
fn database_with_a_secret() -> (TestApp, String) {
    std::thread::spawn(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let app = TestApp::new(Backend::Sqlite).await.unwrap();
                let tenant = app.tenant("acme").await;
                secret_with_ttl(&app, &tenant, "x", "sk-test-value", 5).await;
                (app, tenant.id)
            })
    })
    .join()
    .unwrap()
}

/// The value is read once, then nobody asks for it again: when its 5 s are over the sweep
/// has dropped it from memory. Time is tokio's paused clock, advanced by hand.
#[tokio::test(start_paused = true)]
async fn expired_value_leaves_memory_without_a_lookup() {
    let (app, tenant_id) = database_with_a_secret();
    let url = format!(
        "sqlite://{}",
        app.db.sqlite_dir().unwrap().join("runta.db").display()
    );
    let store = Store::connect(&url, 2).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let engine = Arc::new(Engine::new(store, app.keyring.clone(), metrics.clone()));
    let sweep = tokio::spawn(
        engine
            .clone()
            .evict_expired_secrets(std::future::pending::<()>()),
    );
    let key = secret_key(&tenant_id, "x");
    let value = engine.secret(&key, &tenant_id, "x").await.unwrap();
    assert_eq!(value.expose_secret(), "sk-test-value");
    drop(value);
    assert_eq!(engine.cached_secrets(), 1, "cached after the read");

    tokio::time::sleep(Duration::from_millis(4_900)).await;
    assert_eq!(engine.cached_secrets(), 1, "still cached within its TTL");

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        engine.cached_secrets(),
        0,
        "expired 5 s after it was read, and gone from memory though nobody asked for it"
    );
    assert_eq!(
        metrics.hot.cache_misses.get(),
        1,
        "read once, never looked up again"
    );
    sweep.abort();
}

/// Values of different TTLs each leave at their own expiry; a value cached while the sweep
/// sleeps towards a later expiry still leaves at its own.
#[tokio::test(start_paused = true)]
async fn each_value_leaves_at_its_own_expiry() {
    let (app, tenant_id) = database_with_a_secret();
    let url = format!(
        "sqlite://{}",
        app.db.sqlite_dir().unwrap().join("runta.db").display()
    );
    let store = Store::connect(&url, 2).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let engine = Arc::new(Engine::new(store.clone(), app.keyring.clone(), metrics));
    tokio::spawn(
        engine
            .clone()
            .evict_expired_secrets(std::future::pending::<()>()),
    );
    // A second secret with a TTL of 60 s, written straight into the store.
    let long = store.get_secret(&tenant_id, "x").await.unwrap().unwrap();
    let sealed = app
        .keyring
        .seal(
            b"sk-test-long",
            runta::crypto::SealContext {
                tenant_id: &tenant_id,
                secret_id: "sec_long",
                version: 1,
            },
        )
        .unwrap();
    store
        .insert_secret(
            &runta::store::SecretRow {
                id: "sec_long".into(),
                name: "long".into(),
                cache_ttl_secs: 60,
                key_id: sealed.key_id,
                nonce: sealed.nonce,
                ciphertext: sealed.ciphertext,
                ..long
            },
            &crate::support::audit_entry(&tenant_id, runta::store::AuditAction::SecretCreate),
        )
        .await
        .unwrap();
    let long_key = secret_key(&tenant_id, "long");
    engine.secret(&long_key, &tenant_id, "long").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Cached while the sweep sleeps until the 60 s expiry: it must wake earlier for this one.
    let key = secret_key(&tenant_id, "x");
    engine.secret(&key, &tenant_id, "x").await.unwrap();
    assert_eq!(engine.cached_secrets(), 2);
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    assert_eq!(
        engine.cached_secrets(),
        1,
        "the 5 s value left, the 60 s one stays"
    );
    tokio::time::sleep(Duration::from_secs(54)).await;
    assert_eq!(
        engine.cached_secrets(),
        0,
        "the 60 s value left at its expiry"
    );
}

crate::support::backend_tests!(
    update_racing_fetches_never_leaves_the_old_value,
    concurrent_misses_make_one_store_read,
);

/// Fetches run without pause on other tasks while the secret is updated through the API, 40
/// times. Whenever an update has answered, every fetch started after it gets the new value:
/// no fetch that read the old one put it back into the cache.
async fn update_racing_fetches_never_leaves_the_old_value(app: TestApp) {
    let backend = app.backend;
    drop(app);
    let Some((app, engine, _)) = app_with_engine(backend).await else {
        return;
    };
    race(app, engine).await;
}

async fn race(app: TestApp, engine: Arc<Engine>) {
    let tenant = app.tenant("acme").await;
    secret_with_ttl(&app, &tenant, "x", "v0", 300).await;
    let key = secret_key(&tenant.id, "x");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fetchers: Vec<_> = (0..6)
        .map(|_| {
            let (engine, key, tenant_id, stop) =
                (engine.clone(), key.clone(), tenant.id.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = engine.secret(&key, &tenant_id, "x").await;
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for round in 1..=40 {
        let value = format!("v{round}");
        let (status, body) = app
            .call(
                Method::PUT,
                "/v1/secrets/x",
                Some(&tenant.key),
                Some(json!({"value": value})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for _ in 0..5 {
            let got = engine.secret(&key, &tenant.id, "x").await.unwrap();
            assert_eq!(
                got.expose_secret(),
                value,
                "round {round}: the update answered, yet the old value is served from the cache"
            );
            tokio::task::yield_now().await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for fetcher in fetchers {
        fetcher.await.unwrap();
    }
}

/// 200 requests miss on one key at once (the value expired, or was never read): one store
/// read, which the others wait for (or, arriving after it, find cached). A TTL of 0 caches
/// nothing: each request that arrives after a read ended reads again, and nothing is kept.
async fn concurrent_misses_make_one_store_read(app: TestApp) {
    let backend = app.backend;
    drop(app);
    let Some((app, engine, metrics)) = app_with_engine(backend).await else {
        return;
    };
    let tenant = app.tenant("acme").await;
    for (name, ttl) in [("hot", 300), ("uncached", 0)] {
        secret_with_ttl(&app, &tenant, name, "sk-test-value", ttl).await;
        let key = secret_key(&tenant.id, name);
        let before = metrics.hot.cache_misses.get();
        let misses = (0..200).map(|_| engine.secret(&key, &tenant.id, name));
        for answer in futures_util::future::join_all(misses).await {
            assert_eq!(answer.unwrap().expose_secret(), "sk-test-value");
        }
        let reads = metrics.hot.cache_misses.get() - before;
        if ttl > 0 {
            assert_eq!(
                reads, 1,
                "{name}: 200 concurrent misses read the store once"
            );
        } else {
            assert!(reads >= 1, "{name}: read at least once");
        }
    }
    assert_eq!(engine.cached_secrets(), 1, "the TTL-0 value was not kept");
}
