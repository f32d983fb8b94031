//! What is injected, and from where: parameters, other messages, the secret cache and its TTL,
//! and failing closed when the store is gone.

use super::*;
use crate::support::backend_tests;

backend_tests!(
    cache_ttl_zero_reads_the_store_every_time,
    parameters_and_other_messages,
);

async fn cache_ttl_zero_reads_the_store_every_time(gw: Gateway) {
    gw.secret("fresh", "sk-test-fresh-1", 0).await;
    gw.secret("cached", "sk-test-cached-1", 300).await;
    gw.rule("worker", json!({"host": "fresh.example.com", "injection": {"credential": "fresh", "header": "x-key"}})).await;
    gw.rule("worker", json!({"host": "cached.example.com", "injection": {"credential": "cached", "header": "x-key"}})).await;
    let mut client = gw.client().await;
    let fresh = get("fresh.example.com", "/");
    let cached = get("cached.example.com", "/");
    assert_eq!(
        call(&mut client, WORKER, &fresh).await,
        set("x-key", "sk-test-fresh-1")
    );
    assert_eq!(
        call(&mut client, WORKER, &cached).await,
        set("x-key", "sk-test-cached-1")
    );
    // Another writer (another replica, say) changes both values behind this process's back.
    let store = runta::store::Store::connect(&gw.db.url(), 1).await.unwrap();
    let keyring = gw.keyring();
    let (status, secrets) = gw.api(reqwest::Method::GET, "/v1/secrets", None).await;
    assert_eq!(status, 200, "{secrets}");
    let versions: Vec<(&str, i64)> = secrets["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["version"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        versions,
        [("fresh", 1), ("cached", 1)],
        "both at version 1, the version the new ciphertexts are sealed for"
    );
    let tenant = gw.tenant_id("acme");
    for (name, value) in [("fresh", "sk-test-fresh-2"), ("cached", "sk-test-cached-2")] {
        let row = store.get_secret(&tenant, name).await.unwrap().unwrap();
        let sealed = keyring
            .seal(
                value.as_bytes(),
                SealContext {
                    tenant_id: &tenant,
                    secret_id: &row.id,
                    version: row.version,
                },
            )
            .unwrap();
        assert!(
            store
                .reseal_secret(&row, &sealed.key_id, &sealed.nonce, &sealed.ciphertext)
                .await
                .unwrap()
        );
    }
    assert_eq!(
        call(&mut client, WORKER, &fresh).await,
        set("x-key", "sk-test-fresh-2"),
        "ttl 0: read every time"
    );
    assert_eq!(
        call(&mut client, WORKER, &cached).await,
        set("x-key", "sk-test-cached-1"),
        "ttl 300: still cached"
    );
    gw.stop().await;
}

async fn parameters_and_other_messages(gw: Gateway) {
    gw.secret("maps", "sk test/&=é", 300).await;
    gw.rule(
        "worker",
        json!({"host": "maps.example.com", "injection": {"credential": "maps", "param": "key"}}),
    )
    .await;
    let mut client = gw.client().await;
    let request = get("maps.example.com", "/geo?q=a%20b&key=runtime&z");
    assert_eq!(
        call(&mut client, WORKER, &request).await,
        set(":path", "/geo?q=a%20b&key=sk%20test%2F%26%3D%C3%A9&z")
    );
    // A body chunk (a misconfigured filter) is let through unchanged.
    let body = ProcessingRequest {
        request: Some(Message::RequestBody(HttpBody {
            body: b"x".to_vec(),
            end_of_stream: true,
            ..HttpBody::default()
        })),
        ..ProcessingRequest::default()
    };
    let answer = process(&mut client, WORKER, body).await.unwrap().unwrap();
    assert!(matches!(answer.response, Some(Answer::RequestBody(_))));
    // Observability mode: Envoy expects no answer, and the stream just ends.
    let mut observed = message(&request);
    observed.observability_mode = true;
    assert!(
        process(&mut client, WORKER, observed)
            .await
            .unwrap()
            .is_none()
    );
    gw.stop().await;
}

/// The store goes away with nothing cached: 503 naming the rule, never a forward without the
/// credential; when it comes back, so does injection. PostgreSQL only: a database can be closed
/// to connections for real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_unreachable_fails_closed() {
    let Some(gw) = Gateway::start(Backend::Postgres).await else {
        return;
    };
    gw.secret("openai-api-key", VALUE, 0).await;
    let id = gw.rule("worker", seed_rule()).await;
    let mut client = gw.client().await;
    let request = get("api.openai.com", "/v1/models");
    assert_eq!(
        call(&mut client, WORKER, &request).await,
        set("authorization", &format!("Bearer {VALUE}"))
    );

    let admin_url = crate::support::postgres_url().unwrap();
    let name = gw
        .db
        .postgres_url()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let closer = {
        use diesel_async::{AsyncConnection, RunQueryDsl};
        let mut conn = diesel_async::AsyncPgConnection::establish(&admin_url)
            .await
            .unwrap();
        diesel::sql_query(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
            .execute(&mut conn)
            .await
            .unwrap();
        diesel::sql_query(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        conn
    };
    match call(&mut client, WORKER, &request).await {
        Outcome::Immediate { status, body, .. } => {
            assert_eq!(status, 503);
            assert!(body.contains(&id), "{body}");
            assert!(!body.contains("1b2c"));
        }
        other => panic!("forwarded while the store is down: {other:?}"),
    }
    // Back: injection resumes without a restart.
    {
        use diesel_async::RunQueryDsl;
        let mut conn = closer;
        diesel::sql_query(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let mut resumed = None;
    for _ in 0..50 {
        let outcome = call(&mut client, WORKER, &request).await;
        if outcome == set("authorization", &format!("Bearer {VALUE}")) {
            resumed = Some(outcome);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed.is_some(), "injection did not resume");
    gw.stop().await;
}
