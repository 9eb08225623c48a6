//! The store's error type and its mapping onto openraft's `StorageError`.

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};

use crate::types::NodeId;

/// Everything that can go wrong in the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB reported an error (I/O, corruption, lock held by another process, ...).
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A filesystem operation outside RocksDB failed (creating the data directory).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A value could not be encoded or decoded with postcard.
    #[error("encoding of {what}: {source}")]
    Codec {
        /// What was being encoded or decoded.
        what: &'static str,
        /// The codec's error.
        source: postcard::Error,
    },
    /// Stored or received bytes break an invariant of the format.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
    /// A column family the store relies on is missing from the opened database.
    #[error("column family {0} missing")]
    MissingColumnFamily(&'static str),
    /// A purge waited for the snapshot install that was to cover it, and the install failed:
    /// nothing was purged.
    #[error("purge up to log index {0} abandoned: the snapshot install covering it failed")]
    PurgeWithoutInstall(u64),
    /// A snapshot install is rewriting the state machine; reads are answered again once it
    /// finishes.
    #[error("a snapshot install is replacing the state machine; retry shortly")]
    Installing,
    /// A read asked for events after a cursor below what its topic still holds: events
    /// after it were trimmed, and the page would have a gap.
    #[error("events after cursor {after} of topic {topic:?} were trimmed; the earliest cursor still held is {earliest}")]
    Trimmed {
        /// The topic read.
        topic: String,
        /// The cursor asked for.
        after: u64,
        /// The lowest cursor a read of this topic may start after without missing an event.
        earliest: u64,
    },
    /// A restore was refused before it wrote anything usable (a data directory in use, a
    /// node id that is not a member, ...).
    #[error("restore refused: {0}")]
    Restore(String),
    /// A blocking task panicked or was cancelled.
    #[error("blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl StoreError {
    /// A `Corrupt` error.
    pub(crate) fn corrupt(what: &'static str, detail: impl Into<String>) -> Self {
        StoreError::Corrupt {
            what,
            detail: detail.into(),
        }
    }

    /// This error as openraft's storage error, naming what was touched and how.
    pub(crate) fn into_storage(
        self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> StorageError<NodeId> {
        StorageError::IO {
            source: StorageIOError::new(subject, verb, AnyError::new(&self)),
        }
    }
}

impl From<StoreError> for StorageError<NodeId> {
    /// Without context the error is attributed to the store as a whole; the trait
    /// implementations use [`StoreError::into_storage`] with a precise subject instead.
    fn from(e: StoreError) -> Self {
        e.into_storage(ErrorSubject::Store, ErrorVerb::Write)
    }
}
