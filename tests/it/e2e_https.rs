//! HTTPS interception end to end: unmodified clients (curl, Python `requests`, `httpx`, the
//! OpenAI SDK, Node's undici) call `https://` URLs through the real Envoy gateway, configured
//! only by the variables `runta runtime env` prints. The upstream is a TLS echo server on port
//! 443 of a loopback address of the test's own, so `https://api.openai.com/v1/models` is
//! called exactly as written (the test's DNS server sends every name there).
//!
//! Without Envoy (or the test clients `scripts/test` installs) these tests are skipped
//! locally and fail under CI (`CI=true`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::{Server, ok};
use crate::e2e::{Envoy, World, envoy_binary};
use crate::support::{assert_no_marker, free_port};

const OPENAI: &str = "sk-https-OPENAI-7c1d";
const OTHER: &str = "sk-https-OTHER-52e8";
const WILD: &str = "wild-https-WILD-9b3f";
const MARKERS: &[&str] = &["OPENAI-7c1d", "OTHER-52e8", "WILD-9b3f"];

/// The upstream on port 443 of a loopback address no other test uses (127.0.x.y), so tests
/// in parallel do not collide and URLs need no port.
fn world_on_443() -> World {
    for _ in 0..100 {
        let [a, b]: [u8; 2] = rand::random();
        let host = format!("127.0.{a}.{}", b.max(2));
        match std::net::TcpListener::bind((host.as_str(), 443)) {
            Ok(probe) => {
                drop(probe);
                return World::at(&host, 443);
            }
            Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
                panic!("binding port 443 on loopback needs root (or CAP_NET_BIND_SERVICE): {err}")
            }
            Err(_) => continue,
        }
    }
    panic!("no free loopback address for port 443");
}

/// `runta serve`, the gateway Envoy, and the rules: runtime `worker` has the seed's OpenAI
/// rule (`/v1/*`) and a wildcard `*.example.com` rule; runtime `other` its own OpenAI secret.
/// No rule anywhere is for `api.other.com`.
struct Https {
    world: World,
    server: Server,
    envoy: Envoy,
    grpc_port: u16,
}

impl Https {
    fn start(server_args: &[&str]) -> Option<Self> {
        let envoy_bin = envoy_binary()?;
        let world = world_on_443();
        let grpc_port = free_port();
        let grpc = format!("127.0.0.1:{grpc_port}");
        let mut args = vec!["--grpc-listen", grpc.as_str()];
        args.extend(server_args);
        let server = Server::start(world.dir.path(), &args);
        for (name, value) in [
            ("openai-api-key", OPENAI),
            ("other-key", OTHER),
            ("wild-key", WILD),
        ] {
            ok(&server.shell(&format!(
                "V='{value}' runta secret add {name} --value-env V"
            )));
        }
        for line in [
            "runta secret rule add worker --host api.openai.com --path '/v1/*' --credential openai-api-key --inject-header Authorization --inject-value 'Bearer ${credential}'",
            "runta secret rule add worker --host '*.example.com' --credential wild-key --inject-header x-api-key",
            "runta secret rule add other --host api.openai.com --credential other-key --inject-header Authorization --inject-value 'Bearer ${credential}'",
        ] {
            ok(&server.shell(line));
        }
        let envoy = Envoy::start(
            &envoy_bin,
            &server,
            &world,
            &["--mode", "gateway"],
            "gateway",
        );
        Some(Self {
            world,
            server,
            envoy,
            grpc_port,
        })
    }

    /// What `runta runtime env RUNTIME` prints, as (name, value) pairs; the bundle holds the
    /// test upstream's CA as the "system roots" and runta's CA.
    fn runtime_env(&self, runtime: &str) -> Vec<(String, String)> {
        let bundle = self.world.dir.path().join(format!("{runtime}-bundle.pem"));
        let gateway = format!("http://127.0.0.1:{}", self.envoy.port);
        let out = self.server.runta(&[
            "runtime",
            "env",
            runtime,
            "--gateway",
            &gateway,
            "--ca-bundle-out",
            bundle.to_str().unwrap(),
            "--system-roots",
            self.world.ca.to_str().unwrap(),
            "-o",
            "json",
        ]);
        let answer: Value = serde_json::from_str(&ok(&out)).unwrap();
        answer["variables"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect()
    }

    fn token(&self, runtime: &str) -> (String, String) {
        let out = self
            .server
            .runta(&["runtime", "token", "create", runtime, "-o", "json"]);
        let created: Value = serde_json::from_str(&ok(&out)).unwrap();
        (
            created["id"].as_str().unwrap().to_owned(),
            created["token"].as_str().unwrap().to_owned(),
        )
    }

    fn proxy(&self, token: &str) -> String {
        format!("http://{token}:x@127.0.0.1:{}", self.envoy.port)
    }

    fn bundle(&self, runtime: &str) -> PathBuf {
        let path = self.world.dir.path().join(format!("{runtime}-bundle.pem"));
        if !path.exists() {
            self.runtime_env(runtime);
        }
        path
    }
}

/// What curl got through the proxy: status, HTTP version, body, and curl's error text.
#[derive(Debug)]
struct Got {
    status: u16,
    version: String,
    body: String,
    stderr: String,
}

impl Got {
    fn echo(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|_| panic!("not an upstream echo: {self:?}"))
    }
}

/// The values the upstream saw for a header.
fn header(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|h| h[1].as_str().unwrap().to_owned())
        .collect()
}

/// `https://api.other.com` forced through a tunnel to api.openai.com (curl's `--connect-to`):
/// the name reaches runta's SDS, which refuses it, so the TLS handshake fails.
fn handshake_fails_for_api_other_com_in_a_tunnel_to_api_openai_com(proxy: &str, bundle: &str) {
    let got = curl(
        proxy,
        "https://api.other.com/v1/models",
        &[
            "--cacert",
            bundle,
            "--connect-to",
            "api.other.com:443:api.openai.com:443",
        ],
    );
    assert_eq!(got.status, 0, "{got:?}");
    assert!(
        got.stderr.contains("SSL") || got.stderr.contains("TLS"),
        "{got:?}"
    );
}

fn curl(proxy: &str, url: &str, extra: &[&str]) -> Got {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15", "-x", proxy])
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, trailer) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut trailer = trailer.split(' ');
    Got {
        status: trailer.next().unwrap_or("0").parse().unwrap_or(0),
        version: trailer.next().unwrap_or("").to_owned(),
        body: body.to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn curl_gets_its_credential_injected_over_http1_and_http2() {
    let Some(https) = Https::start(&[]) else {
        return;
    };
    let (_, worker) = https.token("worker");
    let proxy = https.proxy(&worker);
    let bundle = https.bundle("worker");
    let bundle = bundle.to_str().unwrap();
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let got = curl(
            &proxy,
            "https://api.openai.com/v1/models",
            &[
                flag,
                "--cacert",
                bundle,
                "-H",
                "Authorization: Bearer dummy",
            ],
        );
        assert_eq!(
            (got.status, got.version.as_str()),
            (200, version),
            "{got:?}"
        );
        let echo = got.echo();
        assert_eq!(
            header(&echo, "authorization"),
            [format!("Bearer {OPENAI}")],
            "{flag}: the runtime's own Authorization is overwritten"
        );
        assert!(header(&echo, "proxy-authorization").is_empty(), "{echo}");
        assert_eq!(echo["path"], "/v1/models");
        // Upstream over TLS, with the real name.
        assert_eq!(echo["sni"], "api.openai.com", "{echo}");
    }
    // Intercepted, but no rule for this path: the request goes on as the runtime sent it.
    let got = curl(
        &proxy,
        "https://api.openai.com/v2/other",
        &["--cacert", bundle, "-H", "Authorization: Bearer dummy"],
    );
    assert_eq!(header(&got.echo(), "authorization"), ["Bearer dummy"]);
    // A wildcard rule: the leaf is for the exact name asked for.
    let got = curl(
        &proxy,
        "https://deep.example.com/x",
        &["--cacert", bundle, "-v"],
    );
    assert_eq!(header(&got.echo(), "x-api-key"), [WILD], "{got:?}");
    assert!(
        got.stderr.contains("subject: CN=deep.example.com"),
        "{}",
        got.stderr
    );
    // The intercepted tunnels were decided as such, and the leaves minted by runta.
    let metrics = http_get(&format!("{}/metrics", https.server.url));
    assert!(
        metrics.contains("runta_extproc_decisions_total{outcome=\"intercept\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("runta_interception_leaves_minted_total 2"),
        "{metrics}"
    );
    assert_no_marker(MARKERS, "Envoy's access log", &https.envoy.access_log());
    assert_no_marker(MARKERS, "runta's log", &https.server.log_text());
}

fn http_get(url: &str) -> String {
    let out = Command::new("curl").args(["-sS", url]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The Python and Node test clients: `None` (skipped) when `scripts/test` has not installed
/// them, a failure under CI.
fn test_clients() -> Option<(PathBuf, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    let node_modules = root.join("tests/clients/node_modules/undici");
    let have_python = python.exists()
        && Command::new(&python)
            .args(["-c", "import requests, httpx, openai"])
            .status()
            .is_ok_and(|s| s.success());
    if have_python && node_modules.exists() {
        return Some((python, root.join("tests/clients")));
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "CI=true but the HTTPS test clients are missing: scripts/test installs them (scripts/lib/clients.sh)"
        );
    }
    eprintln!("skipping: the HTTPS test clients are not installed (scripts/test installs them)");
    None
}

/// Runs a client with exactly the runtime's variables (and nothing of ours that could help).
fn run_client(program: &Path, args: &[&str], env: &[(String, String)]) -> Value {
    let mut command = Command::new(program);
    command.args(args);
    for name in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let out = command.output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).unwrap_or_else(|_| {
        panic!(
            "{} {args:?}: {line}\n{}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn unmodified_python_and_node_clients_with_only_environment_variables() {
    let Some((python, clients)) = test_clients() else {
        return;
    };
    let Some(https) = Https::start(&[]) else {
        return;
    };
    let env = https.runtime_env("worker");
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    for name in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "GIT_SSL_CAINFO",
        "NODE_USE_ENV_PROXY",
    ] {
        assert!(
            names.contains(&name),
            "runta runtime env prints {name}: {names:?}"
        );
    }
    let script = clients.join("https_get.py");
    let url = "https://api.openai.com/v1/models";
    for client in ["requests", "httpx", "openai"] {
        let answer = run_client(&python, &[script.to_str().unwrap(), client, url], &env);
        assert_eq!(answer["status"], 200, "{client}: {answer}");
        let echo: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            header(&echo, "authorization"),
            [format!("Bearer {OPENAI}")],
            "{client}: {echo}"
        );
        assert!(header(&echo, "proxy-authorization").is_empty(), "{client}");
    }
    let node = Path::new("node");
    let answer = run_client(
        node,
        &[clients.join("https_get.mjs").to_str().unwrap(), url],
        &env,
    );
    assert_eq!(answer["status"], 200, "undici: {answer}");
    let echo: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert_eq!(header(&echo, "authorization"), [format!("Bearer {OPENAI}")]);
    // A host no rule is for passes through: the client validates the real certificate (in the
    // bundle as a "system root") and nothing is injected.
    let answer = run_client(
        &python,
        &[
            script.to_str().unwrap(),
            "requests",
            "https://api.other.com/v1/models",
        ],
        &env,
    );
    assert_eq!(answer["status"], 200, "{answer}");
    let echo: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
    assert!(header(&echo, "authorization").is_empty(), "{echo}");
    assert_no_marker(MARKERS, "runta's log", &https.server.log_text());
}

#[test]
fn parallel_tunnels_of_two_runtimes_never_carry_each_others_secret() {
    let Some(https) = Https::start(&[]) else {
        return;
    };
    let (_, worker) = https.token("worker");
    let (_, other) = https.token("other");
    let bundle = https.bundle("worker");
    const TUNNELS: usize = 20;
    const REQUESTS: usize = 10;
    // Each curl keeps one tunnel and sends all its requests through it.
    let mut children = Vec::new();
    for i in 0..TUNNELS * 2 {
        let (token, want) = if i % 2 == 0 {
            (&worker, format!("Bearer {OPENAI}"))
        } else {
            (&other, format!("Bearer {OTHER}"))
        };
        let mut command = Command::new("curl");
        command
            .args([
                "-sS",
                "--max-time",
                "60",
                "-x",
                &https.proxy(token),
                "--cacert",
            ])
            .arg(&bundle)
            .args(["-w", "\n%{num_connects}\n"]);
        for _ in 0..REQUESTS {
            command.arg("https://api.openai.com/v1/models");
        }
        children.push((command.spawn_output(), want));
    }
    let mut seen = 0;
    for (child, want) in children {
        let out = child.join().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines().filter(|l| !l.is_empty());
        let mut connects = 0;
        for _ in 0..REQUESTS {
            let body = lines
                .next()
                .unwrap_or_else(|| panic!("too few answers: {text}"));
            let echo: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{text}"));
            assert_eq!(
                header(&echo, "authorization"),
                std::slice::from_ref(&want),
                "{echo}"
            );
            connects += lines.next().unwrap().parse::<u32>().unwrap();
            seen += 1;
        }
        assert_eq!(
            connects, 1,
            "one tunnel for all of a curl's requests: {text}"
        );
    }
    assert_eq!(seen, TUNNELS * 2 * REQUESTS);
}

/// Runs a command on a thread, for many at once.
trait SpawnOutput {
    fn spawn_output(&mut self) -> std::thread::JoinHandle<Output>;
}

impl SpawnOutput for Command {
    fn spawn_output(&mut self) -> std::thread::JoinHandle<Output> {
        let child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::spawn(move || child.wait_with_output().unwrap())
    }
}

#[test]
fn refused_tunnels_and_misdirected_requests_reach_nothing() {
    let Some(https) = Https::start(&[]) else {
        return;
    };
    let (worker_id, worker) = https.token("worker");
    let proxy = https.proxy(&worker);
    let bundle = https.bundle("worker");
    let bundle = bundle.to_str().unwrap();
    let upstream_ca = https.world.ca.to_str().unwrap();
    let before = https.world.upstream_requests();

    // A request for another host inside a tunnel to api.openai.com: 421, never forwarded.
    let got = curl(
        &proxy,
        "https://api.openai.com/v1/models",
        &["--cacert", bundle, "-H", "Host: api.other.com"],
    );
    assert_eq!(got.status, 421, "{got:?}");
    assert!(got.body.contains("another host than the tunnel"), "{got:?}");
    // A server name no rule covers, in a tunnel to a covered host: the handshake fails (runta
    // refuses the name over SDS).
    handshake_fails_for_api_other_com_in_a_tunnel_to_api_openai_com(&proxy, bundle);
    // A server name the gateway has a leaf for (another runtime's rule host), in a tunnel to
    // worker's host: the handshake succeeds, but the request names another host than the
    // tunnel's target: 421, not forwarded to api.example.net's server.
    ok(&https.server.shell(
        "runta secret rule add other --host api.example.net --credential other-key --inject-header x-other",
    ));
    let got = curl(
        &proxy,
        "https://api.example.net/v1/models",
        &[
            "--cacert",
            bundle,
            "--connect-to",
            "api.example.net:443:api.openai.com:443",
        ],
    );
    assert_eq!(got.status, 421, "{got:?}");
    // No credentials, unknown ones, revoked ones: 407 to the CONNECT.
    let no_token = format!("http://127.0.0.1:{}", https.envoy.port);
    for proxy in [no_token, https.proxy("runta_rt_unknown")] {
        let got = curl(
            &proxy,
            "https://api.openai.com/v1/models",
            &["--cacert", bundle],
        );
        assert!(
            got.stderr.contains("CONNECT tunnel failed, response 407"),
            "{proxy}: {got:?}"
        );
    }
    ok(&https
        .server
        .runta(&["runtime", "token", "revoke", &worker_id]));
    let got = curl(
        &proxy,
        "https://api.openai.com/v1/models",
        &["--cacert", bundle],
    );
    assert!(got.stderr.contains("response 407"), "{got:?}");
    assert_eq!(
        https.world.upstream_requests(),
        before,
        "nothing reached the upstream"
    );

    // A client's own `x-runta-connect: intercept` on a CONNECT to a host without rules counts
    // for nothing: runta's answer overwrites it, and the tunnel passes through (the real
    // certificate validates).
    let (_, fresh) = https.token("worker");
    let got = curl(
        &https.proxy(&fresh),
        "https://api.other.com/v1/models",
        &[
            "--cacert",
            upstream_ca,
            "--proxy-header",
            "x-runta-connect: intercept",
        ],
    );
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.echo()["sni"], "api.other.com");
    // A host without rules passes through: the real certificate (the upstream's CA alone is
    // trusted), nothing injected.
    let got = curl(
        &https.proxy(&fresh),
        "https://api.other.com/v1/models",
        &["--cacert", upstream_ca, "-H", "Authorization: Bearer mine"],
    );
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(header(&got.echo(), "authorization"), ["Bearer mine"]);
    // ...while a covered host is intercepted: the upstream's CA alone does not do.
    let got = curl(
        &https.proxy(&fresh),
        "https://api.openai.com/v1/models",
        &["--cacert", upstream_ca],
    );
    assert_eq!(got.status, 0, "{got:?}");
    assert!(got.stderr.contains("certificate"), "{got:?}");
}

#[test]
fn unmatched_tunnels_are_refused_when_the_policy_says_deny() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("runta.toml");
    std::fs::write(&config, "[interception]\nunmatched_connect = \"deny\"\n").unwrap();
    let Some(https) = Https::start(&["--config", config.to_str().unwrap()]) else {
        return;
    };
    let (_, worker) = https.token("worker");
    let bundle = https.bundle("worker");
    let got = curl(
        &https.proxy(&worker),
        "https://api.other.com/v1/models",
        &["--cacert", https.world.ca.to_str().unwrap()],
    );
    assert!(
        got.stderr.contains("CONNECT tunnel failed, response 403"),
        "{got:?}"
    );
    let got = curl(
        &https.proxy(&worker),
        "https://api.openai.com/v1/models",
        &["--cacert", bundle.to_str().unwrap()],
    );
    assert_eq!(
        header(&got.echo(), "authorization"),
        [format!("Bearer {OPENAI}")]
    );
}

/// A kept-alive HTTPS connection through a CONNECT tunnel, spoken by hand (rustls).
struct Tunnel {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    host: String,
}

impl Tunnel {
    fn open(proxy_port: u16, host: &str, token: &str, bundle: &Path) -> std::io::Result<Self> {
        use base64::Engine as _;
        use rustls::pki_types::pem::PemObject as _;
        let mut tcp = TcpStream::connect(("127.0.0.1", proxy_port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(15)))?;
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{token}:x"));
        write!(
            tcp,
            "CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\nProxy-Authorization: Basic {credentials}\r\n\r\n"
        )?;
        let mut reader = BufReader::new(tcp.try_clone()?);
        let mut status = String::new();
        reader.read_line(&mut status)?;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        if !status.contains(" 200") {
            return Err(std::io::Error::other(format!("CONNECT: {status}")));
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(bundle).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
        let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut tls = rustls::StreamOwned::new(connection, tcp);
        tls.flush()?;
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
        })
    }

    /// A GET on the kept-alive connection: status and body.
    fn get(&mut self, path: &str) -> std::io::Result<(u16, String)> {
        write!(
            self.tls,
            "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.host
        )?;
        self.tls.flush()?;
        let mut reader = BufReader::new(&mut self.tls);
        let mut status = String::new();
        reader.read_line(&mut status)?;
        let code = status
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let (mut length, mut chunked) = (0usize, false);
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let lower = line.to_ascii_lowercase();
            if let Some(value) = lower.strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size)?;
                let size = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; size + 2];
                reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            body.resize(length, 0);
            reader.read_exact(&mut body)?;
        }
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    }
}

#[test]
fn runta_restarting_under_open_tunnels_never_lets_a_request_out_without_its_credential() {
    let Some(https) = Https::start(&[]) else {
        return;
    };
    let (_, worker) = https.token("worker");
    let bundle = https.bundle("worker");
    let mut tunnel = Tunnel::open(https.envoy.port, "api.openai.com", &worker, &bundle).unwrap();
    let (status, body) = tunnel.get("/v1/models").unwrap();
    assert_eq!(status, 200, "{body}");
    let echo: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(header(&echo, "authorization"), [format!("Bearer {OPENAI}")]);

    // runta goes away: the open tunnel's next request is refused by Envoy (fail closed).
    let dir = https.world.dir.path().to_owned();
    let grpc = format!("127.0.0.1:{}", https.grpc_port);
    let Https {
        world,
        server,
        envoy,
        ..
    } = https;
    // It stops by itself on SIGTERM although Envoy holds SDS streams open (they end on
    // shutdown), rather than being killed after the grace period.
    let log = server.stop();
    assert!(
        log.lines()
            .any(|line| line.trim_end().ends_with("INFO runta::serve: stopped")),
        "runta did not stop gracefully:\n{log}"
    );
    let before = world.upstream_requests();
    // Refused by Envoy, or the tunnel closed: either way nothing is forwarded.
    if let Ok((status, body)) = tunnel.get("/v1/models") {
        assert!(status >= 500, "{status}: {body}");
    }
    assert_eq!(world.upstream_requests(), before, "forwarded without runta");

    // runta is back (same data directory, so the same CA and rules): open tunnels, new
    // tunnels and names never asked for before all work again.
    let server = Server::start(&dir, &["--grpc-listen", &grpc]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut fresh = loop {
        match Tunnel::open(envoy.port, "api.openai.com", &worker, &bundle)
            .and_then(|mut t| t.get("/v1/models").map(|answer| (t, answer)))
        {
            Ok((t, (200, _))) => break t,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no tunnel after the restart: {:?}",
                    other.map(|(_, answer)| answer)
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    let (status, body) = fresh.get("/v1/models").unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        header(&serde_json::from_str(&body).unwrap(), "authorization"),
        [format!("Bearer {OPENAI}")]
    );
    let mut new_name = Tunnel::open(envoy.port, "new.example.com", &worker, &bundle).unwrap();
    let (status, body) = new_name.get("/x").unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        header(&serde_json::from_str(&body).unwrap(), "x-api-key"),
        [WILD]
    );
    if let Ok((status, body)) = tunnel.get("/v1/models") {
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            header(&serde_json::from_str(&body).unwrap(), "authorization"),
            [format!("Bearer {OPENAI}")]
        );
    }
    drop(server);
}

#[test]
fn a_sidecar_intercepts_only_its_own_runtimes_hosts() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let Some(https) = Https::start(&[]) else {
        return;
    };
    // A rule of another runtime only: the sidecar of `worker` must not intercept it.
    ok(&https.server.shell(
        "runta secret rule add other --host api.other.com --credential other-key --inject-header x-other",
    ));
    let sidecar = Envoy::start(
        &envoy_bin,
        &https.server,
        &https.world,
        &["--mode", "sidecar", "--runtime", "worker"],
        "sidecar",
    );
    let bundle = https.bundle("worker");
    let bundle = bundle.to_str().unwrap();
    // No proxy credentials: the sidecar's own runtime token identifies it.
    let proxy = format!("http://127.0.0.1:{}", sidecar.port);
    let got = curl(
        &proxy,
        "https://api.openai.com/v1/models",
        &["--cacert", bundle],
    );
    assert_eq!(
        header(&got.echo(), "authorization"),
        [format!("Bearer {OPENAI}")],
        "{got:?}"
    );
    // Another runtime's host: passed through (the real certificate), nothing injected.
    let got = curl(
        &proxy,
        "https://api.other.com/v1/models",
        &["--cacert", https.world.ca.to_str().unwrap()],
    );
    assert_eq!(got.status, 200, "{got:?}");
    assert!(header(&got.echo(), "x-other").is_empty());
    // Forced into interception by hand (a tunnel to worker's host carrying another name), the
    // sidecar's SDS refuses the name: the handshake fails.
    handshake_fails_for_api_other_com_in_a_tunnel_to_api_openai_com(&proxy, bundle);
    assert_no_marker(MARKERS, "the sidecar's access log", &sidecar.access_log());
}
