//! Who may call, and who a request is for: gateway authentication (tokens, client
//! certificates, the development switch, every service but health), sidecar identity, runtime
//! tokens in `Proxy-Authorization`, and the policy for requests of no known runtime.

use super::*;
use crate::support::backend_tests;

backend_tests!(
    unauthenticated_gateways_get_nothing,
    sidecar_identity_gets_the_decrypted_value,
    egress_tokens_identify_and_are_stripped,
);

async fn unauthenticated_gateways_get_nothing(gw: Gateway) {
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
        let err = process(&mut client, caller, message(&request))
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
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("runta_extproc_unauthenticated_total 3"),
        "{metrics}"
    );
    assert!(!metrics.contains("1b2c"));
    gw.stop().await;
}

async fn sidecar_identity_gets_the_decrypted_value(gw: Gateway) {
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

async fn egress_tokens_identify_and_are_stripped(gw: Gateway) {
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
            && services.contains(&"envoy.service.secret.v3.SecretDiscoveryService")
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
    let err = process(&mut client, no_token, message(&request))
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
