//! Every metric the service exports, declared once and registered into a registry the app
//! owns (no global registry). Labels are bounded: routes are the router's patterns, never raw
//! paths; no tenant, host or path labels.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// The service's metrics.
pub struct Metrics {
    registry: Registry,
    /// Admin API requests by route pattern, method and status code.
    pub admin_requests: IntCounterVec,
    /// Admin API latency by route pattern.
    pub admin_request_seconds: HistogramVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let admin_requests = IntCounterVec::new(
            Opts::new(
                "runta_admin_requests_total",
                "Admin API requests by route, method and status.",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
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
        registry
            .register(Box::new(admin_requests.clone()))
            .expect("registered once");
        registry
            .register(Box::new(admin_request_seconds.clone()))
            .expect("registered once");
        Self {
            registry,
            admin_requests,
            admin_request_seconds,
        }
    }

    /// The Prometheus text exposition of everything registered.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding does not fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
