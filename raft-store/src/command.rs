//! What a Raft entry asks the state machine to do ([`Command`], openraft's application data):
//! store a batch of events, change the retention policies, trim events by explicit cut-offs,
//! or create, acknowledge and delete durable consumers; and its byte encoding, which keeps
//! every entry written before retention (and before consumers) existed readable as it is.
//!
//! An entry of events encodes exactly as a `Vec<Event>` always did (`len varint | events`).
//! Every other command encodes as the sequence length [`CONTROL_MARK`] followed by one
//! postcard-encoded [`Control`]. No batch of events can claim that length: a log record is at
//! most 4 GiB and every event takes more than one byte, so an old record never reads as a
//! control command and a control command never reads as events. (The encoding leans on
//! postcard: a sequence is a varint length then the elements, a tuple its elements alone, and
//! a `u64` the same varint as a length. postcard is the only codec of the log, the snapshots
//! and the Raft RPCs.)

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::types::{Event, EventBatch, LamportStamp};

/// Sequence length that marks a control command (see the module header).
const CONTROL_MARK: u64 = u32::MAX as u64;

/// The application data of one Raft entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Events to store, deduplicated (one client request or several coalesced).
    Events(EventBatch),
    /// Anything else: retention policies and trims.
    Control(Control),
}

impl Command {
    /// The events this command stores (none for a control command).
    pub fn events(&self) -> &[Event] {
        match self {
            Command::Events(batch) => &batch.events,
            Command::Control(_) => &[],
        }
    }

    /// Approximate size, as [`EventBatch::approx_bytes`]; a control command counts its cuts.
    pub fn approx_bytes(&self) -> usize {
        match self {
            Command::Events(batch) => batch.approx_bytes(),
            Command::Control(Control::Trim(trim)) => {
                64 + trim.cuts.iter().map(|c| c.topic.len() + 16).sum::<usize>()
            }
            Command::Control(Control::Retention(_)) => 320,
            Command::Control(Control::CreateConsumer(c)) => {
                128 + c.name.len() + c.definition.topic.len()
            }
            Command::Control(Control::Ack(a)) => 48 + a.name.len(),
            Command::Control(Control::DeleteConsumer { name }) => 32 + name.len(),
        }
    }
}

impl From<EventBatch> for Command {
    fn from(batch: EventBatch) -> Command {
        Command::Events(batch)
    }
}

impl Default for Command {
    fn default() -> Command {
        Command::Events(EventBatch::default())
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Events(batch) => batch.fmt(f),
            Command::Control(Control::Retention(change)) => write!(f, "Retention({change:?})"),
            Command::Control(Control::Trim(trim)) => {
                write!(f, "Trim({} cuts at {} ms)", trim.cuts.len(), trim.at_ms)
            }
            Command::Control(Control::CreateConsumer(c)) => {
                write!(f, "CreateConsumer({:?} at {})", c.name, c.start)
            }
            Command::Control(Control::Ack(a)) => write!(f, "Ack({:?} to {})", a.name, a.cursor),
            Command::Control(Control::DeleteConsumer { name }) => {
                write!(f, "DeleteConsumer({name:?})")
            }
        }
    }
}

/// A command that stores no events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Sets or removes a retention policy.
    Retention(RetentionChange),
    /// Deletes events below explicit per-topic cut-offs.
    Trim(Trim),
    // Variants are encoded by their position: new ones only ever go at the end, so every
    // entry written before them decodes as it did.
    /// Creates a durable consumer unless one of that name exists (`sm/consumers.rs`).
    CreateConsumer(CreateConsumer),
    /// Moves a consumer's acknowledged position up (never down).
    Ack(ConsumerAck),
    /// Deletes a consumer.
    DeleteConsumer {
        /// Its name.
        name: String,
    },
}

/// Where a consumer starts, as its creator asked (kept in the definition so that creating
/// the same consumer again compares equal; the leader resolves it to a cursor once, in
/// [`CreateConsumer::start`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsumerFrom {
    /// Before every event.
    Earliest,
    /// After the last event applied on the leader when it proposed the creation.
    Latest,
    /// After this cursor (a stamp).
    Cursor(u64),
    /// At the first selected event whose producer timestamp is at or after this RFC 3339
    /// time (the serving node seeks while the position is still the start).
    Time(String),
}

/// What a consumer delivers and how: everything its creator chose. Two creations of one
/// name are the same consumer exactly when their definitions are equal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerDefinition {
    /// The topic pattern (api-types' `TopicPattern` grammar), as written.
    pub topic: String,
    /// Only this producer's events, when set.
    pub source: Option<String>,
    /// Where it starts.
    pub from: ConsumerFrom,
    /// How long a delivered event may stay unacknowledged before it is delivered again.
    pub ack_wait_ms: u64,
    /// Most events delivered and not yet acknowledged at once.
    pub max_ack_pending: u32,
}

/// Creates consumer `name`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateConsumer {
    /// Its name.
    pub name: String,
    /// Its definition.
    pub definition: ConsumerDefinition,
    /// Its first acknowledged position: the `from` resolved by the leader.
    pub start: LamportStamp,
}

/// Acknowledges consumer `name` up to `cursor`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerAck {
    /// The consumer.
    pub name: String,
    /// The incarnation acknowledged (the log index that created it): an ack meant for a
    /// consumer that was deleted and created again under the same name changes nothing.
    pub generation: u64,
    /// Everything of the consumer up to and including this stamp is acknowledged.
    pub cursor: LamportStamp,
}

/// Limits on what one topic keeps; each one that is set trims the oldest events past it.
/// All unset: keep everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// Trim events stored more than this many milliseconds ago.
    pub max_age_ms: Option<u64>,
    /// Keep at most this many events.
    pub max_events: Option<u64>,
    /// Keep at most this many bytes of events (as stored: the encoded record of each event).
    pub max_bytes: Option<u64>,
}

impl RetentionPolicy {
    /// Whether no limit is set.
    pub fn is_unlimited(&self) -> bool {
        self.max_age_ms.is_none() && self.max_events.is_none() && self.max_bytes.is_none()
    }
}

/// A change of the retention policies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetentionChange {
    /// The policy of every topic without one of its own.
    SetDefault(RetentionPolicy),
    /// One topic's own policy.
    SetTopic {
        /// The topic.
        topic: String,
        /// Its policy.
        policy: RetentionPolicy,
    },
    /// Drops a topic's own policy: the default applies to it again.
    RemoveTopic {
        /// The topic.
        topic: String,
    },
    // Variants are encoded by their position: new ones only ever go at the end.
    /// Sets the dedup window (`sm/dedup_window.rs`): a trimmed event's key stays a duplicate
    /// until at least this many milliseconds after the event was stored. 0: only while the
    /// event is held.
    SetDedupWindow(u64),
    /// As [`RetentionChange::SetDedupWindow`], unless the cluster has a window already: what a
    /// leader proposes from its `--dedup-window` flag, so a flag never overrides a window set
    /// through the API.
    SetDedupWindowIfUnset(u64),
}

/// A trim: every replica deletes exactly the events below these cut-offs, whatever its clock
/// says. Proposed by the leader from its own applied state (`StoreReader::plan_trim`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trim {
    /// The leader's wall clock when it planned the trim (milliseconds since the Unix epoch).
    pub at_ms: u64,
    /// The leader's applied clock read before `at_ms`: every event stamped at or below it
    /// was stored by `at_ms`. The state machine keeps such marks to turn ages into stamps.
    pub clock: LamportStamp,
    /// Per topic: delete its events stamped below `below`.
    pub cuts: Vec<TrimCut>,
}

/// One topic's cut-off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrimCut {
    /// The topic.
    pub topic: String,
    /// Events of the topic stamped below this are deleted.
    pub below: LamportStamp,
}

impl Serialize for Command {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Command::Events(batch) => batch.serialize(serializer),
            Command::Control(control) => {
                // A tuple is its elements back to back: the mark's varint, where the events'
                // length would be, then the command.
                let mut tuple = serializer.serialize_tuple(2)?;
                tuple.serialize_element(&CONTROL_MARK)?;
                tuple.serialize_element(control)?;
                tuple.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Command, D::Error> {
        // Read as an open-ended tuple: the leading varint first (a length or the mark), then as
        // many elements as it says. postcard reads a `u64` exactly as it reads a length.
        deserializer.deserialize_tuple(usize::MAX, CommandVisitor)
    }
}

struct CommandVisitor;

impl<'de> Visitor<'de> for CommandVisitor {
    type Value = Command;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence of events or a control command")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Command, A::Error> {
        let missing = || de::Error::custom("entry ends early");
        let lead: u64 = seq.next_element()?.ok_or_else(missing)?;
        if lead == CONTROL_MARK {
            let control = seq.next_element::<Control>()?.ok_or_else(missing)?;
            return Ok(Command::Control(control));
        }
        // Never trust the claimed length for the allocation: it comes off the disk or the wire.
        let mut events = Vec::with_capacity(usize::try_from(lead).unwrap_or(0).min(4096));
        for _ in 0..lead {
            events.push(seq.next_element::<Event>()?.ok_or_else(missing)?);
        }
        Ok(Command::Events(EventBatch::new(events)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> Event {
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

    #[test]
    fn events_encode_exactly_as_the_batch_did() {
        let batch = EventBatch::new(vec![event("a"), event("b")]);
        let old = postcard::to_stdvec(&batch).unwrap();
        let command = Command::Events(batch.clone());
        assert_eq!(postcard::to_stdvec(&command).unwrap(), old);
        assert_eq!(postcard::from_bytes::<Command>(&old).unwrap(), command);
        let empty = postcard::to_stdvec(&EventBatch::default()).unwrap();
        assert_eq!(
            postcard::from_bytes::<Command>(&empty).unwrap(),
            Command::default()
        );
    }

    #[test]
    fn control_commands_round_trip_and_never_read_as_events() {
        let trim = Command::Control(Control::Trim(Trim {
            at_ms: 7,
            clock: LamportStamp(9),
            cuts: vec![TrimCut {
                topic: "t".into(),
                below: LamportStamp(5),
            }],
        }));
        let change = Command::Control(Control::Retention(RetentionChange::SetTopic {
            topic: "t".into(),
            policy: RetentionPolicy {
                max_events: Some(3),
                ..RetentionPolicy::default()
            },
        }));
        let create = Command::Control(Control::CreateConsumer(CreateConsumer {
            name: "c".into(),
            definition: ConsumerDefinition {
                topic: "logs.>".into(),
                source: None,
                from: ConsumerFrom::Time("2024-01-01T00:00:00Z".into()),
                ack_wait_ms: 30_000,
                max_ack_pending: 1000,
            },
            start: LamportStamp(4),
        }));
        let ack = Command::Control(Control::Ack(ConsumerAck {
            name: "c".into(),
            generation: 3,
            cursor: LamportStamp(9),
        }));
        let delete = Command::Control(Control::DeleteConsumer { name: "c".into() });
        for command in [trim, change, create, ack, delete] {
            let bytes = postcard::to_stdvec(&command).unwrap();
            assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), command);
            // An older release reading it finds a batch it cannot hold, not events.
            assert!(postcard::from_bytes::<EventBatch>(&bytes).is_err());
        }
    }

    /// The bytes of control entries written before consumers existed, pinned: they must keep
    /// decoding to the same commands (new variants only go at the end of `Control`).
    #[test]
    fn control_entries_written_before_consumers_still_decode() {
        let change = Command::Control(Control::Retention(RetentionChange::RemoveTopic {
            topic: "t".into(),
        }));
        // mark u32::MAX varint | variant 0 (Retention) | variant 2 (RemoveTopic) | "t"
        let old = [0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0, 2, 1, b't'];
        assert_eq!(postcard::to_stdvec(&change).unwrap(), old);
        assert_eq!(postcard::from_bytes::<Command>(&old).unwrap(), change);
        let trim = Command::Control(Control::Trim(Trim {
            at_ms: 1,
            clock: LamportStamp(2),
            cuts: vec![],
        }));
        let old = [0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 1, 1, 2, 0];
        assert_eq!(postcard::from_bytes::<Command>(&old).unwrap(), trim);
    }
}
