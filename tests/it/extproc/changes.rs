//! Changes through the admin API reach the next request, on this replica and on others.

use super::*;
use crate::support::{backend_tests, eventually, pg_connection, pg_count};
use diesel_async::{AsyncConnection as _, RunQueryDsl as _};

backend_tests!(changes_take_effect_on_the_next_request,);

async fn changes_take_effect_on_the_next_request(gw: Gateway) {
    gw.secret("openai-api-key", VALUE, 300).await;
    let mut client = gw.client().await;
    let request = get("api.openai.com", "/v1/models");
    assert_eq!(call(&mut client, WORKER, &request).await, unchanged());
    let id = gw.rule("worker", seed_rule()).await;
    assert_eq!(
        call(&mut client, WORKER, &request).await,
        set("authorization", &format!("Bearer {VALUE}"))
    );
    // A new value replaces the cached one at once.
    let (status, _) = gw
        .api(
            reqwest::Method::PUT,
            "/v1/secrets/openai-api-key",
            Some(json!({"value": "sk-test-rotated"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        call(&mut client, WORKER, &request).await,
        set("authorization", "Bearer sk-test-rotated")
    );
    let (status, _) = gw
        .api(reqwest::Method::DELETE, &format!("/v1/rules/{id}"), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(call(&mut client, WORKER, &request).await, unchanged());
    // A batch takes effect too.
    let (status, _) = gw
        .api(
            reqwest::Method::POST,
            "/v1/rules/batch",
            Some(json!({"rules": [{"runtime": "worker", "host": "*.openai.com", "credential": "openai-api-key", "inject": {"header": "x-key"}}]})),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        call(&mut client, WORKER, &request).await,
        set("x-key", "sk-test-rotated")
    );
    gw.stop().await;
}

/// Two replicas on one PostgreSQL database, each with the safety net every `reload_interval_secs`.
async fn replicas(reload_interval_secs: u64) -> Option<(Gateway, Gateway)> {
    let first = Gateway::start_with(Backend::Postgres, |c| {
        c.injection.reload_interval_secs = reload_interval_secs
    })
    .await?;
    let second = first.replica().await;
    Some((first, second))
}

/// Two replicas on one PostgreSQL database: a change made through one reaches the other's
/// snapshot and secret cache through LISTEN/NOTIFY, not a periodic reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_each_other() {
    let Some((first, second)) = replicas(3600).await else {
        return;
    };
    let mut client = second.client().await;
    let request = get("api.openai.com", "/v1/models");
    assert_eq!(call(&mut client, WORKER, &request).await, unchanged());

    async fn eventually(
        client: &mut ExternalProcessorClient<Channel>,
        request: &[(String, String)],
        want: &Outcome,
    ) -> bool {
        for _ in 0..100 {
            if call(client, WORKER, request).await == *want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
    first.secret("openai-api-key", VALUE, 3600).await;
    first.rule("worker", seed_rule()).await;
    let want = set("authorization", &format!("Bearer {VALUE}"));
    assert!(
        eventually(&mut client, &request, &want).await,
        "the rule never reached the other replica"
    );
    // The value is now cached there for an hour; an update through the first replica drops it.
    let (status, _) = first
        .api(
            reqwest::Method::PUT,
            "/v1/secrets/openai-api-key",
            Some(json!({"value": "sk-test-replicated"})),
        )
        .await;
    assert_eq!(status, 200);
    let want = set("authorization", "Bearer sk-test-replicated");
    assert!(
        eventually(&mut client, &request, &want).await,
        "the other replica kept serving the old value"
    );
    // A runtime token made through the first replica identifies on the second (an identities
    // change, which keeps the second's rule index), and its revocation reaches it too.
    let (status, created) = first
        .api(reqwest::Method::POST, "/v1/runtimes/worker/tokens", None)
        .await;
    assert_eq!(status, 201);
    let mut with_token = get("api.openai.com", "/v1/models");
    with_token.push((
        "proxy-authorization".into(),
        format!("Bearer {}", created["token"].as_str().unwrap()),
    ));
    let rules_before = second.snapshot();
    let mut injected = false;
    for _ in 0..100 {
        if let Outcome::Continue(m) = call(&mut client, EDGE, &with_token).await
            && m.set
                == [(
                    "authorization".to_owned(),
                    "Bearer sk-test-replicated".to_owned(),
                )]
        {
            injected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(injected, "the token never identified on the other replica");
    assert!(
        second.snapshot().shares_rules_with(&rules_before),
        "a token change rebuilt the other replica's rules"
    );
    let id = created["id"].as_str().unwrap();
    let (status, _) = first
        .api(
            reqwest::Method::DELETE,
            &format!("/v1/runtime-tokens/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let mut refused = false;
    for _ in 0..100 {
        if let Outcome::Immediate { status: 407, .. } = call(&mut client, EDGE, &with_token).await {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the revocation never reached the other replica");
    second.stop().await;
    first.stop().await;
}

/// The ids of a runtime's rules in a replica's current snapshot, sorted.
fn rule_ids(gw: &Gateway, tenant_id: &str, runtime: &str) -> Vec<String> {
    let snapshot = gw.snapshot();
    let mut ids: Vec<String> = snapshot
        .runtime_rules(tenant_id, runtime)
        .map(|r| r.rules().map(|r| r.id.to_string()).collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Waits (up to 10 s) until `done` holds on a replica.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never: {what}");
}

/// A counter of a replica's `/metrics` (0 when absent).
async fn counter(gw: &Gateway, name: &str) -> f64 {
    gw.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Every kind of change made through one PostgreSQL replica is in its very next decision and
/// reaches another replica as a delta (its full-reload count does not move): a batch over
/// more runtimes than one announcement holds, a single create, a delete that removes exactly
/// its rule, tokens, a tenant; two replicas writing one runtime at once both end with every
/// rule; and changes that reached no replica (written behind runta's back, as a lost
/// notification would leave them: a rule created, one deleted) are healed by the periodic
/// reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_kind_reaches_the_other_replica_as_a_delta() {
    let Some((first, second)) = replicas(1).await else {
        return;
    };
    first.secret("openai-api-key", VALUE, 300).await;
    let tenant_id = first.tenant_id("acme");
    let full_reloads = "runta_snapshot_reloads_total{result=\"ok\"}";
    let full_reloads_before = counter(&second, full_reloads).await;
    let applied_before = counter(&second, "runta_snapshot_changes_applied_total").await;

    // A batch of 400 rules over 200 runtimes: its ids fill several announcements.
    let rules: Vec<Value> = (0..400)
        .map(|i| {
            json!({"runtime": format!("rt-{}", i % 200), "host": format!("h{i}.example.com"),
                        "credential": "openai-api-key", "inject": {"header": "x-key"}})
        })
        .collect();
    let (status, created) = first
        .api(
            reqwest::Method::POST,
            "/v1/rules/batch",
            Some(json!({"rules": rules})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let batch_ids: Vec<String> = created["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    let rt7: Vec<String> = {
        let mut ids: Vec<String> = batch_ids
            .iter()
            .zip(0..)
            .filter(|(_, i)| i % 200 == 7)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        rule_ids(&first, &tenant_id, "rt-7"),
        rt7,
        "not in the writer's next decision"
    );
    let count = |gw: &Gateway| gw.snapshot().rule_count();
    assert_eq!(count(&first), 400);
    until("the batch reaches the other replica", || {
        count(&second) == 400
    })
    .await;
    assert_eq!(rule_ids(&second, &tenant_id, "rt-7"), rt7);

    // A delete removes exactly its rule, here and there.
    let (status, _) = first
        .api(
            reqwest::Method::DELETE,
            &format!("/v1/rules/{}", rt7[0]),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(rule_ids(&first, &tenant_id, "rt-7"), rt7[1..]);
    until("the delete reaches the other replica", || {
        rule_ids(&second, &tenant_id, "rt-7") == rt7[1..]
    })
    .await;
    assert_eq!(count(&second), 399);

    // A tenant made through the first is known to the second.
    let (status, _) = first
        .api_as(
            OPERATOR,
            reqwest::Method::POST,
            "/v1/tenants",
            Some(json!({"name": "initech"})),
        )
        .await;
    assert_eq!(status, 201);
    until("the tenant reaches the other replica", || {
        second.snapshot().tenant_id("initech").is_some()
    })
    .await;

    // Two replicas creating rules for one runtime at once: both end with all of them.
    async fn create(gw: &Gateway, i: usize) -> (u16, Value) {
        gw.api(
            reqwest::Method::POST,
            "/v1/runtimes/shared/rules",
            Some(json!({"host": format!("s{i}.example.com"),
                        "injection": {"credential": "openai-api-key", "header": "x-key"}})),
        )
        .await
    }
    let mut writes = Vec::new();
    for i in 0..20 {
        writes.push(create(&first, i));
        writes.push(create(&second, 100 + i));
    }
    let answers = futures_util::future::join_all(writes).await;
    let mut shared: Vec<String> = answers
        .iter()
        .map(|(status, rule)| {
            assert_eq!(*status, 201, "{rule}");
            rule["id"].as_str().unwrap().to_owned()
        })
        .collect();
    shared.sort();
    for gw in [&first, &second] {
        until("both replicas hold every concurrent create", || {
            rule_ids(gw, &tenant_id, "shared") == shared
        })
        .await;
    }
    // The second replica got all of it as deltas, announcement by announcement (its periodic
    // reload is an hour away): the batch's announcements, the delete, the tenant and the
    // twenty creates through the first.
    let applied = counter(&second, "runta_snapshot_changes_applied_total").await - applied_before;
    assert!(applied >= 24.0, "only {applied} changes applied as deltas");
    assert_eq!(
        counter(&second, "runta_snapshot_reloads_total{result=\"error\"}").await,
        0.0,
        "a change could not be applied"
    );
    assert_eq!(
        counter(&second, full_reloads).await,
        full_reloads_before,
        "the other replica reloaded everything rather than applying the changes"
    );

    // Written behind runta's back (no announcement): the periodic reload brings it in.
    let mut conn = diesel_async::AsyncPgConnection::establish(first.db.postgres_url().unwrap())
        .await
        .unwrap();
    diesel::sql_query(format!(
        "INSERT INTO rules (id, tenant_id, runtime, host_pattern, credential, header, value_template, created_at) \
         VALUES ('rule_0zzzzzzzzzzzzzzzzzzzzzzzzz', '{tenant_id}', 'unannounced', 'quiet.example.com', 'openai-api-key', 'x-key', '${{credential}}', 0)"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    until("the periodic reload heals a missed change", || {
        rule_ids(&first, &tenant_id, "unannounced") == ["rule_0zzzzzzzzzzzzzzzzzzzzzzzzz"]
    })
    .await;
    diesel::sql_query(format!("DELETE FROM rules WHERE id = '{}'", shared[0]))
        .execute(&mut conn)
        .await
        .unwrap();
    until("the periodic reload heals a missed delete", || {
        rule_ids(&first, &tenant_id, "shared") == shared[1..]
    })
    .await;
    second.stop().await;
    first.stop().await;
}

/// A replica whose LISTEN connection was cut reconnects and catches up with a full reload, and
/// goes on applying the announcements it hears while that reload reads: here the reload is
/// held up by a lock on the rules table (at a million rules it reads for seconds), and a
/// tenant created through the other replica still reaches it. Once the lock goes, the reload
/// finishes. (The test cluster is shared: only this test's database's sessions are looked at.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_applies_changes_while_its_catch_up_reload_reads() {
    let Some((first, second)) = replicas(3600).await else {
        return;
    };
    // A rule, so that the catch-up compares digests (an empty snapshot is loaded whole).
    first.secret("openai-api-key", VALUE, 300).await;
    first.rule("worker", seed_rule()).await;
    until("the rule reaches the other replica", || {
        second.snapshot().rule_count() == 1
    })
    .await;
    let url = first.db.postgres_url().unwrap();
    let mut locker = pg_connection(url).await;
    let mut watcher = pg_connection(url).await;
    let full_reloads = "runta_snapshot_reloads_total{result=\"ok\"}";
    // The start-up load and the catch-up after the first connection are done.
    eventually(async || counter(&second, full_reloads).await >= 2.0).await;
    let reloads_before = counter(&second, full_reloads).await;
    assert_eq!(reloads_before, 2.0, "the start-up load and its catch-up");

    diesel::sql_query("BEGIN")
        .execute(&mut locker)
        .await
        .unwrap();
    diesel::sql_query("LOCK TABLE rules IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    let killed = pg_count(
        &mut watcher,
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN %' \
         AND pid <> pg_backend_pid()",
    )
    .await;
    assert_eq!(killed, 2, "each replica had one LISTEN connection");
    // Both replicas reconnected, and their catch-up reloads wait for the lock.
    let mut blocked = 0;
    eventually(async || {
        blocked = pg_count(
            &mut watcher,
            "SELECT count(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock' \
             AND query ILIKE '%rules%'",
        )
        .await;
        blocked >= 2
    })
    .await;
    assert_eq!(
        blocked, 2,
        "both replicas' catch-up reloads wait for the rules table"
    );
    let listening = pg_count(
        &mut watcher,
        "SELECT count(*) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN %'",
    )
    .await;
    assert_eq!(listening, 2, "both replicas listen again");

    let (status, body) = first
        .api_as(
            OPERATOR,
            reqwest::Method::POST,
            "/v1/tenants",
            Some(json!({"name": "during-catch-up"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    until(
        "the tenant reaches the other replica while it catches up",
        || second.snapshot().tenant_id("during-catch-up").is_some(),
    )
    .await;
    assert_eq!(
        counter(&second, full_reloads).await,
        reloads_before,
        "the catch-up reload finished while the rules table was locked"
    );

    diesel::sql_query("ROLLBACK")
        .execute(&mut locker)
        .await
        .unwrap();
    eventually(async || counter(&second, full_reloads).await > reloads_before).await;
    assert_eq!(
        counter(&second, full_reloads).await,
        reloads_before + 1.0,
        "the catch-up reload finished once the lock went"
    );
    second.stop().await;
    first.stop().await;
}

/// A rule written behind runta's back into a runtime that changes all the time (rules created
/// through the API one after another, so changes to it are being applied while the safety net
/// compares): the periodic safety net still brings it in, within a few intervals, on both
/// backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_that_never_stops_changing_is_still_healed() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(gw) = Gateway::start_with(backend, |c| c.injection.reload_interval_secs = 1).await
        else {
            return;
        };
        gw.secret("openai-api-key", VALUE, 300).await;
        let tenant_id = gw.tenant_id("acme");
        let gw = Arc::new(gw);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (gw, stop) = (gw.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                // (`load` spelled out: diesel's `RunQueryDsl` is in scope too.)
                while !std::sync::atomic::AtomicBool::load(
                    &stop,
                    std::sync::atomic::Ordering::Relaxed,
                ) {
                    let (status, body) = gw
                        .api(
                            reqwest::Method::POST,
                            "/v1/runtimes/busy/rules",
                            Some(json!({"host": format!("b{n}.example.com"),
                                        "injection": {"credential": "openai-api-key", "header": "x-key"}})),
                        )
                        .await;
                    assert_eq!(status, 201, "{body}");
                    n += 1;
                }
                n
            })
        };
        let missed = "rule_0zzzzzzzzzzzzzzzzzzzzzzzzy";
        let changed = crate::support::behind_the_store(
            &gw.db,
            &format!(
                "INSERT INTO rules (id, tenant_id, runtime, host_pattern, credential, header, \
                 value_template, created_at) VALUES ('{missed}', '{tenant_id}', 'busy', \
                 'quiet.example.com', 'openai-api-key', 'x-key', '${{credential}}', 0)"
            ),
        )
        .await;
        assert_eq!(changed, 1);
        until("the safety net heals a runtime that keeps changing", || {
            rule_ids(&gw, &tenant_id, "busy")
                .iter()
                .any(|id| id == missed)
        })
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let created = writer.await.unwrap();
        assert!(created > 0);
        // Every rule the writer made is there too.
        assert_eq!(rule_ids(&gw, &tenant_id, "busy").len(), created + 1);
        Arc::into_inner(gw).unwrap().stop().await;
    }
}
