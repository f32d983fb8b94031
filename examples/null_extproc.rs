//! The floor of the ext_proc protocol for benchmarks: an ext_proc server on the same tonic
//! stack as runta that answers every message "continue" and does nothing else (no identity, no
//! rules, no secrets, no logging).
//!
//! usage: null_extproc ADDRESS      (HOST:PORT or unix:PATH; prints "listening" when ready)

use std::pin::Pin;

use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use futures_util::{Stream, StreamExt};
use runta::extproc::mutation::continue_other;
use tonic::{Request, Response, Status, Streaming};

struct Null;

#[tonic::async_trait]
impl ExternalProcessor for Null {
    type ProcessStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let stream = request.into_inner().filter_map(|message| async move {
            let message = message.ok()?;
            let request = message.request.as_ref()?;
            (!message.observability_mode).then(|| Ok(continue_other(request)))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tokio::main]
async fn main() {
    let address = std::env::args()
        .nth(1)
        .expect("usage: null_extproc HOST:PORT|unix:PATH");
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(4096))
        .add_service(ExternalProcessorServer::new(Null));
    if let Some(path) = address.strip_prefix("unix:") {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path).expect("bind the socket");
        println!("listening");
        server
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await
            .expect("serve");
    } else {
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .expect("bind the port");
        println!("listening");
        server
            .serve_with_incoming(
                tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
                    let s = s?;
                    s.set_nodelay(true)?;
                    Ok::<_, std::io::Error>(s)
                }),
            )
            .await
            .expect("serve");
    }
}
