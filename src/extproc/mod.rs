//! The ext_proc gRPC service Envoy calls for every outbound request.
//!
//! Thin plumbing around `decide`: the caller was authenticated by the gRPC port's layer
//! (`crate::grpc::auth`) before the stream reaches this service; read the sidecar identity
//! from the stream's metadata, and for each request-headers message take the current snapshot,
//! decide, fetch the chosen rules' secrets, and answer with the mutation. Every decision is
//! one log line and counts in the metrics, never with a value.
//!
//! Fail closed: a rule that matched but whose secret cannot be had answers 503 naming the
//! rule (`Refusal`); the request is never forwarded without its credential. A stream Envoy
//! cancels after our answer is normal and is not logged as an error.

pub mod decide;
pub mod mutation;
pub mod refusal;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use futures_util::Stream;
use secrecy::ExposeSecret;
use tonic::{Request, Response, Status, Streaming};

use self::decide::{Decision, Outcome, RequestView, Sidecar, decide};
use self::mutation::Mutation;
use self::refusal::Refusal;
use crate::config::Unidentified;
use crate::engine::Engine;
use crate::grpc::auth::Caller;
use crate::metrics::Metrics;
use crate::rules::snapshot::CompiledRule;

/// Metadata keys a sidecar's Envoy sets (`grpc_service.initial_metadata`).
pub const TENANT_METADATA: &str = "x-runta-tenant";
pub const RUNTIME_METADATA: &str = "x-runta-runtime";

/// The ext_proc service.
#[derive(Clone)]
pub struct ExtProc {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<Engine>,
    unidentified: Unidentified,
    metrics: Arc<Metrics>,
}

impl ExtProc {
    /// The service; serve it only behind `crate::grpc::auth::AuthLayer` (it refuses streams
    /// that did not pass through it).
    pub fn new(engine: Arc<Engine>, unidentified: Unidentified, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                unidentified,
                metrics,
            }),
        }
    }
}

/// The identity in the stream's metadata, if a sidecar set both keys.
#[derive(Debug, Clone)]
struct SidecarIdentity {
    tenant: String,
    runtime: String,
}

fn sidecar_identity(metadata: &tonic::metadata::MetadataMap) -> Option<SidecarIdentity> {
    let get = |key: &str| {
        metadata
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    match (get(TENANT_METADATA), get(RUNTIME_METADATA)) {
        (Some(tenant), Some(runtime)) if !tenant.is_empty() && !runtime.is_empty() => {
            Some(SidecarIdentity {
                tenant: tenant.to_owned(),
                runtime: runtime.to_owned(),
            })
        }
        (None, None) => None,
        _ => {
            tracing::warn!(
                "ext_proc stream carries only one of {TENANT_METADATA} and {RUNTIME_METADATA}; treated as unidentified"
            );
            None
        }
    }
}

/// Counts a stream as active for as long as it lives.
struct ActiveStream(Arc<Metrics>);

impl ActiveStream {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.active_streams.inc();
        Self(metrics)
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.active_streams.dec();
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for ExtProc {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        if request.extensions().get::<Caller>().is_none() {
            // Served without the authentication layer: a wiring mistake, refused all the same.
            self.inner.metrics.grpc_unauthenticated.inc();
            return Err(Status::unauthenticated(
                "runta: the ext_proc service is served without authentication; refused",
            ));
        }
        let sidecar = sidecar_identity(request.metadata());
        let inbound = request.into_inner();
        let state = (
            inbound,
            self.inner.clone(),
            sidecar,
            ActiveStream::new(self.inner.metrics.clone()),
        );
        // The stream answers each message as it is polled: no task or channel per stream.
        let stream = futures_util::stream::unfold(
            state,
            |(mut inbound, inner, sidecar, guard)| async move {
                loop {
                    match inbound.message().await {
                        Ok(Some(message)) => {
                            if let Some(response) = inner.handle(message, sidecar.as_ref()).await {
                                return Some((Ok(response), (inbound, inner, sidecar, guard)));
                            }
                        }
                        Ok(None) => return None,
                        Err(status) if status.code() == tonic::Code::Cancelled => return None,
                        Err(status) => {
                            tracing::debug!(code = ?status.code(), "ext_proc stream ended by the gateway");
                            return None;
                        }
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

impl ExtProc {
    /// The answer to one request-headers message, as the stream gives it: the whole hot path
    /// (snapshot, decide, secrets, mutation, log line and metrics) without the transport.
    pub async fn answer_headers(
        &self,
        headers: &HeaderMap,
        sidecar: Option<(&str, &str)>,
    ) -> ProcessingResponse {
        let sidecar = sidecar.map(|(tenant, runtime)| SidecarIdentity {
            tenant: tenant.to_owned(),
            runtime: runtime.to_owned(),
        });
        self.inner
            .request_headers(Some(headers), sidecar.as_ref())
            .await
    }
}

impl Inner {
    /// The answer to one message; `None` in observability mode (Envoy expects none).
    async fn handle(
        &self,
        message: ProcessingRequest,
        sidecar: Option<&SidecarIdentity>,
    ) -> Option<ProcessingResponse> {
        let observe_only = message.observability_mode;
        let response = match &message.request {
            Some(Message::RequestHeaders(headers)) => {
                self.request_headers(headers.headers.as_ref(), sidecar)
                    .await
            }
            Some(other) => mutation::continue_other(other),
            None => mutation::continue_request(None),
        };
        (!observe_only).then_some(response)
    }

    async fn request_headers(
        &self,
        headers: Option<&HeaderMap>,
        sidecar: Option<&SidecarIdentity>,
    ) -> ProcessingResponse {
        let started = Instant::now();
        let snapshot = self.engine.snapshot();
        let view = headers.map(request_view).unwrap_or_default();
        let sidecar = sidecar.map(|s| Sidecar {
            tenant: &s.tenant,
            runtime: &s.runtime,
        });
        let decision = decide(&snapshot, sidecar, &view, self.unidentified);
        let (response, outcome) = self.respond(&decision, &view).await;
        let elapsed = started.elapsed();
        self.record(&snapshot, &decision, outcome, elapsed);
        response
    }

    /// Turns a decision into Envoy's answer, fetching the secrets it needs.
    async fn respond(
        &self,
        decision: &Decision<'_>,
        view: &RequestView<'_>,
    ) -> (ProcessingResponse, Outcome) {
        let refusal = match decision.outcome {
            Outcome::BadToken => Some(Refusal::BadToken),
            Outcome::Denied => Some(Refusal::Unidentified),
            Outcome::SecretUnavailable => Some(Refusal::SecretUnavailable {
                rule: decision.rules.first().map_or("-", |r| r.id.as_str()),
            }),
            Outcome::Inject | Outcome::NoMatch | Outcome::Unidentified | Outcome::Tunnel => None,
        };
        if let Some(refusal) = refusal {
            return (refusal.response(), refusal.outcome());
        }
        let mut mutation = Mutation::default();
        for rule in &decision.rules {
            let value = match self
                .engine
                .secret(&rule.secret_key, &rule.tenant_id, &rule.credential)
                .await
            {
                Ok(value) => value,
                Err(err) => {
                    tracing::error!(rule = %rule.id, credential = %rule.credential, error = %err, "a matched rule's secret is unavailable; refusing the request");
                    let refusal = Refusal::SecretUnavailable { rule: &rule.id };
                    return (refusal.response(), refusal.outcome());
                }
            };
            mutation.apply(&rule.target, &rule.template, value.expose_secret());
            self.metrics.hot.injection(&rule.target).inc();
        }
        if decision.strip_proxy_authorization {
            mutation.remove("proxy-authorization");
        }
        (mutation.into_response(view.path), decision.outcome)
    }

    fn record(
        &self,
        snapshot: &crate::rules::snapshot::Snapshot,
        decision: &Decision<'_>,
        outcome: Outcome,
        elapsed: std::time::Duration,
    ) {
        self.metrics.hot.decision(outcome).inc();
        self.metrics.decision_seconds.observe(elapsed.as_secs_f64());
        let identity = decision.identity.as_ref();
        let tenant = identity
            .and_then(|i| snapshot.tenant_name(i.tenant_id))
            .unwrap_or("-");
        let runtime = identity.map_or("-", |i| i.runtime);
        tracing::info!(
            target: "runta::decision",
            tenant = %tenant,
            runtime = %runtime,
            identified_by = %identity.map_or("-", |i| i.source.as_str()),
            rules = ?RuleField(&decision.rules, |r| &r.id),
            credentials = ?RuleField(&decision.rules, |r| &r.credential),
            host = %decision.host,
            path = %decision.path,
            outcome = %outcome.as_str(),
            micros = elapsed.as_micros() as u64,
            "ext_proc decision"
        );
    }
}

/// One field of every applied rule, as a log value: formatted only if the line is written,
/// without collecting into a vector first.
struct RuleField<'a>(&'a [&'a CompiledRule], fn(&CompiledRule) -> &String);

impl std::fmt::Debug for RuleField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|r| (self.1)(r)))
            .finish()
    }
}

/// The headers decide reads, from Envoy's header map (values in `raw_value`; `value` as a
/// fallback for older data planes).
fn request_view(headers: &HeaderMap) -> RequestView<'_> {
    let mut view = RequestView::default();
    let mut host = "";
    for header in &headers.headers {
        let value = if header.raw_value.is_empty() {
            header.value.as_str()
        } else {
            match std::str::from_utf8(&header.raw_value) {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        match header.key.as_str() {
            ":method" => view.method = value,
            ":scheme" => view.scheme = value,
            ":authority" => view.authority = value,
            ":path" => view.path = Some(value),
            "host" => host = value,
            k if k.eq_ignore_ascii_case("proxy-authorization") => {
                view.proxy_authorization = Some(value)
            }
            _ => {}
        }
    }
    if view.authority.is_empty() {
        view.authority = host;
    }
    view
}
