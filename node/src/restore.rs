//! `aggregator restore`: writes a new node's data directory from a backup file, offline. The
//! store does the work (`raft_store::restore`); this is the command line around it and what
//! it tells the operator to do next.

use std::collections::BTreeMap;
use std::process::ExitCode;

use openraft::BasicNode;

use crate::config::RestoreArgs;

/// Runs the subcommand; exit 0 once the data directory is written, 1 on any refusal.
pub fn run(args: RestoreArgs) -> ExitCode {
    let members = args.peers.as_ref().map(|peers| {
        peers
            .iter()
            .map(|(id, addr)| (id, BasicNode::new(addr)))
            .collect::<BTreeMap<_, _>>()
    });
    let options = raft_store::RestoreOptions {
        id: args.id,
        members,
        store: raft_store::StoreOptions::default(),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("restore: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(raft_store::restore(&args.backup, &args.data_dir, options)) {
        Ok(restored) => {
            let members: Vec<String> = restored
                .members
                .iter()
                .map(|(id, node)| format!("{id}={}", node.addr))
                .collect();
            println!(
                "restored {} events up to log index {} into {} for node {}",
                restored.events,
                restored.last_log_id.map_or(0, |l| l.index),
                args.data_dir.display(),
                args.id
            );
            println!(
                "backup taken from node {} at {} ms since the epoch",
                restored.taken_from, restored.taken_unix_ms
            );
            println!("members: {}", members.join(","));
            println!(
                "start the node with --id {} --data-dir {} --peers {}",
                args.id,
                args.data_dir.display(),
                members.join(",")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("restore: {e}");
            if !matches!(e, raft_store::StoreError::Restore(_)) {
                eprintln!(
                    "restore: {} may hold a partial store; delete it before trying again",
                    args.data_dir.display()
                );
            }
            ExitCode::FAILURE
        }
    }
}
