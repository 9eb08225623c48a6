//! The state machine: openraft's `RaftStateMachine` ([`StateMachineStore`]: apply), its
//! bookkeeping record ([`bookkeeping`]), the dedup index ([`dedup_index`]), the secondary
//! indexes' runs ([`index_runs`]) and snapshots ([`snapshot`]: build, keep, install), all on
//! the node's RocksDB.

pub(crate) mod bookkeeping;
pub(crate) mod dedup_index;
pub(crate) mod index_runs;
pub(crate) mod snapshot;
pub(crate) mod store;

pub use snapshot::file::SnapshotFile;
pub use snapshot::{SnapshotBuilder, SnapshotStats};
pub use store::StateMachineStore;
