//! A gRPC load generator for ext_proc servers, speaking to them the way Envoy does: one stream
//! per HTTP request, one request-headers message, one answer, over one HTTP/2 connection.
//!
//! usage: grpc_load ADDRESS CONCURRENCY SECONDS [GATEWAY_TOKEN [TENANT RUNTIME [HOST PATH]]]
//! ADDRESS is HOST:PORT or unix:PATH. Prints one JSON line: requests, rps, p50_us, p99_us, errors.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use tonic::transport::{Channel, Endpoint};

async fn connect(address: &str) -> Channel {
    if let Some(path) = address.strip_prefix("unix:") {
        let path = path.to_owned();
        Endpoint::try_from("http://[::]:50051")
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
            .expect("connect")
    } else {
        Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect")
    }
}

fn message(host: &str, path: &str) -> ProcessingRequest {
    let pairs = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", host),
        (":path", path),
        ("content-type", "application/json"),
        ("user-agent", "grpc_load/1.0"),
    ];
    runta::test_support::request_headers(&pairs)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let address = args.get(1).expect("address").clone();
    let concurrency: usize = args.get(2).and_then(|c| c.parse().ok()).unwrap_or(1);
    let seconds: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
    let token = args.get(4).cloned();
    let sidecar = args
        .get(5)
        .zip(args.get(6))
        .map(|(t, r)| (t.clone(), r.clone()));
    let host = args
        .get(7)
        .cloned()
        .unwrap_or_else(|| "api.openai.com".into());
    let path = args
        .get(8)
        .cloned()
        .unwrap_or_else(|| "/v1/chat/completions".into());
    let channel = connect(&address).await;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let mut client = ExternalProcessorClient::new(channel.clone());
        let (token, sidecar, host, path) =
            (token.clone(), sidecar.clone(), host.clone(), path.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(100_000);
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let mut request =
                    tonic::Request::new(tokio_stream::iter(vec![message(&host, &path)]));
                if let Some(token) = &token {
                    request
                        .metadata_mut()
                        .insert("authorization", format!("Bearer {token}").parse().unwrap());
                }
                if let Some((tenant, runtime)) = &sidecar {
                    request
                        .metadata_mut()
                        .insert("x-runta-tenant", tenant.parse().unwrap());
                    request
                        .metadata_mut()
                        .insert("x-runta-runtime", runtime.parse().unwrap());
                }
                let started = Instant::now();
                let answered = match client.process(request).await {
                    Ok(response) => {
                        // Read to the end: dropping a stream early makes the client reset
                        // it, and h2 clients close the connection after 1,024 such resets.
                        let mut stream = response.into_inner();
                        match stream.message().await {
                            Ok(Some(_)) => matches!(stream.message().await, Ok(None)),
                            other => {
                                if errors == 0 {
                                    eprintln!("first failed answer: {other:?}");
                                }
                                false
                            }
                        }
                    }
                    Err(status) => {
                        if errors == 0 {
                            eprintln!("first failed call: {status:?}");
                        }
                        false
                    }
                };
                if answered {
                    latencies.push(started.elapsed().as_micros() as u32);
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (latencies, e) = worker.await.unwrap();
        all.extend(latencies);
        errors += e;
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"requests\": {}, \"rps\": {:.0}, \"p50_us\": {}, \"p99_us\": {}, \"errors\": {}}}",
        all.len(),
        all.len() as f64 / seconds as f64,
        pct(0.50),
        pct(0.99),
        errors
    );
}
