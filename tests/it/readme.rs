//! The README's "See it work" blocks, run as written: the real binary, the real Envoy, the
//! demo upstream and DNS server, with the README's fixed ports. They run in a network
//! namespace of their own (`unshare --net`, as root), so the fixed ports are free whatever else
//! runs, and nothing they start can reach or be reached from outside it.
//!
//! The two set-up lines (creating `.venv` and building) are the test harness's job; every other
//! line runs verbatim.

use std::path::Path;
use std::process::Command;

use crate::cli::BIN;
use crate::e2e::envoy_binary;

/// The shell blocks of a README section.
fn shell_blocks(readme: &str, section: &str) -> Vec<String> {
    let start = readme
        .find(&format!("\n## {section}\n"))
        .unwrap_or_else(|| panic!("no section {section}"));
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    let mut blocks = Vec::new();
    let mut lines = rest[..end].lines();
    while let Some(line) = lines.next() {
        if line.trim() == "```sh" {
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            blocks.push(block.join("\n"));
        }
    }
    blocks
}

#[test]
fn see_it_work_runs_as_written() {
    let Some(envoy) = envoy_binary() else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let blocks = shell_blocks(&readme, "See it work");
    assert_eq!(blocks.len(), 2, "the sidecar block and the gateway block");
    let setup = ["python3 -m venv .venv", "cargo build --release"];
    let script: Vec<&str> = blocks
        .iter()
        .flat_map(|b| b.lines())
        .filter(|line| !setup.iter().any(|s| line.starts_with(s)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // What the skipped set-up lines make: the Envoy in .venv and runta on the PATH; the
    // repository's demo files where the README names them.
    std::fs::create_dir_all(dir.path().join(".venv/bin")).unwrap();
    std::os::unix::fs::symlink(&envoy, dir.path().join(".venv/bin/envoy")).unwrap();
    for name in ["deploy", "tests"] {
        std::os::unix::fs::symlink(root.join(name), dir.path().join(name)).unwrap();
    }
    let prologue = format!(
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\nip link set lo up\nexport PATH={}:$PATH\n",
        Path::new(BIN).parent().unwrap().display()
    );
    let full = format!("{prologue}{}\n", script.join("\n"));
    let out = Command::new("timeout")
        .args(["180", "unshare", "--net", "bash", "-c", &full])
        .current_dir(dir.path())
        .env_remove("RUNTA_API_KEY")
        .env_remove("RUNTA_API_URL")
        .env_remove("RUNTA_DATA_DIR")
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the README's blocks failed ({:?}):\n{full}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    // Plain HTTP and HTTPS through the sidecar; plain HTTP, HTTPS with curl and with Python's
    // urllib through the gateway: each one echoed with the injected credential.
    assert_eq!(
        stdout.matches("\"Bearer sk-example\"").count(),
        5,
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}
