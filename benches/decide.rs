//! What one decision costs as the rule set grows: `decide` alone, and the whole answer with
//! the secret cached (decide, cache lookup, template, mutation, log line and metrics), at 10,
//! 1,000 and 100,000 rules spread over 1,000 runtimes. The request is always one runtime's;
//! the claim under test is that its cost does not grow with the other runtimes' rules.
//!
//! `cargo bench --bench decide`; prints criterion's figures, then a summary with the ratio of
//! each size to the smallest, measured in the same run.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion};
use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use runta::config::Unidentified;
use runta::crypto::{Keyring, MasterKey, SealContext, new_id};
use runta::engine::Engine;
use runta::extproc::ExtProc;
use runta::extproc::decide::{RequestView, Sidecar, decide};
use runta::metrics::Metrics;
use runta::rules::snapshot::Snapshot;
use runta::store::{Actor, AuditAction, AuditEntry, AuditTarget, SecretRow, Store, TargetKind};

const SIZES: [usize; 3] = [10, 1_000, 100_000];
const TENANT: &str = runta::test_support::TENANT_ID;

use runta::test_support::{rule_rows, rules, tenant_names, tenants};

fn request() -> RequestView<'static> {
    RequestView {
        method: "POST",
        scheme: "http",
        authority: "api.openai.com",
        path: Some("/v1/chat/completions?stream=true"),
        proxy_authorization: None,
        tunnel: None,
    }
}

fn header_map() -> HeaderMap {
    let pairs = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "api.openai.com"),
        (":path", "/v1/chat/completions?stream=true"),
        ("content-type", "application/json"),
        ("user-agent", "bench/1.0"),
        ("accept", "*/*"),
    ];
    runta::test_support::header_map(&pairs)
}

/// A store holding `count` rules and the secret, and a served-path `ExtProc` over it, warm.
fn served(rt: &tokio::runtime::Runtime, count: usize, dir: &std::path::Path) -> ExtProc {
    rt.block_on(async {
        let url = format!(
            "sqlite://{}",
            dir.join(format!("bench-{count}.db")).display()
        );
        let store = Store::connect(&url, 2).await.unwrap();
        store.migrate().await.unwrap();
        let keyring =
            Arc::new(Keyring::new([("k".to_owned(), MasterKey::generate())], "k").unwrap());
        let key = runta::store::NewApiKey {
            id: new_id("key"),
            tenant_id: TENANT.into(),
            name: None,
            key_hash: vec![1; 32],
            created_at: 0,
        };
        let audit = |action| {
            AuditEntry::new(
                Some(TENANT),
                Actor::Server,
                action,
                AuditTarget::new(TargetKind::Tenant, Some(TENANT), None),
            )
        };
        let _loaded_before_the_engine = store
            .create_tenant(&tenants()[0], &key, &audit(AuditAction::TenantCreate))
            .await
            .unwrap()
            .into_parts();
        let id = new_id("sec");
        let sealed = keyring
            .seal(
                b"sk-bench-value",
                SealContext {
                    tenant_id: TENANT,
                    secret_id: &id,
                    version: 1,
                },
            )
            .unwrap();
        store
            .insert_secret(
                &SecretRow {
                    id,
                    tenant_id: TENANT.into(),
                    name: "openai-api-key".into(),
                    display_name: None,
                    cache_ttl_secs: 3600,
                    version: 1,
                    key_id: sealed.key_id,
                    nonce: sealed.nonce,
                    ciphertext: sealed.ciphertext,
                    created_at: 0,
                    updated_at: 0,
                },
                &audit(AuditAction::SecretCreate),
            )
            .await
            .unwrap();
        for chunk in rule_rows(count).chunks(5_000) {
            let _loaded_before_the_engine = store
                .insert_rules(TENANT, chunk, &audit(AuditAction::RuleBatchCreate))
                .await
                .unwrap()
                .into_parts();
        }
        let metrics = Arc::new(Metrics::new());
        let engine = Arc::new(Engine::new(store, keyring, metrics.clone()));
        engine.reload().await.unwrap();
        let extproc = ExtProc::new(engine, Unidentified::Pass, metrics);
        // Warm the secret cache.
        extproc
            .answer_headers(&header_map(), Some(("bench", "rt-0")))
            .await;
        extproc
    })
}

fn per_call_ns(iterations: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 {
        f();
    }
    let started = Instant::now();
    for _ in 0..iterations {
        f();
    }
    started.elapsed().as_nanos() as f64 / f64::from(iterations)
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let snapshots: Vec<(usize, Snapshot)> = SIZES
        .iter()
        .map(|&n| {
            let started = Instant::now();
            let snapshot = Snapshot::build(tenant_names(), &rules(n), Vec::new());
            println!(
                "snapshot of {n} rules built in {:.1} ms",
                started.elapsed().as_secs_f64() * 1e3
            );
            (n, snapshot)
        })
        .collect();
    let sidecar = Some(Sidecar {
        tenant: "bench",
        runtime: "rt-0",
    });
    {
        let mut group = criterion.benchmark_group("decide");
        for (n, snapshot) in &snapshots {
            let decision = decide(snapshot, sidecar, &request(), Unidentified::Pass);
            assert_eq!(
                decision.rules.len(),
                1,
                "the benchmark request matches one rule"
            );
            group.bench_with_input(BenchmarkId::from_parameter(n), snapshot, |b, snapshot| {
                b.iter(|| {
                    black_box(
                        decide(black_box(snapshot), sidecar, &request(), Unidentified::Pass)
                            .rules
                            .len(),
                    )
                })
            });
        }
        group.finish();
    }
    // Multi-threaded: the migration harness needs it. One worker: one core measured.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let served: Vec<(usize, ExtProc)> = SIZES
        .iter()
        .map(|&n| (n, served(&rt, n, dir.path())))
        .collect();
    let headers = header_map();
    {
        let mut group = criterion.benchmark_group("answer_cached");
        for (n, extproc) in &served {
            group.bench_with_input(BenchmarkId::from_parameter(n), extproc, |b, extproc| {
                b.iter(|| {
                    rt.block_on(
                        extproc.answer_headers(black_box(&headers), Some(("bench", "rt-0"))),
                    )
                })
            });
        }
        group.finish();
    }
    criterion.final_summary();

    println!("\nsummary (same run, one core, mean of a fixed loop):");
    let base_decide = per_call_ns(200_000, || {
        black_box(
            decide(&snapshots[0].1, sidecar, &request(), Unidentified::Pass)
                .rules
                .len(),
        );
    });
    let base_answer = per_call_ns(50_000, || {
        black_box(
            rt.block_on(
                served[0]
                    .1
                    .answer_headers(&headers, Some(("bench", "rt-0"))),
            ),
        );
    });
    for ((n, snapshot), (_, extproc)) in snapshots.iter().zip(&served) {
        let d = per_call_ns(200_000, || {
            black_box(
                decide(snapshot, sidecar, &request(), Unidentified::Pass)
                    .rules
                    .len(),
            );
        });
        let a = per_call_ns(50_000, || {
            black_box(rt.block_on(extproc.answer_headers(&headers, Some(("bench", "rt-0")))));
        });
        println!(
            "  {n:>7} rules: decide {d:>7.0} ns ({:.2}x of 10 rules)   whole answer, secret cached {a:>7.0} ns ({:.2}x)",
            d / base_decide,
            a / base_answer
        );
    }
}
