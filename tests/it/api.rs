//! The admin API, through the real router, on SQLite and on PostgreSQL: one module per
//! resource.

mod rules;
mod secrets;
mod service;
mod tenants;
mod tokens;

/// A secret value; a piece of it (`4f1d2a9c`) is grepped for in answers and metrics.
const VALUE: &str = "sk-test-VALUE-4f1d2a9c";
