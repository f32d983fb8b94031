//! `runta migrate` and `runta keys status|rotate` work on what exists: run in the wrong
//! directory they create nothing (no data directory, database or master key) and say what is
//! missing. Only `runta serve` provisions the embedded default.

use std::path::Path;
use std::process::{Command, Output};

use crate::cli::BIN;

/// Runs `runta` in `dir` without any `RUNTA_*` configuration from the environment.
fn runta(dir: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command.args(args).current_dir(dir);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RUNTA_") {
            command.env_remove(key);
        }
    }
    command.output().unwrap()
}

/// Every path under `dir`, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(base).unwrap().display().to_string());
            if path.is_dir() {
                walk(&path, base, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[track_caller]
fn assert_refused(out: &Output, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for word in words {
        assert!(
            stderr.contains(word),
            "'{stderr}' does not mention '{word}'"
        );
    }
}

#[test]
fn migrate_and_keys_create_nothing_in_an_empty_directory() {
    for args in [
        &["migrate"][..],
        &["keys", "status"],
        &["keys", "rotate"],
        &["migrate", "--data-dir", "elsewhere"],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = runta(dir.path(), args);
        assert_refused(&out, &["runta.db", "no database", "runta serve"]);
        assert_eq!(tree(dir.path()), Vec::<String>::new(), "{args:?}");
    }
}

#[test]
fn keys_without_a_master_key_create_none() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("runta-data")).unwrap();
    std::fs::write(dir.path().join("runta-data/runta.db"), b"").unwrap();
    let before = tree(dir.path());
    for args in [&["keys", "status"][..], &["keys", "rotate"]] {
        let out = runta(dir.path(), args);
        assert_refused(&out, &["master.key", "missing", "runta serve"]);
        assert_eq!(tree(dir.path()), before, "{args:?}");
    }
}

#[test]
fn migrate_with_an_unusable_database_url_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = runta(
        dir.path(),
        &[
            "migrate",
            "--database-url",
            "postgres://runta@127.0.0.1:notaport/runta",
        ],
    );
    assert_refused(&out, &["database.url"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("unavailable"), "{stderr}");
    assert_eq!(tree(dir.path()), Vec::<String>::new());
}

/// The store classifies it too, for whoever opens one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_with_an_unusable_url_says_so() {
    use runta::store::{Store, StoreError};
    // The URL is read when the store is opened, before any connection is attempted.
    let err = Store::connect("postgres://runta@127.0.0.1:notaport/runta", 1)
        .await
        .expect_err("a URL with a port that is not a number opens no store");
    assert!(matches!(err, StoreError::InvalidUrl(_)), "{err:?}");
    let err = Store::connect("mysql://runta@127.0.0.1/runta", 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidUrl(_)), "{err:?}");
}
