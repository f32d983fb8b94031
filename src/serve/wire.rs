//! Wiring: from a validated configuration to the shared state and the services, before any
//! port is bound. Everything that can fail for a configuration or database reason fails here.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use super::{ServeError, open_store};
use crate::admin::AppState;
use crate::bootstrap::{self, BootstrapError};
use crate::config::{Config, ConfigError};
use crate::engine::Engine;
use crate::extproc::ExtProc;
use crate::extproc::decide::Policy;
use crate::grpc::auth::GatewayAuth;
use crate::grpc::{GrpcPort, GrpcServices};
use crate::interception::sds::Sds;
use crate::interception::{Authority, CaError};
use crate::metrics::Metrics;
use crate::store::BackendKind;

/// The server, wired but not yet listening.
pub(super) struct Wired {
    pub admin: AppState,
    pub grpc: GrpcPort,
    pub engine: Arc<Engine>,
    /// PostgreSQL: the URL the change follower listens on.
    pub follow: Option<SecretString>,
    pub backend: BackendKind,
    pub active_key: String,
}

pub(super) async fn wire(
    config: &Config,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Wired, ServeError> {
    bootstrap::provision_embedded(config)?;
    let resolved = bootstrap::resolve(config)?;
    let (mut store, _) = open_store(config, &resolved.database_url).await?;
    if let Some(stream) = &config.audit.stream {
        store =
            store.with_audit_sink(super::audit_stream::open(stream).map_err(BootstrapError::from)?);
    }
    if resolved.embedded {
        bootstrap::ensure_default_tenant(&store, &config.data_dir).await?;
    }
    if resolved.operator_token.is_none() {
        tracing::warn!(
            "no operator token configured (admin.operator_token): tenant management is disabled"
        );
    }
    let metrics = Arc::new(Metrics::new());
    let keyring = Arc::new(resolved.keyring);
    let engine = Arc::new(Engine::new(store.clone(), keyring.clone(), metrics.clone()));
    engine.reload().await.map_err(BootstrapError::Store)?;

    let auth = if config.grpc.insecure_no_auth {
        tracing::warn!(
            "INSECURE: grpc.insecure_no_auth is set: ANY caller that reaches the gRPC port gets secrets injected. Never use this outside development."
        );
        GatewayAuth::insecure()
    } else {
        GatewayAuth::new(
            &resolved.gateway_tokens,
            config
                .grpc
                .tls
                .as_ref()
                .is_some_and(|t| t.client_ca_file.is_some()),
            &config.grpc.identity_gateways,
        )
    };
    let authority = match &resolved.interception_ca {
        Some((cert, key)) => Some(Arc::new(
            Authority::load(
                cert,
                key,
                Duration::from_secs(config.interception.leaf_ttl_secs),
                metrics.leaves_minted.clone(),
            )
            .map_err(|e| {
                let key = match &e {
                    CaError::File { key, .. } => *key,
                    _ => "interception.ca_cert_file",
                };
                BootstrapError::from(ConfigError {
                    key: key.into(),
                    message: e.to_string(),
                })
            })?,
        )),
        None => {
            tracing::warn!(
                "HTTPS interception is off: no interception.ca_cert_file / ca_key_file configured \
                 (a PostgreSQL deployment generates no CA; every replica must use the same one). \
                 Tunnels to hosts with rules are refused with 503."
            );
            None
        }
    };
    let policy = Policy {
        unidentified: config.injection.unidentified,
        unmatched_connect: config.interception.unmatched_connect,
        interception: authority.is_some(),
    };
    let builder = super::listen::grpc_builder(config)?;
    let grpc = GrpcPort::new(
        builder,
        auth,
        engine.clone(),
        metrics.clone(),
        GrpcServices {
            extproc: ExtProc::new(engine.clone(), policy, metrics.clone()),
            sds: Sds::new(
                authority.clone(),
                engine.clone(),
                metrics.clone(),
                shutdown.clone(),
            ),
            ads: crate::xds::ads::Ads::new(engine.clone(), metrics.clone(), shutdown),
        },
    )
    .await;
    let backend = store.kind();
    let active_key = keyring.active_key_id().to_owned();
    let admin = AppState {
        store,
        keyring,
        operator_token: resolved.operator_token.map(Arc::new),
        metrics,
        engine: engine.clone(),
        max_body_bytes: config.admin.max_body_bytes,
        interception_ca: authority.map(|a| Arc::from(a.cert_pem())),
    };
    Ok(Wired {
        admin,
        grpc,
        engine,
        follow: (resolved.backend == BackendKind::Postgres).then_some(resolved.database_url),
        backend,
        active_key,
    })
}
