//! runta as the xDS control plane of its sidecars: the rule compiler ([`compile`]) turns a
//! runtime's rules into Envoy routes that inject natively, and the Delta ADS service
//! ([`ads`]) pushes them, with the secrets they reference, to the runtime's sidecar.
//!
//! Only sidecars (a runtime token authenticates the stream and fixes its runtime) are
//! served: the shared gateway identifies runtimes per request and stays on ext_proc.

pub mod ads;
pub mod compile;
