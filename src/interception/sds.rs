//! Delta SDS: the leaf certificates Envoy terminates intercepted tunnels with, one resource per
//! TLS server name (Envoy's `on_demand_secret` certificate selector asks for the SNI of each new
//! handshake, one stream per name).
//!
//! Served on the gRPC port behind the same authentication as ext_proc. A name is answered with
//! a leaf only when the caller's rules cover it: a sidecar's (runtime token) its runtime's
//! rule hosts, a gateway's every rule host. Every other name is answered in
//! `removed_resources`, which fails Envoy's paused handshake at once and keeps its certificate
//! cache bounded. While a stream lives, its names are re-minted before they expire and
//! re-judged whenever the rules change (a name a deleted rule covered is removed; a name a new
//! rule covers is sent). A sidecar's stream ends with `UNAUTHENTICATED` as soon as its runtime
//! token is revoked (or its tenant deleted): no leaf is minted for it after that. Open streams are
//! bounded ([`MAX_SDS_STREAMS`]): a wildcard rule covers unboundedly many names.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret, TlsCertificate, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use envoy_types::pb::google::protobuf::Any;
use futures_util::Stream;
use prost::Message as _;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::{Authority, Leaf};
use crate::crypto::{self, TokenHash};
use crate::engine::Engine;
use crate::grpc::auth::{Caller, RUNTIME_TOKEN_METADATA};
use crate::metrics::Metrics;
use crate::rules::snapshot::Snapshot;

/// SDS streams open at once, over all callers; past it a new stream is refused
/// (`RESOURCE_EXHAUSTED`) and the handshake that asked fails.
pub const MAX_SDS_STREAMS: usize = super::MAX_CACHED_LEAVES;

/// The type of the resources this service serves.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The SDS service.
#[derive(Clone)]
pub struct Sds {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None`: interception is not configured; every name is refused.
    authority: Option<Arc<Authority>>,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    /// SDS streams open now (bounded by `MAX_SDS_STREAMS`).
    open: std::sync::atomic::AtomicUsize,
    /// True once the server shuts down: streams end (Envoy reconnects, to another replica or
    /// to this one restarted), so the gRPC server's graceful shutdown does not wait forever.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl Sds {
    /// The service; serve it only behind `crate::grpc::auth::AuthLayer`.
    pub fn new(
        authority: Option<Arc<Authority>>,
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                authority,
                engine,
                metrics,
                open: std::sync::atomic::AtomicUsize::new(0),
                stopping,
            }),
        }
    }
}

/// Whose rules decide which names a stream may have.
#[derive(Debug, Clone)]
enum Scope {
    /// A sidecar: its runtime's rule hosts, for as long as its token stands.
    Runtime {
        tenant_id: String,
        runtime: String,
        token: TokenHash,
    },
    /// A gateway: every rule's host.
    AllRules { gateway: Arc<str> },
}

impl Scope {
    fn covers(&self, snapshot: &Snapshot, name: &str) -> bool {
        // Only exact DNS names are ever covered: `*.example.com` asked for as a name is no
        // name a leaf is minted for, whatever the rules.
        if !super::is_dns_name(name) {
            return false;
        }
        match self {
            Self::Runtime {
                tenant_id, runtime, ..
            } => snapshot
                .runtime_rules(tenant_id, runtime)
                .is_some_and(|rules| rules.covers(name, None)),
            Self::AllRules { .. } => snapshot.any_rule_covers(name),
        }
    }

    /// Whether the caller may still be answered: a sidecar's token must still be known and not
    /// revoked, and its tenant must exist.
    fn still_valid(&self, snapshot: &Snapshot) -> bool {
        match self {
            Self::Runtime {
                tenant_id, token, ..
            } => {
                snapshot.token(token).is_some_and(|entry| !entry.revoked)
                    && snapshot.tenant_name(tenant_id).is_some()
            }
            Self::AllRules { .. } => true,
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Runtime { runtime, .. } => format!("sidecar of runtime {runtime}"),
            Self::AllRules { gateway } => format!("gateway {gateway}"),
        }
    }
}

/// Counts a stream as open for as long as it lives; `None` when `MAX_SDS_STREAMS` are open.
struct OpenStream(Arc<Inner>);

impl OpenStream {
    fn new(inner: Arc<Inner>) -> Option<Self> {
        use std::sync::atomic::Ordering;
        let before = inner.open.fetch_add(1, Ordering::AcqRel);
        if before >= MAX_SDS_STREAMS {
            inner.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        inner.metrics.sds_streams.inc();
        Some(Self(inner))
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.0.metrics.sds_streams.dec();
    }
}

type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl SecretDiscoveryService for Sds {
    type DeltaSecretsStream = Answers<DeltaDiscoveryResponse>;
    type StreamSecretsStream = Answers<DiscoveryResponse>;

    async fn delta_secrets(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        let scope = match request.extensions().get::<Caller>() {
            Some(Caller::Runtime { tenant_id, runtime }) => Scope::Runtime {
                tenant_id: tenant_id.clone(),
                runtime: runtime.clone(),
                token: request
                    .metadata()
                    .get(RUNTIME_TOKEN_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .map(|token| crypto::hash_token(token.trim()))
                    .ok_or_else(|| Status::unauthenticated("runta: no runtime token"))?,
            },
            Some(Caller::Gateway { name, .. }) => Scope::AllRules {
                gateway: name.clone(),
            },
            Some(Caller::Insecure) => Scope::AllRules {
                gateway: "insecure".into(),
            },
            None => {
                return Err(Status::unauthenticated(
                    "runta: the SDS service is served without authentication; refused",
                ));
            }
        };
        let Some(open) = OpenStream::new(self.inner.clone()) else {
            tracing::warn!(
                limit = MAX_SDS_STREAMS,
                "SDS stream refused: too many open (one per TLS server name)"
            );
            return Err(Status::resource_exhausted(
                "runta: too many certificate streams open",
            ));
        };
        let (tx, rx) = mpsc::channel(16);
        let stream = StreamState {
            inner: self.inner.clone(),
            scope,
            names: HashMap::new(),
            nonce: 0,
            tx,
        };
        tokio::spawn(stream.run(request.into_inner(), open));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn stream_secrets(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        Err(Status::unimplemented(
            "runta serves SDS as Delta xDS only: set api_type: DELTA_GRPC (state of the world \
             cannot refuse a name, so an uncovered name would hang the handshake)",
        ))
    }

    async fn fetch_secrets(
        &self,
        _request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        Err(Status::unimplemented(
            "runta serves SDS as Delta xDS only: set api_type: DELTA_GRPC",
        ))
    }
}

/// One SDS stream: its subscribed names and what each was last answered with.
struct StreamState {
    inner: Arc<Inner>,
    scope: Scope,
    /// name → the leaf sent (`None`: answered as removed).
    names: HashMap<String, Option<Arc<Leaf>>>,
    nonce: u64,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

impl StreamState {
    async fn run(mut self, mut inbound: Streaming<DeltaDiscoveryRequest>, _open: OpenStream) {
        let mut generation = self.inner.engine.watch_snapshots();
        generation.mark_unchanged();
        let stop = crate::serve::shutdown_future(&self.inner.stopping);
        tokio::pin!(stop);
        loop {
            let renewal = self
                .names
                .values()
                .flatten()
                .map(|leaf| leaf.renew_at)
                .min();
            let renew = async {
                match renewal {
                    Some(at) => {
                        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                        tokio::time::sleep(wait).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut stop => return,
                message = inbound.message() => match message {
                    Ok(Some(request)) => {
                        if !self.on_request(request).await {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => return,
                },
                () = renew => {
                    let now = SystemTime::now();
                    let due: Vec<String> = self
                        .names
                        .iter()
                        .filter(|(_, leaf)| leaf.as_ref().is_some_and(|l| l.renew_at <= now))
                        .map(|(name, _)| name.clone())
                        .collect();
                    if !self.answer(due, false).await {
                        return;
                    }
                }
                changed = generation.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Only names whose answer changes: covered now but refused before, or the
                    // other way round.
                    let names: Vec<String> = self.names.keys().cloned().collect();
                    if !self.answer(names, true).await {
                        return;
                    }
                }
            }
        }
    }

    /// Handles one request; `false` ends the stream.
    async fn on_request(&mut self, request: DeltaDiscoveryRequest) -> bool {
        if !request.type_url.is_empty() && request.type_url != SECRET_TYPE_URL {
            let _ = self
                .tx
                .send(Err(Status::invalid_argument(format!(
                    "runta serves SDS secrets ({SECRET_TYPE_URL}) here, not {}",
                    request.type_url
                ))))
                .await;
            return false;
        }
        if let Some(error) = &request.error_detail {
            self.inner.metrics.sds_nacks.inc();
            tracing::error!(
                caller = %self.scope.describe(),
                nonce = %request.response_nonce,
                message = %error.message,
                "Envoy rejected a leaf certificate runta sent (SDS NACK)"
            );
        }
        for name in &request.resource_names_unsubscribe {
            self.names.remove(name);
        }
        // Every name asked for is answered, one already on the stream too (the data plane may
        // have lost it).
        self.answer(request.resource_names_subscribe, false).await
    }

    /// Answers these names in one response: a leaf where the rules cover the name, a removal
    /// where they do not. With `only_changes`, a name whose answer would not change is left
    /// out. `false` when the stream is gone.
    async fn answer(&mut self, names: Vec<String>, only_changes: bool) -> bool {
        if names.is_empty() {
            return true;
        }
        let snapshot = self.inner.engine.snapshot();
        if !self.scope.still_valid(&snapshot) {
            tracing::info!(caller = %self.scope.describe(), "SDS stream ended: the runtime token was revoked or its tenant deleted");
            let _ = self
                .tx
                .send(Err(Status::unauthenticated(
                    "runta: the runtime token was revoked",
                )))
                .await;
            return false;
        }
        let mut response = DeltaDiscoveryResponse {
            type_url: SECRET_TYPE_URL.to_owned(),
            ..Default::default()
        };
        for name in names {
            let covered = self.scope.covers(&snapshot, &name);
            let before = self.names.get(&name);
            if only_changes {
                match before {
                    Some(Some(_)) if covered => continue,
                    Some(None) if !covered => continue,
                    None => continue,
                    _ => {}
                }
            }
            let leaf = match (&self.inner.authority, covered) {
                (Some(authority), true) => match authority.leaf(&name) {
                    Ok(leaf) => Some(leaf),
                    Err(err) => {
                        tracing::warn!(name = ?name, error = %err, "no leaf certificate minted");
                        None
                    }
                },
                (None, true) => {
                    tracing::warn!(name = ?name, "a leaf certificate was asked for, but interception has no CA configured (interception.ca_cert_file)");
                    None
                }
                (_, false) => {
                    // The client chose the name: quoted, and at debug level (the refusals
                    // are counted in runta_sds_answers_total).
                    tracing::debug!(name = ?name, caller = %self.scope.describe(), "no rule of the caller covers this TLS server name; no leaf certificate");
                    None
                }
            };
            match &leaf {
                Some(leaf) => {
                    self.inner
                        .metrics
                        .sds_answers
                        .with_label_values(&["leaf"])
                        .inc();
                    response.resources.push(resource(leaf));
                }
                None => {
                    self.inner
                        .metrics
                        .sds_answers
                        .with_label_values(&["refused"])
                        .inc();
                    response.removed_resources.push(name.clone());
                }
            }
            self.names.insert(name, leaf);
        }
        if response.resources.is_empty() && response.removed_resources.is_empty() {
            return true;
        }
        self.nonce += 1;
        response.nonce = self.nonce.to_string();
        self.tx.send(Ok(response)).await.is_ok()
    }
}

/// A leaf as an SDS resource: a TLS certificate secret named by the server name.
fn resource(leaf: &Leaf) -> Resource {
    let inline = |text: &str| DataSource {
        specifier: Some(Specifier::InlineBytes(text.as_bytes().to_vec())),
        watched_directory: None,
    };
    let secret = Secret {
        name: leaf.name.clone(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: Some(inline(&leaf.cert_pem)),
            private_key: Some(inline(leaf.key_pem())),
            ..Default::default()
        })),
    };
    Resource {
        name: leaf.name.clone(),
        version: leaf.version.clone(),
        resource: Some(Any {
            type_url: SECRET_TYPE_URL.to_owned(),
            value: secret.encode_to_vec(),
        }),
        ..Default::default()
    }
}
