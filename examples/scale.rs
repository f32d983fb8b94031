//! Scale of the rule snapshot: for one rule count, the time to build the snapshot, decisions
//! per second on one core, the p50 and p99 of a single decision, and the process's resident memory with the snapshot loaded and
//! SECRETS decrypted values held the way the secret cache holds them. Run once per size (a
//! fresh process each, so memory figures do not mix): `scale RULES [SECRETS]`.
//! Prints one JSON line.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;
use runta::config::Unidentified;
use runta::extproc::decide::{RequestView, Sidecar, decide};
use runta::rules::snapshot::{SnapshotBuilder, secret_key};
use runta::test_support::{RUNTIME, TENANT_NAME, rules_in, tenant_names};

/// Rules per page, as the server's full reload reads them.
const PAGE: usize = 10_000;
use secrecy::SecretString;

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let secrets: usize = std::env::args()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let baseline_kib = resident_kib();
    // Built the way the server's first load builds it: pages of 10,000 rules as they are read,
    // so the input never holds every rule at once and the memory figure is the snapshot's.
    let started = Instant::now();
    let mut builder = SnapshotBuilder::default();
    for start in (0..count).step_by(PAGE) {
        builder.add(&rules_in(start..count.min(start + PAGE)));
    }
    let snapshot = builder.finish(tenant_names(), Vec::new());
    let build_ms = started.elapsed().as_secs_f64() * 1e3;
    // The secret cache's shape: key → shared, zeroizing value (a typical 51-byte API key).
    let cache: DashMap<Arc<str>, Arc<SecretString>> = DashMap::new();
    for i in 0..secrets {
        cache.insert(
            secret_key("ten_bench", &format!("secret-{i}")),
            Arc::new(SecretString::from(format!("sk-proj-{i:043}"))),
        );
    }
    let request = RequestView {
        method: "POST",
        scheme: "http",
        authority: "api.openai.com",
        path: Some("/v1/chat/completions"),
        proxy_authorization: None,
        tunnel: None,
    };
    let sidecar = Some(Sidecar {
        tenant: TENANT_NAME,
        runtime: RUNTIME,
    });
    assert_eq!(
        decide(&snapshot, sidecar, &request, Unidentified::Pass)
            .rules
            .len(),
        1
    );
    let iterations = 2_000_000u32;
    let started = Instant::now();
    for _ in 0..iterations {
        black_box(
            decide(black_box(&snapshot), sidecar, &request, Unidentified::Pass)
                .rules
                .len(),
        );
    }
    let per_second = f64::from(iterations) / started.elapsed().as_secs_f64();
    // Latency of single decisions (each timed on its own, so the clock's cost is included).
    let mut samples: Vec<u64> = (0..200_000)
        .map(|_| {
            let t = Instant::now();
            black_box(
                decide(black_box(&snapshot), sidecar, &request, Unidentified::Pass)
                    .rules
                    .len(),
            );
            t.elapsed().as_nanos() as u64
        })
        .collect();
    samples.sort_unstable();
    let p50_ns = samples[samples.len() / 2];
    let p99_ns = samples[samples.len() * 99 / 100];
    let resident_mib = resident_kib() as f64 / 1024.0;
    println!(
        "{{\"rules\": {count}, \"cached_secrets\": {secrets}, \"build_ms\": {build_ms:.1}, \"decisions_per_second\": {per_second:.0}, \"decide_p50_ns\": {p50_ns}, \"decide_p99_ns\": {p99_ns}, \"resident_mib\": {resident_mib:.1}, \"baseline_mib\": {:.1}, \"cache_entries\": {}}}",
        baseline_kib as f64 / 1024.0,
        cache.len()
    );
    black_box(snapshot.rule_count());
}
