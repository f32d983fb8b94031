//! runta faulted under load, through the real Envoy: killed (`SIGKILL`) and frozen
//! (`SIGSTOP`) while runtimes keep sending. Not one request may leave without its credential;
//! traffic comes back when runta does, without restarting Envoy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::cli::{Server, ok};
use crate::e2e::{Envoy, World, envoy_binary, proxy_get, raw_http};

const VALUE: &str = "sk-e2e-FAULT-2b7e";

/// One request through the proxy; answers the status and the body (0 when Envoy is gone).
fn request(envoy_port: u16, authority: &str, token: &str) -> (u16, String) {
    raw_http(envoy_port, &proxy_get("/v1/models", authority, token))
}

/// What the load saw.
#[derive(Debug, Default)]
struct Tally {
    injected: usize,
    refused: usize,
    /// 200 answers that arrived without the credential: must stay empty.
    uninjected: Vec<String>,
}

/// Sends requests from `threads` threads until `stop` (at most `limit` each).
fn load(
    envoy_port: u16,
    authority: String,
    token: String,
    stop: Arc<AtomicBool>,
    threads: usize,
    limit: usize,
) -> Vec<std::thread::JoinHandle<Tally>> {
    (0..threads)
        .map(|_| {
            let (authority, token, stop) = (authority.clone(), token.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut tally = Tally::default();
                for _ in 0..limit {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (status, body) = request(envoy_port, &authority, &token);
                    if status == 200 {
                        if body.contains(&format!("Bearer {VALUE}")) {
                            tally.injected += 1;
                        } else {
                            tally.uninjected.push(body);
                        }
                    } else {
                        tally.refused += 1;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                tally
            })
        })
        .collect()
}

/// Waits until a request is injected again (bounded).
fn wait_injected(envoy_port: u16, authority: &str, token: &str) -> bool {
    for _ in 0..200 {
        let (status, body) = request(envoy_port, authority, token);
        if status == 200 && body.contains(&format!("Bearer {VALUE}")) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn killed_or_frozen_under_load_runta_lets_nothing_out_without_its_credential() {
    let Some(envoy_bin) = envoy_binary() else {
        return;
    };
    let world = World::new();
    let grpc = format!("127.0.0.1:{}", crate::support::free_port());
    let server = Server::start(world.dir.path(), &["--grpc-listen", &grpc]);
    ok(&server.shell(&format!(
        "V='{VALUE}' runta secret add openai-api-key --value-env V"
    )));
    ok(&server.shell(
        "runta secret rule add worker --host api.openai.com --credential openai-api-key --inject-header Authorization --inject-value 'Bearer ${credential}'",
    ));
    let created: serde_json::Value = serde_json::from_str(&ok(
        &server.runta(&["runtime", "token", "create", "worker", "-o", "json"])
    ))
    .unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    let envoy = Envoy::start(
        &envoy_bin,
        &server,
        &world,
        &["--mode", "gateway"],
        "faults",
    );
    let authority = format!("api.openai.com:{}", world.upstream_port);
    assert!(wait_injected(envoy.port, &authority, &token));

    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(
        envoy.port,
        authority.clone(),
        token.clone(),
        stop.clone(),
        4,
        2_000,
    );
    std::thread::sleep(Duration::from_millis(300));

    // SIGKILL: no graceful anything. Then back on the same address and data.
    server.signal("KILL");
    std::thread::sleep(Duration::from_millis(500));
    drop(server);
    let server = Server::start(world.dir.path(), &["--grpc-listen", &grpc]);
    assert!(
        wait_injected(envoy.port, &authority, &token),
        "traffic did not come back after the restart"
    );
    std::thread::sleep(Duration::from_millis(300));

    // SIGSTOP: runta accepts connections but answers nothing; Envoy times out (fails closed).
    server.signal("STOP");
    std::thread::sleep(Duration::from_millis(1_500));
    server.signal("CONT");
    assert!(
        wait_injected(envoy.port, &authority, &token),
        "traffic did not come back after SIGCONT"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);

    let mut total = Tally::default();
    for worker in workers {
        let tally = worker.join().unwrap();
        total.injected += tally.injected;
        total.refused += tally.refused;
        total.uninjected.extend(tally.uninjected);
    }
    assert!(
        total.uninjected.is_empty(),
        "{} requests left without their credential: {:?}",
        total.uninjected.len(),
        total.uninjected.first()
    );
    assert!(total.refused > 0, "the faults refused nothing: {total:?}");
    assert!(total.injected > 0, "{total:?}");
    // The upstream's own record agrees: every request it received carried the credential.
    let log = std::fs::read_to_string(&world.upstream_log).unwrap();
    for line in log.lines() {
        assert!(
            line.contains(&format!("Bearer {VALUE}")),
            "the upstream received a request without the credential: {line}"
        );
    }
    eprintln!(
        "fault load: {} injected, {} refused while runta was down or frozen",
        total.injected, total.refused
    );
    drop(envoy);
    server.stop();
}
