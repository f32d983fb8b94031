//! The gRPC port: every service runta serves to Envoy (ext_proc, SDS and ADS), behind one
//! authentication layer, plus the open health service.
//!
//! Invariant: a service reaches the port only through [`GrpcPort::add`], which records its
//! name; every recorded service but health sits behind [`auth::AuthLayer`]. Tests walk
//! [`GrpcPort::service_names`] to prove it, so a newly added service is covered without
//! editing them.

pub mod auth;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryServiceServer;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::server::Router;
use tower::layer::util::{Identity, Stack};

use self::auth::{AuthLayer, GatewayAuth};
use crate::engine::Engine;
use crate::extproc::ExtProc;
use crate::interception::sds::Sds;
use crate::metrics::Metrics;
use crate::xds::ads::Ads;

/// The gRPC router with its services, and their names.
pub struct GrpcPort {
    router: Router<Stack<AuthLayer, Identity>>,
    services: Vec<&'static str>,
}

/// What the gRPC port serves.
pub struct GrpcServices {
    pub extproc: ExtProc,
    /// Leaf certificates for intercepted tunnels (Delta SDS).
    pub sds: Sds,
    /// Sidecars' native routes and the secrets they inject (Delta ADS).
    pub ads: Ads,
}

impl GrpcPort {
    /// The port with every service, health reporting each as serving.
    pub async fn new(
        builder: tonic::transport::Server,
        auth: GatewayAuth,
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        services: GrpcServices,
    ) -> Self {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let mut builder = builder
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .layer(AuthLayer::new(auth, engine, metrics));
        let port = Self {
            services: vec![name_of(&health_service)],
            router: builder.add_service(health_service),
        };
        let extproc = ExternalProcessorServer::new(services.extproc);
        health_reporter
            .set_serving::<ExternalProcessorServer<ExtProc>>()
            .await;
        let sds = SecretDiscoveryServiceServer::new(services.sds);
        health_reporter
            .set_serving::<SecretDiscoveryServiceServer<Sds>>()
            .await;
        let ads = AggregatedDiscoveryServiceServer::new(services.ads);
        health_reporter
            .set_serving::<AggregatedDiscoveryServiceServer<Ads>>()
            .await;
        port.add(extproc).add(sds).add(ads)
    }

    fn add<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.services.push(S::NAME);
        self.router = self.router.add_service(service);
        self
    }

    /// The full names of the services on the port (`envoy.service.ext_proc.v3.ExternalProcessor`, ...).
    pub fn service_names(&self) -> &[&'static str] {
        &self.services
    }

    pub fn into_router(self) -> Router<Stack<AuthLayer, Identity>> {
        self.router
    }
}

fn name_of<S: NamedService>(_: &S) -> &'static str {
    S::NAME
}
