//! `runta serve`: start-up in a fixed order (configuration validated, keys and files resolved,
//! database migrated, default tenant ensured, rule snapshot loaded, then the gRPC and admin
//! ports bound), serving until SIGINT/SIGTERM, then a graceful shutdown of everything.
//!
//! The parts: `wire` builds the shared state and the services from the configuration,
//! `listen` binds the ports (TCP or a Unix socket, TLS), and [`Running`] owns every task —
//! the two servers, the periodic reload, the secret cache sweep and the PostgreSQL change
//! follower — in one `JoinSet`; the admin server, the reload and the sweep run on the control
//! plane's niced runtime (`control`). A task that ends before shutdown was asked for is a
//! failure: the server stops every other task and exits non-zero rather than serve a stale
//! snapshot until SIGTERM.

pub mod audit_stream;
mod control;
mod listen;
mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::bootstrap::BootstrapError;
use crate::config::{Config, GrpcListen, LogFormat};
use crate::engine::Engine;
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
    #[error("{task}: {source}")]
    Serve {
        task: &'static str,
        source: std::io::Error,
    },
    /// A task that must run for as long as the server ended on its own.
    #[error("{task} stopped unexpectedly{}; the server stops rather than run without it", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    TaskStopped {
        task: &'static str,
        detail: Option<String>,
    },
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

/// What one task answered when it ended: its name and its result.
type TaskExit = (&'static str, Result<(), ServeError>);

/// A started server: its addresses, its tasks and the handle that stops them.
pub struct Running {
    pub addresses: Addresses,
    pub engine: Arc<Engine>,
    grpc_services: Vec<&'static str>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<TaskExit>,
    /// The control plane's threads, stopped when the server is dropped.
    _control: control::ControlRuntime,
}

impl Running {
    /// The full names of the services on the gRPC port.
    pub fn grpc_services(&self) -> &[&'static str] {
        &self.grpc_services
    }

    /// Waits until a task ends on its own (none should before shutdown): the error to stop
    /// with.
    pub async fn failed(&mut self) -> ServeError {
        match self.tasks.join_next().await {
            Some(exit) => stopped(exit),
            None => ServeError::TaskStopped {
                task: "every task",
                detail: None,
            },
        }
    }

    /// Stops every task gracefully and waits for them; the first error any of them had.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        let _ = self.shutdown.send(true);
        let mut result = Ok(());
        while let Some(exit) = self.tasks.join_next().await {
            match exit {
                Ok((_, Ok(()))) => {}
                Ok((_, Err(err))) => result = result.and(Err(err)),
                Err(join) => result = result.and(Err(stopped(Err(join)))),
            }
        }
        if let GrpcListen::Unix(path) = &self.addresses.grpc {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!("stopped");
        result
    }
}

/// The error for a task that ended before shutdown.
fn stopped(exit: Result<TaskExit, tokio::task::JoinError>) -> ServeError {
    match exit {
        Ok((_, Err(err))) => err,
        Ok((task, Ok(()))) => ServeError::TaskStopped { task, detail: None },
        Err(join) => ServeError::TaskStopped {
            task: "a task",
            detail: Some(if join.is_panic() {
                "it panicked".to_owned()
            } else {
                join.to_string()
            }),
        },
    }
}

/// A future that completes when shutdown is asked for.
pub(crate) fn shutdown_future(
    rx: &watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

/// Starts the server: everything resolved and loaded, then both ports bound and every task
/// spawned.
pub async fn start(config: Config) -> Result<Running, ServeError> {
    let (shutdown, shutdown_rx) = watch::channel(false);
    // Long-lived streams (SDS) end on shutdown too: the gRPC server waits for them.
    let wired = wire::wire(&config, shutdown_rx.clone()).await?;
    let mut tasks: JoinSet<TaskExit> = JoinSet::new();

    let control = control::ControlRuntime::start(config.admin.thread_nice).map_err(|source| {
        ServeError::Serve {
            task: "the control plane's runtime",
            source,
        }
    })?;
    // The engine's snapshot thread (batches compiled, replaced snapshots freed) is started by
    // a control-plane thread, so that it runs at the control plane's priority.
    let engine = wired.engine.clone();
    control
        .spawn(async move { engine.start_snapshot_thread() })
        .await
        .map_err(|join| ServeError::Serve {
            task: "the control plane's runtime",
            source: std::io::Error::other(join.to_string()),
        })?;
    // What the control plane runs (the admin API, the periodic reload, the sweep) runs on its
    // threads; `tasks` watches it as it watches the gRPC server.
    let mut on_control = |task: &'static str, run: listen::Serving| {
        let running = control.spawn(run);
        tasks.spawn(async move {
            match running.await {
                Ok(result) => (task, result),
                Err(join) => (task, Err(stopped(Err(join)))),
            }
        });
    };

    let grpc_services = wired.grpc.service_names().to_vec();
    let grpc = listen::grpc(&config, wired.grpc, shutdown_future(&shutdown_rx)).await?;
    let admin = listen::admin(&config, wired.admin, shutdown_future(&shutdown_rx))?;
    on_control("admin server", admin.serve);

    let reloader = wired.engine.clone();
    let interval = Duration::from_secs(config.injection.reload_interval_secs);
    let stop = shutdown_future(&shutdown_rx);
    on_control(
        "periodic reload",
        Box::pin(async move {
            reloader.reload_periodically(interval, stop).await;
            Ok(())
        }),
    );
    let sweeper = wired.engine.clone();
    let stop = shutdown_future(&shutdown_rx);
    on_control(
        "secret cache sweep",
        Box::pin(async move {
            sweeper.evict_expired_secrets(stop).await;
            Ok(())
        }),
    );
    tasks.spawn(async move { ("gRPC server", grpc.serve.await) });
    // Other replicas' changes are applied at the data path's priority: they are what keeps
    // this replica's decisions right.
    if let Some(url) = wired.follow {
        let follower = wired.engine.clone();
        let stop = shutdown_future(&shutdown_rx);
        tasks.spawn(async move {
            follower.follow_changes(url, stop).await;
            ("change follower", Ok(()))
        });
    }

    let grpc_text = match &grpc.bound {
        GrpcListen::Tcp(addr) => addr.to_string(),
        GrpcListen::Unix(path) => format!("unix:{}", path.display()),
    };
    tracing::info!(address = %grpc_text, tls = config.grpc.tls.is_some(), services = ?grpc_services, "ext_proc gRPC listening on {grpc_text}");
    tracing::info!(
        address = %admin.bound,
        backend = ?wired.backend,
        active_key = %wired.active_key,
        rules = wired.engine.snapshot().rule_count(),
        "admin API listening on http://{}", admin.bound
    );
    Ok(Running {
        addresses: Addresses {
            admin: admin.bound,
            grpc: grpc.bound,
        },
        engine: wired.engine,
        grpc_services,
        shutdown,
        tasks,
        _control: control,
    })
}

/// Runs the server until SIGINT or SIGTERM, or until one of its tasks fails.
pub async fn run(config: Config) -> Result<(), ServeError> {
    let mut running = start(config).await?;
    let failure = tokio::select! {
        () = shutdown_signal() => None,
        err = running.failed() => Some(err),
    };
    match failure {
        None => running.stop().await,
        Some(err) => {
            tracing::error!(error = %err, "a server task failed; stopping");
            let _ = running.stop().await;
            Err(err)
        }
    }
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
