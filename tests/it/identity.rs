//! Who may speak for which runtime on the gRPC port, from the attacker's side: a sidecar
//! holding runtime A's token tries every piece of metadata and every proxy credential it could
//! send to get runtime B's or tenant B's secret; a gateway that is not trusted to name
//! identities tries to name one.

use base64::Engine as _;
use reqwest::Method;
use serde_json::{Value, json};

use crate::extproc::{Caller, GATEWAY_TOKEN, Gateway, Outcome, call, get, headers, process};
use crate::support::Backend;

const OPERATOR: &str = "runta_op_test-operator";
const VALUE_A: &str = "sk-test-IDENT-A-41f0";
const VALUE_B: &str = "sk-test-IDENT-B-77c1";
const VALUE_U: &str = "sk-test-IDENT-U-0d3e";

fn rule(credential: &str) -> Value {
    json!({"host": "api.openai.com", "injection": {"credential": credential, "header": "Authorization", "value": "Bearer ${credential}"}})
}

async fn runtime_token(gw: &Gateway, key: &str, runtime: &str) -> (String, String) {
    let (status, created) = gw
        .api_as(
            key,
            Method::POST,
            &format!("/v1/runtimes/{runtime}/tokens"),
            None,
        )
        .await;
    assert_eq!(status, 201, "{created}");
    (
        created["id"].as_str().unwrap().to_owned(),
        created["token"].as_str().unwrap().to_owned(),
    )
}

/// Tenant acme: runtimes `worker` (secret A) and `other` (secret B); tenant umbrella: its own
/// `worker` (secret U); all for the same host. Answers the tokens of acme/worker,
/// acme/other and umbrella/worker, and acme/worker's token id.
async fn two_tenants(gw: &Gateway) -> (String, String, String, String) {
    gw.secret("a-key", VALUE_A, 300).await;
    gw.secret("b-key", VALUE_B, 300).await;
    gw.rule("worker", rule("a-key")).await;
    gw.rule("other", rule("b-key")).await;
    let (status, umbrella) = gw
        .api_as(
            OPERATOR,
            Method::POST,
            "/v1/tenants",
            Some(json!({"name": "umbrella"})),
        )
        .await;
    assert_eq!(status, 201, "{umbrella}");
    let umbrella_key = umbrella["api_key"].as_str().unwrap().to_owned();
    let (status, body) = gw
        .api_as(
            &umbrella_key,
            Method::POST,
            "/v1/secrets",
            Some(json!({"name": "u-key", "value": VALUE_U})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = gw
        .api_as(
            &umbrella_key,
            Method::POST,
            "/v1/runtimes/worker/rules",
            Some(rule("u-key")),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (a_id, a) = runtime_token(gw, &gw.key, "worker").await;
    let (_, b) = runtime_token(gw, &gw.key, "other").await;
    let (_, u) = runtime_token(gw, &umbrella_key, "worker").await;
    (a, b, u, a_id)
}

fn injected(value: &str) -> String {
    format!("Bearer {value}")
}

/// The `authorization` a continue answer sets, if any.
fn authorization(outcome: &Outcome) -> Option<&str> {
    match outcome {
        Outcome::Continue(m) => m
            .set
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.as_str()),
        Outcome::Immediate { .. } => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_token_speaks_for_its_own_runtime_only() {
    let gw = Gateway::start(Backend::Sqlite).await.unwrap();
    let (a, b, u, a_id) = two_tenants(&gw).await;
    let mut client = gw.client().await;
    let request = get("api.openai.com", "/v1/models");
    let as_a = |sidecar, gateway_token| Caller {
        gateway_token,
        sidecar,
        runtime_token: Some(a.as_str()),
    };

    // Its own runtime: injected, with nothing else in the metadata.
    let own = call(&mut client, as_a(None, None), &request).await;
    assert_eq!(authorization(&own), Some(injected(VALUE_A).as_str()));

    // Naming another runtime, another tenant, or both, is refused before any request is
    // answered; so is naming one while also holding the trusted gateway's token.
    let pairs: Vec<(&str, &str)> = request
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (names, gateway) in [
        (("acme", "other"), None),
        (("umbrella", "worker"), None),
        (("umbrella", "other"), None),
        (("acme", "other"), Some(GATEWAY_TOKEN)),
    ] {
        let err = process(&mut client, as_a(Some(names), gateway), headers(&pairs))
            .await
            .expect_err("another runtime's names were accepted");
        assert_eq!(
            err.code(),
            tonic::Code::PermissionDenied,
            "{names:?}: {err:?}"
        );
    }
    // Naming itself is fine.
    let named = call(&mut client, as_a(Some(("acme", "worker")), None), &request).await;
    assert_eq!(authorization(&named), Some(injected(VALUE_A).as_str()));

    // Another runtime's token as proxy credentials does not change who the stream is; the
    // credentials are removed.
    for other in [&b, &u] {
        let mut with_proxy = request.clone();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{other}:x"));
        with_proxy.push(("proxy-authorization".into(), format!("Basic {basic}")));
        let outcome = call(&mut client, as_a(None, None), &with_proxy).await;
        assert_eq!(authorization(&outcome), Some(injected(VALUE_A).as_str()));
        let Outcome::Continue(mutation) = &outcome else {
            panic!("{outcome:?}")
        };
        assert_eq!(mutation.removed, ["proxy-authorization"]);
    }

    // An unknown token, and the token once revoked: UNAUTHENTICATED.
    for token in ["runta_rt_unknown", ""] {
        let caller = Caller {
            gateway_token: None,
            sidecar: None,
            runtime_token: Some(token),
        };
        let err = process(&mut client, caller, headers(&pairs))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{token:?}");
    }
    let (status, _) = gw
        .api(Method::DELETE, &format!("/v1/runtime-tokens/{a_id}"), None)
        .await;
    assert_eq!(status, 204);
    let err = process(&mut client, as_a(None, None), headers(&pairs))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_trusted_gateways_may_name_a_runtime() {
    // The test gateway's token, but not listed in grpc.identity_gateways.
    let gw = Gateway::start_with(Backend::Sqlite, |c| c.grpc.identity_gateways.clear())
        .await
        .unwrap();
    let (a, _, _, _) = two_tenants(&gw).await;
    let mut client = gw.client().await;
    let request = get("api.openai.com", "/v1/models");
    let pairs: Vec<(&str, &str)> = request
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for names in [("acme", "worker"), ("umbrella", "worker")] {
        let caller = Caller {
            gateway_token: Some(GATEWAY_TOKEN),
            sidecar: Some(names),
            runtime_token: None,
        };
        let err = process(&mut client, caller, headers(&pairs))
            .await
            .expect_err("an untrusted gateway named a runtime");
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{names:?}");
        assert!(err.message().contains("identity_gateways"), "{err:?}");
    }
    // The same gateway identifies runtimes by their tokens, as the shared gateway does.
    let mut with_proxy = request.clone();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{a}:x"));
    with_proxy.push(("proxy-authorization".into(), format!("Basic {basic}")));
    let caller = Caller {
        gateway_token: Some(GATEWAY_TOKEN),
        sidecar: None,
        runtime_token: None,
    };
    let outcome = call(&mut client, caller, &with_proxy).await;
    assert_eq!(authorization(&outcome), Some(injected(VALUE_A).as_str()));
    gw.stop().await;
}

/// The embedded default's generated gateway token is not trusted to name runtimes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_gateway_token_cannot_name_runtimes() {
    use crate::cli::{Server, ok};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    ok(&server.shell(&format!(
        "V='{VALUE_A}' runta secret add a-key --value-env V"
    )));
    ok(&server.shell(
        "runta secret rule add worker --host api.openai.com --credential a-key --inject-header Authorization",
    ));
    let token = std::fs::read_to_string(dir.path().join("runta-data/gateway-token")).unwrap();
    let mut client = envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient::connect(
        format!("http://{}", server.grpc_addr()),
    )
    .await
    .unwrap();
    let request = get("api.openai.com", "/v1/models");
    let pairs: Vec<(&str, &str)> = request
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let caller = Caller {
        gateway_token: Some(token.trim()),
        sidecar: Some(("default", "worker")),
        runtime_token: None,
    };
    let err = process(&mut client, caller, headers(&pairs))
        .await
        .expect_err("the generated gateway token named a runtime");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let log = server.stop();
    assert!(!log.contains("IDENT-A"), "a value reached the log");
}
