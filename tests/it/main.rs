//! One integration-test binary (one link): the admin API on both backends, encryption at rest,
//! the CLI against a running `runta serve`, and the OpenAPI document against the routes.

mod api;
mod at_rest;
mod audit;
mod cli;
mod e2e;
mod e2e_faults;
mod e2e_hardening;
mod e2e_https;
mod e2e_native;
mod extproc;
mod identity;
mod openapi;
mod pg_tls;
mod postgres_faults;
mod prepared_batches;
mod properties;
mod read_only_commands;
mod readme;
mod request_shapes;
mod secret_cache;
mod sqlite_faults;
mod sqlite_writes;
mod store_faults;
mod support;
