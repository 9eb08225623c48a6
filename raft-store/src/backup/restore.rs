//! A restore writes a new store from a backup: the state machine as the snapshot holds it (the
//! install path every follower uses, sm/snapshot/mod.rs), an empty Raft log starting after the
//! snapshot's last log id, and a vote at the snapshot's term. Given a member list, it rewrites
//! the snapshot's membership first: that is how a backup becomes a new cluster (etcd's
//! `snapshot restore --initial-cluster` does the same). Without one it keeps the membership the
//! backup was taken with, for a node that rejoins the cluster it came from.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use openraft::storage::RaftLogStorage;
use openraft::{LogId, Membership, StoredMembership, Vote};

use super::{read_header, BackupHeader, Meta};
use crate::error::StoreError;
use crate::open::{open_with, StoreOptions, Stores};
use crate::sm::machine_db::StateMachineDb;
use crate::sm::snapshot;
use crate::sm::snapshot::format::{FormatReader, FormatWriter, Sealed};
use crate::types::{Node, NodeId};

/// How to restore a backup.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The id of the node the new store is for; must be a member.
    pub id: NodeId,
    /// The voters of a new cluster and their addresses; `None` keeps the backup's membership.
    pub members: Option<BTreeMap<NodeId, Node>>,
    /// Options of the store written.
    pub store: StoreOptions,
}

/// What a restore wrote.
#[derive(Clone, Debug)]
pub struct Restored {
    /// The last log id the restored state machine covers; the log continues after it.
    pub last_log_id: Option<LogId<NodeId>>,
    /// Events in the restored state machine.
    pub events: u64,
    /// Voters of the restored membership.
    pub voters: BTreeSet<NodeId>,
    /// Every member of the restored membership with its address.
    pub members: BTreeMap<NodeId, Node>,
    /// The node the backup was taken from.
    pub taken_from: NodeId,
    /// When the backup was taken, in milliseconds since the Unix epoch.
    pub taken_unix_ms: u64,
}

/// Writes a new store into `dir` (missing or empty) from the backup file `backup`; see the
/// module header. The backup is checked whole (length, checksum, format, digest) before the
/// store's state machine takes it; on any error `dir` holds no usable store and should be
/// deleted before trying again.
pub async fn restore(
    backup: &Path,
    dir: &Path,
    options: RestoreOptions,
) -> Result<Restored, StoreError> {
    refuse_unless_empty(dir)?;
    let plan = plan(backup, options.id, options.members.as_ref())?;
    let stores = open_with(dir, &options.store)?;
    let Stores {
        mut log_store,
        state_machine,
        reader,
    } = stores;
    let (db, index) = state_machine.parts();
    let backup = backup.to_path_buf();
    let (meta, header, events) = tokio::task::spawn_blocking(move || {
        let part = rewrite(&db, &backup, &plan)?;
        let state = snapshot::install::install(&db, &plan.meta, &part, &index)?;
        Ok::<_, StoreError>((plan.meta, plan.header, state.meta.digest.count))
    })
    .await??;
    if let Some(last) = meta.last_log_id {
        // The log before this id is gone; a vote below its term would let this node grant
        // votes, or accept a leader, of a term older than what the state machine has seen.
        // For the leader that wrote the last entry, as a follower that took it would have;
        // not committed, since a committed vote for itself makes a node restart as leader.
        let vote = Vote::new(last.leader_id.term, last.leader_id.node_id);
        log_store
            .save_vote(&vote)
            .await
            // After the install: not a refusal, the directory now holds a partial store.
            .map_err(|e| StoreError::Io(std::io::Error::other(format!("saving the vote: {e}"))))?;
    }
    drop((log_store, state_machine, reader));
    let membership = meta.last_membership.membership();
    Ok(Restored {
        last_log_id: meta.last_log_id,
        events,
        voters: membership.voter_ids().collect(),
        members: membership
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect(),
        taken_from: header.taken_from,
        taken_unix_ms: header.taken_unix_ms,
    })
}

fn refuse_unless_empty(dir: &Path) -> Result<(), StoreError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(StoreError::Restore(format!(
                    "{} is not empty: a restore writes a new store and never replaces one",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What a restore will install, read from the backup's header before anything is written.
struct Plan {
    header: BackupHeader,
    /// The snapshot meta to install: the header's, with the membership replaced.
    meta: Meta,
    /// Offset of the snapshot data in the backup file.
    data_start: u64,
}

/// Reads and checks the backup's header, and works out the membership to restore.
fn plan(
    backup: &Path,
    id: NodeId,
    members: Option<&BTreeMap<NodeId, Node>>,
) -> Result<Plan, StoreError> {
    let mut file = File::open(backup)?;
    let file_len = file.metadata()?.len();
    let header = read_header(&mut file)?;
    let data_start = file.stream_position()?;
    if file_len.checked_sub(data_start) != Some(header.data_len) {
        return Err(StoreError::corrupt(
            "backup",
            format!(
                "{file_len} bytes, its header promises {} of snapshot data after {data_start}",
                header.data_len
            ),
        ));
    }
    let mut meta = header.meta.clone();
    if let Some(members) = members {
        let voters: BTreeSet<NodeId> = members.keys().copied().collect();
        meta.last_membership = StoredMembership::new(
            *meta.last_membership.log_id(),
            Membership::new(vec![voters], members.clone()),
        );
    }
    if meta.last_membership.membership().get_node(&id).is_none() {
        return Err(StoreError::Restore(format!(
            "node {id} is not a member of the restored membership ({:?}); give the new \
             cluster's members, or restore with the id of a member",
            meta.last_membership
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect::<Vec<_>>()
        )));
    }
    Ok(Plan {
        header,
        meta,
        data_start,
    })
}

/// Copies the backup's snapshot data into a received-snapshot file of `db` with the planned
/// membership, checking on the way that the data is what the header promises.
fn rewrite(db: &StateMachineDb, backup: &Path, plan: &Plan) -> Result<PathBuf, StoreError> {
    let (header, meta) = (&plan.header, &plan.meta);
    let mut file = File::open(backup)?;
    file.seek(SeekFrom::Start(plan.data_start))?;
    let (mut reader, mut data_header) = FormatReader::new(file)?;
    if data_header.meta.last_applied != meta.last_log_id {
        return Err(StoreError::corrupt(
            "backup",
            "the snapshot data's last applied log id differs from the header's",
        ));
    }
    data_header.meta.last_membership = meta.last_membership.clone();
    let part = snapshot::install::part_path(db);
    let written = (|| {
        let out = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&part)?;
        let mut writer = FormatWriter::new(out, &data_header)?;
        while let Some(event) = reader.next_event()? {
            writer.event(event)?;
        }
        writer.window(&reader.window()?)?;
        while let Some(tombstone) = reader.next_tombstone()? {
            writer.tombstone(tombstone)?;
        }
        let expected = Sealed {
            len: header.data_len,
            checksum: header.data_checksum,
        };
        if reader.sealed() != expected {
            return Err(StoreError::corrupt(
                "backup",
                "the snapshot data does not match the header's length and checksum",
            ));
        }
        writer.finish()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    Ok(part)
}

#[cfg(test)]
mod tests {
    use openraft::storage::{RaftLogReader, RaftStateMachine};
    use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::test_entries::{entry, rt};
    use crate::types::TypeConfig;

    fn node(addr: &str) -> Node {
        Node { addr: addr.into() }
    }

    /// A store with a membership of {1, 2, 3} at index 1, 60 events after it, and a snapshot;
    /// the backup of it written to `file`.
    fn source_with_backup(rt: &tokio::runtime::Runtime, dir: &Path, file: &Path) -> crate::Stores {
        let mut source = crate::open(dir).unwrap();
        let members: BTreeMap<NodeId, Node> = (1..=3)
            .map(|id| (id, node(&format!("old-{id}:7001"))))
            .collect();
        let membership = openraft::Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(4, 0), 1),
            payload: EntryPayload::Membership(Membership::new(
                vec![members.keys().copied().collect()],
                members,
            )),
        };
        rt.block_on(async {
            source.state_machine.apply([membership]).await.unwrap();
            source
                .state_machine
                .apply((2..=61).map(|i| entry(4, i)))
                .await
                .unwrap();
            source
                .state_machine
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
        });
        let mut backup = source.reader.backup(2).unwrap().unwrap();
        let mut bytes = backup.prefix.clone();
        rt.block_on(backup.data.read_to_end(&mut bytes)).unwrap();
        assert_eq!(bytes.len() as u64, backup.len);
        assert_eq!(backup.last_log_id.map(|l| l.index), Some(61));
        std::fs::write(file, bytes).unwrap();
        source
    }

    fn options(id: NodeId, members: Option<BTreeMap<NodeId, Node>>) -> RestoreOptions {
        RestoreOptions {
            id,
            members,
            store: StoreOptions::default(),
        }
    }

    #[test]
    fn a_restored_store_holds_the_backup_with_the_new_membership() {
        let rt = rt();
        let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let file = src.path().join("backup.agb");
        let source = source_with_backup(&rt, &src.path().join("store"), &file);
        let new_members: BTreeMap<NodeId, Node> =
            [(7, node("new-7:7001")), (8, node("new-8:7001"))].into();
        let target = dst.path().join("store");
        let restored = rt
            .block_on(restore(
                &file,
                &target,
                options(8, Some(new_members.clone())),
            ))
            .unwrap();
        assert_eq!(restored.events, 60);
        assert_eq!(restored.last_log_id.map(|l| l.index), Some(61));
        assert_eq!(restored.voters, [7, 8].into());
        assert_eq!(restored.members, new_members);
        assert_eq!(restored.taken_from, 2);

        let mut reopened = crate::open(&target).unwrap();
        assert_eq!(
            reopened.reader.digest().unwrap(),
            source.reader.digest().unwrap()
        );
        assert_eq!(reopened.reader.dedup_index_size().0, 60);
        rt.block_on(async {
            let (applied, membership) = reopened.state_machine.applied_state().await.unwrap();
            assert_eq!(applied.map(|l| l.index), Some(61));
            assert_eq!(
                membership.membership().voter_ids().collect::<Vec<_>>(),
                vec![7, 8]
            );
            let vote = reopened.log_store.read_vote().await.unwrap().unwrap();
            assert_eq!(vote.leader_id.term, 4);
            assert_eq!(vote.leader_id.node_id, 0);
            assert!(!vote.is_committed());
            // The restored snapshot is the one this store serves to followers.
            let current = reopened
                .state_machine
                .get_current_snapshot()
                .await
                .unwrap()
                .unwrap();
            assert_eq!(current.meta.last_membership, membership);
            assert!(reopened
                .log_store
                .try_get_log_entries(0..100)
                .await
                .unwrap()
                .is_empty());
        });
    }

    #[test]
    fn without_members_the_backup_membership_is_kept_and_must_include_the_id() {
        let rt = rt();
        let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let file = src.path().join("backup.agb");
        let source = source_with_backup(&rt, &src.path().join("store"), &file);
        let refused = rt.block_on(restore(&file, &dst.path().join("a"), options(9, None)));
        assert!(
            matches!(refused, Err(StoreError::Restore(ref m)) if m.contains("not a member")),
            "{refused:?}"
        );
        let restored = rt
            .block_on(restore(&file, &dst.path().join("b"), options(3, None)))
            .unwrap();
        assert_eq!(restored.voters, [1, 2, 3].into());
        assert_eq!(restored.members[&3].addr, "old-3:7001");
        let reopened = crate::open(&dst.path().join("b")).unwrap();
        assert_eq!(
            reopened.reader.digest().unwrap(),
            source.reader.digest().unwrap()
        );
    }

    #[test]
    fn a_damaged_or_foreign_backup_and_a_used_directory_are_refused() {
        let rt = rt();
        let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let file = src.path().join("backup.agb");
        let _source = source_with_backup(&rt, &src.path().join("store"), &file);
        let good = std::fs::read(&file).unwrap();
        let try_bytes = |name: &str, bytes: &[u8]| {
            let path = src.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            rt.block_on(restore(&path, &dst.path().join(name), options(1, None)))
        };
        // One flipped bit in the last event's payload: only the checksum can tell.
        let mut flipped = good.clone();
        let at = flipped.len() - 3;
        flipped[at] ^= 0x01;
        let truncated = &good[..good.len() - 1];
        let mut foreign = good.clone();
        foreign[0] = b'X';
        for (name, bytes) in [
            ("flipped", flipped.as_slice()),
            ("truncated", truncated),
            ("foreign", &foreign),
            ("empty", &[]),
        ] {
            let res = try_bytes(name, bytes);
            assert!(
                matches!(res, Err(StoreError::Corrupt { .. })),
                "{name}: {res:?}"
            );
        }
        let used = dst.path().join("used");
        std::fs::create_dir_all(used.join("rocksdb")).unwrap();
        let res = rt.block_on(restore(&file, &used, options(1, None)));
        assert!(matches!(res, Err(StoreError::Restore(_))), "{res:?}");
        assert!(std::fs::read_dir(&used).unwrap().count() == 1);
    }
}
