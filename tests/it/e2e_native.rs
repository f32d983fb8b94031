//! Native injection through a real Envoy sidecar: runta compiles the runtime's rules into
//! routes and pushes them (and the secrets they inject) over Delta ADS; Envoy injects without
//! calling ext_proc. The same TLS upstream, DNS stub and curl as `e2e`.

use crate::cli::{Server, ok};
use crate::e2e::{
    Envoy, MAPS, OPENAI, WILD, World, assert_no_value, curl, envoy_binary, json_of, set_up_rules,
    token,
};
use crate::support::free_port;

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

/// Polls `check` every 50 ms for up to 10 s; fails naming `what`.
#[track_caller]
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within 10 s: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn changes_restarts_and_runta_down_through_a_native_sidecar() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let world = World::new();
    let grpc = format!("127.0.0.1:{}", free_port());
    let server = Server::start(world.dir.path(), &["--grpc-listen", &grpc]);
    set_up_rules(&server);
    let (token_id, token) = token(&server, "worker", None);
    let sidecar = [
        "--mode",
        "sidecar",
        "--runtime",
        "worker",
        "--runtime-token",
        &token,
    ];
    let envoy = Envoy::start(&envoy_bin, &server, &world, &sidecar, "native");
    let proxy = envoy.proxy(None);
    let openai = world.url("api.openai.com", "/v1/models");
    let other = world.url("api.other.com", "/");
    let header = |url: &str, name: &str| curl(&proxy, url, &[]).header(name);
    assert_eq!(
        header(&openai, "authorization"),
        [format!("Bearer {OPENAI}")]
    );

    // Rotation: the next requests carry the new value, from Envoy itself.
    ok(&server.shell("V='sk-e2e-ROTATED-9d1' runta secret update openai-api-key --value-env V"));
    eventually("the rotated value is injected", || {
        header(&openai, "authorization") == ["Bearer sk-e2e-ROTATED-9d1"]
    });
    // A rule added is injected; deleted, it is not.
    let added = json_of(&server.runta(&[
        "secret",
        "rule",
        "add",
        "worker",
        "--host",
        "api.other.com",
        "--credential",
        "wild-key",
        "--inject-header",
        "x-other",
        "-o",
        "json",
    ]));
    // Until Envoy applies the table with the new host, the catch-all (ext_proc) serves it;
    // from then on the new route injects without ext_proc.
    eventually("Envoy applied the table with the added host", || {
        envoy
            .admin_get("/config_dump?resource=dynamic_route_configs")
            .contains("\"api.other.com\"")
    });
    assert_eq!(
        header(&other, "x-other"),
        [WILD],
        "the added rule is injected"
    );
    assert_eq!(envoy.stat(EXTPROC_STREAMS), 0, "all of it without ext_proc");
    ok(&server.runta(&["secret", "rule", "delete", added["id"].as_str().unwrap()]));
    eventually("the deleted rule is no longer injected", || {
        header(&other, "x-other").is_empty()
    });

    // runta stops answering: Envoy keeps its routes and secrets; what needs ext_proc fails
    // closed; a sidecar started now stays closed.
    server.signal("STOP");
    assert_eq!(
        header(&openai, "authorization"),
        ["Bearer sk-e2e-ROTATED-9d1"]
    );
    let before = world.upstream_requests();
    let reply = curl(&proxy, &world.url("maps.example.com", "/geo"), &[]);
    assert!(
        reply.status >= 500,
        "forwarded while runta is down: {reply:?}"
    );
    assert_eq!(world.upstream_requests(), before);
    let late = Envoy::spawn(&envoy_bin, &server, &world, &sidecar, "late", false);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", late.port)).is_err(),
        "a new sidecar opened without its routes"
    );
    server.signal("CONT");
    late.wait_until_open();
    assert_eq!(
        curl(&late.proxy(None), &openai, &[]).header("authorization"),
        ["Bearer sk-e2e-ROTATED-9d1"]
    );

    // Restarted with a secret gone from the store (no announcement): the sidecar reconnects
    // and its rule answers 503 naming the rule, as ext_proc would, never uninjected.
    server.stop();
    let db = world.dir.path().join("runta-data/runta.db");
    let deleted = std::process::Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"DELETE FROM secrets WHERE name='wild-key'\"); c.commit()"])
        .arg(&db)
        .status()
        .unwrap();
    assert!(deleted.success());
    let server = Server::start(world.dir.path(), &["--grpc-listen", &grpc]);
    let wildcard_rule = json_of(&server.runta(&["secret", "rule", "list", "worker", "-o", "json"]))
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host_pattern"] == "*.example.com")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually("the rule whose secret is gone answers 503", || {
        let reply = curl(&proxy, &world.url("x.example.com", "/"), &[]);
        reply.status == 503 && reply.body.contains(&wildcard_rule)
    });
    assert_eq!(
        header(&openai, "authorization"),
        ["Bearer sk-e2e-ROTATED-9d1"]
    );

    // Revoked: the native routes are withdrawn, and ext_proc refuses the token.
    ok(&server.runta(&["runtime", "token", "revoke", &token_id]));
    eventually("the revoked sidecar injects no more", || {
        curl(&proxy, &openai, &[]).status >= 500
    });
    let before = world.upstream_requests();
    let reply = curl(&proxy, &openai, &[]);
    assert!(reply.status >= 500, "{reply:?}");
    assert_eq!(world.upstream_requests(), before);
    assert_no_value("Envoy's access log", &envoy.access_log());
    assert_no_value("runta's log", &server.stop());
}

/// A small deterministic generator (xorshift): the same rule sets on every run.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

/// A generated rule, as `runta secret rule add RUNTIME ...` arguments.
fn generated_rule(g: &mut Gen, upstream_port: u16) -> Vec<String> {
    let host = *g.pick(&[
        "api.openai.com",
        "maps.example.com",
        "x.example.com",
        "api.other.com",
        "*.example.com",
        "*.openai.com",
    ]);
    let host = match g.pick(&[None, Some(upstream_port), Some(8443)]) {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let mut args = vec!["--host".to_owned(), host];
    let path = *g.pick(&[
        None,
        None,
        Some("/v1/*"),
        Some("/v1/chat/*"),
        Some("/v1/chat/completions"),
        Some("/*/models"),
        Some("/*.json"),
        Some("/v1/*/x"),
        Some("/v2*"),
        Some("/"),
    ]);
    if let Some(path) = path {
        args.extend(["--path".to_owned(), path.to_owned()]);
    }
    let credential = *g.pick(&["s-one", "s-one", "s-two", "s-zero"]);
    args.extend(["--credential".to_owned(), credential.to_owned()]);
    let (flag, target) = *g.pick(&[
        ("--inject-header", "authorization"),
        ("--inject-header", "x-api-key"),
        ("--inject-header", "X-Other"),
        ("--inject-param", "key"),
    ]);
    args.extend([flag.to_owned(), target.to_owned()]);
    let template = *g.pick(&[
        "${credential}",
        "Bearer ${credential}",
        "100% ${credential}",
        "${credential}:${credential}",
    ]);
    args.extend(["--inject-value".to_owned(), template.to_owned()]);
    args
}

/// What the upstream received (or Envoy answered) for one request, comparable between two
/// sidecars.
fn received(reply: &crate::e2e::Reply) -> String {
    if reply.status != 200 {
        return format!("{} {}", reply.status, reply.body);
    }
    let echo = reply.echo();
    let mut headers: Vec<String> = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| format!("{}: {}", h[0].as_str().unwrap(), h[1].as_str().unwrap()))
        .collect();
    headers.sort();
    format!("200 {}\n{}", echo["path"], headers.join("\n"))
}

/// For generated rule sets and requests, a native sidecar and an ext_proc sidecar of the same
/// runtime forward exactly the same thing, request by request.
#[test]
fn native_routes_forward_exactly_what_extproc_does() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let world = World::new();
    let server = Server::start(world.dir.path(), &[]);
    ok(&server
        .shell("V='sk-DIFF-ONE-%41x' runta secret add s-one --value-env V --cache-ttl-secs 3600"));
    ok(&server.shell("V='two two/&=' runta secret add s-two --value-env V --cache-ttl-secs 3600"));
    ok(&server.shell("V='sk-DIFF-ZERO' runta secret add s-zero --value-env V --cache-ttl-secs 0"));
    let requests: &[(&str, &[&str])] = &[
        ("/v1/models", &[]),
        ("/v1/models", &["-H", "Authorization: Bearer own"]),
        ("/v1/chat/completions?stream=1", &["-H", "X-Other: mine"]),
        ("/v2/x", &[]),
        ("/a/b.json", &["-H", "x-api-key: mine"]),
        ("/v1/q/x", &[]),
        ("/", &[]),
        ("/v1", &[]),
        ("/v1/chat/x?key=mine&z=2", &[]),
        ("/V1/models", &[]),
        ("/v1/%61bc/x", &[]),
        ("/v1//models", &[]),
        ("/v1/./chat/completions", &[]),
    ];
    let hosts = [
        "api.openai.com",
        "maps.example.com",
        "x.example.com",
        "api.other.com",
    ];
    let mut native_routes = 0;
    let (mut native_streams, mut extproc_streams) = (0, 0);
    for (set, seed) in [
        0x9e37_79b9_7f4a_7c15_u64,
        0x2545_f491_4f6c_dd1d,
        0xdead_beef_cafe_f00d,
        42,
    ]
    .into_iter()
    .enumerate()
    {
        let runtime = format!("diff{set}");
        let mut g = Gen(seed);
        let mut rules = Vec::new();
        for _ in 0..8 {
            let args = generated_rule(&mut g, world.upstream_port);
            let mut command = vec!["secret", "rule", "add", runtime.as_str()];
            command.extend(args.iter().map(String::as_str));
            ok(&server.runta(&command));
            rules.push(args.join(" "));
        }
        let native = Envoy::start(
            &envoy_bin,
            &server,
            &world,
            &["--mode", "sidecar", "--runtime", &runtime],
            &format!("native{set}"),
        );
        let extproc = Envoy::start(
            &envoy_bin,
            &server,
            &world,
            &[
                "--mode",
                "sidecar",
                "--runtime",
                &runtime,
                "--injection",
                "extproc",
            ],
            &format!("extproc{set}"),
        );
        if set == 0 {
            // The routes every request takes when no rule is for its host are exactly the
            // static configuration's (with ext_proc turned on where it runs).
            let catch_all = |envoy: &Envoy, name: &str| {
                let dump: serde_json::Value =
                    serde_json::from_str(&envoy.admin_get("/config_dump")).unwrap();
                let table = find_route_config(&dump, name).expect("the route table is loaded");
                let mut routes = table["virtual_hosts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|vh| vh["domains"] == serde_json::json!(["*"]))
                    .unwrap()["routes"]
                    .clone();
                for route in routes.as_array_mut().unwrap() {
                    let route = route.as_object_mut().unwrap();
                    route.remove("name");
                    // The native sidecar's ext_proc filter is off unless a route turns it on.
                    if let Some(filters) = route
                        .get_mut("typed_per_filter_config")
                        .and_then(|f| f.as_object_mut())
                    {
                        filters.remove("envoy.filters.http.ext_proc");
                        if filters.is_empty() {
                            route.remove("typed_per_filter_config");
                        }
                    }
                }
                routes
            };
            assert_eq!(
                catch_all(&native, &format!("runta/{runtime}")),
                catch_all(&extproc, "egress")
            );
        }
        for host in hosts {
            for (path, extra) in requests {
                let mut args = vec!["--path-as-is"];
                args.extend(*extra);
                let url = world.url(host, path);
                let want = received(&curl(&extproc.proxy(None), &url, &args));
                let got = received(&curl(&native.proxy(None), &url, &args));
                assert_eq!(
                    got,
                    want,
                    "native (left) and ext_proc (right) differ for {url} {extra:?}\nrules of {runtime}:\n{}",
                    rules.join("\n")
                );
            }
        }
        native_routes +=
            native.stat("http.egress.downstream_rq_completed") - native.stat(EXTPROC_STREAMS);
        native_streams += native.stat(EXTPROC_STREAMS);
        extproc_streams += extproc.stat(EXTPROC_STREAMS);
    }
    // Not vacuous: Envoy injected natively, and called ext_proc far less.
    assert!(
        native_routes > 20,
        "only {native_routes} requests took compiled routes"
    );
    assert!(
        native_streams * 2 < extproc_streams,
        "ext_proc streams: native sidecars {native_streams}, ext_proc sidecars {extproc_streams}"
    );
    assert_no_value("runta's log", &server.stop());
}

/// The route table `name` anywhere in an Envoy config dump.
fn find_route_config<'v>(
    value: &'v serde_json::Value,
    name: &str,
) -> Option<&'v serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => {
            if map.get("name").and_then(|n| n.as_str()) == Some(name)
                && map.contains_key("virtual_hosts")
            {
                return Some(value);
            }
            map.values().find_map(|v| find_route_config(v, name))
        }
        serde_json::Value::Array(items) => items.iter().find_map(|v| find_route_config(v, name)),
        _ => None,
    }
}
