//! The ext_proc service over real gRPC: a served `runta` (in process, both listeners on free
//! ports, a real database) driven by a tonic client the way Envoy drives it, and changed
//! through its real admin API over HTTP.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Message;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Answer;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, ProcessingRequest, ProcessingResponse,
};
use runta::config::{Config, KeyConfig};
use runta::crypto::{Keyring, MasterKey, SealContext};
use runta::serve::{self, Running};
use secrecy::SecretString;
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::support::{Backend, TestDb};

pub const GATEWAY_TOKEN: &str = "runta_gw_test-gateway-token";
const OPERATOR: &str = "runta_op_test-operator";
const VALUE: &str = "sk-test-EXTPROC-1b2c";

/// A served runta with a tenant `acme` and an API key for it.
pub struct Gateway {
    pub running: Option<Running>,
    pub http: reqwest::Client,
    pub admin: String,
    pub key: String,
    pub key_text: String,
    pub db: TestDb,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub async fn start(backend: Backend) -> Option<Self> {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Option<Self> {
        let (db, url) = TestDb::create(backend).await?;
        let dir = tempfile::tempdir().unwrap();
        let key_text = MasterKey::generate().to_base64().to_string();
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        config.database.url = Some(SecretString::from(url));
        config.admin.listen = "127.0.0.1:0".parse().unwrap();
        config.admin.operator_token = Some(SecretString::from(OPERATOR));
        config.grpc.listen = "127.0.0.1:0".parse().unwrap();
        // The test gateway may name tenants and runtimes, as a trusted edge gateway would.
        config.grpc.gateways = vec![runta::config::NamedGateway {
            name: "test-gateway".into(),
            token: Some(SecretString::from(GATEWAY_TOKEN)),
            token_file: None,
        }];
        config.grpc.identity_gateways = vec!["test-gateway".into(), "gateway".into()];
        config.encryption.keys = vec![KeyConfig {
            id: "k1".into(),
            key: Some(SecretString::from(key_text.clone())),
            key_file: None,
        }];
        adjust(&mut config);
        config.validate().unwrap();
        let running = serve::start(config).await.expect("runta starts");
        let admin = format!("http://{}", running.addresses.admin);
        let http = reqwest::Client::new();
        let created: Value = http
            .post(format!("{admin}/v1/tenants"))
            .bearer_auth(OPERATOR)
            .json(&json!({"name": "acme"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let key = created["api_key"].as_str().unwrap().to_owned();
        Some(Self {
            running: Some(running),
            http,
            admin,
            key,
            key_text,
            db,
            _dir: dir,
        })
    }

    /// Another replica on the same (PostgreSQL) database and key, whose periodic reload never
    /// fires during a test: only change notifications can keep it current.
    pub async fn replica(&self) -> Self {
        let url = self
            .db
            .postgres_url()
            .expect("replicas share a PostgreSQL database")
            .to_owned();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        config.database.url = Some(SecretString::from(url.clone()));
        config.admin.listen = "127.0.0.1:0".parse().unwrap();
        config.admin.operator_token = Some(SecretString::from(OPERATOR));
        config.grpc.listen = "127.0.0.1:0".parse().unwrap();
        // The test gateway may name tenants and runtimes, as a trusted edge gateway would.
        config.grpc.gateways = vec![runta::config::NamedGateway {
            name: "test-gateway".into(),
            token: Some(SecretString::from(GATEWAY_TOKEN)),
            token_file: None,
        }];
        config.grpc.identity_gateways = vec!["test-gateway".into(), "gateway".into()];
        config.injection.reload_interval_secs = 3600;
        config.encryption.keys = vec![KeyConfig {
            id: "k1".into(),
            key: Some(SecretString::from(self.key_text.clone())),
            key_file: None,
        }];
        let running = serve::start(config).await.expect("the replica starts");
        let admin = format!("http://{}", running.addresses.admin);
        Self {
            running: Some(running),
            http: reqwest::Client::new(),
            admin,
            key: self.key.clone(),
            key_text: self.key_text.clone(),
            db: TestDb::Postgres { url },
            _dir: dir,
        }
    }

    pub fn grpc_addr(&self) -> String {
        match &self.running.as_ref().unwrap().addresses.grpc {
            runta::config::GrpcListen::Tcp(addr) => format!("http://{addr}"),
            runta::config::GrpcListen::Unix(path) => panic!("unix socket {}", path.display()),
        }
    }

    pub async fn client(&self) -> ExternalProcessorClient<Channel> {
        ExternalProcessorClient::connect(self.grpc_addr())
            .await
            .unwrap()
    }

    /// An admin call with the tenant's key (or another); answers status and JSON.
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.api_as(&self.key, method, path, body).await
    }

    pub async fn api_as(
        &self,
        key: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.admin))
            .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn secret(&self, name: &str, value: &str, ttl: i64) {
        let (status, body) = self
            .api(
                reqwest::Method::POST,
                "/v1/secrets",
                Some(json!({"name": name, "value": value, "cache_ttl_secs": ttl})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    pub async fn rule(&self, runtime: &str, body: Value) -> String {
        let (status, rule) = self
            .api(
                reqwest::Method::POST,
                &format!("/v1/runtimes/{runtime}/rules"),
                Some(body),
            )
            .await;
        assert_eq!(status, 201, "{rule}");
        rule["id"].as_str().unwrap().to_owned()
    }

    pub fn keyring(&self) -> Keyring {
        Keyring::new(
            [(
                "k1".to_owned(),
                MasterKey::from_base64("k1", &self.key_text).unwrap(),
            )],
            "k1",
        )
        .unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
    }
}

/// Request headers as Envoy sends them: values in `raw_value`.
pub fn headers(pairs: &[(&str, &str)]) -> ProcessingRequest {
    runta::test_support::request_headers(pairs)
}

pub fn get(authority: &str, path: &str) -> Vec<(String, String)> {
    vec![
        (":method".into(), "GET".into()),
        (":scheme".into(), "http".into()),
        (":authority".into(), authority.into()),
        (":path".into(), path.into()),
        ("user-agent".into(), "test".into()),
    ]
}

/// How a call presents itself.
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    pub gateway_token: Option<&'a str>,
    /// Names the tenant and runtime in the stream's metadata (trusted gateways only).
    pub sidecar: Option<(&'a str, &'a str)>,
    /// A sidecar's runtime token (`x-runta-runtime-token`).
    pub runtime_token: Option<&'a str>,
}

pub const WORKER: Caller<'static> = Caller {
    gateway_token: Some(GATEWAY_TOKEN),
    runtime_token: None,
    sidecar: Some(("acme", "worker")),
};
pub const EDGE: Caller<'static> = Caller {
    gateway_token: Some(GATEWAY_TOKEN),
    runtime_token: None,
    sidecar: None,
};

/// One request through one stream; answers Envoy's view of the response.
pub async fn process(
    client: &mut ExternalProcessorClient<Channel>,
    caller: Caller<'_>,
    message: ProcessingRequest,
) -> Result<Option<ProcessingResponse>, tonic::Status> {
    let mut request = tonic::Request::new(tokio_stream::iter(vec![message]));
    if let Some(token) = caller.gateway_token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    if let Some(token) = caller.runtime_token {
        request
            .metadata_mut()
            .insert("x-runta-runtime-token", token.parse().unwrap());
    }
    if let Some((tenant, runtime)) = caller.sidecar {
        request
            .metadata_mut()
            .insert("x-runta-tenant", tenant.parse().unwrap());
        request
            .metadata_mut()
            .insert("x-runta-runtime", runtime.parse().unwrap());
    }
    let mut stream = client.process(request).await?.into_inner();
    stream.message().await
}

/// What a continue answer does to the request: headers set (name → value) and removed.
#[derive(Debug, Default, PartialEq)]
pub struct Mutation {
    pub set: Vec<(String, String)>,
    pub removed: Vec<String>,
}

#[derive(Debug, PartialEq)]
pub enum Outcome {
    Continue(Mutation),
    Immediate {
        status: i32,
        body: String,
        headers: Vec<(String, String)>,
    },
}

pub fn outcome(response: ProcessingResponse) -> Outcome {
    match response.response.expect("an answer") {
        Answer::RequestHeaders(h) => {
            let common = h.response.unwrap_or_default();
            let mutation = common.header_mutation.unwrap_or_default();
            Outcome::Continue(Mutation {
                set: mutation
                    .set_headers
                    .into_iter()
                    .map(|o| {
                        let h = o.header.unwrap();
                        assert!(h.value.is_empty(), "values go in raw_value");
                        (h.key, String::from_utf8(h.raw_value).unwrap())
                    })
                    .collect(),
                removed: mutation.remove_headers,
            })
        }
        Answer::ImmediateResponse(i) => Outcome::Immediate {
            status: i.status.unwrap().code,
            body: String::from_utf8(i.body).unwrap(),
            headers: i
                .headers
                .map(|m| {
                    m.set_headers
                        .into_iter()
                        .map(|o| {
                            let h = o.header.unwrap();
                            (h.key, String::from_utf8(h.raw_value).unwrap())
                        })
                        .collect()
                })
                .unwrap_or_default(),
        },
        other => panic!("unexpected answer {other:?}"),
    }
}

pub async fn call(
    client: &mut ExternalProcessorClient<Channel>,
    caller: Caller<'_>,
    pairs: &[(String, String)],
) -> Outcome {
    let pairs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    outcome(
        process(client, caller, headers(&pairs))
            .await
            .unwrap()
            .expect("an answer"),
    )
}

fn set(name: &str, value: &str) -> Outcome {
    Outcome::Continue(Mutation {
        set: vec![(name.into(), value.into())],
        removed: vec![],
    })
}

fn unchanged() -> Outcome {
    Outcome::Continue(Mutation::default())
}

fn seed_rule() -> Value {
    json!({"host": "api.openai.com", "path": "/v1/*",
           "injection": {"credential": "openai-api-key", "header": "Authorization", "value": "Bearer ${credential}"}})
}

macro_rules! grpc_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use crate::support::Backend;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(Backend::Sqlite).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(Backend::Postgres).await;
                }
            }
        )*
    };
}

grpc_tests!(
    unauthenticated_gateways_get_nothing,
    sidecar_identity_gets_the_decrypted_value,
    egress_tokens_identify_and_are_stripped,
    changes_take_effect_on_the_next_request,
    cache_ttl_zero_reads_the_store_every_time,
    parameters_and_other_messages,
    a_thousand_concurrent_streams,
);

async fn unauthenticated_gateways_get_nothing(backend: Backend) {
    let Some(gw) = Gateway::start(backend).await else {
        return;
    };
    gw.secret("openai-api-key", VALUE, 300).await;
    gw.rule("worker", seed_rule()).await;
    let mut client = gw.client().await;
    let request = get("api.openai.com", "/v1/models");
    for token in [None, Some("runta_gw_wrong"), Some("")] {
        let caller = Caller {
            gateway_token: token,
            runtime_token: None,
            sidecar: Some(("acme", "worker")),
        };
        let pairs: Vec<(&str, &str)> = request
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let err = process(&mut client, caller, headers(&pairs))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{token:?}");
        assert!(!format!("{err:?}").contains("1b2c"));
    }
    // The same request, authenticated, is injected.
    assert_eq!(
        call(&mut client, WORKER, &request).await,
        set("authorization", &format!("Bearer {VALUE}"))
    );
    let (_, metrics) = (
        0,
        gw.http
            .get(format!("{}/metrics", gw.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert!(
        metrics.contains("runta_extproc_unauthenticated_total 3"),
        "{metrics}"
    );
    assert!(!metrics.contains("1b2c"));
    gw.stop().await;
}

async fn sidecar_identity_gets_the_decrypted_value(backend: Backend) {
    let Some(gw) = Gateway::start(backend).await else {
        return;
    };
    gw.secret("openai-api-key", VALUE, 300).await;
    gw.rule("worker", seed_rule()).await;
    let mut client = gw.client().await;
    // The runtime's own Authorization is overwritten.
    let mut request = get("api.openai.com", "/v1/chat/completions");
    request.push(("authorization".into(), "Bearer runtime-own".into()));
    assert_eq!(
        call(&mut client, WORKER, &request).await,
        set("authorization", &format!("Bearer {VALUE}"))
    );
    // Outside the path, another host, another runtime, another tenant: nothing.
    assert_eq!(
        call(&mut client, WORKER, &get("api.openai.com", "/v2/x")).await,
        unchanged()
    );
    assert_eq!(
        call(&mut client, WORKER, &get("evil.example.com", "/v1/x")).await,
        unchanged()
    );
    let other_runtime = Caller {
        runtime_token: None,
        sidecar: Some(("acme", "other")),
        ..WORKER
    };
    assert_eq!(
        call(&mut client, other_runtime, &get("api.openai.com", "/v1/x")).await,
        unchanged()
    );
    let (status, _) = gw
        .api_as(
            OPERATOR,
            reqwest::Method::POST,
            "/v1/tenants",
            Some(json!({"name": "umbrella"})),
        )
        .await;
    assert_eq!(status, 201);
    let other_tenant = Caller {
        runtime_token: None,
        sidecar: Some(("umbrella", "worker")),
        ..WORKER
    };
    assert_eq!(
        call(&mut client, other_tenant, &get("api.openai.com", "/v1/x")).await,
        unchanged()
    );
    // An unknown tenant is nobody: passed by default.
    let unknown = Caller {
        runtime_token: None,
        sidecar: Some(("nope", "worker")),
        ..WORKER
    };
    assert_eq!(
        call(&mut client, unknown, &get("api.openai.com", "/v1/x")).await,
        unchanged()
    );
    gw.stop().await;
}

async fn egress_tokens_identify_and_are_stripped(backend: Backend) {
    let Some(gw) = Gateway::start(backend).await else {
        return;
    };
    gw.secret("openai-api-key", VALUE, 300).await;
    gw.rule("worker", seed_rule()).await;
    let (status, token) = gw
        .api(reqwest::Method::POST, "/v1/runtimes/worker/tokens", None)
        .await;
    assert_eq!(status, 201);
    let secret = token["token"].as_str().unwrap();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{secret}:"))
    );
    let mut client = gw.client().await;
    let mut request = get("api.openai.com", "/v1/models");
    request.push(("proxy-authorization".into(), basic.clone()));
    let Outcome::Continue(mutation) = call(&mut client, EDGE, &request).await else {
        panic!("not continued")
    };
    assert_eq!(
        mutation.set,
        [("authorization".to_owned(), format!("Bearer {VALUE}"))]
    );
    assert_eq!(mutation.removed, ["proxy-authorization"]);
    // A token with no rule for the host: forwarded, but still without its proxy credentials.
    let mut other = get("elsewhere.example.com", "/");
    other.push(("proxy-authorization".into(), basic.clone()));
    assert_eq!(
        call(&mut client, EDGE, &other).await,
        Outcome::Continue(Mutation {
            set: vec![],
            removed: vec!["proxy-authorization".into()]
        })
    );
    // Revoked: 407 asking for proxy credentials, and nothing injected.
    let (status, _) = gw
        .api(
            reqwest::Method::DELETE,
            &format!("/v1/runtime-tokens/{}", token["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 204);
    match call(&mut client, EDGE, &request).await {
        Outcome::Immediate {
            status,
            headers,
            body,
        } => {
            assert_eq!(status, 407);
            assert!(
                headers
                    .iter()
                    .any(|(k, v)| k == "proxy-authenticate" && v.starts_with("Basic"))
            );
            assert!(!body.contains("1b2c"));
        }
        other => panic!("{other:?}"),
    }
    // An unknown token: the same.
    let mut unknown = get("api.openai.com", "/v1/models");
    unknown.push((
        "proxy-authorization".into(),
        "Bearer runta_rt_unknown".into(),
    ));
    assert!(matches!(
        call(&mut client, EDGE, &unknown).await,
        Outcome::Immediate { status: 407, .. }
    ));
    gw.stop().await;
}

async fn changes_take_effect_on_the_next_request(backend: Backend) {
    let Some(gw) = Gateway::start(backend).await else {
        return;
    };
    gw.secret("openai-api-key", VALUE, 300).await;
    let mut client = gw.client().await;
    let request = get("api.openai.com", "/v1/models");
    assert_eq!(call(&mut client, WORKER, &request).await, unchanged());
    let id = gw.rule("worker", seed_rule()).await;
    assert_eq!(
        call(&mut client, WORKER, &request).await,
        set("authorization", &format!("Bearer {VALUE}"))
    );
    // A new value replaces the cached one at once.
    let (status, _) = gw
        .api(
            reqwest::Method::PUT,
            "/v1/secrets/openai-api-key",
            Some(json!({"value": "sk-test-rotated"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        call(&mut client, WORKER, &request).await,
        set("authorization", "Bearer sk-test-rotated")
    );
    let (status, _) = gw
        .api(reqwest::Method::DELETE, &format!("/v1/rules/{id}"), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(call(&mut client, WORKER, &request).await, unchanged());
    // A batch takes effect too.
    let (status, _) = gw
        .api(
            reqwest::Method::POST,
            "/v1/rules/batch",
            Some(json!({"rules": [{"runtime": "worker", "host": "*.openai.com", "credential": "openai-api-key", "inject": {"header": "x-key"}}]})),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        call(&mut client, WORKER, &request).await,
        set("x-key", "sk-test-rotated")
    );
    gw.stop().await;
}

async fn cache_ttl_zero_reads_the_store_every_time(backend: Backend) {
    let Some(gw) = Gateway::start(backend).await else {
        return;
    };
    gw.secret("fresh", "sk-test-fresh-1", 0).await;
    gw.secret("cached", "sk-test-cached-1", 300).await;
    gw.rule("worker", json!({"host": "fresh.example.com", "injection": {"credential": "fresh", "header": "x-key"}})).await;
    gw.rule("worker", json!({"host": "cached.example.com", "injection": {"credential": "cached", "header": "x-key"}})).await;
    let mut client = gw.client().await;
    let fresh = get("fresh.example.com", "/");
    let cached = get("cached.example.com", "/");
    assert_eq!(
        call(&mut client, WORKER, &fresh).await,
        set("x-key", "sk-test-fresh-1")
    );
    assert_eq!(
        call(&mut client, WORKER, &cached).await,
        set("x-key", "sk-test-cached-1")
    );
    // Another writer (another replica, say) changes both values behind this process's back.
    let store = runta::store::Store::connect(&database_url(&gw), 1)
        .await
        .unwrap();
    let keyring = gw.keyring();
    let tenant = {
        let (_, keys) = gw.api(reqwest::Method::GET, "/v1/secrets", None).await;
        let _ = keys;
        let snapshot_tenant = gw.running.as_ref().unwrap().engine.snapshot();
        snapshot_tenant.tenant_id("acme").unwrap().to_owned()
    };
    for (name, value) in [("fresh", "sk-test-fresh-2"), ("cached", "sk-test-cached-2")] {
        let row = store.get_secret(&tenant, name).await.unwrap().unwrap();
        let sealed = keyring
            .seal(
                value.as_bytes(),
                SealContext {
                    tenant_id: &tenant,
                    secret_id: &row.id,
                    version: row.version,
                },
            )
            .unwrap();
        assert!(
            store
                .reseal_secret(&row, &sealed.key_id, &sealed.nonce, &sealed.ciphertext)
                .await
                .unwrap()
        );
    }
    assert_eq!(
        call(&mut client, WORKER, &fresh).await,
        set("x-key", "sk-test-fresh-2"),
        "ttl 0: read every time"
    );
    assert_eq!(
        call(&mut client, WORKER, &cached).await,
        set("x-key", "sk-test-cached-1"),
        "ttl 300: still cached"
    );
    gw.stop().await;
}

fn database_url(gw: &Gateway) -> String {
    match gw.db.sqlite_dir() {
        Some(dir) => format!("sqlite://{}", dir.join("runta.db").display()),
        None => gw.db.postgres_url().unwrap().to_owned(),
    }
}

async fn parameters_and_other_messages(backend: Backend) {
    let Some(gw) = Gateway::start(backend).await else {
        return;
    };
    gw.secret("maps", "sk test/&=é", 300).await;
    gw.rule(
        "worker",
        json!({"host": "maps.example.com", "injection": {"credential": "maps", "param": "key"}}),
    )
    .await;
    let mut client = gw.client().await;
    let request = get("maps.example.com", "/geo?q=a%20b&key=runtime&z");
    assert_eq!(
        call(&mut client, WORKER, &request).await,
        set(":path", "/geo?q=a%20b&key=sk%20test%2F%26%3D%C3%A9&z")
    );
    // A body chunk (a misconfigured filter) is let through unchanged.
    let body = ProcessingRequest {
        request: Some(Message::RequestBody(HttpBody {
            body: b"x".to_vec(),
            end_of_stream: true,
            ..HttpBody::default()
        })),
        ..ProcessingRequest::default()
    };
    let answer = process(&mut client, WORKER, body).await.unwrap().unwrap();
    assert!(matches!(answer.response, Some(Answer::RequestBody(_))));
    // Observability mode: Envoy expects no answer, and the stream just ends.
    let pairs: Vec<(&str, &str)> = request
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut observed = headers(&pairs);
    observed.observability_mode = true;
    assert!(
        process(&mut client, WORKER, observed)
            .await
            .unwrap()
            .is_none()
    );
    gw.stop().await;
}

async fn a_thousand_concurrent_streams(backend: Backend) {
    let Some(gw) = Gateway::start(backend).await else {
        return;
    };
    gw.secret("openai-api-key", VALUE, 300).await;
    gw.rule("worker", seed_rule()).await;
    let client = gw.client().await;
    let expected = set("authorization", &format!("Bearer {VALUE}"));
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

/// The store goes away with nothing cached: 503 naming the rule, never a forward without the
/// credential; when it comes back, so does injection. PostgreSQL only: a database can be closed
/// to connections for real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_unreachable_fails_closed() {
    let Some(gw) = Gateway::start(Backend::Postgres).await else {
        return;
    };
    gw.secret("openai-api-key", VALUE, 0).await;
    let id = gw.rule("worker", seed_rule()).await;
    let mut client = gw.client().await;
    let request = get("api.openai.com", "/v1/models");
    assert_eq!(
        call(&mut client, WORKER, &request).await,
        set("authorization", &format!("Bearer {VALUE}"))
    );

    let admin_url = crate::support::postgres_url().unwrap();
    let name = gw
        .db
        .postgres_url()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let closer = {
        use diesel_async::{AsyncConnection, RunQueryDsl};
        let mut conn = diesel_async::AsyncPgConnection::establish(&admin_url)
            .await
            .unwrap();
        diesel::sql_query(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
            .execute(&mut conn)
            .await
            .unwrap();
        diesel::sql_query(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .execute(&mut conn)
        .await
        .unwrap();
        conn
    };
    match call(&mut client, WORKER, &request).await {
        Outcome::Immediate { status, body, .. } => {
            assert_eq!(status, 503);
            assert!(body.contains(&id), "{body}");
            assert!(!body.contains("1b2c"));
        }
        other => panic!("forwarded while the store is down: {other:?}"),
    }
    // Back: injection resumes without a restart.
    {
        use diesel_async::RunQueryDsl;
        let mut conn = closer;
        diesel::sql_query(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let mut resumed = None;
    for _ in 0..50 {
        let outcome = call(&mut client, WORKER, &request).await;
        if outcome == set("authorization", &format!("Bearer {VALUE}")) {
            resumed = Some(outcome);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(resumed.is_some(), "injection did not resume");
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

/// The gRPC status a bare call to `/{service}/Probe` gets in its response headers (where a
/// refusal before any service runs puts it), with or without the gateway token.
async fn probe_status(gw: &Gateway, service: &str, token: Option<&str>) -> Option<String> {
    use tower::ServiceExt as _;
    let channel = Channel::from_shared(gw.grpc_addr())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("{}/{service}/Probe", gw.grpc_addr()))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = channel
        .oneshot(request.body(tonic::body::Body::empty()).unwrap())
        .await
        .unwrap();
    response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned())
}

/// Every service on the gRPC port but health refuses a caller without credentials before it
/// runs: the list comes from the server itself, so a service added later is covered here
/// without editing this test. A path no service serves is refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_service_but_health_requires_authentication() {
    const UNAUTHENTICATED: &str = "16";
    let gw = Gateway::start(Backend::Sqlite).await.unwrap();
    let services = gw.running.as_ref().unwrap().grpc_services().to_vec();
    assert!(
        services.contains(&"envoy.service.ext_proc.v3.ExternalProcessor")
            && services.contains(&"grpc.health.v1.Health"),
        "{services:?}"
    );
    for service in services.iter().copied().chain(["no.such.Service"]) {
        let anonymous = probe_status(&gw, service, None).await;
        let wrong = probe_status(&gw, service, Some("runta_gw_wrong")).await;
        if service == "grpc.health.v1.Health" {
            assert_ne!(anonymous.as_deref(), Some(UNAUTHENTICATED), "{service}");
            continue;
        }
        assert_eq!(
            anonymous.as_deref(),
            Some(UNAUTHENTICATED),
            "{service}, no token"
        );
        assert_eq!(
            wrong.as_deref(),
            Some(UNAUTHENTICATED),
            "{service}, wrong token"
        );
        // The same probe with the gateway token gets past authentication.
        let authenticated = probe_status(&gw, service, Some(GATEWAY_TOKEN)).await;
        assert_ne!(
            authenticated.as_deref(),
            Some(UNAUTHENTICATED),
            "{service}, gateway token"
        );
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_authenticate_gateways() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["gateway".to_owned()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    // A client certificate from a CA runta does not trust.
    let rogue_ca = CertifiedIssuer::self_signed(
        {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            // A name of its own: not an impostor of the trusted CA, simply unknown to runta.
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "rogue gateway CA");
            p
        },
        KeyPair::generate().unwrap(),
    )
    .unwrap();
    let rogue_key = KeyPair::generate().unwrap();
    let rogue_cert = CertificateParams::new(vec!["gateway".to_owned()])
        .unwrap()
        .signed_by(&rogue_key, &rogue_ca)
        .unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let tls = runta::config::GrpcTlsConfig {
        cert_file: write("server.pem", server_cert.pem()),
        key_file: write("server.key", server_key.serialize_pem()),
        client_ca_file: Some(write("ca.pem", ca.pem())),
    };
    let gw = Gateway::start_with(Backend::Sqlite, |c| c.grpc.tls = Some(tls))
        .await
        .unwrap();
    gw.secret("openai-api-key", VALUE, 300).await;
    gw.rule("worker", seed_rule()).await;
    let addr = gw
        .grpc_addr()
        .replace("http://127.0.0.1", "https://localhost");
    let connect = |identity: Option<tonic::transport::Identity>| {
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca.pem()))
            .domain_name("localhost");
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        let addr = addr.clone();
        async move {
            let channel = Channel::from_shared(addr)
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await?;
            Ok::<_, tonic::transport::Error>(ExternalProcessorClient::new(channel))
        }
    };
    let request = get("api.openai.com", "/v1/models");
    let pairs: Vec<(&str, &str)> = request
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let no_token = Caller {
        gateway_token: None,
        runtime_token: None,
        sidecar: Some(("acme", "worker")),
    };
    // A trusted client certificate, no token: answered.
    let mut client = connect(Some(tonic::transport::Identity::from_pem(
        client_cert.pem(),
        client_key.serialize_pem(),
    )))
    .await
    .unwrap();
    assert_eq!(
        call(&mut client, no_token, &request).await,
        set("authorization", &format!("Bearer {VALUE}"))
    );
    // TLS without a client certificate: a token is needed.
    let mut client = connect(None).await.unwrap();
    let err = process(&mut client, no_token, headers(&pairs))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        call(&mut client, WORKER, &request).await,
        set("authorization", &format!("Bearer {VALUE}"))
    );
    // A certificate from another CA: the server refuses it in the handshake (with TLS 1.3
    // the client learns it on its first read), so nothing is answered.
    let grpc = match &gw.running.as_ref().unwrap().addresses.grpc {
        runta::config::GrpcListen::Tcp(addr) => *addr,
        other => panic!("{other:?}"),
    };
    let refusal = tls_refusal(
        grpc,
        ca.der().to_vec(),
        rogue_cert.der().to_vec(),
        rogue_key.serialize_der(),
    )
    .await;
    assert!(
        refusal.contains("received fatal alert: UnknownCA"),
        "the refusal must be the server rejecting the certificate: {refusal}"
    );
    gw.stop().await;
}

/// What a TLS client presenting `cert` gets from the server at `addr`: the error that ended
/// the connection, or what was answered.
async fn tls_refusal(
    addr: std::net::SocketAddr,
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::rustls::{self, pki_types};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki_types::CertificateDer::from(ca)).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![pki_types::CertificateDer::from(cert)],
        pki_types::PrivateKeyDer::Pkcs8(key.into()),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = pki_types::ServerName::try_from("localhost").unwrap();
    match tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
    {
        Err(err) => err.to_string(),
        Ok(mut tls) => {
            let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            let mut buf = [0u8; 64];
            match tls.read(&mut buf).await {
                Err(err) => err.to_string(),
                Ok(n) => format!("the server answered {n} bytes"),
            }
        }
    }
}

/// Two replicas on one PostgreSQL database: a change made through one reaches the other's
/// snapshot and secret cache through LISTEN/NOTIFY, not a periodic reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_each_other() {
    let Some(first) = Gateway::start_with(Backend::Postgres, |c| {
        c.injection.reload_interval_secs = 3600
    })
    .await
    else {
        return;
    };
    let second = first.replica().await;
    let mut client = second.client().await;
    let request = get("api.openai.com", "/v1/models");
    assert_eq!(call(&mut client, WORKER, &request).await, unchanged());

    async fn eventually(
        client: &mut ExternalProcessorClient<Channel>,
        request: &[(String, String)],
        want: &Outcome,
    ) -> bool {
        for _ in 0..100 {
            if call(client, WORKER, request).await == *want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
    first.secret("openai-api-key", VALUE, 3600).await;
    first.rule("worker", seed_rule()).await;
    let want = set("authorization", &format!("Bearer {VALUE}"));
    assert!(
        eventually(&mut client, &request, &want).await,
        "the rule never reached the other replica"
    );
    // The value is now cached there for an hour; an update through the first replica drops it.
    let (status, _) = first
        .api(
            reqwest::Method::PUT,
            "/v1/secrets/openai-api-key",
            Some(json!({"value": "sk-test-replicated"})),
        )
        .await;
    assert_eq!(status, 200);
    let want = set("authorization", "Bearer sk-test-replicated");
    assert!(
        eventually(&mut client, &request, &want).await,
        "the other replica kept serving the old value"
    );
    second.stop().await;
    first.stop().await;
}

/// Policy `deny`: a request of no known runtime is refused with 403; identified ones are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unidentified_requests_denied_by_policy() {
    let gw = Gateway::start_with(Backend::Sqlite, |c| {
        c.injection.unidentified = runta::config::Unidentified::Deny
    })
    .await
    .unwrap();
    let mut client = gw.client().await;
    let request = get("api.openai.com", "/v1/models");
    match call(&mut client, EDGE, &request).await {
        Outcome::Immediate { status, .. } => assert_eq!(status, 403),
        other => panic!("{other:?}"),
    }
    let stranger = Caller {
        runtime_token: None,
        sidecar: Some(("nope", "worker")),
        ..WORKER
    };
    assert!(matches!(
        call(&mut client, stranger, &request).await,
        Outcome::Immediate { status: 403, .. }
    ));
    assert_eq!(call(&mut client, WORKER, &request).await, unchanged());
    gw.stop().await;
}

/// The development switch: no gateway authentication at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_switch_answers_anyone() {
    let gw = Gateway::start_with(Backend::Sqlite, |c| {
        c.grpc.gateways.clear();
        c.grpc.insecure_no_auth = true;
    })
    .await
    .unwrap();
    gw.secret("openai-api-key", VALUE, 300).await;
    gw.rule("worker", seed_rule()).await;
    let mut client = gw.client().await;
    let anyone = Caller {
        gateway_token: None,
        runtime_token: None,
        sidecar: Some(("acme", "worker")),
    };
    assert_eq!(
        call(&mut client, anyone, &get("api.openai.com", "/v1/models")).await,
        set("authorization", &format!("Bearer {VALUE}"))
    );
    gw.stop().await;
}
