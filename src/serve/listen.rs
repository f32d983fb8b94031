//! Binding the ports: the gRPC port on TCP or a Unix socket (with TLS and client certificates
//! when configured) and the admin port on TCP. Each answers where it is bound and the future
//! that serves it until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use futures_util::StreamExt as _;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use super::ServeError;
use crate::admin::{self, AppState};
use crate::bootstrap::BootstrapError;
use crate::config::{Config, ConfigError, GrpcListen, GrpcTlsConfig};
use crate::grpc::GrpcPort;

pub(super) type Serving = Pin<Box<dyn Future<Output = Result<(), ServeError>> + Send>>;

/// A bound port and the future that serves it.
pub(super) struct Listening<A> {
    pub bound: A,
    pub serve: Serving,
}

/// The gRPC server builder: stream limits and TLS as configured.
pub(super) fn grpc_builder(config: &Config) -> Result<Server, ServeError> {
    let mut builder =
        Server::builder().max_concurrent_streams(Some(config.grpc.max_concurrent_streams));
    if let Some(tls) = &config.grpc.tls {
        builder = builder.tls_config(server_tls(tls)?).map_err(|e| {
            BootstrapError::Config(ConfigError {
                key: "grpc.tls".into(),
                message: e.to_string(),
            })
        })?;
    }
    Ok(builder)
}

/// Binds the gRPC port (`grpc.listen`: TCP or `unix:PATH`).
pub(super) async fn grpc(
    config: &Config,
    port: GrpcPort,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<Listening<GrpcListen>, ServeError> {
    let bind_error = |source| ServeError::Bind {
        what: "grpc.listen",
        addr: config.grpc.listen.to_string(),
        source,
    };
    let router = port.into_router();
    let serve_error = |e: tonic::transport::Error| ServeError::Serve {
        task: "gRPC server",
        source: std::io::Error::other(e),
    };
    match &config.grpc.listen {
        GrpcListen::Tcp(addr) => {
            let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
            let bound = listener.local_addr().map_err(bind_error)?;
            // Nagle's algorithm would hold small answers back for a delayed ACK (~40 ms):
            // every accepted connection gets TCP_NODELAY.
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|stream| {
                let stream = stream?;
                stream.set_nodelay(true)?;
                Ok::<_, std::io::Error>(stream)
            });
            Ok(Listening {
                bound: GrpcListen::Tcp(bound),
                serve: Box::pin(async move {
                    router
                        .serve_with_incoming_shutdown(incoming, stop)
                        .await
                        .map_err(serve_error)
                }),
            })
        }
        GrpcListen::Unix(path) => {
            if path.exists() {
                std::fs::remove_file(path).map_err(bind_error)?;
            }
            let listener = tokio::net::UnixListener::bind(path).map_err(bind_error)?;
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            Ok(Listening {
                bound: GrpcListen::Unix(path.clone()),
                serve: Box::pin(async move {
                    router
                        .serve_with_incoming_shutdown(incoming, stop)
                        .await
                        .map_err(serve_error)
                }),
            })
        }
    }
}

/// Binds the admin port (`admin.listen`).
pub(super) fn admin(
    config: &Config,
    state: AppState,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<Listening<SocketAddr>, ServeError> {
    let bind_error = |source| ServeError::Bind {
        what: "admin.listen",
        addr: config.admin.listen.to_string(),
        source,
    };
    // Bound here, registered with the runtime that serves it (the control plane's, see
    // `control`) when it first runs.
    let listener = std::net::TcpListener::bind(config.admin.listen).map_err(bind_error)?;
    listener.set_nonblocking(true).map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok(Listening {
        bound,
        serve: Box::pin(async move {
            let listener = TcpListener::from_std(listener).map_err(|source| ServeError::Serve {
                task: "admin server",
                source,
            })?;
            axum::serve(listener, admin::router(state))
                .with_graceful_shutdown(stop)
                .await
                .map_err(|source| ServeError::Serve {
                    task: "admin server",
                    source,
                })
        }),
    })
}

fn server_tls(tls: &GrpcTlsConfig) -> Result<ServerTlsConfig, BootstrapError> {
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            BootstrapError::Config(ConfigError {
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
