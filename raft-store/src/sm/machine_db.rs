//! The node's RocksDB as the state machine's handles share it (its store, the snapshot
//! builder, the reader, a restore): the database plus what the state machine keeps beside it:
//! the snapshot folder, the install flag, the durable-applied watermark that the log's
//! purges wait on (`coverage.rs`), the applied position that live readers wait on, and the
//! apply-time histogram.

use std::ops::Deref;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rocksdb::Snapshot;
use tokio::sync::watch;

use crate::coverage::{Durable, StateMachineCoverage};
use crate::db::Db;
use crate::error::StoreError;
use crate::sm::bookkeeping;
use crate::sm::snapshot::dir::SnapshotDir;
use crate::timings::DurationHistogram;
use crate::types::AppliedPosition;

/// The database and the state machine's own shared state. Dereferences to [`Db`], through
/// which the state machine reads and writes RocksDB.
pub(crate) struct StateMachineDb {
    db: Arc<Db>,
    /// Snapshot data files, the lock ordering writers of the current snapshot's record, and
    /// the snapshot counters.
    pub(crate) snapshots: SnapshotDir,
    /// A snapshot install is rewriting the state machine (past its commit point, see
    /// `snapshot/mod.rs`): what RocksDB holds is neither the old state nor the new one.
    installing: AtomicBool,
    /// What the state machine on disk is known to cover, watched by purges that must not run
    /// ahead of it (`LogStore::purge`).
    durable: watch::Sender<Durable>,
    /// What the state machine has applied and readers can see: raised after each apply's
    /// write and each install, watched by live subscriptions instead of polling the store.
    applied: watch::Sender<AppliedPosition>,
    /// How long each apply call took (the state machine records, the reader exports).
    pub(crate) apply_times: DurationHistogram,
}

impl Deref for StateMachineDb {
    type Target = Db;

    fn deref(&self) -> &Db {
        &self.db
    }
}

impl StateMachineDb {
    /// The state machine's side of `db`, with its snapshot folder under `dir` (the node's
    /// data directory), created if needed.
    pub(crate) fn open(db: Arc<Db>, dir: &Path) -> Result<StateMachineDb, StoreError> {
        Ok(StateMachineDb {
            db,
            snapshots: SnapshotDir::open(dir)?,
            installing: AtomicBool::new(false),
            durable: watch::channel(Durable::default()).0,
            applied: watch::channel(AppliedPosition::default()).0,
            apply_times: DurationHistogram::default(),
        })
    }

    /// Records that the state machine on disk has applied at least up to `index`, waking the
    /// purges that wait for it.
    pub(crate) fn note_durable_applied(&self, index: u64) {
        self.durable.send_if_modified(|d| {
            let raised = index > d.applied;
            d.applied = d.applied.max(index);
            raised
        });
    }

    /// Publishes what readers can now see (called after the write that made it visible).
    /// Only a change wakes the watchers, so an apply of duplicates alone (no new stamp, a new
    /// index) wakes them once for the index, which they check cheaply.
    pub(crate) fn note_applied(&self, position: AppliedPosition) {
        self.applied.send_if_modified(|p| {
            let changed = *p != position;
            *p = position;
            changed
        });
    }

    /// A receiver of the applied position ([`note_applied`](Self::note_applied)).
    pub(crate) fn watch_applied(&self) -> watch::Receiver<AppliedPosition> {
        self.applied.subscribe()
    }

    /// Records that a snapshot is about to be received and installed.
    pub(crate) fn note_install_pending(&self) {
        self.durable.send_modify(|d| d.install_pending = true);
    }

    /// Records that an install finished: the state machine on disk now covers `index`.
    pub(crate) fn note_installed(&self, index: u64) {
        self.durable.send_modify(|d| {
            d.applied = d.applied.max(index);
            d.install_pending = false;
        });
    }

    /// Records that an install failed (nothing of it was written), so that a purge waiting
    /// for it gives up instead of waiting forever.
    pub(crate) fn note_install_failed(&self) {
        self.durable.send_modify(|d| d.install_pending = false);
    }

    /// Marks the state machine as being rewritten by an install, or no longer.
    pub(crate) fn set_installing(&self, installing: bool) {
        self.installing.store(installing, Ordering::SeqCst);
    }

    /// Whether an install is rewriting the state machine now.
    pub(crate) fn installing(&self) -> bool {
        self.installing.load(Ordering::SeqCst)
    }

    /// A consistent view of the state machine for a reader, or [`StoreError::Installing`]
    /// while an install rewrites it. The view is taken before the flag is read: a view taken
    /// while the flag was still clear predates the install's first write.
    pub(crate) fn reader_view(&self) -> Result<Snapshot<'_>, StoreError> {
        let view = self.rocks.snapshot();
        if self.installing() {
            return Err(StoreError::Installing);
        }
        Ok(view)
    }
}

impl StateMachineCoverage for StateMachineDb {
    fn durable(&self) -> Durable {
        *self.durable.borrow()
    }

    fn watch_durable(&self) -> watch::Receiver<Durable> {
        self.durable.subscribe()
    }

    /// For a purge that no snapshot covers yet (`LogStore::purge`).
    fn flush_applied(&self) -> Result<(), StoreError> {
        let applied = bookkeeping::read_meta(self, &self.rocks.snapshot())?.last_applied;
        self.flush_all()?;
        self.note_durable_applied(applied.map_or(0, |id| id.index));
        Ok(())
    }
}
