//! openraft's own storage conformance suite, run in full against this store.

use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use raft_store::{LogStore, NodeId, StateMachineStore, TypeConfig};
use tempfile::TempDir;

/// Opens a fresh store per test case; the `TempDir` guard outlives the store handles.
struct TempStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for TempStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::IO {
            source: StorageIOError::new(ErrorSubject::Store, ErrorVerb::Write, AnyError::new(&e)),
        })?;
        let stores = raft_store::open(dir.path())?;
        Ok((dir, stores.log_store, stores.state_machine))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(TempStoreBuilder).unwrap();
}
