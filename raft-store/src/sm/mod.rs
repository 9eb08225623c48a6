//! The state machine: openraft's `RaftStateMachine` ([`StateMachineStore`]), apply (`apply.rs`),
//! its bookkeeping record ([`bookkeeping`]), the dedup index ([`dedup_index`]) and its window
//! ([`dedup_window`]), the secondary
//! indexes' runs ([`index_runs`]) and snapshots ([`snapshot`]: build, keep, install), all on
//! the node's RocksDB (`machine_db.rs`: the database plus the state kept beside it).

mod apply;
pub(crate) mod bookkeeping;
pub(crate) mod consumers;
pub(crate) mod dedup_index;
pub(crate) mod dedup_window;
pub(crate) mod index_runs;
pub(crate) mod machine_db;
pub(crate) mod retention;
pub(crate) mod snapshot;
pub(crate) mod store;

pub use snapshot::build::SnapshotBuilder;
pub use snapshot::dir::SnapshotStats;
pub use snapshot::file::SnapshotFile;
pub use store::StateMachineStore;
