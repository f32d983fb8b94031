//! Encryption at rest, from the attacker's side: the database bytes never hold a value, a
//! ciphertext moved to another row does not open, a wrong key does not open, and rotation
//! leaves every secret readable and none under the old key.

use axum::http::{Method, StatusCode};
use runta::crypto::{CryptoError, Keyring, MasterKey, SealContext};
use serde_json::json;

use crate::support::{Backend, TestApp, TestDb, backend_tests, keyring_with};

backend_tests!(
    values_never_in_database_bytes,
    moved_ciphertext_does_not_open,
    rotation,
);

const VALUE: &str = "sk-test-ATREST-77e0b5";

async fn values_never_in_database_bytes(app: TestApp) {
    let t = app.tenant("acme").await;
    app.secret(&t, "one", VALUE).await;
    app.secret(&t, "two", &format!("{VALUE}-second")).await;
    let (status, _) = app
        .call(
            Method::PUT,
            "/v1/secrets/one",
            Some(&t.key),
            Some(json!({"value": format!("{VALUE}-updated")})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let needle = b"ATREST-77e0b5";
    match app.backend {
        Backend::Sqlite => {
            let dir = app.db.sqlite_dir().unwrap();
            let mut checked = 0;
            for entry in std::fs::read_dir(dir).unwrap() {
                let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle),
                    "a value is in the SQLite files"
                );
                checked += bytes.len();
            }
            assert!(checked > 0);
        }
        Backend::Postgres => {
            let out = std::process::Command::new("pg_dump")
                .arg("--data-only")
                .arg(app.db.postgres_url().unwrap())
                .output()
                .expect("pg_dump is installed with PostgreSQL");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let dump = out.stdout;
            assert!(
                dump.windows(b"secrets".len()).any(|w| w == b"secrets"),
                "the dump holds the secrets table"
            );
            assert!(
                !dump.windows(needle.len()).any(|w| w == needle),
                "a value is in the PostgreSQL dump"
            );
        }
    }
}

async fn moved_ciphertext_does_not_open(app: TestApp) {
    let a = app.tenant("tenant-a").await;
    let b = app.tenant("tenant-b").await;
    app.secret(&a, "a1", VALUE).await;
    app.secret(&a, "a2", "sk-test-other").await;
    app.secret(&b, "b1", "sk-test-b").await;
    let a1 = app.store.get_secret(&a.id, "a1").await.unwrap().unwrap();
    let ctx = |row: &runta::store::SecretRow| (row.tenant_id.clone(), row.id.clone(), row.version);

    // a1's ciphertext copied into a2's row (same tenant) and into b1's row (other tenant).
    for (tenant, name) in [(&a.id, "a2"), (&b.id, "b1")] {
        let target = app.store.get_secret(tenant, name).await.unwrap().unwrap();
        assert!(
            app.store
                .reseal_secret(&target, &a1.key_id, &a1.nonce, &a1.ciphertext)
                .await
                .unwrap()
        );
        let moved = app.store.get_secret(tenant, name).await.unwrap().unwrap();
        assert_eq!(moved.ciphertext, a1.ciphertext);
        let (tenant_id, secret_id, version) = ctx(&moved);
        let opened = app.keyring.open(
            &moved.sealed(),
            SealContext {
                tenant_id: &tenant_id,
                secret_id: &secret_id,
                version,
            },
        );
        assert!(
            matches!(opened, Err(CryptoError::Open(_))),
            "{name}: moved ciphertext opened"
        );
    }

    // The same ciphertext at an older version number does not open either.
    let (status, _) = app
        .call(
            Method::PUT,
            "/v1/secrets/a1",
            Some(&a.key),
            Some(json!({"value": "sk-test-v2"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let v2 = app.store.get_secret(&a.id, "a1").await.unwrap().unwrap();
    let opened = app.keyring.open(
        &v2.sealed(),
        SealContext {
            tenant_id: &a.id,
            secret_id: &v2.id,
            version: 1,
        },
    );
    assert!(opened.is_err());

    // A different key under the same id does not open the original.
    let wrong = keyring_with(&["k1"], "k1");
    let opened = wrong.open(
        &a1.sealed(),
        SealContext {
            tenant_id: &a.id,
            secret_id: &a1.id,
            version: 1,
        },
    );
    assert!(matches!(opened, Err(CryptoError::Open(_))));
    // And the right one still does.
    let opened = app
        .keyring
        .open(
            &a1.sealed(),
            SealContext {
                tenant_id: &a.id,
                secret_id: &a1.id,
                version: 1,
            },
        )
        .unwrap();
    assert_eq!(opened.as_slice(), VALUE.as_bytes());
}

/// Keys: old k1 (text kept so it can be rebuilt), then k2 added and made active.
async fn rotation(backend: Backend) {
    let k1 = MasterKey::generate();
    let k1_text = k1.to_base64();
    let Some(app) = TestApp::with_keyring(
        backend,
        Keyring::new([("k1".to_owned(), k1)], "k1").unwrap(),
    )
    .await
    else {
        return;
    };
    let t = app.tenant("acme").await;
    let u = app.tenant("umbrella").await;
    let mut expected = Vec::new();
    for i in 0..7 {
        let (tenant, name, value) = if i % 2 == 0 {
            (&t, format!("s{i}"), format!("sk-test-rot-{i}"))
        } else {
            (&u, format!("s{i}"), format!("sk-test-rot-{i}"))
        };
        app.secret(tenant, &name, &value).await;
        expected.push((tenant.id.clone(), name, value));
    }
    assert_eq!(
        app.store.count_secrets_by_key().await.unwrap(),
        [("k1".to_owned(), 7)]
    );

    let k2 = MasterKey::generate();
    let k2_text = k2.to_base64();
    let both = Keyring::new(
        [
            (
                "k1".to_owned(),
                MasterKey::from_base64("k1", &k1_text).unwrap(),
            ),
            ("k2".to_owned(), k2),
        ],
        "k2",
    )
    .unwrap();
    let report = runta::keys::rotate(&app.store, &both).await.unwrap();
    assert_eq!(
        (report.resealed, report.skipped, report.failed.len()),
        (7, 0, 0)
    );
    assert_eq!(
        app.store.count_secrets_by_key().await.unwrap(),
        [("k2".to_owned(), 7)]
    );
    // A second run has nothing to do.
    assert_eq!(
        runta::keys::rotate(&app.store, &both)
            .await
            .unwrap()
            .resealed,
        0
    );

    // k1 can now be dropped: k2 alone opens everything, with the original values.
    let only_k2 = Keyring::new(
        [(
            "k2".to_owned(),
            MasterKey::from_base64("k2", &k2_text).unwrap(),
        )],
        "k2",
    )
    .unwrap();
    for (tenant_id, name, value) in &expected {
        let row = app
            .store
            .get_secret(tenant_id, name)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.key_id, "k2");
        let ctx = SealContext {
            tenant_id,
            secret_id: &row.id,
            version: row.version,
        };
        assert_eq!(
            only_k2.open(&row.sealed(), ctx).unwrap().as_slice(),
            value.as_bytes()
        );
    }
    drop::<TestDb>(app.db);
}
