//! The gateway attacked from the runtime's side, with the real Envoy and the project's own
//! rendered configuration: destinations that resolve to loopback in any spelling, malformed
//! authorities, proxy credentials that are not text, TRACE, and Envoy's own headers.
//!
//! Only loopback is ever a target here: every refused destination is a loopback form (or a
//! name the test's DNS server resolves to loopback), and runta's own admin port is the
//! service a successful attack would reach.

use crate::cli::{Server, ok};
use crate::e2e::{Envoy, World, curl, envoy_binary, proxy_get as get, raw_http};

const OPENAI: &str = "sk-e2e-HARDEN-71d2";

fn setup(server: &Server) -> String {
    ok(&server.shell(&format!(
        "V='{OPENAI}' runta secret add openai-api-key --value-env V"
    )));
    ok(&server.shell(
        "runta secret rule add worker --host api.openai.com --credential openai-api-key --inject-header Authorization --inject-value 'Bearer ${credential}'",
    ));
    // Rules that would inject into every name below, so a bypass would carry the secret.
    ok(&server.shell(
        "runta secret rule add worker --host localhost --credential openai-api-key --inject-header Authorization",
    ));
    let created: serde_json::Value = serde_json::from_str(&ok(
        &server.runta(&["runtime", "token", "create", "worker", "-o", "json"])
    ))
    .unwrap();
    created["token"].as_str().unwrap().to_owned()
}

/// Every spelling of a loopback destination is refused by the address it resolves to, while
/// the one allowed upstream still works.
#[test]
fn loopback_in_any_spelling_is_refused_by_resolved_address() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let world = World::new();
    let server = Server::start(world.dir.path(), &[]);
    let token = setup(&server);
    let envoy = Envoy::start(&envoy_bin, &server, &world, &["--mode", "gateway"], "gw");
    let admin_port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();

    // The allowed upstream (a named exception) still works, with its credential.
    let allowed = world.url("api.openai.com", "/v1/models");
    let reply = curl(&envoy.proxy(Some(&format!("{token}:x"))), &allowed, &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("authorization"), [format!("Bearer {OPENAI}")]);

    // Resolved to loopback, on runta's own admin port: the guard (RBAC on the resolved
    // address) refuses, whatever the spelling.
    for authority in [
        format!("127.0.0.1:{admin_port}"),
        format!("127.1.2.3:{admin_port}"),
        format!("localhost:{admin_port}"),
        format!("api.openai.com:{admin_port}"),
        format!("anything.example.test:{admin_port}"),
        format!("[::1]:{admin_port}"),
        format!("[0::1]:{admin_port}"),
        format!("[0:0:0:0:0:0:0:1]:{admin_port}"),
        format!("[::ffff:127.0.0.1]:{admin_port}"),
        format!("[0:0:0:0:0:ffff:127.0.0.1]:{admin_port}"),
        format!("0.0.0.0:{admin_port}"),
        format!("2130706433:{admin_port}"),
        // The allowed address in its IPv4-mapped spelling is another address: refused.
        format!("[::ffff:127.0.0.1]:{}", world.upstream_port),
    ] {
        let (status, body) = raw_http(envoy.port, &get("/healthz", &authority, &token));
        assert_eq!(status, 403, "{authority}: {body}");
        assert!(body.contains("RBAC: access denied"), "{authority}: {body}");
    }
    // A port that is not plain digits never reaches the resolver: 400 by the authority check.
    for authority in [
        format!("localhost:+{admin_port}"),
        format!("127.0.0.1:+{admin_port}"),
        format!("api.openai.com:{}x", world.upstream_port),
    ] {
        let (status, body) = raw_http(envoy.port, &get("/healthz", &authority, &token));
        assert_eq!(status, 400, "{authority}: {body}");
    }
    // In a Host header (origin form), userinfo-like text is no authority either: runta would
    // otherwise read `api.openai.com` and Envoy another host.
    for host in [
        format!("api.openai.com:x@127.0.0.1:{admin_port}"),
        "api.openai.com@127.0.0.1".to_owned(),
    ] {
        let request = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let (status, body) = raw_http(envoy.port, request.as_bytes());
        assert_eq!(status, 400, "{host}: {body}");
    }
    assert!(
        !server.log_text().contains("GET /healthz"),
        "a refused request reached runta's admin port"
    );
    assert_eq!(
        world.upstream_requests(),
        1,
        "only the allowed request arrived"
    );
    drop(envoy);
    server.stop();
}

/// Proxy credentials are never forwarded, whatever their bytes; TRACE never carries a
/// credential; upstream sees what the runtime sent plus the injection, none of Envoy's own
/// headers.
#[test]
fn upstream_sees_the_runtime_request_and_the_injection_only() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let world = World::new();
    let server = Server::start(world.dir.path(), &[]);
    let token = setup(&server);
    let gateway = Envoy::start(&envoy_bin, &server, &world, &["--mode", "gateway"], "gw");
    let authority = format!("api.openai.com:{}", world.upstream_port);

    // Exactly the runtime's headers and the injected one reach the upstream.
    let reply = curl(
        &gateway.proxy(Some(&format!("{token}:x"))),
        &world.url("api.openai.com", "/v1/models"),
        &["-H", "X-Runtime-Own: kept"],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    let mut names: Vec<String> = reply.echo()["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h[0].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "accept",
            "authorization",
            "host",
            "user-agent",
            "x-runtime-own"
        ],
        "{reply:?}"
    );

    // A Proxy-Authorization that is not text is no valid token (407) and goes nowhere.
    let before = world.upstream_requests();
    let mut request = format!(
        "GET http://{authority}/v1/x HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: Basic "
    )
    .into_bytes();
    request.extend_from_slice(b"\xff\xfe");
    request.extend_from_slice(token.as_bytes());
    request.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    let (status, body) = raw_http(gateway.port, &request);
    assert_eq!(status, 407, "{body}");
    assert_eq!(
        world.upstream_requests(),
        before,
        "the request was forwarded"
    );

    // Through a sidecar (identity from its runtime token, not from the request), the same
    // bytes are removed and the request goes on with its credential.
    let sidecar = Envoy::start(
        &envoy_bin,
        &server,
        &world,
        &["--mode", "sidecar", "--runtime", "worker"],
        "sidecar",
    );
    let (status, body) = raw_http(sidecar.port, &request);
    assert_eq!(status, 200, "{body}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    let headers = echo["headers"].as_array().unwrap();
    assert!(
        !headers.iter().any(|h| h[0] == "proxy-authorization"),
        "proxy credentials reached the upstream: {body}"
    );
    assert!(
        headers
            .iter()
            .any(|h| h[0] == "authorization" && h[1] == format!("Bearer {OPENAI}")),
        "{body}"
    );
    assert!(
        !body.contains(&token),
        "the runtime token reached the upstream"
    );

    // TRACE reflects the request to the client: it never carries a credential.
    let reply = curl(
        &gateway.proxy(Some(&format!("{token}:x"))),
        &world.url("api.openai.com", "/v1/models"),
        &["-X", "TRACE"],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.echo()["method"], "TRACE");
    assert!(reply.header("authorization").is_empty(), "{reply:?}");
    assert!(!reply.body.contains("HARDEN-71d2"), "{reply:?}");
    drop(sidecar);
    drop(gateway);
    server.stop();
}
