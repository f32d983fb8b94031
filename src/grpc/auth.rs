//! Authentication of the gRPC port: whoever can call it can ask for secrets, so every service
//! on it except health answers only authenticated callers. This is a tower layer around the
//! whole router, not a check inside one service: a service added to the port (SDS, ADS) is
//! authenticated by construction.
//!
//! A caller is a gateway holding a configured gateway token (`authorization: Bearer ...`
//! metadata) or a client certificate signed by the configured CA (verified by the TLS layer).
//! Everyone else gets `UNAUTHENTICATED` before the request reaches a service. The resolved
//! [`Caller`] travels to the service in the request's extensions.

use std::sync::Arc;
use std::task::{Context, Poll};

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::crypto::{TokenHash, hash_token};
use crate::metrics::Metrics;

/// The path prefix of the gRPC health service: the only one open to everyone (load
/// balancers and Kubernetes probe it without credentials, and it reveals nothing).
pub const HEALTH_PATH_PREFIX: &str = "/grpc.health.v1.Health/";

/// Who is calling, as the authentication layer established it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A gateway that presented a configured gateway token.
    GatewayToken,
    /// A gateway that presented a client certificate signed by the configured CA.
    ClientCertificate,
    /// Authentication is switched off (development only).
    Insecure,
}

/// How gateways prove who they are.
#[derive(Clone)]
pub struct GatewayAuth {
    /// SHA-256 of each accepted gateway token.
    token_hashes: Vec<TokenHash>,
    /// A client certificate verified against the configured CA is enough.
    accept_client_certificates: bool,
    /// Development only: everyone is accepted.
    insecure: bool,
}

impl std::fmt::Debug for GatewayAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayAuth")
            .field("tokens", &self.token_hashes.len())
            .field(
                "accept_client_certificates",
                &self.accept_client_certificates,
            )
            .field("insecure", &self.insecure)
            .finish()
    }
}

impl GatewayAuth {
    pub fn new(tokens: &[SecretString], accept_client_certificates: bool) -> Self {
        Self {
            token_hashes: tokens
                .iter()
                .map(|t| hash_token(t.expose_secret()))
                .collect(),
            accept_client_certificates,
            insecure: false,
        }
    }

    /// Accepts every caller. Only for development; `runta serve` says so loudly.
    pub fn insecure() -> Self {
        Self {
            token_hashes: Vec::new(),
            accept_client_certificates: false,
            insecure: true,
        }
    }

    /// The caller of a request, from its metadata and its connection; `UNAUTHENTICATED`
    /// when it proves nothing.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<Caller, Status> {
        if self.insecure {
            return Ok(Caller::Insecure);
        }
        if self.accept_client_certificates
            && extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(TlsConnectInfo::peer_certs)
                .is_some_and(|certs| !certs.is_empty())
        {
            return Ok(Caller::ClientCertificate);
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
            let matched = self
                .token_hashes
                .iter()
                .fold(subtle::Choice::from(0), |acc, h| acc | h.ct_eq(&presented));
            if bool::from(matched) {
                return Ok(Caller::GatewayToken);
            }
        }
        Err(Status::unauthenticated(
            "runta: gateway not authenticated; send 'authorization: Bearer <gateway token>' or a client certificate",
        ))
    }
}

/// The tower layer that authenticates every request on the gRPC port but health's.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<GatewayAuth>,
    metrics: Arc<Metrics>,
}

impl AuthLayer {
    pub fn new(auth: GatewayAuth, metrics: Arc<Metrics>) -> Self {
        Self {
            auth: Arc::new(auth),
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
    S::Future: Send + 'static,
    R: Default + Send + 'static,
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
        match self
            .layer
            .auth
            .authenticate(request.headers(), request.extensions())
        {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Either::Right(self.inner.call(request))
            }
            Err(status) => {
                self.layer.metrics.grpc_unauthenticated.inc();
                Either::Left(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
