//! The `runta` binary as a user runs it: `runta serve` on the embedded default in a fresh
//! directory, the seed's commands verbatim through a shell, exit codes, the quickstart files,
//! and the secret values grepped for in every output, the server log and the database files.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::assert_no_marker;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_runta");

/// A `runta serve` process on a free port, stopped (SIGTERM, then kill) when dropped.
pub(crate) struct Server {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
    pub(crate) url: String,
}

impl Server {
    /// Starts `runta serve` in `dir` with no configuration but a free admin port.
    pub(crate) fn start(dir: &Path, extra: &[&str]) -> Self {
        let log = dir.join(format!(
            "serve-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        // Free ports unless the caller names its own.
        let mut args = vec!["serve"];
        if !extra.contains(&"--admin-listen") {
            args.extend(["--admin-listen", "127.0.0.1:0"]);
        }
        if !extra.contains(&"--grpc-listen") {
            args.extend(["--grpc-listen", "127.0.0.1:0"]);
        }
        let child = Command::new(BIN)
            .args(&args)
            .args(extra)
            .current_dir(dir)
            .env_remove("RUNTA_API_KEY")
            .env_remove("RUNTA_DATA_DIR")
            .env_remove("RUNTA_CONFIG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut server = Self {
            child,
            dir: dir.to_owned(),
            log,
            url: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&server.log).unwrap_or_default();
            if let Some(rest) = text.split("admin API listening on ").nth(1) {
                server.url = rest.split_whitespace().next().unwrap().to_owned();
                return server;
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("runta serve exited ({status}) before listening:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "runta serve did not start:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `runta ARGS` against this server from its directory.
    pub(crate) fn runta(&self, args: &[&str]) -> Output {
        self.command(BIN).args(args).output().unwrap()
    }

    /// Runs a shell line (the seed's commands as written) with `runta` on the PATH.
    pub(crate) fn shell(&self, line: &str) -> Output {
        self.command("bash").args(["-c", line]).output().unwrap()
    }

    fn command(&self, program: &str) -> Command {
        let bin_dir = Path::new(BIN).parent().unwrap();
        let mut command = Command::new(program);
        command
            .current_dir(&self.dir)
            .env(
                "PATH",
                format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
            )
            .env("RUNTA_API_URL", &self.url)
            .env_remove("RUNTA_API_KEY")
            .env_remove("RUNTA_OPERATOR_TOKEN")
            .env_remove("RUNTA_DATA_DIR")
            .stdin(Stdio::null());
        command
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    pub(crate) fn stop(mut self) -> String {
        self.terminate();
        self.log_text()
    }

    /// The threads of the server process: (name, nice value).
    pub(crate) fn threads(&self) -> Vec<(String, i64)> {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(tasks)
            .unwrap()
            .filter_map(|task| {
                let dir = task.ok()?.path();
                let name = std::fs::read_to_string(dir.join("comm")).ok()?;
                let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
                Some((name.trim().to_owned(), nice_in_stat(&stat)?))
            })
            .collect()
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`, ...) to the server process, as a fault would.
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.terminate();
        }
    }
}

#[track_caller]
pub(crate) fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn all_output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// Obviously fake values; each has a unique marker to grep for.
const OPENAI: &str = "sk-example-MARKER-openai-5c3e";
const GITHUB: &str = "ghp-example-MARKER-github-91ab";
const INTERNAL: &str = "internal-MARKER-prompt-d00d";
const MARKERS: &[&str] = &[
    "MARKER-openai-5c3e",
    "MARKER-github-91ab",
    "MARKER-prompt-d00d",
];

#[track_caller]
fn assert_no_value(what: &str, text: &str) {
    assert_no_marker(MARKERS, what, text);
}

#[test]
fn seed_walkthrough() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut outputs = Vec::new();

    // Store a secret, three ways.
    let out = server.shell(&format!(
        "export OPENAI_API_KEY={OPENAI}\nrunta secret add openai-api-key --value-env OPENAI_API_KEY"
    ));
    outputs.push(all_output(&out));
    assert!(ok(&out).contains("openai-api-key"));
    let out = server.shell(&format!(
        "GITHUB_TOKEN={GITHUB}\nprintf '%s' \"$GITHUB_TOKEN\" | runta secret add github-token --value-stdin"
    ));
    outputs.push(all_output(&out));
    ok(&out);
    let out = server
        .command("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/scripts/pty_answer.py"
        ))
        .args([
            "Value for secret",
            "--",
            BIN,
            "secret",
            "add",
            "internal-api",
            "--prompt",
            "--cache-ttl-secs",
            "300",
        ])
        .env("PTY_ANSWER", INTERNAL)
        .output()
        .unwrap();
    let screen = ok(&out);
    assert!(screen.contains("Value for secret internal-api"), "{screen}");
    assert!(screen.contains("Created secret internal-api"), "{screen}");
    outputs.push(screen);

    // List: metadata, never values.
    let out = server.shell("runta secret list");
    let list = ok(&out);
    for name in ["openai-api-key", "github-token", "internal-api"] {
        assert!(list.contains(name), "{list}");
    }
    assert!(list.contains("300"));
    outputs.push(list);
    let out = server.runta(&["secret", "get", "internal-api", "--output", "json"]);
    let json: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(json["cache_ttl_secs"], 300);
    assert_eq!(json["version"], 1);
    outputs.push(json.to_string());

    // The stdin value lost its trailing newline only when there was one: printf '%s' adds none.
    // Delete, as the seed does, then store it again for the rule.
    ok(&server.shell("runta secret delete openai-api-key"));
    let out = server.shell(&format!(
        "printf '%s\\n' '{OPENAI}' | runta secret add openai-api-key --value-stdin"
    ));
    outputs.push(all_output(&out));
    ok(&out);

    // Add an injection rule: the seed's command, line breaks and all.
    let out = server.shell(
        "runta secret rule add \\\n  worker \\\n  --host api.openai.com \\\n  --path '/v1/*' \\\n  --credential openai-api-key \\\n  --inject-header Authorization \\\n  --inject-value 'Bearer ${credential}'",
    );
    let added = ok(&out);
    assert!(added.contains("rule_"), "{added}");

    // Rule files.
    std::fs::write(
        dir.path().join("openai-rule.yaml"),
        "rules:\n  - runtime: worker\n    host: api.openai.com\n    path: /v1/*\n    credential: openai-api-key\n    inject:\n      header: Authorization\n      value: Bearer ${credential}\n",
    )
    .unwrap();
    ok(&server.shell("runta secret rule add -f openai-rule.yaml"));

    // List and delete rules.
    let out = server.shell("runta secret rule list worker");
    let table = ok(&out);
    assert_eq!(table.lines().count(), 3, "a header and two rules:\n{table}");
    assert!(
        table.contains("Bearer ${credential}") && table.contains("/v1/*"),
        "{table}"
    );
    let out = server.runta(&["secret", "rule", "list", "worker", "--output", "json"]);
    let rules: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    let id = rules[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(rules[0]["host_pattern"], "api.openai.com");
    ok(&server.shell(&format!("runta secret rule delete {id}")));
    let out = server.runta(&["secret", "rule", "list", "--output", "json"]);
    let rules: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(
        rules.as_array().unwrap().len(),
        1,
        "tenant-wide list after the delete"
    );

    // A secret in use cannot be deleted: exit 1 with the server's message naming the rule.
    let out = server.shell("runta secret delete openai-api-key");
    assert_eq!(out.status.code(), Some(1));
    let remaining = rules[0]["id"].as_str().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains(remaining));

    // Update through the CLI: a new version.
    let out = server.shell("printf 'ghp-example-MARKER-github-91ab-v2' | runta secret update github-token --value-stdin");
    assert!(ok(&out).contains("version 2"));

    // Values never appear: CLI output, server log, database files.
    for text in &outputs {
        assert_no_value("the CLI's output", text);
    }
    let data_dir = dir.path().join("runta-data");
    let log = server.stop();
    assert!(log.contains("admin API listening"));
    assert_no_value("the server log", &log);
    for entry in std::fs::read_dir(&data_dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert_no_value("the data directory", &String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn quickstart_files_are_private_and_kept() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let data = dir.path().join("runta-data");
    let names = [
        "runta.db",
        "master.key",
        "api-key",
        "operator-token",
        "gateway-token",
    ];
    let before: Vec<Vec<u8>> = names
        .iter()
        .skip(1)
        .map(|n| std::fs::read(data.join(n)).unwrap())
        .collect();
    for name in names {
        let mode = std::fs::metadata(data.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
    let log = server.log_text();
    for name in &names[1..] {
        assert!(log.contains(name), "the log names {name}:\n{log}");
    }
    for (name, contents) in names.iter().skip(1).zip(&before) {
        let token = String::from_utf8_lossy(contents).trim().to_owned();
        assert!(
            !log.contains(&token),
            "the contents of {name} are in the log"
        );
    }
    ok(&server.shell("KEPT=sk-test-kept runta secret add kept --value-env KEPT"));
    drop(server);

    // A restart keeps every file, and the stored secret stays readable with the same key.
    let server = Server::start(dir.path(), &[]);
    let after: Vec<Vec<u8>> = names
        .iter()
        .skip(1)
        .map(|n| std::fs::read(data.join(n)).unwrap())
        .collect();
    assert_eq!(before, after);
    assert!(ok(&server.runta(&["secret", "list"])).contains("kept"));
    // The operator token from the data directory manages tenants.
    let out = server.runta(&["tenant", "create", "second", "--output", "json"]);
    let created: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    let key = created["api_key"].as_str().unwrap();
    let out = server.runta(&["secret", "list", "--api-key", key, "-o", "json"]);
    assert_eq!(
        ok(&out).trim(),
        "[]",
        "the new tenant sees none of the default tenant's secrets"
    );
}

#[test]
fn exit_codes_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);

    // 1: an API error, with the server's message.
    let out = server.runta(&["secret", "get", "missing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no secret named 'missing'"));
    let out = server.runta(&[
        "secret",
        "rule",
        "add",
        "worker",
        "--host",
        "*",
        "--credential",
        "x",
        "--inject-header",
        "a",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("host"));
    let out = server.runta(&["secret", "list", "--api-key", "runta_ak_wrong"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid API key"));
    // 1: usage errors, including a missing value source and an unset variable.
    let out = server.runta(&["secret", "add", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--value-env"));
    let out = server.runta(&["secret", "add", "x", "--value-env", "RUNTA_SURELY_UNSET"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RUNTA_SURELY_UNSET"));
    let out = server.runta(&["secret", "frobnicate"]);
    assert_eq!(out.status.code(), Some(1));
    let out = server.runta(&["secret", "add", "x", "--value-stdin", "--prompt"]);
    assert_eq!(out.status.code(), Some(1));
    // --prompt with no terminal says what to do instead.
    let out = server.runta(&["secret", "add", "x", "--prompt"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--value-stdin"));
    // 0: help.
    assert_eq!(
        server
            .runta(&["secret", "rule", "add", "--help"])
            .status
            .code(),
        Some(0)
    );
    // 2: nobody listening.
    let url = server.url.clone();
    drop(server);
    let out = Command::new(BIN)
        .args(["secret", "list", "--api-url", &url])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", all_output(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

#[test]
fn bad_configuration_stops_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    for (args, env, key) in [
        (vec!["--admin-listen", "nowhere"], vec![], "admin.listen"),
        (vec!["--database-url", "mysql://x"], vec![], "database.url"),
        (
            vec![],
            vec![("RUNTA_DATABASE__MAX_CONNECTIONS", "0")],
            "database.max_connections",
        ),
        (
            vec!["--database-url", "postgres://127.0.0.1:1/x"],
            vec![],
            "encryption.keys",
        ),
    ] {
        let out = Command::new(BIN)
            .arg("serve")
            .args(&args)
            .envs(env)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{args:?}: {stderr}");
    }
    let config = dir.path().join("runta.toml");
    std::fs::write(&config, "[admin]\nlisen = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config", config.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("lisen"));
}

#[test]
fn keys_generate_and_rotate_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    ok(&server.shell("ONE=sk-test-one runta secret add one --value-env ONE"));
    drop(server);
    ok(&Command::new(BIN)
        .args(["keys", "generate", "--out", "k2.key"])
        .current_dir(dir.path())
        .output()
        .unwrap());
    std::fs::write(
        dir.path().join("runta.toml"),
        "[encryption]\nactive_key = \"k2\"\n\n[[encryption.keys]]\nid = \"master\"\nkey_file = \"runta-data/master.key\"\n\n[[encryption.keys]]\nid = \"k2\"\nkey_file = \"k2.key\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["keys", "rotate", "--config", "runta.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = ok(&out);
    assert!(
        text.contains("re-encrypted 1 secret(s) under key 'k2'"),
        "{text}"
    );
    assert!(
        !text.contains("master "),
        "nothing is left under the old key:\n{text}"
    );
    // The server runs with the new keyring and still serves the secret's metadata.
    let server = Server::start(dir.path(), &["--config", "runta.toml"]);
    assert!(server.log_text().contains("active_key=\"k2\"") || server.log_text().contains("k2"));
    assert!(ok(&server.runta(&["secret", "get", "one"])).contains("one"));
}

#[test]
fn runtime_tokens_tenants_and_api_keys_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let out = server.runta(&["runtime", "token", "create", "worker"]);
    let text = ok(&out);
    let token = text.lines().last().unwrap().trim().to_owned();
    assert!(token.starts_with("runta_rt_"), "{text}");
    let out = server.runta(&["runtime", "token", "list", "worker", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(
        !list.to_string().contains(&token),
        "a token is shown only once"
    );
    let id = list[0]["id"].as_str().unwrap().to_owned();
    assert!(ok(&server.runta(&["runtime", "token", "revoke", &id])).contains(&id));
    let table = ok(&server.runta(&["runtime", "token", "list", "worker"]));
    assert!(
        table.lines().nth(1).unwrap().contains(&id)
            && !table.lines().nth(1).unwrap().ends_with('-'),
        "{table}"
    );

    let out = server.runta(&["tenant", "create", "acme"]);
    assert!(ok(&out).contains("runta_ak_"));
    let out = server.runta(&["tenant", "create", "acme"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert!(ok(&server.runta(&["tenant", "list"])).contains("acme"));
    // A tenant key is not the operator token.
    let key = std::fs::read_to_string(dir.path().join("runta-data/api-key")).unwrap();
    let out = server.runta(&["tenant", "list", "--operator-token", key.trim()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("operator token"));

    let out = server.runta(&["api-key", "create", "--name", "ci", "-o", "json"]);
    let created: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert!(created["key"].as_str().unwrap().starts_with("runta_ak_"));
    assert_eq!(ok(&server.runta(&["api-key", "list"])).lines().count(), 3);
}

/// One decision through the real binary's ext_proc port: the log line names the rule and the
/// credential, never the value, nor the query string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_logged_without_values() {
    use crate::extproc::{Caller, Outcome, call, get};
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    ok(&server.shell(&format!(
        "export OPENAI_API_KEY={OPENAI}\nrunta secret add openai-api-key --value-env OPENAI_API_KEY"
    )));
    ok(&server.shell(
        "runta secret rule add worker --host api.openai.com --path '/v1/*' --credential openai-api-key --inject-header Authorization --inject-value 'Bearer ${credential}'",
    ));
    let grpc = server.grpc_addr();
    // A sidecar authenticates with its runtime's token, which fixes tenant and runtime.
    let created: serde_json::Value = serde_json::from_str(&ok(
        &server.runta(&["runtime", "token", "create", "worker", "-o", "json"])
    ))
    .unwrap();
    let runtime_token = created["token"].as_str().unwrap().to_owned();
    let mut client = envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient::connect(
        format!("http://{grpc}"),
    )
    .await
    .unwrap();
    let caller = Caller {
        gateway_token: None,
        sidecar: None,
        runtime_token: Some(&runtime_token),
    };
    let outcome = call(
        &mut client,
        caller,
        &get("api.openai.com", "/v1/chat?api_key=QUERYMARKER"),
    )
    .await;
    let Outcome::Continue(mutation) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        mutation.set,
        [("authorization".to_owned(), format!("Bearer {OPENAI}"))]
    );
    let log = server.stop();
    let line = log
        .lines()
        .find(|l| l.contains("ext_proc decision"))
        .expect("a decision line");
    for field in [
        "tenant=default",
        "runtime=worker",
        "rule_",
        "openai-api-key",
        "host=api.openai.com",
        "path=/v1/chat",
        "outcome=inject",
        "micros=",
    ] {
        assert!(line.contains(field), "{field} missing from: {line}");
    }
    assert!(!log.contains("QUERYMARKER"), "the query string is logged");
    assert_no_value("the server log", &log);
}

impl Server {
    /// The ext_proc address the server logged.
    pub(crate) fn grpc_addr(&self) -> String {
        self.log_text()
            .split("ext_proc gRPC listening on ")
            .nth(1)
            .expect("the gRPC listener is logged")
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }
}

/// The settings several commands share, and which commands take them, by the longest prefix of
/// the command's path: a new subcommand of a family is held to its family's line; a new family
/// needs a line of its own.
const SETTINGS: &[(&str, &[&str])] = &[
    (
        "serve",
        &[
            "config",
            "data-dir",
            "database-url",
            "grpc-listen",
            "admin-listen",
        ],
    ),
    ("migrate", STORE_SETTINGS),
    ("keys", STORE_SETTINGS),
    ("keys generate", &[]),
    ("secret", TENANT_CLIENT_SETTINGS),
    ("runtime", TENANT_CLIENT_SETTINGS),
    ("api-key", TENANT_CLIENT_SETTINGS),
    (
        "tenant",
        &["api-url", "data-dir", "operator-token", "output"],
    ),
    // The server's configuration, and the admin API for a sidecar's new runtime token.
    (
        "envoy bootstrap",
        &["config", "data-dir", "grpc-listen", "api-url", "api-key"],
    ),
    ("completions", &[]),
    // Reads the CA the way `runta serve` finds it.
    ("ca export", STORE_SETTINGS),
    ("ca generate", &[]),
    // The trail through the admin API, as a tenant or (--operator) as the operator.
    (
        "audit list",
        &["api-url", "data-dir", "api-key", "operator-token", "output"],
    ),
    // The chain, read from the database itself.
    (
        "audit verify",
        &["config", "data-dir", "database-url", "output"],
    ),
];
const STORE_SETTINGS: &[&str] = &["config", "data-dir", "database-url"];
const TENANT_CLIENT_SETTINGS: &[&str] = &["api-url", "data-dir", "api-key", "output"];

/// The settings a leaf command takes, from `SETTINGS`.
fn settings_of(path: &str) -> std::collections::BTreeSet<&'static str> {
    let line = SETTINGS
        .iter()
        .filter(|(prefix, _)| path == *prefix || path.starts_with(&format!("{prefix} ")))
        .max_by_key(|(prefix, _)| prefix.len())
        .unwrap_or_else(|| {
            panic!("`runta {path}` has no line in SETTINGS: which settings does it take?")
        });
    line.1.iter().copied().collect()
}

/// The path of `sub`, a subcommand of the command at `path` ("" for `runta` itself).
fn subcommand_path(path: &str, sub: &clap::Command) -> String {
    format!("{path} {}", sub.get_name()).trim().to_owned()
}

/// Every leaf command under `command`, by path.
fn leaves(command: &clap::Command, path: &str, out: &mut Vec<String>) {
    if command.has_subcommands() {
        for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
            leaves(sub, &subcommand_path(path, sub), out);
        }
    } else {
        out.push(path.to_owned());
    }
}

/// Walks every command: a leaf takes exactly its settings; a family (and `runta` itself) takes
/// only settings every command under it takes; no setting is hidden, so that `--help` shows
/// what is accepted; any global option is a setting of the table; only `runta` has `--version`.
#[test]
fn help_of_every_command_lists_only_its_own_options() {
    use clap::CommandFactory;
    use std::collections::BTreeSet;
    let all: BTreeSet<&str> = SETTINGS
        .iter()
        .flat_map(|(_, names)| names.iter().copied())
        .collect();
    let mut root = runta::cli::Cli::command();
    root.build();
    let mut failures = Vec::new();
    let mut walked = 0;
    let mut stack = vec![(String::new(), root.clone())];
    while let Some((path, command)) = stack.pop() {
        walked += 1;
        let help = command.clone().render_long_help().to_string();
        let shown = if path.is_empty() {
            "runta".to_owned()
        } else {
            format!("runta {path}")
        };
        let longs: Vec<(&str, bool, bool)> = command
            .get_arguments()
            .filter_map(|a| Some((a.get_long()?, a.is_global_set(), a.is_hide_set())))
            .collect();
        let given: BTreeSet<&str> = longs
            .iter()
            .map(|(long, ..)| *long)
            .filter(|long| all.contains(long))
            .collect();
        let mut leaf_paths = Vec::new();
        leaves(&command, &path, &mut leaf_paths);
        let expected = leaf_paths
            .iter()
            .map(|leaf| settings_of(leaf))
            .reduce(|a, b| a.intersection(&b).copied().collect())
            .unwrap_or_default();
        if command.has_subcommands() {
            if !given.is_subset(&expected) {
                failures.push(format!(
                    "{shown}: {:?} are not taken by every command under it",
                    given.difference(&expected).collect::<Vec<_>>()
                ));
            }
        } else if given != expected {
            failures.push(format!(
                "{shown}: takes {given:?}, should take {expected:?}"
            ));
        }
        for (long, global, hidden) in &longs {
            if *global && !all.contains(long) {
                failures.push(format!(
                    "{shown}: --{long} is global but not a setting of SETTINGS"
                ));
            }
            if *hidden && all.contains(long) {
                failures.push(format!(
                    "{shown}: --{long} is accepted but hidden from --help"
                ));
            }
            if *long == "version" && !path.is_empty() {
                failures.push(format!("{shown}: --version belongs to runta alone"));
            }
        }
        // What a person reads: every setting taken is listed, no other is.
        for name in &all {
            let listed =
                help.contains(&format!("--{name} ")) || help.contains(&format!("--{name}\n"));
            if listed != given.contains(name) {
                failures.push(format!("{shown}: --help lists --{name}: {listed}"));
            }
        }
        for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
            stack.push((subcommand_path(&path, sub), sub.clone()));
        }
    }
    assert!(walked > 25, "only {walked} commands walked");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `runta --version` and `-V`: the crate's version.
#[test]
fn version_is_the_crate_version() {
    for flag in ["--version", "-V"] {
        let out = Command::new(BIN).arg(flag).output().unwrap();
        assert_eq!(
            ok(&out),
            format!("runta {}\n", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
}

/// `runta completions SHELL` prints a script naming the commands and their options; bash's
/// parses, and completes a command and a setting of a family.
#[test]
fn completions_for_bash_zsh_and_fish() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "_runta()"),
        ("zsh", "#compdef runta"),
        ("fish", "complete -c runta"),
    ] {
        let script = ok(&Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap());
        assert!(script.contains(marker), "{shell}: no {marker}");
        for word in [
            "serve",
            "secret",
            "rule",
            "runtime",
            "tenant",
            "api-key",
            "envoy",
            "bootstrap",
            "keys",
            "completions",
            "api-url",
            "value-stdin",
        ] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
        std::fs::write(dir.path().join(shell), &script).unwrap();
    }
    let bash = dir.path().join("bash");
    let out = Command::new("bash").arg("-n").arg(&bash).output().unwrap();
    ok(&out);
    let complete = |words: &str| {
        let line = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); _runta runta \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; echo \"${{COMPREPLY[*]}}\"",
            bash.display()
        );
        ok(&Command::new("bash").args(["-c", &line]).output().unwrap())
    };
    assert_eq!(complete("runta sec").trim(), "secret");
    assert_eq!(
        complete("runta secret list --api").trim(),
        "--api-url --api-key"
    );
}

/// `--config` takes any readable file: `/dev/null` (the defaults) and a pipe, here the shell's
/// process substitution.
#[test]
fn special_files_as_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--config", "/dev/null"]);
    ok(&server.runta(&["secret", "list"]));
    drop(server);
    let out = Command::new("bash")
        .args([
            "-c",
            r#""$0" envoy bootstrap --mode gateway --config <(printf '[grpc]\ngateway_tokens = ["runta_gw_from-a-pipe"]\n')"#,
            BIN,
        ])
        .current_dir(dir.path())
        .env_remove("RUNTA_CONFIG")
        .output()
        .unwrap();
    assert!(ok(&out).contains("runta_gw_from-a-pipe"));
}

/// The nice value in a `/proc/<pid>[/task/<tid>]/stat` line: after the parenthesised name, state
/// is the 3rd field and nice the 19th.
fn nice_in_stat(stat: &str) -> Option<i64> {
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(16)?
        .parse()
        .ok()
}

/// The control plane (admin API, reloads) runs on threads of its own at `admin.thread_nice`
/// (10 by default) above the process's nice value; the data path's threads keep it.
#[test]
fn the_control_plane_runs_niced_and_the_data_path_does_not() {
    let base = nice_in_stat(&std::fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
    for (extra, lowered) in [(&[][..], 10), (&["--config", "niced.toml"][..], 3)] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("niced.toml"), "[admin]\nthread_nice = 3\n").unwrap();
        let server = Server::start(dir.path(), extra);
        // An admin call, served by the control plane.
        let out = server.runta(&["secret", "list", "-o", "json"]);
        assert!(out.status.success(), "{}", all_output(&out));
        let threads = server.threads();
        let control: Vec<i64> = threads
            .iter()
            .filter(|(name, _)| name == "runta-control")
            .map(|(_, nice)| *nice)
            .collect();
        let data: Vec<i64> = threads
            .iter()
            .filter(|(name, _)| name == "tokio-rt-worker")
            .map(|(_, nice)| *nice)
            .collect();
        assert!(!control.is_empty() && !data.is_empty(), "{threads:?}");
        let expected = (base + lowered).min(19);
        assert!(control.iter().all(|n| *n == expected), "{threads:?}");
        assert!(data.iter().all(|n| *n == base), "{threads:?}");
        server.stop();
    }
}
