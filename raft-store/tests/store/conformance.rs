//! openraft's own storage conformance suite, run case by case against this store.
//!
//! One case is left out: `get_initial_state_membership_from_log_and_sm` appends entry 1 to a
//! log already purged up to 2, then entry 3 after it, leaving a hole. openraft itself never
//! does either (it appends only where the log ends, after a truncation if needed), and the
//! log refuses an append that does not continue it rather than store a log with holes; the
//! refusal is tested in `segment_log.rs`.

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

type S = Suite<TypeConfig, LogStore, StateMachineStore, TempStoreBuilder, TempDir>;

/// Runs each named case of the suite on a fresh store.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        let rt = crate::common::rt();
        $(
            rt.block_on(async {
                let (_dir, log, sm) = TempStoreBuilder.build().await?;
                S::$case(log, sm).await
            })
            .unwrap_or_else(|e| panic!("{}: {e}", stringify!($case)));
        )*
    };
}

#[test]
fn openraft_storage_suite() {
    cases!(
        last_membership_in_log_initial,
        last_membership_in_log,
        last_membership_in_log_multi_step,
        get_membership_initial,
        get_membership_from_log_and_empty_sm,
        get_membership_from_empty_log_and_sm,
        get_membership_from_log_le_sm_last_applied,
        get_membership_from_log_gt_sm_last_applied_1,
        get_membership_from_log_gt_sm_last_applied_2,
        get_initial_state_without_init,
        get_initial_state_with_state,
        get_initial_state_last_log_gt_sm,
        get_initial_state_last_log_lt_sm,
        get_initial_state_log_ids,
        get_initial_state_re_apply_committed,
        save_vote,
        get_log_entries,
        limited_get_log_entries,
        try_get_log_entry,
        initial_logs,
        get_log_state,
        get_log_id,
        last_id_in_log,
        last_applied_state,
        purge_logs_upto_0,
        purge_logs_upto_5,
        purge_logs_upto_20,
        delete_logs_since_11,
        delete_logs_since_0,
        append_to_log,
        snapshot_meta,
        apply_single,
        apply_multiple,
    );
    crate::common::rt()
        .block_on(S::transfer_snapshot(&TempStoreBuilder))
        .unwrap();
}
