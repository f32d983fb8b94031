//! The SDS service over real gRPC, as Envoy's on-demand certificate selector calls it: Delta
//! xDS, one name per subscription. A leaf only for names the caller's rules cover (a sidecar:
//! its runtime's; a gateway: every rule's), `removed_resources` for every other name, and a
//! stream that follows rule changes.

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::*;

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// One Delta SDS stream, authenticated with a metadata pair.
struct Subscription {
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    answers: tonic::Streaming<DeltaDiscoveryResponse>,
}

impl Subscription {
    /// Opens the stream with a first subscription (as Envoy does: gRPC answers a stream's
    /// headers with its first message) and answers the first response.
    async fn open(
        gw: &Gateway,
        key: &'static str,
        value: &str,
        names: &[&str],
    ) -> Result<(Self, DeltaDiscoveryResponse), tonic::Status> {
        let mut client = SecretDiscoveryServiceClient::connect(gw.grpc_addr())
            .await
            .unwrap();
        let (requests, rx) = mpsc::channel(8);
        requests.send(subscribe(names)).await.unwrap();
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request.metadata_mut().insert(key, value.parse().unwrap());
        let mut subscription = Self {
            requests,
            answers: tokio::time::timeout(Duration::from_secs(10), client.delta_secrets(request))
                .await
                .expect("stream headers within 10 s")?
                .into_inner(),
        };
        let first = subscription.next().await;
        Ok((subscription, first))
    }

    async fn subscribe(&mut self, names: &[&str]) -> DeltaDiscoveryResponse {
        self.requests.send(subscribe(names)).await.unwrap();
        self.next().await
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), self.answers.message())
            .await
            .expect("an answer within 10 s")
            .unwrap()
            .expect("the stream is open")
    }
}

fn subscribe(names: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: SECRET_TYPE.into(),
        resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    }
}

/// The answer to subscribing one name again on an open stream.
async fn answer_for(subscription: &mut Subscription, name: &str) -> DeltaDiscoveryResponse {
    subscription.subscribe(&[name]).await
}

/// The DER of the first certificate of a PEM text.
fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .take_while(|l| !l.is_empty())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

/// The leaf certificate (DER) a response carries.
fn leaf_certificate(response: &DeltaDiscoveryResponse) -> Vec<u8> {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    let any = response.resources[0].resource.as_ref().unwrap();
    let Some(secret::Type::TlsCertificate(tls)) =
        Secret::decode(any.value.as_slice()).unwrap().r#type
    else {
        panic!("not a TLS certificate");
    };
    let Some(Specifier::InlineBytes(chain)) = tls.certificate_chain.unwrap().specifier else {
        panic!("inline bytes");
    };
    pem_der(std::str::from_utf8(&chain).unwrap())
}

/// The names a response sends leaves for (checked to be TLS certificates for that name), and
/// the names it removes.
fn sorted(response: &DeltaDiscoveryResponse) -> (Vec<String>, Vec<String>) {
    let mut leaves: Vec<String> = response
        .resources
        .iter()
        .map(|resource| {
            let any = resource.resource.as_ref().unwrap();
            assert_eq!(any.type_url, SECRET_TYPE);
            let secret = Secret::decode(any.value.as_slice()).unwrap();
            assert_eq!(secret.name, resource.name);
            let Some(secret::Type::TlsCertificate(tls)) = secret.r#type else {
                panic!("not a TLS certificate");
            };
            assert!(tls.certificate_chain.is_some() && tls.private_key.is_some());
            resource.name.clone()
        })
        .collect();
    leaves.sort();
    let mut removed = response.removed_resources.clone();
    removed.sort();
    (leaves, removed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_only_for_the_names_the_callers_rules_cover() {
    let gw = Gateway::start(Backend::Sqlite).await.unwrap();
    gw.secret("openai-api-key", VALUE, 300).await;
    gw.rule("worker", seed_rule()).await;
    gw.rule(
        "other",
        json!({"host": "*.example.com", "injection": {"credential": "openai-api-key", "header": "x-key"}}),
    )
    .await;
    let (status, token) = gw
        .api(reqwest::Method::POST, "/v1/runtimes/worker/tokens", None)
        .await;
    assert_eq!(status, 201);
    let token = token["token"].as_str().unwrap().to_owned();

    // A sidecar of `worker`: its own rule's host only.
    let (mut sidecar, answer) = Subscription::open(
        &gw,
        "x-runta-runtime-token",
        &token,
        &[
            "api.openai.com",
            "a.example.com",
            "api.other.com",
            "runta-no-sni",
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        sorted(&answer),
        (
            vec!["api.openai.com".into()],
            vec![
                "a.example.com".into(),
                "api.other.com".into(),
                "runta-no-sni".into()
            ]
        )
    );
    // The gateway: every rule's host, the wildcard's names included (never the wildcard).
    let (mut gateway, first) = Subscription::open(
        &gw,
        "authorization",
        &format!("Bearer {GATEWAY_TOKEN}"),
        &["api.openai.com"],
    )
    .await
    .unwrap();
    assert_eq!(sorted(&first), (vec!["api.openai.com".into()], vec![]));
    // More names on the open stream, one of them again: each answered.
    let answer = gateway
        .subscribe(&[
            "api.openai.com",
            "a.example.com",
            "example.com",
            "*.example.com",
        ])
        .await;
    assert_eq!(
        sorted(&answer),
        (
            vec!["a.example.com".into(), "api.openai.com".into()],
            vec!["*.example.com".into(), "example.com".into()]
        )
    );
    // No credential, no stream.
    let refused = Subscription::open(&gw, "x-other", "x", &["api.openai.com"])
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // Rules change: a name a new rule covers is sent on the open stream, a name whose rule
    // is deleted is removed.
    let id = gw
        .rule(
            "worker",
            json!({"host": "api.other.com", "injection": {"credential": "openai-api-key", "header": "x-key"}}),
        )
        .await;
    assert_eq!(
        sorted(&sidecar.next().await),
        (vec!["api.other.com".into()], vec![])
    );
    let (status, _) = gw
        .api(reqwest::Method::DELETE, &format!("/v1/rules/{id}"), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        sorted(&sidecar.next().await),
        (vec![], vec!["api.other.com".into()])
    );
    // The served CA is the one the leaves chain to, and it is all that is served.
    let ca_pem = gw
        .http
        .get(format!("{}/v1/ca.pem", gw.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(ca_pem.matches("-----BEGIN").count(), 1, "{ca_pem}");
    assert!(!ca_pem.contains("PRIVATE"));
    let again = answer_for(&mut gateway, "api.openai.com").await;
    let leaf = leaf_certificate(&again);
    let ca_der = pem_der(&ca_pem);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    leaf.verify_signature(Some(ca.public_key()))
        .expect("the leaf is signed by the served CA");
    // Revoking the sidecar's token ends its stream: no leaf is minted for it any more.
    let (status, tokens) = gw
        .api(reqwest::Method::GET, "/v1/runtimes/worker/tokens", None)
        .await;
    assert_eq!(status, 200);
    let id = tokens["data"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = gw
        .api(
            reqwest::Method::DELETE,
            &format!("/v1/runtime-tokens/{id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let ended = tokio::time::timeout(Duration::from_secs(10), sidecar.answers.message())
        .await
        .expect("the stream ends within 10 s");
    assert_eq!(ended.unwrap_err().code(), tonic::Code::Unauthenticated);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_ca_every_name_is_refused_and_no_ca_is_served() {
    // PostgreSQL generates no CA: interception is off until one is configured.
    let Some(gw) = Gateway::start(Backend::Postgres).await else {
        return;
    };
    gw.secret("openai-api-key", VALUE, 300).await;
    gw.rule("worker", seed_rule()).await;
    let (_gateway, answer) = Subscription::open(
        &gw,
        "authorization",
        &format!("Bearer {GATEWAY_TOKEN}"),
        &["api.openai.com"],
    )
    .await
    .unwrap();
    assert_eq!(sorted(&answer), (vec![], vec!["api.openai.com".into()]));
    let response = gw
        .http
        .get(format!("{}/v1/ca.pem", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "interception_disabled");
    // And a tunnel to a covered host is refused rather than passed through uninjected.
    let mut client = gw.client().await;
    let connect = [
        (":method".to_owned(), "CONNECT".to_owned()),
        (":authority".to_owned(), "api.openai.com:443".to_owned()),
    ];
    let Outcome::Immediate { status, body, .. } = call(&mut client, WORKER, &connect).await else {
        panic!("a tunnel to a covered host without a CA must be refused");
    };
    assert_eq!(status, 503);
    assert!(body.contains("interception is not configured"), "{body}");
    gw.stop().await;
}

/// The answer to a CONNECT routes it: `intercept` where the runtime's rules cover the target,
/// `tunnel` elsewhere, always overwriting the client's own header, with the route cache
/// cleared so that Envoy routes by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_is_routed_by_runtas_answer() {
    use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Answer;
    let gw = Gateway::start(Backend::Sqlite).await.unwrap();
    gw.secret("openai-api-key", VALUE, 300).await;
    gw.rule("worker", seed_rule()).await;
    let mut client = gw.client().await;
    for (target, route) in [
        ("api.openai.com:443", "intercept"),
        ("api.other.com:443", "tunnel"),
    ] {
        let message = headers(&[
            (":method", "CONNECT"),
            (":authority", target),
            ("x-runta-connect", "intercept"),
        ]);
        let answer = process(&mut client, WORKER, message)
            .await
            .unwrap()
            .unwrap();
        let Some(Answer::RequestHeaders(headers)) = answer.response.clone() else {
            panic!("{answer:?}");
        };
        assert!(headers.response.unwrap().clear_route_cache, "{target}");
        let Outcome::Continue(mutation) = outcome(answer) else {
            unreachable!()
        };
        assert_eq!(
            mutation.set,
            [("x-runta-connect".to_owned(), route.to_owned())],
            "{target}"
        );
    }
    gw.stop().await;
}
