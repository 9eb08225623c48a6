//! One child process the harness started: spawn with output to a log file, signals, reaping.
//!
//! Signals go through the `kill` command because the workspace forbids `unsafe` code.
//! Dropping a `ChildProcess` SIGKILLs and reaps it, so nothing outlives a test, even on panic.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A signal the harness sends.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Graceful shutdown request.
    Term,
    /// Freeze the process (it keeps its sockets, answers nothing).
    Stop,
    /// Thaw a frozen process.
    Cont,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
        }
    }
}

/// A running child process whose output goes to a log file.
#[derive(Debug)]
pub struct ChildProcess {
    child: Option<Child>,
    /// Kills the child if the test process dies without running destructors (Ctrl-C).
    watchdog: Option<Child>,
    log: PathBuf,
}

impl ChildProcess {
    /// Starts `program args`, appending stdout and stderr to `log`.
    pub fn spawn(program: &Path, args: &[String], log: &Path) -> Self {
        Self::spawn_with_env(program, args, &[], log)
    }

    /// [`ChildProcess::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Self {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open log {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log handle");
        let child = Command::new(program)
            .args(args)
            // Plain text in log files: no colour escapes.
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} {args:?}: {e}", program.display()));
        let watchdog = watchdog(child.id());
        Self {
            child: Some(child),
            watchdog,
            log: log.to_path_buf(),
        }
    }

    /// Operating-system process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("process present")
    }

    /// Path of the log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Sends `signal` with the `kill` command.
    pub fn signal(&self, signal: Signal) {
        let status = Command::new("kill")
            .args(["-s", signal.name(), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(
            status.success(),
            "kill -s {} {} failed",
            signal.name(),
            self.pid()
        );
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A stopped process dies of SIGKILL too; errors mean it already exited.
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }

    /// The exit status if the process has exited, without blocking.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Waits up to `timeout` for the process to exit; `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A shell loop that SIGKILLs `pid` once this test process is gone: destructors do not run
/// when a test run is interrupted, and a leftover node would hold its ports and CPU.
fn watchdog(pid: u32) -> Option<Child> {
    let me = std::process::id();
    let script =
        format!("while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -9 {pid} 2>/dev/null");
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// The last `lines` lines of a text file (or a note that it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spawn_stop_cont_term_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sleep.log");
        let mut p = ChildProcess::spawn(
            Path::new("sh"),
            &["-c".into(), "echo started; exec sleep 30".into()],
            &log,
        );
        // Signals only once the shell has run its echo, so the log content is known.
        let log_ref = &log;
        crate::wait_until("the echo", Duration::from_secs(5), move || async move {
            match tail(log_ref, 5).as_str() {
                "started" => Ok(()),
                other => Err(other.to_string()),
            }
        })
        .await;
        p.signal(Signal::Stop);
        p.signal(Signal::Cont);
        assert!(p.try_exit().is_none());
        p.signal(Signal::Term);
        let status = p.wait_exit(Duration::from_secs(5)).await.expect("exits");
        assert!(!status.success());
        assert_eq!(tail(&log, 5), "started");
    }
}
