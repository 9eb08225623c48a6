//! The batcher (group commit on the node side): publish requests wait in a bounded queue; one task takes the first, drains
//! whatever else is waiting (up to an event and a byte cap), submits the merged events as ONE
//! Raft entry, and moves on without waiting for it, so up to `max_inflight` entries are in
//! flight at once. When an entry is applied each caller receives its own slice of the
//! outcomes. A full queue is refused at once (the handler answers 429).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::ClientWriteError;
use openraft::raft::ClientWriteResponse;
use raft_store::{BatchOutcome, Event, EventBatch, EventOutcome, Node, NodeId, TypeConfig};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::metrics::Metrics;
use crate::raft::Raft;

/// Most events merged into one entry (a larger single request still goes alone).
const MAX_ENTRY_EVENTS: usize = 8192;
/// Most event bytes merged into one entry.
const MAX_ENTRY_BYTES: usize = 4 * 1024 * 1024;

/// Why a submitted request got no outcomes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full.
    #[error("too many publish requests waiting")]
    Overloaded,
    /// This node is not the leader (any more); the known leader, if any.
    #[error("not the leader")]
    NotLeader(Option<NodeId>),
    /// The entry was submitted but its fate is unknown (leadership changed, shutdown).
    #[error("{0}")]
    Unknown(String),
}

/// Whatever a caller wants kept alive while its events wait in the queue (the request body's
/// share of the node's byte budget): dropped when the events join a Raft entry, whose memory
/// is bounded by `max_inflight` entries, or when the batcher drops the request.
pub type Hold = Box<dyn std::any::Any + Send + Sync>;

/// One caller's request as it waits in the queue.
struct Pending {
    events: Vec<Event>,
    bytes: usize,
    reply: oneshot::Sender<Result<Vec<EventOutcome>, SubmitError>>,
    /// Dropped with the request, see [`Hold`].
    #[allow(dead_code)]
    hold: Option<Hold>,
}

/// Handle to the batcher task.
///
/// To ensure correctness:
/// - A caller gets `Ok(outcomes)` only after its entry is committed and applied: the outcomes
///   are the state machine's answer for that entry, which openraft hands back after apply.
/// - A caller gets exactly its own events' outcomes, as many as it sent, in its order; an
///   answer whose count does not match the entry is "unknown" for every caller, never a guess.
/// - Every other end is an error the client sees as "maybe" (`Overloaded` before anything
///   was submitted; `NotLeader` or `Unknown` after): never an ack for an entry that may be lost.
/// - One entry's callers share its fate: all get outcomes, or all get the same error.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
    queued_events: Arc<AtomicUsize>,
}

impl Batcher {
    /// Starts the batcher task on `raft`. An entry whose outcome Raft has not reported
    /// within `answer_timeout` gives its pipeline slot back (its callers get "unknown").
    pub fn spawn(
        raft: Raft,
        capacity: usize,
        max_inflight: usize,
        answer_timeout: Duration,
        metrics: Metrics,
    ) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        let queued_events = Arc::new(AtomicUsize::new(0));
        let run = Runner {
            raft,
            rx,
            inflight: Arc::new(Semaphore::new(max_inflight)),
            queued_events: queued_events.clone(),
            answer_timeout,
            metrics,
            carry: None,
        };
        tokio::spawn(run.run());
        Self { tx, queued_events }
    }

    /// Events accepted by this node and not yet answered (waiting or in flight).
    pub fn queued_events(&self) -> usize {
        self.queued_events.load(Ordering::Relaxed)
    }

    /// Submits `events` (`bytes` is their approximate size) and waits for their outcomes,
    /// in order. Does not time out: the caller bounds the wait. `hold` is kept until the
    /// events leave the queue, even if the caller stops waiting.
    pub async fn submit(
        &self,
        events: Vec<Event>,
        bytes: usize,
        hold: Option<Hold>,
    ) -> Result<Vec<EventOutcome>, SubmitError> {
        let n = events.len();
        let (reply, rx) = oneshot::channel();
        self.queued_events.fetch_add(n, Ordering::Relaxed);
        if self
            .tx
            .try_send(Pending {
                events,
                bytes,
                reply,
                hold,
            })
            .is_err()
        {
            self.queued_events.fetch_sub(n, Ordering::Relaxed);
            return Err(SubmitError::Overloaded);
        }
        rx.await
            .unwrap_or_else(|_| Err(SubmitError::Unknown("group commit stopped".into())))
    }
}

/// The batcher task.
struct Runner {
    raft: Raft,
    rx: mpsc::Receiver<Pending>,
    inflight: Arc<Semaphore>,
    queued_events: Arc<AtomicUsize>,
    /// How long an entry may hold its pipeline slot waiting for Raft's answer. openraft 0.9
    /// never answers a write whose entry a snapshot install purged on a deposed leader; without
    /// this bound those slots would be held forever and the node would take no more writes.
    answer_timeout: Duration,
    metrics: Metrics,
    /// A request drained but too big for the previous entry: it opens the next one.
    carry: Option<Pending>,
}

/// The callers of one entry: how many events each contributed, in entry order.
type Callers = Vec<(
    usize,
    oneshot::Sender<Result<Vec<EventOutcome>, SubmitError>>,
)>;

impl Runner {
    async fn run(mut self) {
        loop {
            let first = match self.carry.take() {
                Some(p) => p,
                None => match self.rx.recv().await {
                    Some(p) => p,
                    None => return,
                },
            };
            // Wait for room in the pipeline first: requests arriving meanwhile join this entry.
            let Ok(permit) = self.inflight.clone().acquire_owned().await else {
                return;
            };
            let (batch, callers) = self.gather(first);
            let n = batch.events.len();
            self.metrics.entry_events.observe(n as f64);
            tracing::debug!(
                events = n,
                requests = callers.len(),
                "submitting group-commit entry"
            );
            let queued = self.queued_events.clone();
            let started = std::time::Instant::now();
            let latency = self.metrics.entry_seconds.clone();
            let answer_timeout = self.answer_timeout;
            match self.raft.client_write_ff(batch.into()).await {
                Ok(rx) => {
                    tokio::spawn(async move {
                        let result = await_outcome(rx, answer_timeout).await;
                        drop(permit);
                        latency.observe(started.elapsed().as_secs_f64());
                        queued.fetch_sub(n, Ordering::Relaxed);
                        deliver(result, callers);
                    });
                }
                Err(fatal) => {
                    drop(permit);
                    queued.fetch_sub(n, Ordering::Relaxed);
                    deliver(Err(SubmitError::Unknown(fatal.to_string())), callers);
                }
            }
        }
    }

    /// Merges `first` and whatever else is waiting into one batch.
    fn gather(&mut self, first: Pending) -> (EventBatch, Callers) {
        let mut count = first.events.len();
        let mut bytes = first.bytes;
        let mut parts = vec![first];
        while count < MAX_ENTRY_EVENTS && bytes < MAX_ENTRY_BYTES {
            match self.rx.try_recv() {
                Ok(p) => {
                    if count + p.events.len() > MAX_ENTRY_EVENTS
                        || bytes + p.bytes > MAX_ENTRY_BYTES
                    {
                        self.carry = Some(p);
                        break;
                    }
                    count += p.events.len();
                    bytes += p.bytes;
                    parts.push(p);
                }
                Err(_) => break,
            }
        }
        merge(parts, count)
    }
}

/// Raft's answer for one entry, or "unknown" when none comes within `limit`.
async fn await_outcome<E>(
    rx: impl std::future::Future<
        Output = Result<Result<ClientWriteResponse<TypeConfig>, ClientWriteError<NodeId, Node>>, E>,
    >,
    limit: Duration,
) -> Result<BatchOutcome, SubmitError> {
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(Ok(resp))) => Ok(resp.data),
        Ok(Ok(Err(ClientWriteError::ForwardToLeader(f)))) => {
            Err(SubmitError::NotLeader(f.leader_id))
        }
        Ok(Ok(Err(e))) => Err(SubmitError::Unknown(e.to_string())),
        Ok(Err(_)) => Err(SubmitError::Unknown(
            "Raft dropped the write (leadership changed or shutting down)".into(),
        )),
        Err(_) => Err(SubmitError::Unknown(format!(
            "Raft reported no outcome within {} ms",
            limit.as_millis()
        ))),
    }
}

/// Moves the events of `parts` into one batch, remembering who sent how many.
fn merge(mut parts: Vec<Pending>, count: usize) -> (EventBatch, Callers) {
    if parts.len() == 1 {
        // The common case under low load: no copy at all.
        if let Some(p) = parts.pop() {
            let n = p.events.len();
            return (EventBatch::new(p.events), vec![(n, p.reply)]);
        }
    }
    let mut events = Vec::with_capacity(count);
    let mut callers = Vec::with_capacity(parts.len());
    for p in parts {
        callers.push((p.events.len(), p.reply));
        events.extend(p.events);
    }
    (EventBatch::new(events), callers)
}

/// Hands each caller its slice of the entry's outcomes (or the shared error).
fn deliver(result: Result<BatchOutcome, SubmitError>, callers: Callers) {
    match result {
        Ok(outcome) => {
            let expected: usize = callers.iter().map(|(n, _)| n).sum();
            if outcome.results.len() != expected {
                let msg = format!(
                    "state machine answered {} outcomes for {expected} events",
                    outcome.results.len()
                );
                tracing::error!("{msg}");
                for (_, reply) in callers {
                    let _ = reply.send(Err(SubmitError::Unknown(msg.clone())));
                }
                return;
            }
            let mut rest = outcome.results.as_slice();
            for (n, reply) in callers {
                let (mine, tail) = rest.split_at(n);
                rest = tail;
                // A caller that gave up (timeout) simply does not receive.
                let _ = reply.send(Ok(mine.to_vec()));
            }
        }
        Err(e) => {
            for (_, reply) in callers {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_store::{ApplyStatus, LamportStamp};

    fn ev(id: &str) -> Event {
        Event {
            topic: "t".into(),
            event_id: id.into(),
            timestamp: "2024-01-01T00:00:00Z".into(),
            source: "s".into(),
            payload: "{}".into(),
            seq: None,
            lamport: None,
        }
    }

    fn pending(
        ids: &[&str],
    ) -> (
        Pending,
        oneshot::Receiver<Result<Vec<EventOutcome>, SubmitError>>,
    ) {
        let (reply, rx) = oneshot::channel();
        let events: Vec<Event> = ids.iter().map(|i| ev(i)).collect();
        (
            Pending {
                bytes: events.len() * 10,
                events,
                reply,
                hold: None,
            },
            rx,
        )
    }

    fn outcome(l: u64, dup: bool) -> EventOutcome {
        EventOutcome {
            status: if dup {
                ApplyStatus::Duplicate
            } else {
                ApplyStatus::Stored
            },
            lamport: LamportStamp(l),
            original_trimmed: false,
        }
    }

    #[test]
    fn merge_keeps_request_order_and_sizes() {
        let (a, _ra) = pending(&["a1", "a2"]);
        let (b, _rb) = pending(&["b1"]);
        let (c, _rc) = pending(&["c1", "c2", "c3"]);
        let (batch, callers) = merge(vec![a, b, c], 6);
        let ids: Vec<_> = batch.events.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(ids, ["a1", "a2", "b1", "c1", "c2", "c3"]);
        let sizes: Vec<_> = callers.iter().map(|(n, _)| *n).collect();
        assert_eq!(sizes, [2, 1, 3]);
    }

    #[tokio::test]
    async fn each_caller_gets_its_own_slice() {
        let (a, ra) = pending(&["a1", "a2"]);
        let (b, rb) = pending(&["b1"]);
        let (_, callers) = merge(vec![a, b], 3);
        let out = BatchOutcome {
            results: vec![outcome(1, false), outcome(2, false), outcome(1, true)],
        };
        deliver(Ok(out), callers);
        assert_eq!(
            ra.await.unwrap().unwrap(),
            vec![outcome(1, false), outcome(2, false)]
        );
        assert_eq!(rb.await.unwrap().unwrap(), vec![outcome(1, true)]);
    }

    #[tokio::test]
    async fn a_short_outcome_fails_every_caller_instead_of_misattributing() {
        let (a, ra) = pending(&["a1"]);
        let (b, rb) = pending(&["b1"]);
        let (_, callers) = merge(vec![a, b], 2);
        deliver(
            Ok(BatchOutcome {
                results: vec![outcome(1, false)],
            }),
            callers,
        );
        assert!(matches!(ra.await.unwrap(), Err(SubmitError::Unknown(_))));
        assert!(matches!(rb.await.unwrap(), Err(SubmitError::Unknown(_))));
    }

    #[tokio::test]
    async fn errors_reach_every_caller() {
        let (a, ra) = pending(&["a1"]);
        let (b, rb) = pending(&["b1"]);
        let (_, callers) = merge(vec![a, b], 2);
        deliver(Err(SubmitError::NotLeader(Some(2))), callers);
        assert_eq!(ra.await.unwrap(), Err(SubmitError::NotLeader(Some(2))));
        assert_eq!(rb.await.unwrap(), Err(SubmitError::NotLeader(Some(2))));
    }

    #[tokio::test]
    async fn an_entry_raft_never_answers_gives_its_slot_back() {
        // The sender stays alive and silent, as openraft leaves a write whose entry a
        // snapshot install purged.
        let (_silent, rx) = tokio::sync::oneshot::channel();
        let got = await_outcome(rx, Duration::from_millis(20)).await;
        assert!(matches!(got, Err(SubmitError::Unknown(_))), "{got:?}");
    }

    #[tokio::test]
    async fn a_dropped_write_is_unknown_not_lost() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        drop(tx);
        let got = await_outcome(rx, Duration::from_secs(5)).await;
        assert!(matches!(got, Err(SubmitError::Unknown(_))), "{got:?}");
    }
}
