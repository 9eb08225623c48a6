//! The Raft log: openraft's `RaftLogStorage` ([`LogStore`], with the flusher that reports
//! appends durable), the entries in segment files ([`segments`]) with their spare-segment
//! policy ([`spares`]), and the in-memory tail that serves recent reads ([`cache`]). The vote,
//! committed and last purged log ids live in RocksDB's `raft_meta` column family.

pub(crate) mod cache;
mod flusher;
pub(crate) mod segments;
pub(crate) mod spares;
pub(crate) mod store;

pub use cache::LogCacheReads;
pub(crate) use segments::DEFAULT_SEGMENT_BYTES;
pub use store::LogStore;
pub(crate) use store::LogView;
