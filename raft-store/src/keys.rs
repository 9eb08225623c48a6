//! Byte encodings of every RocksDB key the store writes. Integers are big-endian so that
//! RocksDB's bytewise order is numeric order, which makes log ranges and Lamport-ordered
//! scans plain iterator walks.

use crate::types::LamportStamp;

/// Key of the single record in `sm_meta` holding the state machine's bookkeeping
/// (`StateMachineMeta`). The bytes say "state" for historical reasons: they are on disk in
/// every existing store, so they stay as they are.
pub(crate) const STATE_MACHINE_META: &[u8] = b"state";
/// Key of the retention record in `sm_meta` (`sm/retention.rs`).
pub(crate) const RETENTION: &[u8] = b"retention";
/// Key of the dedup window's record in `sm_meta` (`sm/dedup_window.rs`).
pub(crate) const DEDUP_WINDOW: &[u8] = b"dedup_window";
/// Key of the dedup index's hot floor in `sm_meta` (`u64 BE`): events stamped at or below it
/// have their dedup record in the cold tier (`sm/dedup_index.rs`).
pub(crate) const DEDUP_HOT_FLOOR: &[u8] = b"dedup_hot_floor";
/// Key of the vote in `raft_meta`.
pub(crate) const VOTE: &[u8] = b"vote";
/// Key of the committed log id in `raft_meta`.
pub(crate) const COMMITTED: &[u8] = b"committed";
/// Key of the last purged log id in `raft_meta`.
pub(crate) const LAST_PURGED: &[u8] = b"last_purged";
/// Key of the dedup index's hash seed in `raft_meta` (see `sm/dedup_index.rs`). On disk in
/// every existing store: the bytes stay as they are.
pub(crate) const DEDUP_HASH_SEED: &[u8] = b"dedup_seed";
/// Key of the current snapshot's record (meta and data file) in `snapshot`.
pub(crate) const SNAPSHOT_CURRENT: &[u8] = b"current";
/// Key of the record of a snapshot being installed in `snapshot` (see `sm/snapshot/mod.rs`): present
/// from an install's commit point until it finishes.
pub(crate) const SNAPSHOT_INSTALLING: &[u8] = b"installing";

/// An exclusive upper bound above every key of every column family: no key starts with
/// nine 0xFF bytes (UTF-8 never contains 0xFF, a length prefix starting with 0xFF would
/// claim a 4 GiB string, fixed-width integer keys are at most eight bytes long, and a dedup
/// key's ninth byte starts the topic's length prefix).
pub(crate) const KEY_SPACE_END: [u8; 9] = [0xFF; 9];

/// Key of the log entry at `index` in `log`.
pub(crate) fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Key of the event with stamp `lamport` in `events`.
pub(crate) fn lamport_key(lamport: LamportStamp) -> [u8; 8] {
    lamport.0.to_be_bytes()
}

/// Decodes an eight-byte big-endian integer key or value.
pub(crate) fn decode_u64(bytes: &[u8]) -> Option<u64> {
    let array: [u8; 8] = bytes.try_into().ok()?;
    Some(u64::from_be_bytes(array))
}

/// Prefix shared by every `by_topic`/`by_source` entry of one name: `len(name) u32 BE | name`.
/// No other name's entries start with it, because the length is part of the prefix.
pub(crate) fn index_prefix(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + name.len() + 8);
    push_len_prefixed(&mut key, name);
    key
}

/// Key of a run of events in a secondary index: `index_prefix(name) | first lamport u64 BE`
/// (see `sm/index_runs.rs`).
pub(crate) fn index_key(name: &str, lamport: LamportStamp) -> Vec<u8> {
    let mut key = index_prefix(name);
    key.extend_from_slice(&lamport.0.to_be_bytes());
    key
}

/// The first stamp of the run whose secondary-index key starts with `prefix`, if it is one.
pub(crate) fn index_stamp(prefix: &[u8], key: &[u8]) -> Option<LamportStamp> {
    let rest = key.strip_prefix(prefix)?;
    decode_u64(rest).map(LamportStamp)
}

/// Appends `len(s) u32 BE | s` to `buf`.
pub(crate) fn push_len_prefixed(buf: &mut Vec<u8>, s: &str) {
    // Names are validated by the server (topics and sources are at most 255 characters),
    // so the length always fits; saturating keeps this total anyway.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_numerically() {
        let mut keys: Vec<_> = [300u64, 1, 256, 0, u64::MAX, 255].map(log_key).to_vec();
        keys.sort();
        let decoded: Vec<_> = keys.iter().map(|k| decode_u64(k)).collect();
        assert_eq!(decoded, [0, 1, 255, 256, 300, u64::MAX].map(Some).to_vec());
    }

    #[test]
    fn index_keys_of_one_name_sort_by_stamp_and_stay_under_their_prefix() {
        let a = index_key("orders", LamportStamp(2));
        let b = index_key("orders", LamportStamp(10));
        assert!(a < b);
        let prefix = index_prefix("orders");
        assert_eq!(index_stamp(&prefix, &b), Some(LamportStamp(10)));
        // A name that extends "orders" has a different length prefix, so it never shares it.
        assert!(!index_key("orders2", LamportStamp(1)).starts_with(&prefix));
        assert_eq!(
            index_stamp(&prefix, &index_key("orders2", LamportStamp(1))),
            None
        );
    }

    #[test]
    fn key_space_end_is_above_every_key_shape() {
        let end = KEY_SPACE_END.as_slice();
        assert!(log_key(u64::MAX).as_slice() < end);
        assert!(lamport_key(LamportStamp(u64::MAX)).as_slice() < end);
        // An older release's dedup key (`sm/dedup_index.rs`) with the largest possible hash.
        let mut worst = vec![0xFF; 8];
        push_len_prefixed(&mut worst, &"\u{10FFFF}".repeat(64));
        worst.extend_from_slice("\u{10FFFF}".as_bytes());
        assert!(worst.as_slice() < end);
        assert!(index_key(&"z".repeat(255), LamportStamp(u64::MAX)).as_slice() < end);
        assert!("\u{10FFFF}".repeat(4).as_bytes() < end);
        assert!(STATE_MACHINE_META < end && SNAPSHOT_CURRENT < end && SNAPSHOT_INSTALLING < end);
    }

    #[test]
    fn decode_u64_rejects_wrong_lengths() {
        assert_eq!(decode_u64(&[1, 2, 3]), None);
        assert_eq!(decode_u64(&7u64.to_be_bytes()), Some(7));
    }
}
