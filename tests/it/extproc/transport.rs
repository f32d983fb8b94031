//! The gRPC port itself: health, a Unix socket, many concurrent streams.

use super::*;
use crate::support::backend_tests;

backend_tests!(a_thousand_concurrent_streams,);

async fn a_thousand_concurrent_streams(gw: Gateway) {
    gw.secret("openai-api-key", VALUE, 300).await;
    gw.rule("worker", seed_rule()).await;
    let mut client = gw.client().await;
    let expected = set("authorization", &format!("Bearer {VALUE}"));
    // Warm: this is about a thousand streams at once on the port, not a thousand cache misses
    // (those coalesce into one store read with a deadline under Envoy's message timeout, which a
    // starved 2-core machine can miss; `secret_cache` tests the misses).
    assert_eq!(
        call(&mut client, WORKER, &get("api.openai.com", "/v1/models")).await,
        expected
    );
    let started = Arc::new(tokio::sync::Barrier::new(1000));
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let mut client = client.clone();
        let started = started.clone();
        tasks.push(tokio::spawn(async move {
            started.wait().await;
            call(
                &mut client,
                WORKER,
                &get("api.openai.com", &format!("/v1/models/{i}")),
            )
            .await
        }));
    }
    for task in tasks {
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .unwrap()
                .unwrap(),
            expected
        );
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_service_reports_serving() {
    let gw = Gateway::start(Backend::Sqlite).await.unwrap();
    let channel = Channel::from_shared(gw.grpc_addr())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "envoy.service.ext_proc.v3.ExternalProcessor".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_transport() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("extproc.sock");
    let listen: runta::config::GrpcListen = format!("unix:{}", socket.display()).parse().unwrap();
    let gw = Gateway::start_with(Backend::Sqlite, |c| c.grpc.listen = listen.clone())
        .await
        .unwrap();
    gw.secret("openai-api-key", VALUE, 300).await;
    gw.rule("worker", seed_rule()).await;
    let path = socket.clone();
    let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap();
    let mut client = ExternalProcessorClient::new(channel);
    assert_eq!(
        call(&mut client, WORKER, &get("api.openai.com", "/v1/models")).await,
        set("authorization", &format!("Bearer {VALUE}"))
    );
    gw.stop().await;
    assert!(!socket.exists(), "the socket file is removed on shutdown");
}
