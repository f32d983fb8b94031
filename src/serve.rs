//! `runta serve`: start-up in a fixed order (configuration validated, keys and files resolved,
//! database migrated, default tenant ensured, then ports bound), serving until SIGINT/SIGTERM,
//! then a graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::admin::{self, AppState};
use crate::bootstrap::{self, BootstrapError};
use crate::config::{Config, LogFormat, parse_listen};
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

/// Opens the store and brings its schema up to date.
pub async fn open_store(
    config: &Config,
    resolved: &bootstrap::Resolved,
) -> Result<Store, BootstrapError> {
    let store = Store::connect(
        resolved.database_url.expose_secret(),
        config.database.max_connections,
    )
    .await?;
    let applied = store.migrate().await?;
    if applied > 0 {
        tracing::info!(applied, backend = ?store.kind(), "database migrations applied");
    }
    Ok(store)
}

/// Runs the server until a shutdown signal.
pub async fn run(config: Config) -> Result<(), ServeError> {
    let resolved = bootstrap::resolve(&config)?;
    let store = open_store(&config, &resolved).await?;
    if resolved.embedded {
        bootstrap::ensure_default_tenant(&store, &config.data_dir).await?;
    }
    if resolved.operator_token.is_none() {
        tracing::warn!(
            "no operator token configured (admin.operator_token): tenant management is disabled"
        );
    }
    let state = AppState {
        store,
        keyring: Arc::new(resolved.keyring),
        operator_token: resolved.operator_token.map(Arc::new),
        metrics: Arc::new(Metrics::new()),
        max_body_bytes: config.admin.max_body_bytes,
    };
    let admin_addr: SocketAddr = parse_listen(&config.admin.listen).expect("validated");
    let listener = TcpListener::bind(admin_addr)
        .await
        .map_err(|source| ServeError::Bind {
            what: "admin.listen",
            addr: config.admin.listen.clone(),
            source,
        })?;
    let bound = listener.local_addr().map_err(ServeError::Serve)?;
    tracing::info!(
        address = %bound,
        backend = ?state.store.kind(),
        active_key = state.keyring.active_key_id(),
        "admin API listening on http://{bound}"
    );
    axum::serve(listener, admin::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(ServeError::Serve)?;
    tracing::info!("stopped");
    Ok(())
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
