//! Every metric the service exports, declared once and registered into a registry the app
//! owns (no global registry). Labels are bounded: routes are the router's patterns, never raw
//! paths; outcomes and kinds are fixed sets; no tenant, host or path labels.

use std::sync::atomic::{AtomicI64, Ordering};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::extproc::decide::Outcome;
use crate::rules::CompiledTarget;

/// The service's metrics.
pub struct Metrics {
    registry: Registry,
    /// Admin API requests by route pattern, method and status code.
    pub admin_requests: IntCounterVec,
    /// Admin API latency by route pattern.
    pub admin_request_seconds: HistogramVec,
    /// ext_proc decisions by outcome.
    pub decisions: IntCounterVec,
    /// Values injected, by kind (header, param).
    pub injections: IntCounterVec,
    /// Time from request headers received to answer ready.
    pub decision_seconds: Histogram,
    /// ext_proc streams open now.
    pub active_streams: IntGauge,
    /// ext_proc calls refused for want of gateway authentication.
    pub grpc_unauthenticated: IntCounter,
    /// Secret cache lookups by result: hit, miss (read the store), coalesced (waited for
    /// another request's read of the same secret).
    pub secret_cache: IntCounterVec,
    /// Rules in the current snapshot.
    pub rules_loaded: IntGauge,
    /// Seconds since the current snapshot was built (computed when scraped).
    snapshot_age_seconds: IntGauge,
    snapshot_built_unix: AtomicI64,
    /// 1 while this replica follows the other replicas' change notifications (PostgreSQL).
    pub change_listener_connected: IntGauge,
    /// Full snapshot reloads by result (ok, error); a change that could not be applied counts
    /// as an error too (it makes a full reload run).
    pub reloads: IntCounterVec,
    /// Changes applied to the snapshot as deltas (each write's, and other replicas').
    pub changes_applied: IntCounter,
    /// Store errors on the injection path, by operation.
    pub store_errors: IntCounterVec,
    /// SDS streams open now (one per TLS server name Envoy asks about).
    pub sds_streams: IntGauge,
    /// SDS answers per name, by result: leaf (a certificate sent), refused (no rule covers it).
    pub sds_answers: IntCounterVec,
    /// Leaf certificates minted by runta's interception CA.
    pub leaves_minted: IntCounter,
    /// SDS updates Envoy rejected.
    pub sds_nacks: IntCounter,
    /// Sidecar xDS (ADS) streams open now.
    pub xds_streams: IntGauge,
    /// Resources pushed to sidecars over ADS, by type (routes, secret, removed).
    pub xds_pushes: IntCounterVec,
    /// ADS updates a sidecar's Envoy rejected, by type (routes, secret).
    pub xds_nacks: IntCounterVec,
    /// From a route table pushed to the sidecar's answer (applied or rejected).
    pub xds_apply_seconds: Histogram,
    /// Rules of the sidecars' runtimes as last compiled, by path: native (Envoy injects) or
    /// extproc (left to ext_proc: query parameters, uncached secrets, too many routes).
    pub xds_rules: IntCounterVec,
    /// The per-request counters, resolved once: a labelled lookup hashes the label values and
    /// takes a lock, which showed in the hot path's profile.
    pub hot: HotCounters,
}

/// The operations `runta_store_errors_total` counts.
pub const STORE_OPERATIONS: [&str; 3] = ["secret", "reload", "notify"];

/// Children of the labelled counters the ext_proc hot path bumps on every request.
pub struct HotCounters {
    /// One per outcome, in `Outcome::ALL` order.
    decisions: [IntCounter; Outcome::ALL.len()],
    header_injections: IntCounter,
    param_injections: IntCounter,
    pub cache_hits: IntCounter,
    /// Misses that read the store.
    pub cache_misses: IntCounter,
    /// Misses that waited for another request's read of the same secret.
    pub cache_coalesced: IntCounter,
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric")
}

impl Metrics {
    pub fn new() -> Self {
        let admin_request_seconds = HistogramVec::new(
            HistogramOpts::new(
                "runta_admin_request_duration_seconds",
                "Admin API request latency.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let decision_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "runta_extproc_decision_duration_seconds",
                "Time from request headers received to the answer, per request.",
            )
            .buckets(vec![
                0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001,
                0.0025, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5,
            ]),
        )
        .expect("valid metric");
        let decisions = counter_vec(
            "runta_extproc_decisions_total",
            "ext_proc decisions by outcome.",
            &["outcome"],
        );
        let injections = counter_vec(
            "runta_injections_total",
            "Values injected, by kind.",
            &["kind"],
        );
        let secret_cache = counter_vec(
            "runta_secret_cache_total",
            "Secret cache lookups by result: hit, miss (read the store), coalesced (shared another lookup's read).",
            &["result"],
        );
        let hot = HotCounters {
            decisions: Outcome::ALL.map(|o| decisions.with_label_values(&[o.as_str()])),
            header_injections: injections.with_label_values(&["header"]),
            param_injections: injections.with_label_values(&["param"]),
            cache_hits: secret_cache.with_label_values(&["hit"]),
            cache_misses: secret_cache.with_label_values(&["miss"]),
            cache_coalesced: secret_cache.with_label_values(&["coalesced"]),
        };
        let metrics = Self {
            registry: Registry::new(),
            admin_requests: counter_vec(
                "runta_admin_requests_total",
                "Admin API requests by route, method and status.",
                &["route", "method", "status"],
            ),
            admin_request_seconds,
            decisions,
            injections,
            decision_seconds,
            active_streams: gauge("runta_extproc_active_streams", "ext_proc streams open now."),
            grpc_unauthenticated: IntCounter::new(
                "runta_extproc_unauthenticated_total",
                "ext_proc calls refused for want of gateway authentication.",
            )
            .expect("valid metric"),
            secret_cache,
            rules_loaded: gauge("runta_rules_loaded", "Rules in the current snapshot."),
            snapshot_age_seconds: gauge(
                "runta_rules_snapshot_age_seconds",
                "Seconds since the rule snapshot was built.",
            ),
            snapshot_built_unix: AtomicI64::new(0),
            change_listener_connected: gauge(
                "runta_change_listener_connected",
                "1 while this replica follows change notifications from the others (PostgreSQL).",
            ),
            reloads: counter_vec(
                "runta_snapshot_reloads_total",
                "Full rule snapshot reloads by result (error also counts changes that could not be applied).",
                &["result"],
            ),
            changes_applied: IntCounter::new(
                "runta_snapshot_changes_applied_total",
                "Changes applied to the rule snapshot as deltas (this replica's writes and other replicas' announcements).",
            )
            .expect("valid metric"),
            store_errors: counter_vec(
                "runta_store_errors_total",
                "Store errors on the injection path, by operation.",
                &["operation"],
            ),
            sds_streams: gauge(
                "runta_sds_streams",
                "SDS streams open now (one per TLS server name Envoy asks about).",
            ),
            sds_answers: counter_vec(
                "runta_sds_answers_total",
                "SDS answers per TLS server name, by result: leaf (certificate sent), refused (no rule covers the name).",
                &["result"],
            ),
            leaves_minted: IntCounter::new(
                "runta_interception_leaves_minted_total",
                "Leaf certificates minted by the interception CA.",
            )
            .expect("valid metric"),
            sds_nacks: IntCounter::new("runta_sds_nacks_total", "SDS updates Envoy rejected.")
                .expect("valid metric"),
            xds_streams: gauge(
                "runta_xds_streams",
                "Sidecar xDS (ADS) streams open now.",
            ),
            xds_pushes: counter_vec(
                "runta_xds_pushes_total",
                "Resources pushed to sidecars over ADS, by type: routes, secret, removed.",
                &["type"],
            ),
            xds_nacks: counter_vec(
                "runta_xds_nacks_total",
                "ADS updates a sidecar's Envoy rejected, by type: routes, secret.",
                &["type"],
            ),
            xds_apply_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "runta_xds_route_apply_duration_seconds",
                    "From a route table pushed to a sidecar to its Envoy's answer (applied or rejected).",
                )
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            )
            .expect("valid metric"),
            xds_rules: counter_vec(
                "runta_xds_compiled_rules_total",
                "Rules compiled for sidecars (counted at every compilation), by path: native (Envoy injects) or extproc (left to ext_proc).",
                &["path"],
            ),
            hot,
        };
        let collectors: [Box<dyn Collector>; 23] = [
            Box::new(metrics.admin_requests.clone()),
            Box::new(metrics.admin_request_seconds.clone()),
            Box::new(metrics.decisions.clone()),
            Box::new(metrics.injections.clone()),
            Box::new(metrics.decision_seconds.clone()),
            Box::new(metrics.active_streams.clone()),
            Box::new(metrics.grpc_unauthenticated.clone()),
            Box::new(metrics.secret_cache.clone()),
            Box::new(metrics.rules_loaded.clone()),
            Box::new(metrics.snapshot_age_seconds.clone()),
            Box::new(metrics.change_listener_connected.clone()),
            Box::new(metrics.reloads.clone()),
            Box::new(metrics.changes_applied.clone()),
            Box::new(metrics.store_errors.clone()),
            Box::new(metrics.sds_streams.clone()),
            Box::new(metrics.sds_answers.clone()),
            Box::new(metrics.leaves_minted.clone()),
            Box::new(metrics.sds_nacks.clone()),
            Box::new(metrics.xds_streams.clone()),
            Box::new(metrics.xds_pushes.clone()),
            Box::new(metrics.xds_nacks.clone()),
            Box::new(metrics.xds_apply_seconds.clone()),
            Box::new(metrics.xds_rules.clone()),
        ];
        // Every fixed label value exists from the start, so a first error is a change a rate()
        // sees rather than a series appearing out of nowhere.
        for result in ["ok", "error"] {
            metrics.reloads.with_label_values(&[result]);
        }
        for result in ["leaf", "refused"] {
            metrics.sds_answers.with_label_values(&[result]);
        }
        for kind in ["routes", "secret", "removed"] {
            metrics.xds_pushes.with_label_values(&[kind]);
        }
        for kind in ["routes", "secret"] {
            metrics.xds_nacks.with_label_values(&[kind]);
        }
        for path in ["native", "extproc"] {
            metrics.xds_rules.with_label_values(&[path]);
        }
        for operation in STORE_OPERATIONS {
            metrics.store_errors.with_label_values(&[operation]);
        }
        for collector in collectors {
            metrics
                .registry
                .register(collector)
                .expect("registered once");
        }
        metrics
    }

    /// Notes that a new rule snapshot was just swapped in.
    pub fn mark_snapshot_built(&self) {
        self.snapshot_built_unix
            .store(chrono::Utc::now().timestamp(), Ordering::Relaxed);
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let built = self.snapshot_built_unix.load(Ordering::Relaxed);
        if built > 0 {
            self.snapshot_age_seconds
                .set(chrono::Utc::now().timestamp() - built);
        }
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding does not fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl HotCounters {
    /// The decisions counter of an outcome.
    pub fn decision(&self, outcome: Outcome) -> &IntCounter {
        // `ALL` lists every variant in declaration order, so the discriminant is the index.
        &self.decisions[outcome as usize]
    }

    /// The injections counter of a target kind.
    pub fn injection(&self, target: &CompiledTarget) -> &IntCounter {
        match target {
            CompiledTarget::Header(_) => &self.header_injections,
            CompiledTarget::Param(_) => &self.param_injections,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_counts_under_its_own_label() {
        let metrics = Metrics::new();
        for outcome in Outcome::ALL {
            metrics.hot.decision(outcome).inc();
            let child = metrics.decisions.with_label_values(&[outcome.as_str()]);
            assert_eq!(child.get(), 1, "{outcome:?}");
        }
    }
}
