//! The ext_proc service over real gRPC: a served `runta` (in process, both listeners on free
//! ports, a real database) driven by a tonic client the way Envoy drives it, and changed
//! through its real admin API over HTTP. This module is the harness (`Gateway`, the calls and
//! their outcomes); the tests are in its submodules.

mod ads;
mod changes;
mod identity;
mod injection;
mod sds;
mod transport;

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

use crate::support::{Backend, OnBackend, TestDb};

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

/// A server's configuration: both listeners on free ports, the test operator and gateway
/// tokens, one key `k1`, the data directory under `dir`.
fn config(dir: &std::path::Path, database_url: &str, key_text: &str) -> Config {
    let mut config = Config {
        data_dir: dir.join("data"),
        ..Config::default()
    };
    config.database.url = Some(SecretString::from(database_url));
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
        key: Some(SecretString::from(key_text)),
        key_file: None,
    }];
    config
}

/// Waits until a PostgreSQL replica follows change notifications: connecting drops cached
/// values (whatever was announced before is lost), which would race with what a test caches.
/// A server's `/metrics` (no key needed), asserting it answers 200.
async fn metrics_of(http: &reqwest::Client, admin: &str) -> String {
    let response = http.get(format!("{admin}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200, "GET /metrics");
    response.text().await.unwrap()
}

async fn following(http: &reqwest::Client, admin: &str) {
    for _ in 0..200 {
        let metrics = metrics_of(http, admin).await;
        // The sample line itself: its HELP text also reads "runta_change_listener_connected 1
        // while ...", which matched before the replica listened.
        if metrics
            .lines()
            .any(|line| line == "runta_change_listener_connected 1")
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the replica never followed change notifications");
}

/// The gRPC tests' fixture on each backend: a served runta with its tenant `acme`.
impl OnBackend for Gateway {
    async fn on(backend: Backend) -> Option<Self> {
        Self::start(backend).await
    }
}

impl Gateway {
    pub async fn start(backend: Backend) -> Option<Self> {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Option<Self> {
        let (db, url) = TestDb::create(backend).await?;
        let dir = tempfile::tempdir().unwrap();
        let key_text = MasterKey::generate().to_base64().to_string();
        let mut config = config(dir.path(), &url, &key_text);
        adjust(&mut config);
        config.validate().unwrap();
        let running = serve::start(config).await.expect("runta starts");
        let admin = format!("http://{}", running.addresses.admin);
        let http = reqwest::Client::new();
        if backend == Backend::Postgres {
            following(&http, &admin).await;
        }
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
        let mut config = config(dir.path(), &url, &self.key_text);
        config.injection.reload_interval_secs = 3600;
        config.validate().unwrap();
        let running = serve::start(config).await.expect("the replica starts");
        let admin = format!("http://{}", running.addresses.admin);
        following(&self.http, &admin).await;
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

    /// This server's current rule snapshot.
    pub fn snapshot(&self) -> Arc<runta::rules::snapshot::Snapshot> {
        self.running.as_ref().unwrap().engine.snapshot()
    }

    /// The id of a tenant this server knows, by name.
    pub fn tenant_id(&self, name: &str) -> String {
        self.snapshot().tenant_id(name).unwrap().to_owned()
    }

    /// This server's `/metrics`.
    pub async fn metrics(&self) -> String {
        metrics_of(&self.http, &self.admin).await
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

/// The request-headers message of a request built with `get`.
pub fn message(request: &[(String, String)]) -> ProcessingRequest {
    let pairs: Vec<(&str, &str)> = request
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    headers(&pairs)
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
    outcome(
        process(client, caller, message(pairs))
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
