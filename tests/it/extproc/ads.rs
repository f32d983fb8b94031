//! The sidecar ADS service over real gRPC (Delta xDS), as a sidecar's Envoy calls it: a
//! sidecar gets its own runtime's route table and only the secrets that table injects; every
//! other name is answered as removed; a rotation pushes the one secret; a revoked token
//! withdraws the routes first, then the secrets, then ends the stream.

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::*;

const ROUTES: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const SECRETS: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// One Delta ADS stream, authenticated with a metadata pair.
struct Stream {
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    answers: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Stream {
    async fn open(gw: &Gateway, key: &'static str, value: &str) -> Result<Self, tonic::Status> {
        let mut client = AggregatedDiscoveryServiceClient::connect(gw.grpc_addr())
            .await
            .unwrap();
        let (requests, rx) = mpsc::channel(8);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request.metadata_mut().insert(key, value.parse().unwrap());
        let answers = tokio::time::timeout(
            Duration::from_secs(10),
            client.delta_aggregated_resources(request),
        )
        .await
        .expect("stream headers within 10 s")?
        .into_inner();
        Ok(Self { requests, answers })
    }

    async fn subscribe(&mut self, type_url: &str, names: &[&str]) {
        self.requests
            .send(DeltaDiscoveryRequest {
                type_url: type_url.into(),
                resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn next(&mut self) -> Result<DeltaDiscoveryResponse, tonic::Status> {
        tokio::time::timeout(Duration::from_secs(10), self.answers.message())
            .await
            .expect("an answer within 10 s")
            .map(|m| m.expect("the stream is open"))
    }
}

/// The route table a response carries.
fn table(response: &DeltaDiscoveryResponse) -> RouteConfiguration {
    assert_eq!(response.type_url, ROUTES);
    assert_eq!(
        response.resources.len(),
        1,
        "{:?}",
        response.removed_resources
    );
    let any = response.resources[0].resource.as_ref().unwrap();
    RouteConfiguration::decode(any.value.as_slice()).unwrap()
}

/// The virtual hosts of a table and the names of their routes that inject (`rule:`).
fn injecting(table: &RouteConfiguration) -> Vec<(String, Vec<String>)> {
    table
        .virtual_hosts
        .iter()
        .map(|vh| {
            let routes = vh
                .routes
                .iter()
                .filter(|r| r.name.starts_with("rule:"))
                .map(|r| r.name.clone())
                .collect();
            (vh.domains.join(","), routes)
        })
        .collect()
}

/// Name → value of the generic secrets a response carries.
fn secrets(response: &DeltaDiscoveryResponse) -> Vec<(String, String)> {
    assert_eq!(response.type_url, SECRETS);
    response
        .resources
        .iter()
        .map(|resource| {
            let any = resource.resource.as_ref().unwrap();
            let secret = Secret::decode(any.value.as_slice()).unwrap();
            let Some(secret::Type::GenericSecret(generic)) = secret.r#type else {
                panic!("not a generic secret");
            };
            let Some(Specifier::InlineString(value)) = generic.secret.unwrap().specifier else {
                panic!("not an inline string");
            };
            (secret.name, value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_gets_its_own_routes_and_only_the_secrets_they_inject() {
    let gw = Gateway::start(Backend::Sqlite).await.unwrap();
    gw.secret("openai-api-key", VALUE, 300).await;
    gw.secret("other-key", "sk-OTHER-RUNTIME-77", 300).await;
    gw.secret("uncached", "sk-UNCACHED-11", 0).await;
    let seed = gw.rule("worker", seed_rule()).await;
    let uncached = gw
        .rule(
            "worker",
            json!({"host": "api.uncached.com", "injection": {"credential": "uncached", "header": "x-key"}}),
        )
        .await;
    gw.rule(
        "other",
        json!({"host": "api.other.com", "injection": {"credential": "other-key", "header": "x-key"}}),
    )
    .await;
    let (status, token) = gw
        .api(reqwest::Method::POST, "/v1/runtimes/worker/tokens", None)
        .await;
    assert_eq!(status, 201);
    let token_id = token["id"].as_str().unwrap().to_owned();
    let token = token["token"].as_str().unwrap().to_owned();

    // Only sidecars: the gateway token names no runtime.
    let refused = Stream::open(&gw, "authorization", &format!("Bearer {GATEWAY_TOKEN}")).await;
    assert_eq!(
        refused.err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );

    let mut sidecar = Stream::open(&gw, "x-runta-runtime-token", &token)
        .await
        .unwrap();
    // Another runtime's table is answered as removed; its own is compiled.
    sidecar
        .subscribe(ROUTES, &["runta/other", "runta/worker"])
        .await;
    let refusal = sidecar.next().await.unwrap();
    assert_eq!(
        (refusal.type_url.as_str(), refusal.resources.len()),
        (ROUTES, 0)
    );
    assert_eq!(refusal.removed_resources, ["runta/other"]);
    let first = table(&sidecar.next().await.unwrap());
    assert_eq!(first.name, "runta/worker");
    let hosts = injecting(&first);
    assert!(
        hosts.contains(&("api.openai.com".into(), vec![format!("rule:{seed}")])),
        "{hosts:?}"
    );
    // The uncached secret's rule stays on ext_proc; the other runtime's host is not here.
    assert!(
        hosts.contains(&("api.uncached.com".into(), vec![])),
        "{hosts:?}"
    );
    let uncached_route = first
        .virtual_hosts
        .iter()
        .flat_map(|vh| &vh.routes)
        .any(|r| r.name == format!("extproc:{uncached}"));
    assert!(
        uncached_route,
        "the uncached secret's rule goes to ext_proc"
    );
    assert!(!hosts.iter().any(|(h, _)| h == "api.other.com"));

    // Secrets: only the one its routes inject, with its value.
    sidecar
        .subscribe(
            SECRETS,
            &[
                "runta.secret.openai-api-key",
                "runta.secret.other-key",
                "runta.secret.uncached",
            ],
        )
        .await;
    let given = sidecar.next().await.unwrap();
    assert_eq!(
        secrets(&given),
        [("runta.secret.openai-api-key".to_owned(), VALUE.to_owned())]
    );
    let mut refused = sidecar.next().await.unwrap();
    refused.removed_resources.sort();
    assert_eq!(
        refused.removed_resources,
        ["runta.secret.other-key", "runta.secret.uncached"]
    );

    // A rotation pushes the one secret's new value, and nothing else.
    let (status, _) = gw
        .api(
            reqwest::Method::PUT,
            "/v1/secrets/openai-api-key",
            Some(json!({"value": "sk-ROTATED-2"})),
        )
        .await;
    assert_eq!(status, 200);
    let rotated = sidecar.next().await.unwrap();
    assert_eq!(
        secrets(&rotated),
        [(
            "runta.secret.openai-api-key".to_owned(),
            "sk-ROTATED-2".to_owned()
        )]
    );

    // Revoked: the routes are withdrawn first (everything back to ext_proc, which refuses),
    // then the secrets, then the stream ends.
    let (status, _) = gw
        .api(
            reqwest::Method::DELETE,
            &format!("/v1/runtime-tokens/{token_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let withdrawn = table(&sidecar.next().await.unwrap());
    assert_eq!(injecting(&withdrawn), [("*".to_owned(), vec![])]);
    let removed = sidecar.next().await.unwrap();
    assert_eq!(
        (removed.type_url.as_str(), removed.removed_resources.clone()),
        (SECRETS, vec!["runta.secret.openai-api-key".to_owned()])
    );
    let end = sidecar.next().await.unwrap_err();
    assert_eq!(end.code(), tonic::Code::Unauthenticated);
    gw.stop().await;
}

/// A sidecar on one replica hears the changes made through another (PostgreSQL): a rotation
/// pushes the new value, a rule added pushes a table with its host, a rule deleted one without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_through_another_replica_reach_the_sidecar() {
    let Some(writer) = Gateway::start(Backend::Postgres).await else {
        return;
    };
    writer.secret("openai-api-key", VALUE, 300).await;
    writer.rule("worker", seed_rule()).await;
    let (status, token) = writer
        .api(reqwest::Method::POST, "/v1/runtimes/worker/tokens", None)
        .await;
    assert_eq!(status, 201);
    let token = token["token"].as_str().unwrap().to_owned();
    let follower = writer.replica().await;
    let mut sidecar = Stream::open(&follower, "x-runta-runtime-token", &token)
        .await
        .unwrap();
    sidecar.subscribe(ROUTES, &["runta/worker"]).await;
    let first = table(&sidecar.next().await.unwrap());
    assert!(injecting(&first).iter().any(|(h, _)| h == "api.openai.com"));
    sidecar
        .subscribe(SECRETS, &["runta.secret.openai-api-key"])
        .await;
    assert_eq!(
        secrets(&sidecar.next().await.unwrap()),
        [("runta.secret.openai-api-key".to_owned(), VALUE.to_owned())]
    );

    let (status, _) = writer
        .api(
            reqwest::Method::PUT,
            "/v1/secrets/openai-api-key",
            Some(json!({"value": "sk-ROTATED-ELSEWHERE"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        secrets(&sidecar.next().await.unwrap()),
        [(
            "runta.secret.openai-api-key".to_owned(),
            "sk-ROTATED-ELSEWHERE".to_owned()
        )]
    );
    let added = writer
        .rule(
            "worker",
            json!({"host": "api.added.com", "injection": {"credential": "openai-api-key", "header": "x-key"}}),
        )
        .await;
    let with = table(&sidecar.next().await.unwrap());
    assert!(
        injecting(&with).contains(&("api.added.com".to_owned(), vec![format!("rule:{added}")])),
        "{:?}",
        injecting(&with)
    );
    let (status, _) = writer
        .api(reqwest::Method::DELETE, &format!("/v1/rules/{added}"), None)
        .await;
    assert_eq!(status, 204);
    let without = table(&sidecar.next().await.unwrap());
    assert!(
        !injecting(&without)
            .iter()
            .any(|(h, _)| h == "api.added.com")
    );
    follower.stop().await;
    writer.stop().await;
}
