//! Native injection through a real Envoy sidecar: runta compiles the runtime's rules into
//! routes and pushes them (and the secrets they inject) over Delta ADS; Envoy injects without
//! calling ext_proc. The same TLS upstream, DNS stub and curl as `e2e`.

use crate::cli::Server;
use crate::e2e::{
    Envoy, MAPS, OPENAI, WILD, World, assert_no_value, curl, envoy_binary, set_up_rules,
};

/// ext_proc streams the sidecar's egress listener opened.
const EXTPROC_STREAMS: &str = "http.egress.ext_proc.streams_started";

#[test]
fn a_sidecar_injects_natively_without_calling_extproc() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let world = World::new();
    let server = Server::start(world.dir.path(), &[]);
    set_up_rules(&server);
    let envoy = Envoy::start(
        &envoy_bin,
        &server,
        &world,
        &["--mode", "sidecar", "--runtime", "worker"],
        "native",
    );
    let proxy = envoy.proxy(None);
    let reply = curl(&proxy, &world.url("api.openai.com", "/v1/models"), &[]);
    assert_eq!(reply.header("authorization"), [format!("Bearer {OPENAI}")]);
    let reply = curl(
        &proxy,
        &world.url("api.openai.com", "/v1/models"),
        &["-H", "Authorization: Bearer runtime-own"],
    );
    assert_eq!(reply.header("authorization"), [format!("Bearer {OPENAI}")]);
    let reply = curl(&proxy, &world.url("x.example.com", "/x"), &[]);
    assert_eq!(reply.header("x-api-key"), [WILD]);
    assert_eq!(
        envoy.stat(EXTPROC_STREAMS),
        0,
        "ext_proc was called for compiled routes"
    );
    // A parameter rule stays on ext_proc (with the wildcard's header on the same route).
    let reply = curl(&proxy, &world.url("maps.example.com", "/geo?q=1"), &[]);
    assert!(
        reply
            .path()
            .contains(&format!("key={}", runta_percent(MAPS))),
        "{reply:?}"
    );
    assert_eq!(reply.header("x-api-key"), [WILD]);
    assert_eq!(envoy.stat(EXTPROC_STREAMS), 1);
    assert!(
        envoy.access_log().contains("route=rule:"),
        "{}",
        envoy.access_log()
    );
    // Envoy holds the secrets (SDS) but never shows them.
    let dump = envoy.admin_get("/config_dump?include_eds");
    assert!(dump.contains("runta.secret.openai-api-key"), "{dump}");
    assert_no_value("Envoy's config dump", &dump);
    assert_no_value("Envoy's access log", &envoy.access_log());
    assert_no_value("runta's log", &server.stop());
}

fn runta_percent(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
