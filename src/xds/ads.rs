//! Delta ADS for sidecars: each sidecar's Envoy subscribes to its runtime's route table (RDS)
//! and to the generic secrets the table's routes inject (SDS), over one aggregated stream on
//! runta's gRPC port, behind the same authentication as ext_proc.
//!
//! Invariants:
//! - A stream is a sidecar's: its runtime token fixes tenant and runtime. It is answered only
//!   its own runtime's table, and only the secrets that table injects; every other name is
//!   answered as removed (and logged).
//! - Never an empty or stale credential: a secret Envoy holds is replaced (rotation) before
//!   anything else is pushed, and a secret leaves a route by a new route table (Envoy keeps
//!   injecting the last value of a secret that merely disappears from SDS). A route table
//!   that references a new secret is pushed with its value already read, so Envoy's request
//!   for it is answered at once (Envoy holds the new routes until it has the secret).
//! - Revocation goes through the routes: when the runtime token is revoked (or the tenant
//!   deleted) the stream pushes the table without compiled routes (everything to ext_proc,
//!   which refuses), removes the secrets, and ends with `UNAUTHENTICATED`.
//! - Delta, not state of the world: a rotation sends one secret, a rule change one table.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    GenericSecret, Secret, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;
use futures_util::Stream;
use prost::Message as _;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status, Streaming};

use super::compile::{self, Compiler, ROUTE_TYPE_URL, RouteTable, SecretUse};
use crate::crypto::{self, Fingerprints, TokenHash};
use crate::engine::{Engine, SecretError};
use crate::grpc::auth::{Caller, RUNTIME_TOKEN_METADATA};
use crate::interception::sds::SECRET_TYPE_URL;
use crate::metrics::Metrics;
use crate::rules::snapshot::{RuntimeRules, SecretRef, Snapshot};

/// How soon a table compiled while the store could not answer for a secret is compiled again.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// ADS streams open at once, over all sidecars; past it a new stream is refused
/// (`RESOURCE_EXHAUSTED`: Envoy retries, and its sidecar keeps what it has). Each stream holds
/// its runtime's compiled table; a runtime token could otherwise open streams without bound.
pub const MAX_ADS_STREAMS: usize = 10_000;

/// The ADS service.
#[derive(Clone)]
pub struct Ads {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    /// Streams open now (bounded by [`MAX_ADS_STREAMS`]).
    open: std::sync::atomic::AtomicUsize,
    /// True once the server shuts down: streams end (Envoy keeps what it has and reconnects).
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl Ads {
    /// The service; serve it only behind `crate::grpc::auth::AuthLayer`.
    pub fn new(
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                metrics,
                open: std::sync::atomic::AtomicUsize::new(0),
                stopping,
            }),
        }
    }
}

type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = Answers<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Answers<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "runta serves ADS as Delta xDS only: set ads_config.api_type: DELTA_GRPC (state of \
             the world re-sends every secret on every change)",
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let Some(Caller::Runtime { tenant_id, runtime }) = request.extensions().get::<Caller>()
        else {
            return Err(Status::permission_denied(
                "runta: xDS is served to sidecars only; authenticate the stream with the \
                 runtime's token (x-runta-runtime-token)",
            ));
        };
        let token = request
            .metadata()
            .get(RUNTIME_TOKEN_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(|token| crypto::hash_token(token.trim()))
            .ok_or_else(|| Status::unauthenticated("runta: no runtime token"))?;
        let Some(slot) = OpenStream::new(self.inner.clone()) else {
            tracing::warn!(
                runtime = %runtime,
                limit = MAX_ADS_STREAMS,
                "sidecar xDS stream refused: too many open"
            );
            return Err(Status::resource_exhausted(
                "runta: too many sidecar xDS streams open",
            ));
        };
        let (tx, rx) = mpsc::channel(16);
        let stream = SidecarStream {
            inner: self.inner.clone(),
            tenant_id: tenant_id.clone(),
            runtime: runtime.clone(),
            token,
            table_name: compile::route_table_name(runtime),
            compiler: Compiler::new(&compile::route_table_name(runtime)),
            table_subscribed: false,
            table_sent: None,
            rules_seen: None,
            native: HashMap::new(),
            uses: HashMap::new(),
            subscribed: HashSet::new(),
            sent: HashMap::new(),
            fingerprints: Fingerprints::new(),
            retry: None,
            version: 0,
            nonce: 0,
            table_pending: None,
            tx,
        };
        tokio::spawn(stream.run(request.into_inner(), slot));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Counts a stream as open for as long as it lives (also if its task panics); `None` when
/// [`MAX_ADS_STREAMS`] are open.
struct OpenStream(Arc<Inner>);

impl OpenStream {
    fn new(inner: Arc<Inner>) -> Option<Self> {
        use std::sync::atomic::Ordering;
        if inner.open.fetch_add(1, Ordering::AcqRel) >= MAX_ADS_STREAMS {
            inner.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        inner.metrics.xds_streams.inc();
        Some(Self(inner))
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.0.metrics.xds_streams.dec();
    }
}

/// One sidecar's stream.
struct SidecarStream {
    inner: Arc<Inner>,
    tenant_id: String,
    runtime: String,
    token: TokenHash,
    /// The one route table this stream may have.
    table_name: String,
    table_subscribed: bool,
    /// Compiles the table, reusing the hosts that did not change.
    compiler: Compiler,
    /// The table last pushed, to push only changes.
    table_sent: Option<RouteTable>,
    /// The rules the current table was compiled from: a snapshot that keeps the same `Arc`
    /// changed nothing of this runtime.
    rules_seen: Option<Option<Arc<RuntimeRules>>>,
    /// SDS name → the secret, for every secret the current table injects. No value is kept
    /// here: the engine's cache holds values for their TTL only, and so must this stream.
    native: HashMap<String, Arc<SecretRef>>,
    /// Cache key → the secret and how the current table uses it, for every secret the
    /// runtime's rules name.
    uses: HashMap<Arc<str>, (Arc<SecretRef>, SecretUse)>,
    /// Secret names Envoy subscribed to.
    subscribed: HashSet<String>,
    /// SDS name → the fingerprint of the value Envoy was last sent.
    sent: HashMap<String, [u8; 32]>,
    fingerprints: Fingerprints,
    /// Compile again at this time (a secret the store could not answer for).
    retry: Option<tokio::time::Instant>,
    version: u64,
    nonce: u64,
    /// The last route table pushed and not yet answered: its nonce, version and when.
    table_pending: Option<(String, u64, tokio::time::Instant)>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

/// Why a stream ends.
enum End {
    /// Envoy went away, or the server stops.
    Gone,
    /// The sidecar lost its standing: tell Envoy.
    Refused(Status),
}

impl SidecarStream {
    async fn run(mut self, mut inbound: Streaming<DeltaDiscoveryRequest>, _slot: OpenStream) {
        let mut generation = self.inner.engine.watch_snapshots();
        generation.mark_unchanged();
        let mut secrets = self.inner.engine.watch_secrets();
        let stop = crate::serve::shutdown_future(&self.inner.stopping);
        tokio::pin!(stop);
        tracing::info!(runtime = %self.runtime, "sidecar xDS stream opened");
        let end = loop {
            let retry = self.retry;
            let step = tokio::select! {
                () = &mut stop => Err(End::Gone),
                message = inbound.message() => match message {
                    Ok(Some(request)) => self.on_request(request).await,
                    Ok(None) | Err(_) => Err(End::Gone),
                },
                changed = generation.changed() => match changed {
                    Ok(()) => self.refresh(false).await,
                    Err(_) => Err(End::Gone),
                },
                key = secrets.recv() => match key {
                    Ok(Some(key)) => self.secret_changed(&key).await,
                    // Every secret, or lagging behind: any may have changed.
                    Ok(None) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.refresh(true).await
                    }
                    Err(broadcast::error::RecvError::Closed) => Ok(()),
                },
                () = async {
                    match retry {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => self.refresh(true).await,
            };
            if let Err(end) = step {
                break end;
            }
        };
        if let End::Refused(status) = end {
            let _ = self.tx.send(Err(status)).await;
        }
        tracing::info!(runtime = %self.runtime, "sidecar xDS stream closed");
    }

    /// One secret changed (its cache key): a value Envoy holds is replaced at once, without
    /// compiling anything; a change of how the rules may use it (uncached now, gone, back)
    /// compiles the table again.
    async fn secret_changed(&mut self, key: &str) -> Result<(), End> {
        let Some((secret, before)) = self.uses.get(key).cloned() else {
            return Ok(()); // not a secret of this runtime's rules
        };
        let read = self
            .inner
            .engine
            .secret_and_caching(&secret.key, &secret.tenant_id, &secret.credential)
            .await;
        match (before, self.classify(&secret, read)) {
            (SecretUse::Native, (SecretUse::Native, Some(value))) => {
                let name = compile::secret_resource_name(&secret.credential);
                self.push_changed(vec![(name, value)]).await
            }
            _ => self.refresh(true).await,
        }
    }

    /// How the compiler may use a secret, given what reading it answered (and its value
    /// where Envoy may hold it). Schedules a retry when the store could not answer.
    fn classify(
        &mut self,
        secret: &SecretRef,
        read: Result<(Arc<SecretString>, bool), SecretError>,
    ) -> (SecretUse, Option<Arc<SecretString>>) {
        match read {
            // Never an empty value into Envoy (its formatter would then set no header); none
            // is ever stored, but ext_proc is the judge if one were.
            Ok((value, true)) if value.expose_secret().is_empty() => (SecretUse::ExtProc, None),
            Ok((value, true)) => (SecretUse::Native, Some(value)),
            // cache_ttl_secs = 0: never held, here or in Envoy.
            Ok((_, false)) => (SecretUse::ExtProc, None),
            Err(SecretError::Missing | SecretError::Decrypt(_)) => (SecretUse::Unavailable, None),
            Err(SecretError::Store(err)) => {
                tracing::warn!(runtime = %self.runtime, credential = %secret.credential, error = %err, "a secret could not be read for a sidecar's native routes; ext_proc serves its rules until it can");
                self.retry = Some(tokio::time::Instant::now() + RETRY_AFTER);
                (SecretUse::ExtProc, None)
            }
        }
    }

    async fn on_request(&mut self, request: DeltaDiscoveryRequest) -> Result<(), End> {
        let kind = match request.type_url.as_str() {
            ROUTE_TYPE_URL => "routes",
            SECRET_TYPE_URL => "secret",
            other => {
                tracing::warn!(runtime = %self.runtime, type_url = %other, "a sidecar asked runta's ADS for a type it does not serve (only routes and secrets); ignored");
                return Ok(());
            }
        };
        if let Some((nonce, version, pushed)) = &self.table_pending
            && kind == "routes"
            && request.response_nonce == *nonce
        {
            let took = pushed.elapsed();
            self.inner
                .metrics
                .xds_apply_seconds
                .observe(took.as_secs_f64());
            if request.error_detail.is_none() {
                tracing::info!(runtime = %self.runtime, version, ms = took.as_millis() as u64, "a sidecar applied its route table");
            }
            self.table_pending = None;
        }
        if let Some(error) = &request.error_detail {
            self.inner
                .metrics
                .xds_nacks
                .with_label_values(&[kind])
                .inc();
            tracing::error!(
                runtime = %self.runtime,
                kind,
                nonce = %request.response_nonce,
                message = %error.message,
                "a sidecar's Envoy rejected what runta pushed (xDS NACK): its native routes stay as they were"
            );
        }
        if kind == "routes" {
            let mut refused = Vec::new();
            for name in request.resource_names_subscribe {
                if name == self.table_name {
                    self.table_subscribed = true;
                    // Answer it even if sent before: Envoy may have lost it.
                    self.table_sent = None;
                } else {
                    refused.push(name);
                }
            }
            for name in &request.resource_names_unsubscribe {
                if *name == self.table_name {
                    self.table_subscribed = false;
                }
            }
            self.refuse(ROUTE_TYPE_URL, refused).await?;
            return self.refresh(false).await;
        }
        for name in &request.resource_names_unsubscribe {
            self.subscribed.remove(name);
            self.sent.remove(name);
        }
        let mut answer = Vec::new();
        let mut refused = Vec::new();
        let mut changed_use = false;
        for name in request.resource_names_subscribe {
            // Asked (again): sent now, whatever was sent before.
            self.sent.remove(&name);
            match self.native.get(&name).cloned() {
                Some(secret) => {
                    let read = self
                        .inner
                        .engine
                        .secret_and_caching(&secret.key, &secret.tenant_id, &secret.credential)
                        .await;
                    match self.classify(&secret, read) {
                        (SecretUse::Native, Some(value)) => answer.push((name.clone(), value)),
                        // No longer native: the table changes (and stops referencing it).
                        _ => changed_use = true,
                    }
                }
                None => refused.push(name.clone()),
            }
            self.subscribed.insert(name);
        }
        self.push_secrets(answer).await?;
        self.refuse(SECRET_TYPE_URL, refused).await?;
        if changed_use {
            self.refresh(true).await?;
        }
        Ok(())
    }

    /// Compiles the table again if the rules (or, with `secrets_changed`, the values) may
    /// have changed, and pushes what changed: secrets first, then the table.
    async fn refresh(&mut self, secrets_changed: bool) -> Result<(), End> {
        let snapshot = self.inner.engine.snapshot();
        if !self.still_valid(&snapshot) {
            return Err(self.revoke().await);
        }
        let rules = snapshot.runtime_rules_shared(&self.tenant_id, &self.runtime);
        let same_rules = self
            .rules_seen
            .as_ref()
            .is_some_and(|seen| match (seen, &rules) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            });
        if same_rules && !secrets_changed && self.table_sent.is_some() {
            return Ok(());
        }
        if !self.table_subscribed {
            // Nothing asked for yet; compiled when Envoy subscribes.
            return Ok(());
        }
        self.rules_seen = Some(rules.clone());
        let started = std::time::Instant::now();
        let read = self.read_secrets(rules.as_deref()).await;
        let table = self.compiler.compile(rules.as_deref(), |secret| {
            read.get(&*secret.key)
                .map_or(SecretUse::ExtProc, |(use_, _)| *use_)
        });
        self.uses = rules
            .iter()
            .flat_map(|rules| rules.rules())
            .filter_map(|rule| {
                read.get(&*rule.secret.key)
                    .map(|(use_, _)| (rule.secret.key.clone(), (rule.secret.clone(), *use_)))
            })
            .collect();
        self.native = table
            .secrets
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        // Rotation first: a subscribed secret whose value changed.
        let values: Vec<(String, Arc<SecretString>)> = table
            .secrets
            .iter()
            .filter_map(|(name, secret)| {
                read.get(&*secret.key)
                    .and_then(|(_, value)| value.clone())
                    .map(|value| (name.clone(), value))
            })
            .collect();
        drop(read);
        self.push_changed(values).await?;
        tracing::debug!(runtime = %self.runtime, ms = started.elapsed().as_millis() as u64, "a sidecar's route table compiled");
        self.push_table(table).await
    }

    /// Reads every secret the rules name: how the compiler may use it, and the value where
    /// Envoy may hold it. Schedules a retry when the store could not answer.
    async fn read_secrets(
        &mut self,
        rules: Option<&RuntimeRules>,
    ) -> HashMap<Arc<str>, (SecretUse, Option<Arc<SecretString>>)> {
        let mut uses = HashMap::new();
        self.retry = None;
        let Some(rules) = rules else {
            return uses;
        };
        let mut refs: Vec<&Arc<SecretRef>> = Vec::new();
        let mut seen = HashSet::new();
        for rule in rules.rules() {
            if seen.insert(rule.secret.key.clone()) {
                refs.push(&rule.secret);
            }
        }
        for secret in refs {
            let read = self
                .inner
                .engine
                .secret_and_caching(&secret.key, &secret.tenant_id, &secret.credential)
                .await;
            let answer = self.classify(secret, read);
            uses.insert(secret.key.clone(), answer);
        }
        uses
    }

    /// Pushes the table if it differs from the one Envoy has.
    async fn push_table(&mut self, table: RouteTable) -> Result<(), End> {
        if self
            .table_sent
            .as_ref()
            .is_some_and(|sent| sent.same_as(&table))
        {
            return Ok(());
        }
        let metrics = self.inner.metrics.clone();
        metrics
            .xds_rules
            .with_label_values(&["native"])
            .inc_by(table.native_rules as u64);
        metrics
            .xds_rules
            .with_label_values(&["extproc"])
            .inc_by(table.extproc_rules as u64);
        self.version += 1;
        tracing::info!(
            runtime = %self.runtime,
            version = self.version,
            virtual_hosts = table.virtual_hosts(),
            native_rules = table.native_rules,
            extproc_rules = table.extproc_rules,
            "pushing a sidecar's route table"
        );
        let resource = Resource {
            name: self.table_name.clone(),
            version: self.version.to_string(),
            resource: Some(Any {
                type_url: ROUTE_TYPE_URL.to_owned(),
                value: table.encode(),
            }),
            ..Default::default()
        };
        self.send(ROUTE_TYPE_URL, vec![resource], Vec::new())
            .await?;
        self.table_pending = Some((
            self.nonce.to_string(),
            self.version,
            tokio::time::Instant::now(),
        ));
        metrics.xds_pushes.with_label_values(&["routes"]).inc();
        self.table_sent = Some(table);
        Ok(())
    }

    /// Pushes the values among these that Envoy subscribed to and does not have.
    async fn push_changed(&mut self, values: Vec<(String, Arc<SecretString>)>) -> Result<(), End> {
        let changed = values
            .into_iter()
            .filter(|(name, value)| {
                self.subscribed.contains(name)
                    && self.sent.get(name) != Some(&self.fingerprints.of(value.expose_secret()))
            })
            .collect();
        self.push_secrets(changed).await
    }

    /// Pushes these secrets' values (names Envoy subscribed to).
    async fn push_secrets(&mut self, secrets: Vec<(String, Arc<SecretString>)>) -> Result<(), End> {
        if secrets.is_empty() {
            return Ok(());
        }
        let mut resources = Vec::with_capacity(secrets.len());
        for (name, value) in &secrets {
            self.version += 1;
            let secret = Secret {
                name: name.clone(),
                r#type: Some(secret::Type::GenericSecret(GenericSecret {
                    secret: Some(DataSource {
                        specifier: Some(data_source::Specifier::InlineString(
                            value.expose_secret().to_owned(),
                        )),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
            };
            resources.push(Resource {
                name: name.clone(),
                version: self.version.to_string(),
                resource: Some(Any {
                    type_url: SECRET_TYPE_URL.to_owned(),
                    value: secret.encode_to_vec(),
                }),
                ..Default::default()
            });
        }
        let count = resources.len() as u64;
        self.send(SECRET_TYPE_URL, resources, Vec::new()).await?;
        self.inner
            .metrics
            .xds_pushes
            .with_label_values(&["secret"])
            .inc_by(count);
        for (name, value) in secrets {
            let fingerprint = self.fingerprints.of(value.expose_secret());
            self.sent.insert(name, fingerprint);
        }
        Ok(())
    }

    /// Answers names this stream may not have (or that do not exist) as removed.
    async fn refuse(&mut self, type_url: &str, names: Vec<String>) -> Result<(), End> {
        if names.is_empty() {
            return Ok(());
        }
        tracing::warn!(runtime = %self.runtime, type_url, names = ?names, "a sidecar asked for resources that are not its runtime's; answered as removed");
        let count = names.len() as u64;
        self.send(type_url, Vec::new(), names).await?;
        self.inner
            .metrics
            .xds_pushes
            .with_label_values(&["removed"])
            .inc_by(count);
        Ok(())
    }

    /// The runtime token was revoked or the tenant deleted: the table without compiled
    /// routes first (ext_proc refuses everything then), then the secrets go.
    async fn revoke(&mut self) -> End {
        tracing::info!(runtime = %self.runtime, "a sidecar's runtime token was revoked (or its tenant deleted): its native routes are withdrawn");
        if self.table_subscribed {
            let table = compile::compile(&self.table_name, None, |_| SecretUse::ExtProc);
            if self.push_table(table).await.is_err() {
                return End::Gone;
            }
        }
        // The secrets Envoy holds (names it asked for but never got are nothing to remove).
        let mut names: Vec<String> = self.sent.drain().map(|(name, _)| name).collect();
        names.sort();
        self.subscribed.clear();
        self.native.clear();
        self.uses.clear();
        if !names.is_empty() && self.send(SECRET_TYPE_URL, Vec::new(), names).await.is_err() {
            return End::Gone;
        }
        End::Refused(Status::unauthenticated(
            "runta: the runtime token was revoked",
        ))
    }

    /// Whether the sidecar's token still stands and its tenant exists.
    fn still_valid(&self, snapshot: &Snapshot) -> bool {
        snapshot
            .token(&self.token)
            .is_some_and(|entry| !entry.revoked)
            && snapshot.tenant_name(&self.tenant_id).is_some()
    }

    async fn send(
        &mut self,
        type_url: &str,
        resources: Vec<Resource>,
        removed: Vec<String>,
    ) -> Result<(), End> {
        self.nonce += 1;
        let response = DeltaDiscoveryResponse {
            type_url: type_url.to_owned(),
            resources,
            removed_resources: removed,
            nonce: self.nonce.to_string(),
            system_version_info: self.version.to_string(),
            ..Default::default()
        };
        self.tx.send(Ok(response)).await.map_err(|_| End::Gone)
    }
}
