//! The examples' binaries, for tests that run an example as a user would.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The binary of example `name`. `cargo test` builds every example beside the tests; when it
/// is missing or older than its sources (`src/`, the given files, the manifest and the lock
/// file; a run of one test file alone), it is built here.
pub fn example_binary(name: &str, sources: &[&str]) -> PathBuf {
    let gatehouse = Path::new(env!("CARGO_BIN_EXE_gatehouse"));
    let profile_dir = gatehouse.parent().expect("the binary's directory");
    let binary = profile_dir.join("examples").join(name);
    let built = std::fs::metadata(&binary).and_then(|m| m.modified()).ok();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = newest_change(&root.join("src"))
        .into_iter()
        .chain(
            sources
                .iter()
                .chain(&["Cargo.toml", "Cargo.lock"])
                .filter_map(|f| {
                    std::fs::metadata(root.join(f))
                        .and_then(|m| m.modified())
                        .ok()
                }),
        )
        .max();
    if built.is_some() && built >= sources {
        return binary;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "--example", name])
        .current_dir(root);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("run cargo build --example {name}: {e}"));
    assert!(status.success(), "cargo build --example {name} failed");
    binary
}

/// The newest modification time of any file under `dir`.
fn newest_change(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            newest_change(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(time);
    }
    newest
}
