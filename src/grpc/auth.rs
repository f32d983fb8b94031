//! Authentication of the gRPC port: whoever can call it can ask for secrets, so every service
//! on it except health answers only authenticated callers. This is a tower layer around the
//! whole router, not a check inside one service: a service added to the port (SDS, ADS) is
//! authenticated by construction.
//!
//! Callers, strongest scope first:
//! - a **sidecar** presents a runtime token (`x-runta-runtime-token` metadata): it is that one
//!   runtime of that one tenant, whatever else it sends. A leaked sidecar configuration
//!   exposes one runtime, and revoking the token cuts it off;
//! - a **gateway** presents a configured gateway token (`authorization: Bearer ...`) or a
//!   client certificate signed by the configured CA. Only gateways listed in
//!   `grpc.identity_gateways` may name a tenant and runtime in the stream's metadata; others
//!   identify runtimes by the runtime tokens in the requests they forward.
//!
//! Everyone else gets `UNAUTHENTICATED` before the request reaches a service. The resolved
//! [`Caller`] travels to the service in the request's extensions.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::task::{Context, Poll};

use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::bootstrap::GatewayToken;
use crate::crypto::{TokenHash, hash_token};
use crate::engine::Engine;
use crate::metrics::Metrics;

/// The path prefix of the gRPC health service: the only one open to everyone (load
/// balancers and Kubernetes probe it without credentials, and it reveals nothing).
pub const HEALTH_PATH_PREFIX: &str = "/grpc.health.v1.Health/";

/// The metadata key a sidecar's Envoy sends its runtime token in.
pub const RUNTIME_TOKEN_METADATA: &str = "x-runta-runtime-token";

/// Who is calling, as the authentication layer established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A sidecar authenticated by a runtime token: exactly this runtime of this tenant.
    Runtime { tenant_id: String, runtime: String },
    /// A gateway (token or client certificate), known by `name` in logs and configuration.
    Gateway {
        /// Shared with the configuration: authenticating a call allocates nothing.
        name: Arc<str>,
        /// Listed in `grpc.identity_gateways`: may name the tenant and runtime of a stream.
        asserts_identity: bool,
    },
    /// Authentication is switched off (development only): anyone, asserting anything.
    Insecure,
}

/// How callers prove who they are.
#[derive(Clone)]
pub struct GatewayAuth {
    /// SHA-256 of each accepted gateway token, with its name.
    tokens: Vec<(TokenHash, Arc<str>)>,
    /// A client certificate verified against the configured CA is enough.
    accept_client_certificates: bool,
    /// Names of gateways trusted to assert identities (`grpc.identity_gateways`).
    identity_gateways: BTreeSet<Arc<str>>,
    /// Development only: everyone is accepted.
    insecure: bool,
}

impl std::fmt::Debug for GatewayAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayAuth")
            .field("tokens", &self.tokens.len())
            .field(
                "accept_client_certificates",
                &self.accept_client_certificates,
            )
            .field("identity_gateways", &self.identity_gateways)
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl GatewayAuth {
    pub fn new(
        tokens: &[GatewayToken],
        accept_client_certificates: bool,
        identity_gateways: &[String],
    ) -> Self {
        Self {
            tokens: tokens
                .iter()
                .map(|t| (hash_token(t.token.expose_secret()), t.name.clone()))
                .collect(),
            accept_client_certificates,
            identity_gateways: identity_gateways
                .iter()
                .map(|n| n.as_str().into())
                .collect(),
            insecure: false,
        }
    }

    /// Accepts every caller. Only for development; `runta serve` says so loudly.
    pub fn insecure() -> Self {
        Self {
            tokens: Vec::new(),
            accept_client_certificates: false,
            identity_gateways: BTreeSet::new(),
            insecure: true,
        }
    }

    /// The caller of a request, from its metadata, its connection and (for runtime tokens)
    /// the current snapshot; `UNAUTHENTICATED` when it proves nothing.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
        engine: &Engine,
    ) -> Result<Caller, Status> {
        if let Some(token) = headers.get(RUNTIME_TOKEN_METADATA) {
            // A runtime token decides alone: it never widens into a gateway's rights.
            let token = token.to_str().map(str::trim).unwrap_or_default();
            let snapshot = engine.snapshot();
            return match snapshot.token(&hash_token(token)) {
                Some(entry) if !entry.revoked && !token.is_empty() => Ok(Caller::Runtime {
                    tenant_id: entry.tenant_id.clone(),
                    runtime: entry.runtime.clone(),
                }),
                _ => Err(Status::unauthenticated(
                    "runta: the runtime token in x-runta-runtime-token is unknown or revoked",
                )),
            };
        }
        if self.insecure {
            return Ok(Caller::Insecure);
        }
        if self.accept_client_certificates
            && let Some(certs) = extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(TlsConnectInfo::peer_certs)
            && let Some(leaf) = certs.first()
        {
            // The TLS layer verified the chain; the names only decide identity trust, so the
            // certificate is parsed only when some gateway may be trusted for it.
            if self.identity_gateways.is_empty() {
                return Ok(Caller::Gateway {
                    name: "client certificate".into(),
                    asserts_identity: false,
                });
            }
            let names = certificate_names(leaf);
            let trusted = names
                .iter()
                .find(|n| self.identity_gateways.contains(n.as_str()));
            return Ok(Caller::Gateway {
                name: trusted.or(names.first()).map_or_else(
                    || "client certificate".into(),
                    |n| format!("certificate {n}").into(),
                ),
                asserts_identity: trusted.is_some(),
            });
        }
        if let Some(token) = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
        {
            let presented = hash_token(token);
            // Compare against every configured token, without stopping early.
            let mut matched = None;
            for (hash, name) in &self.tokens {
                if bool::from(hash.ct_eq(&presented)) {
                    matched = Some(name);
                }
            }
            if let Some(name) = matched {
                return Ok(Caller::Gateway {
                    name: name.clone(),
                    asserts_identity: self.identity_gateways.contains(name),
                });
            }
        }
        Err(Status::unauthenticated(
            "runta: not authenticated; a gateway sends 'authorization: Bearer <gateway token>' or a client certificate, a sidecar 'x-runta-runtime-token: <runtime token>'",
        ))
    }
}

/// The subject common names and DNS names of a DER certificate (empty if it does not parse).
fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    names
}

/// The tower layer that authenticates every request on the gRPC port but health's.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<GatewayAuth>,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
}

impl AuthLayer {
    pub fn new(auth: GatewayAuth, engine: Arc<Engine>, metrics: Arc<Metrics>) -> Self {
        Self {
            auth: Arc::new(auth),
            engine,
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service behind [`AuthLayer`].
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B, R> tower::Service<http::Request<B>> for Authenticated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<Self::Response, Self::Error>>,
        S::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        use futures_util::future::Either;
        if request.uri().path().starts_with(HEALTH_PATH_PREFIX) {
            return Either::Right(self.inner.call(request));
        }
        let layer = &self.layer;
        match layer
            .auth
            .authenticate(request.headers(), request.extensions(), &layer.engine)
        {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Either::Right(self.inner.call(request))
            }
            Err(status) => {
                layer.metrics.grpc_unauthenticated.inc();
                tracing::warn!(path = %request.uri().path(), reason = %status.message(), "gRPC call refused: not authenticated");
                Either::Left(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
