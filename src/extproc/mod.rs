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
use envoy_types::pb::google::protobuf::{Struct, value::Kind};
use futures_util::Stream;
use secrecy::ExposeSecret;
use tonic::{Request, Response, Status, Streaming};

use self::decide::{Decision, Outcome, Policy, RequestView, Sidecar, Tunnel, decide};
use self::mutation::Mutation;
use self::refusal::Refusal;
use crate::engine::Engine;
use crate::grpc::auth::Caller;
use crate::metrics::Metrics;
use crate::rules::snapshot::CompiledRule;

/// Metadata keys a sidecar's Envoy sets (`grpc_service.initial_metadata`).
pub const TENANT_METADATA: &str = "x-runta-tenant";
pub const RUNTIME_METADATA: &str = "x-runta-runtime";

/// The header runta sets on every CONNECT it lets on: `intercept` sends the tunnel to Envoy's
/// interception listener, `tunnel` passes it through. Envoy picks the route by it after
/// runta's answer (which clears the route cache), so a client's own copy counts for nothing.
pub const CONNECT_ROUTE_HEADER: &str = "x-runta-connect";

/// Filter state the gateway's Envoy keeps from an intercepted CONNECT for the requests in the
/// tunnel (`set_filter_state`, shared with the interception listener).
pub const TUNNEL_TARGET_STATE: &str = "runta.connect_target";
pub const TUNNEL_CREDENTIALS_STATE: &str = "runta.proxy_authorization";

/// The request attributes the interception listener's ext_proc filter sends, which the
/// client cannot forge: the tunnel's target and credentials, and the TLS server name.
pub const TUNNEL_TARGET_ATTRIBUTE: &str = "filter_state['runta.connect_target']";
pub const TUNNEL_CREDENTIALS_ATTRIBUTE: &str = "filter_state['runta.proxy_authorization']";
pub const SERVER_NAME_ATTRIBUTE: &str = "connection.requested_server_name";

/// Where Envoy puts the attributes ext_proc asked for.
const ATTRIBUTES_KEY: &str = "envoy.filters.http.ext_proc";

/// The ext_proc service.
#[derive(Clone)]
pub struct ExtProc {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<Engine>,
    policy: Policy,
    metrics: Arc<Metrics>,
}

impl ExtProc {
    /// The service; serve it only behind `crate::grpc::auth::AuthLayer` (it refuses streams
    /// that did not pass through it).
    pub fn new(engine: Arc<Engine>, policy: impl Into<Policy>, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                policy: policy.into(),
                metrics,
            }),
        }
    }
}

/// The runtime a stream speaks for, when the stream itself fixes it.
#[derive(Debug, Clone)]
struct SidecarIdentity {
    tenant: String,
    runtime: String,
}

/// The tenant and runtime named in a stream's metadata: `Ok(None)` when neither key is set,
/// an error when only one is.
fn named_identity(
    metadata: &tonic::metadata::MetadataMap,
) -> Result<Option<SidecarIdentity>, Status> {
    let get = |key: &str| {
        metadata
            .get(key)
            .map(|v| v.to_str().map(str::trim).unwrap_or_default())
    };
    match (get(TENANT_METADATA), get(RUNTIME_METADATA)) {
        (Some(tenant), Some(runtime)) if !tenant.is_empty() && !runtime.is_empty() => {
            Ok(Some(SidecarIdentity {
                tenant: tenant.to_owned(),
                runtime: runtime.to_owned(),
            }))
        }
        (None, None) => Ok(None),
        _ => Err(Status::invalid_argument(format!(
            "runta: set both {TENANT_METADATA} and {RUNTIME_METADATA}, with names, or neither"
        ))),
    }
}

/// The identity of a stream, from its authenticated caller and the names its metadata
/// asserts. A runtime token fixes the identity (names that disagree are refused); only
/// gateways trusted for it may assert names; everyone else identifies runtimes per request.
fn stream_identity(
    caller: &Caller,
    metadata: &tonic::metadata::MetadataMap,
    engine: &Engine,
) -> Result<Option<SidecarIdentity>, Status> {
    let named = named_identity(metadata)?;
    match caller {
        Caller::Runtime { tenant_id, runtime } => {
            let snapshot = engine.snapshot();
            let Some(tenant) = snapshot.tenant_name(tenant_id) else {
                return Err(Status::unauthenticated(
                    "runta: the runtime token's tenant no longer exists",
                ));
            };
            if let Some(named) = named
                && (named.tenant != tenant || named.runtime != *runtime)
            {
                return Err(Status::permission_denied(
                    "runta: a runtime token speaks for its own runtime only; the names in x-runta-tenant/x-runta-runtime are another's",
                ));
            }
            Ok(Some(SidecarIdentity {
                tenant: tenant.to_owned(),
                runtime: runtime.clone(),
            }))
        }
        Caller::Gateway {
            asserts_identity: false,
            name,
        } if named.is_some() => Err(Status::permission_denied(format!(
            "runta: gateway '{name}' may not name tenants and runtimes (it is not in grpc.identity_gateways); sidecars authenticate with x-runta-runtime-token"
        ))),
        Caller::Gateway { .. } | Caller::Insecure => Ok(named),
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
        let Some(caller) = request.extensions().get::<Caller>() else {
            // Served without the authentication layer: a wiring mistake, refused all the same.
            self.inner.metrics.grpc_unauthenticated.inc();
            return Err(Status::unauthenticated(
                "runta: the ext_proc service is served without authentication; refused",
            ));
        };
        let sidecar = stream_identity(caller, request.metadata(), &self.inner.engine).inspect_err(
            |status| tracing::warn!(reason = %status.message(), "ext_proc stream refused"),
        )?;
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
            .request_headers(Some(headers), None, sidecar.as_ref())
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
                let attributes = message.attributes.get(ATTRIBUTES_KEY);
                self.request_headers(headers.headers.as_ref(), attributes, sidecar)
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
        attributes: Option<&Struct>,
        sidecar: Option<&SidecarIdentity>,
    ) -> ProcessingResponse {
        let started = Instant::now();
        let snapshot = self.engine.snapshot();
        let mut view = headers.map(request_view).unwrap_or_default();
        // Only the interception listener's filter asks for attributes: a request with them came
        // through a tunnel, and one whose tunnel attributes are missing is refused (421), never
        // treated as a plain request.
        view.tunnel = attributes.map(|a| tunnel_of(a).unwrap_or_default());
        let sidecar = sidecar.map(|s| Sidecar {
            tenant: &s.tenant,
            runtime: &s.runtime,
        });
        let decision = decide(&snapshot, sidecar, &view, self.policy);
        let (response, outcome) = self.respond(&decision, &view).await;
        let elapsed = started.elapsed();
        self.record(
            &snapshot,
            &decision,
            outcome,
            elapsed,
            view.tunnel.is_some(),
        );
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
                rule: decision.rules.first().map(|r| &r.id),
            }),
            Outcome::CredentialsRequired => Some(Refusal::CredentialsRequired),
            Outcome::TunnelDenied => Some(Refusal::TunnelDenied),
            Outcome::Misdirected => Some(Refusal::Misdirected),
            Outcome::InterceptionUnavailable => Some(Refusal::InterceptionUnavailable),
            Outcome::Inject
            | Outcome::NoMatch
            | Outcome::Unidentified
            | Outcome::Tunnel
            | Outcome::Intercept => None,
        };
        if let Some(refusal) = refusal {
            return (refusal.response(), refusal.outcome());
        }
        if view.method.eq_ignore_ascii_case("CONNECT") {
            let intercept = decision.outcome == Outcome::Intercept;
            return (
                mutation::connect_route(intercept, decision.strip_proxy_authorization),
                decision.outcome,
            );
        }
        let mut mutation = Mutation::default();
        for rule in &decision.rules {
            let value = match self
                .engine
                .secret(
                    &rule.secret.key,
                    &rule.secret.tenant_id,
                    &rule.secret.credential,
                )
                .await
            {
                Ok(value) => value,
                Err(err) => {
                    tracing::error!(rule = %rule.id, credential = %rule.secret.credential, error = %err, "a matched rule's secret is unavailable; refusing the request");
                    let refusal = Refusal::SecretUnavailable {
                        rule: Some(&rule.id),
                    };
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
        in_tunnel: bool,
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
            credentials = ?RuleField(&decision.rules, |r| &r.secret.credential),
            host = %decision.host,
            path = %decision.path,
            outcome = %outcome.as_str(),
            intercepted = in_tunnel,
            micros = elapsed.as_micros() as u64,
            "ext_proc decision"
        );
    }
}

/// One field of every applied rule, as a log value: formatted only if the line is written,
/// without collecting into a vector first.
struct RuleField<'a>(
    &'a [&'a CompiledRule],
    fn(&CompiledRule) -> &dyn std::fmt::Display,
);

/// A value printed as a quoted string (as a `&str` field was).
struct Quoted<'a>(&'a dyn std::fmt::Display);

impl std::fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\"", self.0)
    }
}

impl std::fmt::Debug for RuleField<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|r| Quoted((self.1)(r))))
            .finish()
    }
}

/// The tunnel a request came through, from the attributes of the interception listener's
/// ext_proc filter (absent on the proxy listener: there the request came as it is).
fn tunnel_of(attributes: &Struct) -> Option<Tunnel<'_>> {
    let text = |key: &str| match attributes.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(text) => Some(text.as_str()),
        _ => None,
    };
    let target = text(TUNNEL_TARGET_ATTRIBUTE).filter(|t| !t.is_empty() && *t != "-")?;
    Some(Tunnel {
        target,
        server_name: text(SERVER_NAME_ATTRIBUTE).unwrap_or(""),
        proxy_authorization: text(TUNNEL_CREDENTIALS_ATTRIBUTE)
            .filter(|value| !value.is_empty() && *value != "-"),
    })
}

/// The headers decide reads, from Envoy's header map (values in `raw_value`; `value` as a
/// fallback for older data planes).
fn request_view(headers: &HeaderMap) -> RequestView<'_> {
    let mut view = RequestView::default();
    let mut host = "";
    for header in &headers.headers {
        if header.key.eq_ignore_ascii_case("proxy-authorization") {
            // Present is enough to be removed from the forwarded request; a value that is not
            // text is no valid token (407), never skipped; and two of them are none either
            // (Envoy's filter state would keep the first, this loop the last).
            if view.proxy_authorization.is_some() {
                view.proxy_authorization = Some("");
                continue;
            }
            view.proxy_authorization = Some(if header.raw_value.is_empty() {
                header.value.as_str()
            } else {
                std::str::from_utf8(&header.raw_value).unwrap_or("")
            });
            continue;
        }
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
            _ => {}
        }
    }
    if view.authority.is_empty() {
        view.authority = host;
    }
    view
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::HeaderValue;

    use super::*;

    fn header(key: &str, raw: &[u8]) -> HeaderValue {
        HeaderValue {
            key: key.into(),
            value: String::new(),
            raw_value: raw.to_vec(),
        }
    }

    #[test]
    fn proxy_credentials_that_are_not_text_are_still_seen() {
        let headers = HeaderMap {
            headers: vec![
                header(":authority", b"api.openai.com"),
                header(":path", b"/v1/x"),
                header("proxy-authorization", b"Basic \xff\xfe runta_rt_x"),
            ],
        };
        let view = request_view(&headers);
        // Seen (so removed from the forwarded request), and no valid token (so 407).
        assert_eq!(view.proxy_authorization, Some(""));
        assert!(decide::proxy_token(view.proxy_authorization.unwrap()).is_none());
        assert_eq!(view.authority, "api.openai.com");
    }

    #[test]
    fn two_sets_of_proxy_credentials_are_no_valid_token() {
        let headers = HeaderMap {
            headers: vec![
                header(":authority", b"api.openai.com:443"),
                header("proxy-authorization", b"Bearer runta_rt_one"),
                header("proxy-authorization", b"Bearer runta_rt_two"),
            ],
        };
        let view = request_view(&headers);
        assert_eq!(view.proxy_authorization, Some(""));
        assert!(decide::proxy_token(view.proxy_authorization.unwrap()).is_none());
    }
}
