//! What the state machine on disk covers, as the Raft log's purges need to know it: the one
//! interface between the two halves. `sm/` keeps it (`sm/machine_db.rs`), `log/` asks it
//! before a purge (`log/store.rs`); neither half imports the other.

use tokio::sync::watch;

use crate::error::StoreError;

/// What the state machine on disk covers, as far as this process knows, and whether an install
/// is on its way to cover more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Durable {
    /// A log index the state machine on disk is known to have applied (a lower bound): a purge
    /// up to it needs no flush first. Raised by opening, flushes, snapshot builds and installs.
    pub(crate) applied: u64,
    /// A snapshot is being received or installed: openraft asked for a buffer to receive one
    /// into, and no install has finished since.
    pub(crate) install_pending: bool,
}

/// The state machine as a purge of the log sees it. Its writes skip RocksDB's WAL, so the log
/// is its redo log: the log may only be purged up to what it has on disk.
///
/// # To ensure correctness
/// - [`Durable::applied`] never exceeds what the state machine on disk holds: it is raised only
///   after a flush, a build's flush, an install's synced write, or at open (from disk).
/// - When [`flush_applied`](Self::flush_applied) returns `Ok`, `applied` covers every entry
///   applied before the call.
/// - [`Durable::install_pending`] is set before the first chunk of a snapshot is received and
///   cleared only when the install is durable (raising `applied`) or has failed, so a purge
///   that waits for it never waits forever.
pub(crate) trait StateMachineCoverage: Send + Sync {
    /// What the state machine on disk is known to cover, now.
    fn durable(&self) -> Durable;

    /// Follows [`Durable`] as builds, installs and flushes move it.
    fn watch_durable(&self) -> watch::Receiver<Durable>;

    /// Flushes every memtable and raises [`Durable::applied`] to at least the last applied id
    /// read before the flush (apply may move on meanwhile).
    fn flush_applied(&self) -> Result<(), StoreError>;

    /// Whether the state machine on disk is known to cover log index `index`.
    fn durably_applied(&self, index: u64) -> bool {
        index <= self.durable().applied
    }
}
