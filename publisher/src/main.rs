//! `publisher`: loads, checks and benchmarks an aggregator cluster over HTTP/JSON.
//! This file wires the command line to the subcommands and maps their verdicts to exit codes:
//! 0 success, 1 a failed check or unacknowledged events, 2 a usage or I/O error.

mod bench;
mod cli;
mod client;
mod consume;
mod generator;
mod history;
mod progress;
mod report;
mod send;
mod stats;
mod subscribe;
mod verify;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log_level).unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    // A subscriber is one connection read in one task: on one thread, the connection's task
    // hands each chunk to it without waking another thread (sixteen subscribers in the fan-out
    // benchmark share the machine with the nodes). Everything else runs many requests at once.
    let mut builder = if matches!(cli.command, Command::Subscribe(_)) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let verdict = runtime.block_on(async {
        match cli.command {
            Command::Send(a) => send::command(a).await,
            Command::Verify(a) => verify::command(a).await,
            Command::Stats(a) => stats::command(a).await,
            Command::Bench(a) => bench::command(a).await,
            Command::Subscribe(a) => subscribe::command(a).await,
        }
    });
    match verdict {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
