//! runta egress: lets sandboxed runtimes call third-party APIs without holding credentials.
//!
//! The map (docs/architecture.md has the picture):
//! - `config` (loaded, parsed into typed fields and validated once) and `bootstrap` (keys,
//!   tokens, the quickstart files of the embedded default);
//! - `crypto` (sealing secrets, hashing tokens, ids), `names` and `percent` (shared checks and
//!   encodings);
//! - `rules` (what a rule is: patterns, targets, templates, the immutable snapshot);
//! - `store` (the database, SQLite or PostgreSQL; every query lives there);
//! - `engine` (the snapshot kept in step with the store, and the secret cache);
//! - `grpc` (the gRPC port: authentication for every service), `extproc` (the service Envoy
//!   calls: `decide` and its plumbing), `interception` (the CA and the SDS service that give
//!   Envoy leaf certificates for intercepted HTTPS tunnels), `admin` (the REST API), `metrics`;
//! - `serve` (wiring, listening, the tasks, shutdown), `cli` (the `runta` command), `envoy`
//!   (the Envoy configurations it renders).
//!
//! Public modules are what the binary, the tests and the benchmarks use; `test_support`
//! exists only with the `test-support` feature.

#![forbid(unsafe_code)]

pub mod admin;
pub(crate) mod bootstrap;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod engine;
pub(crate) mod envoy;
pub mod extproc;
pub(crate) mod grpc;
pub(crate) mod interception;
pub mod keys;
pub mod metrics;
pub(crate) mod names;
pub(crate) mod percent;
pub mod rules;
pub mod serve;
pub mod store;
/// Synthetic rule sets and Envoy-shaped messages for tests, benchmarks and load generators
/// (feature `test-support`; not part of the service).
#[cfg(feature = "test-support")]
pub mod test_support;
pub(crate) mod xds;
