//! `runta serve`: start-up in a fixed order (configuration validated, keys and files resolved,
//! database migrated, default tenant ensured, rule snapshot loaded, then the ext_proc and admin
//! ports bound), serving until SIGINT/SIGTERM, then a graceful shutdown of both.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use futures_util::StreamExt as _;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::admin::{self, AppState};
use crate::bootstrap::{self, BootstrapError};
use crate::config::{Config, GrpcListen, LogFormat, parse_grpc_listen, parse_listen};
use crate::engine::Engine;
use crate::extproc::ExtProc;
use crate::extproc::auth::GatewayAuth;
use crate::metrics::Metrics;
use crate::store::Store;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("admin server: {0}")]
    Serve(std::io::Error),
}

/// Sets up logging to standard error as the configuration says. Log lines never carry secret
/// values: secrets are typed and print as `[REDACTED]`.
pub fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Opens the store on `database_url` and brings its schema up to date; answers how many
/// migrations ran. (A SQLite file that does not exist would be created: callers that must not
/// create one check first, `bootstrap::existing_database`.)
pub async fn open_store(
    config: &Config,
    database_url: &SecretString,
) -> Result<(Store, usize), BootstrapError> {
    let store = Store::connect(
        database_url.expose_secret(),
        config.database.max_connections,
    )
    .await?;
    let applied = store.migrate().await?;
    if applied > 0 {
        tracing::info!(applied, backend = ?store.kind(), "database migrations applied");
    }
    Ok((store, applied))
}

/// Where a running server listens.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub admin: SocketAddr,
    pub grpc: GrpcListen,
}

/// A started server: its addresses and the handle that stops it.
pub struct Running {
    pub addresses: Addresses,
    pub engine: Arc<Engine>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

impl Running {
    /// Stops both listeners gracefully and waits for them.
    pub async fn stop(self) -> Result<(), ServeError> {
        let _ = self.shutdown.send(true);
        let mut result = Ok(());
        for task in self.tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => result = Err(err),
                Err(join) => result = Err(ServeError::Serve(std::io::Error::other(join))),
            }
        }
        if let GrpcListen::Unix(path) = &self.addresses.grpc {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!("stopped");
        result
    }
}

fn shutdown_future(
    rx: &watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Starts the server: everything resolved and loaded, then both ports bound.
pub async fn start(config: Config) -> Result<Running, ServeError> {
    bootstrap::provision_embedded(&config)?;
    let resolved = bootstrap::resolve(&config)?;
    let (store, _) = open_store(&config, &resolved.database_url).await?;
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
            "INSECURE: grpc.insecure_no_auth is set: ANY caller that reaches the ext_proc port gets secrets injected. Never use this outside development."
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
        )
    };
    let extproc = ExtProc::new(
        engine.clone(),
        auth,
        config.injection.unidentified,
        metrics.clone(),
    );
    let state = AppState {
        store,
        keyring,
        operator_token: resolved.operator_token.map(Arc::new),
        metrics,
        engine: engine.clone(),
        max_body_bytes: config.admin.max_body_bytes,
    };

    let (shutdown, shutdown_rx) = watch::channel(false);
    let grpc_listen = parse_grpc_listen(&config.grpc.listen).expect("validated");
    let mut grpc_server = Server::builder()
        .max_concurrent_streams(Some(config.grpc.max_concurrent_streams))
        .http2_keepalive_interval(Some(Duration::from_secs(30)));
    if let Some(tls) = &config.grpc.tls {
        grpc_server = grpc_server.tls_config(server_tls(tls)?).map_err(|e| {
            BootstrapError::Config(crate::config::ConfigError {
                key: "grpc.tls".into(),
                message: e.to_string(),
            })
        })?;
    }
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ExternalProcessorServer<ExtProc>>()
        .await;
    let router = grpc_server
        .add_service(health_service)
        .add_service(ExternalProcessorServer::new(extproc));
    let mut tasks = Vec::new();
    let grpc_bound = match &grpc_listen {
        GrpcListen::Tcp(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind {
                    what: "grpc.listen",
                    addr: config.grpc.listen.clone(),
                    source,
                })?;
            let bound = listener.local_addr().map_err(ServeError::Serve)?;
            // Nagle's algorithm would hold small answers back for a delayed ACK (~40 ms):
            // every accepted connection gets TCP_NODELAY.
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|stream| {
                let stream = stream?;
                stream.set_nodelay(true)?;
                Ok(stream)
            });
            tasks.push(spawn_grpc(router, incoming, shutdown_future(&shutdown_rx)));
            GrpcListen::Tcp(bound)
        }
        GrpcListen::Unix(path) => {
            if path.exists() {
                std::fs::remove_file(path).map_err(|source| ServeError::Bind {
                    what: "grpc.listen",
                    addr: config.grpc.listen.clone(),
                    source,
                })?;
            }
            let listener =
                tokio::net::UnixListener::bind(path).map_err(|source| ServeError::Bind {
                    what: "grpc.listen",
                    addr: config.grpc.listen.clone(),
                    source,
                })?;
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            tasks.push(spawn_grpc(router, incoming, shutdown_future(&shutdown_rx)));
            GrpcListen::Unix(path.clone())
        }
    };

    let admin_addr: SocketAddr = parse_listen(&config.admin.listen).expect("validated");
    let listener = TcpListener::bind(admin_addr)
        .await
        .map_err(|source| ServeError::Bind {
            what: "admin.listen",
            addr: config.admin.listen.clone(),
            source,
        })?;
    let admin_bound = listener.local_addr().map_err(ServeError::Serve)?;
    let backend = state.store.kind();
    let active_key = state.keyring.active_key_id().to_owned();
    let stop = shutdown_future(&shutdown_rx);
    tasks.push(tokio::spawn(async move {
        axum::serve(listener, admin::router(state))
            .with_graceful_shutdown(stop)
            .await
            .map_err(ServeError::Serve)
    }));
    let reloader = engine.clone();
    let interval = Duration::from_secs(config.injection.reload_interval_secs);
    let stop = shutdown_future(&shutdown_rx);
    tasks.push(tokio::spawn(async move {
        reloader.reload_periodically(interval, stop).await;
        Ok(())
    }));
    if resolved.backend == crate::store::BackendKind::Postgres {
        let follower = engine.clone();
        let url = resolved.database_url.clone();
        let stop = shutdown_future(&shutdown_rx);
        tasks.push(tokio::spawn(async move {
            follower.follow_changes(url, stop).await;
            Ok(())
        }));
    }
    let grpc_text = match &grpc_bound {
        GrpcListen::Tcp(addr) => addr.to_string(),
        GrpcListen::Unix(path) => format!("unix:{}", path.display()),
    };
    tracing::info!(address = %grpc_text, tls = config.grpc.tls.is_some(), "ext_proc gRPC listening on {grpc_text}");
    tracing::info!(
        address = %admin_bound,
        ?backend,
        active_key = %active_key,
        rules = engine.snapshot().rule_count(),
        "admin API listening on http://{admin_bound}"
    );
    Ok(Running {
        addresses: Addresses {
            admin: admin_bound,
            grpc: grpc_bound,
        },
        engine,
        shutdown,
        tasks,
    })
}

/// Serves the gRPC router on a stream of accepted connections (TCP or Unix) until `stop`.
fn spawn_grpc<I, IO>(
    router: tonic::transport::server::Router,
    incoming: I,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<Result<(), ServeError>>
where
    I: futures_util::Stream<Item = std::io::Result<IO>> + Send + 'static,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
{
    tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, stop)
            .await
            .map_err(|e| ServeError::Serve(std::io::Error::other(e)))
    })
}

fn server_tls(tls: &crate::config::GrpcTlsConfig) -> Result<ServerTlsConfig, BootstrapError> {
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            BootstrapError::Config(crate::config::ConfigError {
                key: key.into(),
                message: format!("cannot read {}: {e}", path.display()),
            })
        })
    };
    let identity = Identity::from_pem(
        read("grpc.tls.cert_file", &tls.cert_file)?,
        read("grpc.tls.key_file", &tls.key_file)?,
    );
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca_file {
        config = config
            .client_ca_root(Certificate::from_pem(read("grpc.tls.client_ca_file", ca)?))
            .client_auth_optional(true);
    }
    Ok(config)
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(config: Config) -> Result<(), ServeError> {
    let running = start(config).await?;
    shutdown_signal().await;
    running.stop().await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
