//! Locating the `aggregator` and `publisher` executables the tests run.
//!
//! They sit next to the test executable's parent (`target/release/deps/x` ->
//! `target/release/aggregator`); `AGGREGATOR_BIN` / `PUBLISHER_BIN` override that.

use std::path::PathBuf;

/// Path of the `aggregator` server binary; panics with a hint when it is missing.
pub fn aggregator() -> PathBuf {
    find("aggregator", "AGGREGATOR_BIN")
}

/// Path of the `publisher` client binary; panics with a hint when it is missing.
pub fn publisher() -> PathBuf {
    find("publisher", "PUBLISHER_BIN")
}

fn find(name: &str, env_var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{env_var}={} does not name a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test-exe>: the binaries live in target/<profile>/.
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable has no grandparent directory");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "binary `{name}` not found at {} (set {env_var}, or run `cargo build --release --workspace` first)",
        path.display()
    );
    path
}
