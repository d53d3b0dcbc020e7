//! What the examples' end-to-end tests share: building an example binary
//! with the cargo that runs the test.
//!
//! `cargo test` builds examples, but `cargo test --tests` (what `cargo
//! xtask test` runs) does not, so each test builds the example it runs (a
//! no-op when it is fresh).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError};

/// The example binary, built once per test run.
pub(crate) fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(Mutex::default);
    let mut built = built.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, path)) = built.iter().find(|(n, _)| n == name) {
        return path.clone();
    }
    // The features this test binary was built with, so the example links
    // against the same library builds. With all of them on, this is most
    // likely `cargo xtask test`, which runs `cargo test --workspace
    // --all-features`: build with the same options, so that features
    // unify across the workspace as they did there and nothing is built
    // twice.
    let mut features = Vec::new();
    if cfg!(feature = "postgres") {
        features.push("postgres");
    }
    if cfg!(feature = "storage-cloud") {
        features.push("storage-cloud");
    }
    let all_features = features.len() == 2;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut cargo = Command::new(env!("CARGO"));
    // Cargo gives this test the variables it gives the package's own
    // build (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...). Some dependencies' build
    // scripts watch them: inherited here, they would make this build and
    // the outer one rebuild those dependencies for each other every time.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                key,
                "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "OUT_DIR"
            )
        {
            cargo.env_remove(key);
        }
    }
    cargo
        .args([
            "build",
            "--example",
            name,
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .stderr(Stdio::inherit());
    if all_features {
        cargo.args(["--workspace", "--all-features"]);
    } else if !features.is_empty() {
        cargo.arg("--features").arg(features.join(","));
    }
    let output = cargo.output().expect("cannot run cargo");
    assert!(
        output.status.success(),
        "cargo build --example {name} failed"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo named no executable for example {name}"));
    built.push((name.to_string(), path.clone()));
    path
}
