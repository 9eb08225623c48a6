//! Running the `publisher` binary against a test cluster and reading what it writes.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

use crate::binaries;

/// A finished publisher run.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
}

impl Finished {
    /// Panics with the output unless the run exited 0.
    pub fn assert_success(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

/// Starts `publisher args...` (killed if dropped before it ends).
pub fn spawn(args: &[String]) -> Child {
    Command::new(binaries::publisher())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn publisher")
}

/// Waits (bounded) for a started publisher to end and collects its output.
pub async fn finish(child: Child, timeout: Duration) -> Finished {
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Finished {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("waiting for publisher: {e}"),
        // The child is dropped here, which kills it.
        Err(_) => panic!("publisher did not end within {timeout:?}"),
    }
}

/// Runs `publisher args...` to completion (bounded).
pub async fn run(args: &[String], timeout: Duration) -> Finished {
    finish(spawn(args), timeout).await
}

/// Reads a JSON file the publisher wrote (`--report-json`).
pub fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// Reads a JSON-lines file the publisher wrote (`--history`).
pub fn read_json_lines(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("history line {l:?}: {e}")))
        .collect()
}
