//! runta egress: lets sandboxed runtimes call third-party APIs without holding credentials.
//!
//! The map: `config` (load and validate once) and `bootstrap` (keys, tokens, quickstart
//! files), `crypto` (sealing secrets, tokens, ids), `names` and `rules` (what is valid),
//! `store` (the database, SQLite or PostgreSQL), `engine` (rule snapshot and secret cache),
//! `extproc` (the gRPC service Envoy calls: `decide` and its plumbing), `admin` (the REST API),
//! `metrics`,
//! `serve` (start-up and shutdown), `cli` (the `runta` command).

#![forbid(unsafe_code)]

pub mod admin;
#[doc(hidden)]
pub mod bench_support;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod engine;
pub mod envoy;
pub mod extproc;
pub mod grpc;
pub mod keys;
pub mod metrics;
pub mod names;
pub mod rules;
pub mod serve;
pub mod store;
