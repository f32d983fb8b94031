//! A batch of rules is compiled into the snapshot while the store writes it
//! (`Engine::prepare_rules`). What is swapped in equals applying the change as any other; a
//! compiled batch that the snapshot moved past (another change applied meanwhile), or whose
//! rules were deleted before it was applied, is applied anew, not swapped in; nor does it
//! stand in for another writer's change left in the queue by an applier that was dropped.

use std::collections::BTreeSet;

use axum::http::Method;
use runta::engine::Engine;
use runta::store::{AuditAction, Committed, RuleRow};
use serde_json::json;

use crate::support::{
    Backend, TestApp, TestTenant, app_with_engine, audit_entry, backend_tests, eventually,
    pg_connection, pg_count,
};

backend_tests!(
    a_compiled_batch_is_what_applying_it_makes,
    a_batch_compiled_before_another_change_keeps_both,
    a_batch_rule_deleted_before_the_batch_is_applied_stays_deleted,
);

const RUNTIMES: usize = 10;

/// `count` rules of `tenant` for secret `k`, spread over `RUNTIMES` runtimes.
fn batch(tenant: &TestTenant, tag: &str, count: usize) -> Vec<RuleRow> {
    (0..count)
        .map(|i| RuleRow {
            id: runta::crypto::new_id("rule"),
            tenant_id: tenant.id.clone(),
            runtime: format!("rt-{}", i % RUNTIMES),
            host_pattern: format!("{tag}{i}.example.com"),
            path_pattern: None,
            credential: "k".into(),
            header: Some("x-key".into()),
            param: None,
            value_template: "${credential}".into(),
            created_at: 0,
        })
        .collect()
}

/// The rule ids the engine's snapshot holds for the tenant's runtimes.
fn held(engine: &Engine, tenant: &TestTenant) -> BTreeSet<String> {
    let snapshot = engine.snapshot();
    (0..RUNTIMES)
        .filter_map(|i| snapshot.runtime_rules(&tenant.id, &format!("rt-{i}")))
        .flat_map(|rules| rules.rules().map(|r| r.id.to_string()))
        .collect()
}

async fn fixture(backend: Backend) -> Option<(TestApp, std::sync::Arc<Engine>, TestTenant)> {
    let (app, engine, _) = app_with_engine(backend).await?;
    let tenant = app.tenant("acme").await;
    app.secret(&tenant, "k", "sk-test-value").await;
    engine.reload().await.unwrap();
    Some((app, engine, tenant))
}

/// Creates one rule in runtime `rt-0` through the API (applied); answers its id.
async fn single_rule(app: &TestApp, tenant: &TestTenant, host: &str) -> String {
    let created = app
        .ok(
            Method::POST,
            "/v1/runtimes/rt-0/rules",
            Some(&tenant.key),
            Some(json!({"host": host, "injection": {"credential": "k", "header": "x-other"}})),
        )
        .await;
    created["id"].as_str().unwrap().to_owned()
}

/// Writes a batch to the store (not applied yet).
async fn insert(app: &TestApp, tenant: &TestTenant, rows: &[RuleRow]) -> Committed<()> {
    let audit = audit_entry(&tenant.id, AuditAction::RuleBatchCreate);
    app.store
        .insert_rules(&tenant.id, rows, &audit)
        .await
        .unwrap()
}

/// Writes a batch the way the API does: compiled while the store writes it, then applied.
async fn write_batch(app: &TestApp, engine: &Engine, tenant: &TestTenant, rows: &[RuleRow]) {
    let prepared = engine.prepare_rules(rows);
    assert!(
        prepared.is_some(),
        "a batch of {} rules is compiled",
        rows.len()
    );
    let committed = insert(app, tenant, rows).await;
    engine.applied_with(committed, prepared).await;
}

/// The compiled batch swapped in holds exactly the batch's rules, as a full reload of the
/// store does, and the rule count agrees.
async fn a_compiled_batch_is_what_applying_it_makes(backend: Backend) {
    let Some((app, engine, tenant)) = fixture(backend).await else {
        return;
    };
    let rows = batch(&tenant, "a", 200);
    write_batch(&app, &engine, &tenant, &rows).await;
    let want: BTreeSet<String> = rows.iter().map(|r| r.id.clone()).collect();
    assert_eq!(held(&engine, &tenant), want, "the batch as applied");
    assert_eq!(engine.snapshot().rule_count(), 200);
    // A second batch on top of the first.
    let more = batch(&tenant, "b", 100);
    write_batch(&app, &engine, &tenant, &more).await;
    let applied = held(&engine, &tenant);
    engine.reload().await.unwrap();
    assert_eq!(
        applied,
        held(&engine, &tenant),
        "applied as a full reload reads it"
    );
    assert_eq!(applied.len(), 300);
}

/// A rule created through the API after the batch was compiled and before it was applied: the
/// compiled snapshot does not have it, so swapping that in would lose it. Both are there.
async fn a_batch_compiled_before_another_change_keeps_both(backend: Backend) {
    let Some((app, engine, tenant)) = fixture(backend).await else {
        return;
    };
    let rows = batch(&tenant, "a", 100);
    let prepared = engine.prepare_rules(&rows);
    let single = single_rule(&app, &tenant, "single.example.com").await;
    assert!(
        held(&engine, &tenant).contains(&single),
        "the single create is applied"
    );
    let committed = insert(&app, &tenant, &rows).await;
    engine.applied_with(committed, prepared).await;
    let held = held(&engine, &tenant);
    assert!(held.contains(&single), "the rule created meanwhile is kept");
    assert_eq!(held.len(), 101, "the batch and the single rule");
}

/// One of the batch's rules deleted (and that deletion applied) before the batch's creation
/// is applied: the compiled snapshot has the rule, the store does not; it stays deleted.
async fn a_batch_rule_deleted_before_the_batch_is_applied_stays_deleted(backend: Backend) {
    let Some((app, engine, tenant)) = fixture(backend).await else {
        return;
    };
    let rows = batch(&tenant, "a", 100);
    let prepared = engine.prepare_rules(&rows);
    let created = insert(&app, &tenant, &rows).await;
    let gone = &rows[7].id;
    let audit = audit_entry(&tenant.id, AuditAction::RuleDelete);
    let deleted = app
        .store
        .delete_rule(&tenant.id, gone, &audit)
        .await
        .unwrap();
    engine.applied(deleted).await;
    engine.applied_with(created, prepared).await;
    let held = held(&engine, &tenant);
    assert!(!held.contains(gone), "the deleted rule is not brought back");
    assert_eq!(held.len(), 99);
}

/// An applier that took changes and was dropped before applying them (its request gone) leaves
/// a queue that may hold one change of another writer only: a batch whose own change went
/// with that applier must not swap its compiled snapshot in for that change. PostgreSQL: a
/// lock on the rules table holds appliers on their store reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compiled_batch_never_stands_in_for_another_change() {
    use diesel_async::RunQueryDsl;
    use runta::store::Change;

    let Some((app, engine, tenant)) = fixture(Backend::Postgres).await else {
        return;
    };
    let doomed = single_rule(&app, &tenant, "doomed.example.com").await;
    // Committed, not applied yet: a batch (compiled on the snapshot holding `doomed`), and the
    // deletion of `doomed`.
    let rows = batch(&tenant, "b", 100);
    let prepared = engine.prepare_rules(&rows);
    let created = insert(&app, &tenant, &rows).await;
    let audit = audit_entry(&tenant.id, AuditAction::RuleDelete);
    let deleted = app
        .store
        .delete_rule(&tenant.id, &doomed, &audit)
        .await
        .unwrap();

    let url = app.db.postgres_url().unwrap();
    let mut locker = pg_connection(url).await;
    let mut watcher = pg_connection(url).await;
    for sql in ["BEGIN", "LOCK TABLE rules IN ACCESS EXCLUSIVE MODE"] {
        diesel::sql_query(sql).execute(&mut locker).await.unwrap();
    }
    let waiting = "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = \
                   current_database() AND wait_event_type = 'Lock'";
    let reads = Change::Runtimes(vec![(tenant.id.clone(), "rt-1".into())]);
    let apply = |change: Change| {
        let engine = engine.clone();
        tokio::spawn(async move { engine.apply(change).await })
    };
    // The first applier holds the applier's lock, waiting on its read.
    let first = apply(reads.clone());
    assert!(
        eventually(async || pg_count(&mut watcher, waiting).await >= 1).await,
        "the first applier's read waits for the table lock"
    );
    // A second applier and the batch queue behind it.
    let second = apply(reads.clone());
    // The batch's task waits for the applier's lock after the second's.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let batch = tokio::spawn({
        let engine = engine.clone();
        async move { engine.applied_with(created, prepared).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // The first is dropped: the second takes its change and the batch's, and waits too (on
    // the table, or behind the first's read: its pooled connection may be the same one).
    first.abort();
    let _ = first.await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the second applier waits on its read"
    );
    // The deletion queues; the second applier is dropped with the batch's change.
    let deletion = tokio::spawn({
        let engine = engine.clone();
        async move { engine.applied(deleted).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    second.abort();
    let _ = second.await;
    // The batch's task now takes the queue: the deletion only. The table is let go first, so
    // that nothing waits on it for good should the tasks have queued otherwise.
    diesel::sql_query("COMMIT")
        .execute(&mut locker)
        .await
        .unwrap();
    batch.await.unwrap();
    deletion.await.unwrap();
    assert!(
        !held(&engine, &tenant).contains(&doomed),
        "the deletion is applied, not replaced by the batch's compiled snapshot"
    );
}
