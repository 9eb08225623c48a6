//! Storage layer of the aggregator: a durable Raft log (segment files, with its vote and
//! purge records in RocksDB) and a deduplicating event state machine on RocksDB,
//! implementing openraft's storage-v2 traits.
//!
//! [`open`] gives the three handles the node needs: the log store and the state machine
//! (handed to openraft) and a [`StoreReader`] for queries.
//!
//! This file only names the modules and what the crate exports; nothing in the crate imports
//! it. The rooms: `log/` (the Raft log), `sm/` (the state machine), the top that uses both
//! (`open.rs`, `reader.rs`, `backup.rs`), and the bottom both use (`coverage.rs`, `db.rs`,
//! `codec.rs`, `keys.rs`, `types.rs`, `error.rs`, `failpoints.rs`, `timings.rs`); docs/architecture.md,
//! "Modules of raft-store", has the table.

mod backup;
mod codec;
pub mod command;
mod coverage;
mod db;
mod error;
pub mod failpoints;
mod keys;
mod log;
mod open;
mod reader;
mod sm;
#[cfg(test)]
mod test_entries;
mod timings;
pub mod types;

pub use backup::restore::{restore, RestoreOptions, Restored};
pub use backup::{BackupSource, BACKUP_MAGIC};
pub use command::{
    Command, ConsumerAck, ConsumerDefinition, ConsumerFrom, Control, CreateConsumer,
    RetentionChange, RetentionPolicy, Trim, TrimCut,
};
pub use db::DEFAULT_BLOCK_CACHE_BYTES;
pub use error::StoreError;
pub use log::{LogCacheReads, LogStore};
pub use open::{open, open_with, StoreOptions, Stores, DEFAULT_PRODUCER_CACHE};
pub use reader::StoreReader;
pub use sm::consumers::{ConsumerRecord, MAX_CONSUMERS};
pub use sm::dedup_index::{DedupFigures, DEFAULT_DEDUP_MEMORY_ENTRIES};
pub use sm::{SnapshotBuilder, SnapshotFile, SnapshotStats, StateMachineStore};
pub use timings::{DurationHistogram, HistogramSnapshot, BUCKET_BOUNDS_MICROS};
pub use types::*;

#[cfg(test)]
mod tests {
    /// The server shares these across tasks and blocking threads.
    #[test]
    fn handles_are_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<super::StoreReader>();
        check::<super::LogStore>();
        check::<super::StateMachineStore>();
        check::<super::StoreError>();
    }
}
