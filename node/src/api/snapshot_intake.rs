//! Admission of incoming snapshot chunks. openraft writes each chunk into the snapshot's file
//! at the chunk's `offset`, seeking there first, so one chunk with a forged or corrupt offset
//! far past what was received (say 2^40) would make a file of that size (sparse, but claimed
//! from the disk as it is filled, and read whole by the install). A sender only ever resends a chunk it sent or starts over at
//! 0, so a chunk is admitted only when it starts at 0 or within what its snapshot has received,
//! and only while the snapshot stays within `--max-snapshot-mib`. (The sender's vote is
//! checked before any of this, in `raft_rpc::snapshot`: a stale or forged chunk must not even
//! reset the record of the snapshot being received.)

use std::sync::Mutex;

use openraft::error::{InstallSnapshotError, SnapshotMismatch};
use openraft::SnapshotSegmentId;

/// Why a chunk was not admitted.
#[derive(Debug)]
pub enum Refusal {
    /// It does not continue what was received: the sender must resume elsewhere.
    Resume(InstallSnapshotError),
    /// It would take the snapshot past the cap, in bytes.
    TooLarge(u64),
}

/// What has arrived of the snapshot being received: its id and the end of its furthest chunk.
#[derive(Debug, Default)]
pub struct SnapshotIntake {
    current: Mutex<Option<(String, u64)>>,
}

impl SnapshotIntake {
    /// Admits the chunk `[offset, offset + len)` of snapshot `id`, recording its end, or says
    /// where the sender must resume instead, or that the snapshot would exceed `max_bytes`.
    pub fn admit(&self, id: &str, offset: u64, len: usize, max_bytes: u64) -> Result<(), Refusal> {
        let end = offset.saturating_add(len as u64);
        // A poisoned lock only means another chunk's handler panicked; the record is a plain
        // pair and stays meaningful.
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let received = match current.as_ref() {
            Some((cur, received)) if cur == id => Some(*received),
            _ => None,
        };
        let resume_at = match received {
            _ if offset == 0 => None,
            Some(received) if offset <= received => None,
            Some(received) => Some(received),
            None => Some(0),
        };
        if let Some(resume_at) = resume_at {
            return Err(Refusal::Resume(InstallSnapshotError::SnapshotMismatch(
                SnapshotMismatch {
                    expect: SnapshotSegmentId {
                        id: id.to_owned(),
                        offset: resume_at,
                    },
                    got: SnapshotSegmentId {
                        id: id.to_owned(),
                        offset,
                    },
                },
            )));
        }
        // Only a chunk that continues the snapshot counts against the cap: one far past what
        // was received is told where to resume instead.
        if end > max_bytes {
            return Err(Refusal::TooLarge(max_bytes));
        }
        let furthest = match received {
            Some(received) if offset > 0 => received.max(end),
            _ => end,
        };
        *current = Some((id.to_owned(), furthest));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_CAP: u64 = u64::MAX;

    fn resume_point(r: Result<(), Refusal>) -> Option<u64> {
        match r {
            Ok(()) => None,
            Err(Refusal::Resume(InstallSnapshotError::SnapshotMismatch(m))) => {
                Some(m.expect.offset)
            }
            Err(Refusal::TooLarge(cap)) => panic!("refused as over {cap} bytes"),
        }
    }

    #[test]
    fn a_snapshot_past_the_cap_is_refused() {
        let intake = SnapshotIntake::default();
        assert!(intake.admit("s1", 0, 100, 150).is_ok());
        assert!(matches!(
            intake.admit("s1", 100, 100, 150),
            Err(Refusal::TooLarge(150))
        ));
        assert!(intake.admit("s1", 100, 50, 150).is_ok());
        assert!(matches!(
            intake.admit("s2", 0, 151, 150),
            Err(Refusal::TooLarge(150))
        ));
    }

    #[test]
    fn chunks_in_order_and_resends_are_admitted() {
        let intake = SnapshotIntake::default();
        assert_eq!(resume_point(intake.admit("s1", 0, 100, NO_CAP)), None);
        assert_eq!(resume_point(intake.admit("s1", 100, 100, NO_CAP)), None);
        // The sender timed out and resends the same chunk.
        assert_eq!(resume_point(intake.admit("s1", 100, 100, NO_CAP)), None);
        assert_eq!(resume_point(intake.admit("s1", 200, 50, NO_CAP)), None);
        // Starting over is always allowed.
        assert_eq!(resume_point(intake.admit("s1", 0, 10, NO_CAP)), None);
        assert_eq!(resume_point(intake.admit("s1", 10, 10, NO_CAP)), None);
    }

    #[test]
    fn a_chunk_past_what_was_received_is_refused() {
        let intake = SnapshotIntake::default();
        assert_eq!(
            resume_point(intake.admit("s1", 1 << 40, 10, NO_CAP)),
            Some(0)
        );
        assert_eq!(resume_point(intake.admit("s1", 0, 100, NO_CAP)), None);
        assert_eq!(resume_point(intake.admit("s1", 101, 10, NO_CAP)), Some(100));
        assert_eq!(
            resume_point(intake.admit("s1", u64::MAX, 10, NO_CAP)),
            Some(100)
        );
        // Refusals record nothing: the next chunk in order is still admitted.
        assert_eq!(resume_point(intake.admit("s1", 100, 10, NO_CAP)), None);
    }

    #[test]
    fn a_new_snapshot_must_start_at_zero() {
        let intake = SnapshotIntake::default();
        assert_eq!(resume_point(intake.admit("s1", 0, 100, NO_CAP)), None);
        assert_eq!(resume_point(intake.admit("s2", 100, 100, NO_CAP)), Some(0));
        assert_eq!(resume_point(intake.admit("s2", 0, 100, NO_CAP)), None);
        // The old snapshot's stream is gone: its chunks restart from 0 too.
        assert_eq!(resume_point(intake.admit("s1", 100, 100, NO_CAP)), Some(0));
    }
}
