//! The workload: realistic log events over a set of topics, a share of them exact repeats of
//! earlier events, cut into request batches whose JSON body is serialized once.
//!
//! Everything random comes from one RNG, seeded by `--seed` when given, and the generator runs
//! sequentially, so the same seed yields the same keys, payloads and repeat pattern whatever
//! the concurrency. The Lamport clock it stamps events with is shared with the workers, which
//! advance it from the stamps the cluster returns.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use api_types::{EventKey, LamportStamp, PublishEvent};

/// How many recent distinct events a repeat may copy: bounds memory on long runs.
const REPEAT_WINDOW: usize = 8192;

const SERVICES: [&str; 10] = [
    "auth",
    "billing",
    "checkout",
    "catalog",
    "search",
    "shipping",
    "inventory",
    "gateway",
    "notifications",
    "users",
];
const REGIONS: [&str; 4] = ["eu-west-1", "eu-central-1", "us-east-1", "ap-south-1"];
const ROUTES: [(&str, &str); 6] = [
    ("GET", "/api/v1/items"),
    ("GET", "/api/v1/orders/{id}"),
    ("POST", "/api/v1/orders"),
    ("POST", "/api/v1/login"),
    ("PUT", "/api/v1/cart"),
    ("DELETE", "/api/v1/sessions/{id}"),
];
const INFO_MESSAGES: [&str; 4] = [
    "request completed",
    "user signed in",
    "cache refreshed",
    "order accepted",
];
const DEBUG_MESSAGES: [&str; 3] = ["cache hit", "feature flag evaluated", "connection reused"];
const WARN_MESSAGES: [&str; 3] = [
    "slow upstream response",
    "retrying upstream call",
    "rate limit nearly reached",
];
const ERROR_MESSAGES: [&str; 3] = [
    "upstream timed out",
    "payment declined by provider",
    "database connection lost",
];

/// The publisher's Lamport clock, shared by the generator (tick) and the workers (observe).
#[derive(Debug, Default)]
pub struct LamportClock(AtomicU64);

impl LamportClock {
    /// Advances the clock for a new event and returns the event's stamp.
    pub fn tick(&self) -> LamportStamp {
        LamportStamp(self.0.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// Merges a stamp the cluster returned: clock = max(clock, stamp).
    pub fn observe(&self, stamp: LamportStamp) {
        self.0.fetch_max(stamp.0, Ordering::AcqRel);
    }

    /// The current value.
    pub fn current(&self) -> LamportStamp {
        LamportStamp(self.0.load(Ordering::Acquire))
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    /// Total sends (repeats included).
    pub events: u64,
    /// Share of sends that repeat an earlier event, 0.0..=1.0.
    pub duplicates: f64,
    /// Number of topics.
    pub topics: u32,
    /// Events per request.
    pub batch: usize,
    /// RNG seed; `None` draws one from the OS.
    pub seed: Option<u64>,
    /// The `source` of every event.
    pub source: String,
    /// Topic names are `<prefix>.<service>`.
    pub topic_prefix: String,
}

/// One distinct event, serialized once; repeats share it. One allocation per event (the JSON
/// text): the topic is shared and the id is inline, because at 100,000 events/s the allocator
/// was a quarter of the client's CPU time.
#[derive(Clone, Debug)]
pub struct GeneratedEvent {
    /// Its topic (shared with every event of the topic).
    pub topic: Arc<str>,
    /// Its id: a UUID v4, hyphenated lowercase.
    pub id: EventId,
    /// Its JSON text exactly as sent.
    pub json: Arc<[u8]>,
}

impl GeneratedEvent {
    /// The deduplication key, as owned strings.
    pub fn key(&self) -> EventKey {
        EventKey {
            topic: self.topic.to_string(),
            event_id: self.id.as_str().to_string(),
        }
    }

    /// Whether a publish result names this event.
    pub fn is(&self, topic: &str, event_id: &str) -> bool {
        *self.topic == *topic && self.id.as_str() == event_id
    }
}

/// A UUID in its 36-character text form, kept inline.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct EventId([u8; 36]);

impl EventId {
    fn new(id: uuid::Uuid) -> Self {
        let mut buf = [0u8; 36];
        id.hyphenated().encode_lower(&mut buf);
        EventId(buf)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // The bytes come from a UUID's hex-and-hyphen encoding: always ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// One request's worth of events and the body that carries them.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Sequence number of the request within the run, from 0.
    pub id: u64,
    /// The events, in body order (a repeat shares the original's text).
    pub events: Vec<GeneratedEvent>,
    /// The JSON array sent, shared by every attempt.
    pub body: Bytes,
}

/// The payload of a generated event. Text fields are `Display` values serialized in place
/// (`collect_str`), so building an event allocates only what the event keeps.
#[derive(Serialize)]
struct LogPayload<'a> {
    level: &'static str,
    service: &'a str,
    message: Text<'a>,
    fields: LogFields<'a>,
}

#[derive(Serialize)]
struct LogFields<'a> {
    host: Text<'a>,
    region: &'static str,
    request_id: Text<'a>,
    method: &'static str,
    path: &'static str,
    status: u16,
    duration_ms: u32,
    user_id: u32,
}

/// A string field written straight from its formatting arguments.
struct Text<'a>(std::fmt::Arguments<'a>);

impl Serialize for Text<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// Produces the run's batches in order.
pub struct Generator {
    cfg: GeneratorConfig,
    rng: StdRng,
    clock: Arc<LamportClock>,
    /// `(topic name, service)` per topic.
    topics: Vec<(Arc<str>, &'static str)>,
    recent: VecDeque<GeneratedEvent>,
    /// Serialization buffer reused for every event.
    scratch: Vec<u8>,
    /// The current batch's timestamp (events of one batch are made within the same moment).
    timestamp: String,
    produced: u64,
    next_batch: u64,
    seq: u64,
    distinct: u64,
    repeats: u64,
}

impl Generator {
    /// A generator for `cfg`, stamping events from `clock`.
    pub fn new(cfg: GeneratorConfig, clock: Arc<LamportClock>) -> Self {
        let rng = match cfg.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let topics = (0..cfg.topics.max(1) as usize)
            .map(|i| {
                let service = SERVICES[i % SERVICES.len()];
                let round = i / SERVICES.len();
                let name = if round == 0 {
                    format!("{}.{service}", cfg.topic_prefix)
                } else {
                    format!("{}.{service}-{round}", cfg.topic_prefix)
                };
                (Arc::from(name), service)
            })
            .collect();
        Generator {
            cfg,
            rng,
            clock,
            topics,
            recent: VecDeque::with_capacity(REPEAT_WINDOW),
            scratch: Vec::with_capacity(1024),
            timestamp: String::new(),
            produced: 0,
            next_batch: 0,
            seq: 0,
            distinct: 0,
            repeats: 0,
        }
    }

    /// Distinct events generated so far (the keys a fresh cluster should end up storing).
    pub fn distinct_events(&self) -> u64 {
        self.distinct
    }

    /// Repeats generated so far.
    pub fn repeats(&self) -> u64 {
        self.repeats
    }

    /// The next request batch, or `None` once `events` sends have been generated.
    pub fn next_batch(&mut self) -> Option<Batch> {
        let left = self.cfg.events.saturating_sub(self.produced);
        if left == 0 {
            return None;
        }
        let n = left.min(self.cfg.batch.max(1) as u64) as usize;
        self.timestamp = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        let events: Vec<_> = (0..n).map(|_| self.next_event()).collect();
        self.produced += n as u64;
        let len: usize = events.iter().map(|e| e.json.len() + 1).sum();
        let mut body = Vec::with_capacity(len + 2);
        body.push(b'[');
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&e.json);
        }
        body.push(b']');
        let id = self.next_batch;
        self.next_batch += 1;
        Some(Batch {
            id,
            events,
            body: Bytes::from(body),
        })
    }

    /// One send: a repeat of a recent distinct event (with probability `duplicates`), or a new one.
    fn next_event(&mut self) -> GeneratedEvent {
        if !self.recent.is_empty() && self.rng.gen_bool(self.cfg.duplicates.clamp(0.0, 1.0)) {
            let i = self.rng.gen_range(0..self.recent.len());
            if let Some(e) = self.recent.get(i) {
                self.repeats += 1;
                return e.clone();
            }
        }
        let event = self.fresh_event();
        if self.recent.len() == REPEAT_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(event.clone());
        self.distinct += 1;
        event
    }

    fn fresh_event(&mut self) -> GeneratedEvent {
        let rng = &mut self.rng;
        let (topic, service) = &self.topics[rng.gen_range(0..self.topics.len())];
        let id = EventId::new(uuid::Builder::from_random_bytes(rng.gen()).into_uuid());
        let (level, message) = match rng.gen_range(0..100u32) {
            0..=9 => ("DEBUG", pick(rng, &DEBUG_MESSAGES)),
            10..=79 => ("INFO", pick(rng, &INFO_MESSAGES)),
            80..=94 => ("WARN", pick(rng, &WARN_MESSAGES)),
            _ => ("ERROR", pick(rng, &ERROR_MESSAGES)),
        };
        let (method, path) = pick(rng, &ROUTES);
        let status = match level {
            "ERROR" => 500 + rng.gen_range(0..4u16),
            "WARN" => [200, 429, 404][rng.gen_range(0..3usize)],
            _ => 200,
        };
        let duration_ms = match level {
            "WARN" | "ERROR" => rng.gen_range(250..5000u32),
            _ => rng.gen_range(1..120u32),
        };
        let host = rng.gen_range(1..=12u8);
        let request_id = rng.gen::<u64>();
        let payload = LogPayload {
            level,
            service,
            message: Text(format_args!(
                "{message}: {method} {path} -> {status} in {duration_ms} ms"
            )),
            fields: LogFields {
                host: Text(format_args!("{service}-{host:02}")),
                region: pick(rng, &REGIONS),
                request_id: Text(format_args!("{request_id:016x}")),
                method,
                path,
                status,
                duration_ms,
                user_id: rng.gen_range(1..1_000_000u32),
            },
        };
        self.seq += 1;
        let wire = PublishEvent {
            topic,
            event_id: id.as_str(),
            timestamp: &self.timestamp,
            source: &self.cfg.source,
            payload: &payload,
            seq: self.seq,
            lamport: self.clock.tick().0,
        };
        self.scratch.clear();
        // Serializing strings and integers into a Vec cannot fail; an empty event would be
        // rejected by the cluster, never silently stored.
        if serde_json::to_writer(&mut self.scratch, &wire).is_err() {
            self.scratch.clear();
        }
        GeneratedEvent {
            topic: Arc::clone(topic),
            id,
            json: Arc::from(self.scratch.as_slice()),
        }
    }
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.gen_range(0..items.len())]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn config(events: u64, duplicates: f64, seed: Option<u64>) -> GeneratorConfig {
        GeneratorConfig {
            events,
            duplicates,
            topics: 5,
            batch: 100,
            seed,
            source: "test".into(),
            topic_prefix: "logs".into(),
        }
    }

    fn keys(cfg: GeneratorConfig) -> Vec<EventKey> {
        let mut g = Generator::new(cfg, Arc::default());
        let mut out = Vec::new();
        while let Some(b) = g.next_batch() {
            out.extend(b.events.iter().map(GeneratedEvent::key));
        }
        out
    }

    #[test]
    fn same_seed_same_workload_other_seed_another() {
        let a = keys(config(2_000, 0.3, Some(7)));
        let b = keys(config(2_000, 0.3, Some(7)));
        let c = keys(config(2_000, 0.3, Some(8)));
        assert_eq!(a.len(), 2_000);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn duplicate_share_is_within_tolerance_and_counts_add_up() {
        let mut g = Generator::new(config(20_000, 0.3, Some(1)), Arc::default());
        let mut sent = 0u64;
        let mut repeats = 0u64;
        let mut distinct = HashSet::new();
        while let Some(b) = g.next_batch() {
            sent += b.events.len() as u64;
            for e in &b.events {
                repeats += u64::from(!distinct.insert(e.key()));
            }
        }
        assert_eq!(sent, 20_000);
        let share = repeats as f64 / sent as f64;
        assert!((0.28..=0.32).contains(&share), "share {share}");
        assert_eq!(g.repeats(), repeats);
        assert_eq!(g.distinct_events(), distinct.len() as u64);
        assert_eq!(distinct.len() as u64 + repeats, sent);
    }

    #[test]
    fn no_duplicates_when_share_is_zero() {
        let k = keys(config(3_000, 0.0, None));
        let distinct: HashSet<_> = k.iter().collect();
        assert_eq!(distinct.len(), 3_000);
    }

    #[test]
    fn body_is_a_json_array_of_valid_events_and_repeats_are_identical() {
        let mut g = Generator::new(config(500, 0.5, Some(3)), Arc::default());
        let mut by_key: std::collections::HashMap<EventKey, serde_json::Value> = Default::default();
        let mut seen_repeat = false;
        while let Some(b) = g.next_batch() {
            let arr: Vec<serde_json::Value> = serde_json::from_slice(&b.body).unwrap();
            assert_eq!(arr.len(), b.events.len());
            for (v, e) in arr.iter().zip(&b.events) {
                assert_eq!(v["topic"], &*e.topic);
                assert_eq!(v["event_id"], e.id.as_str());
                assert!(e.is(&e.topic, e.id.as_str()) && !e.is("other", e.id.as_str()));
                let id = uuid::Uuid::parse_str(e.id.as_str()).unwrap();
                assert_eq!(id.get_version_num(), 4);
                let ts = v["timestamp"].as_str().unwrap();
                chrono::DateTime::parse_from_rfc3339(ts).unwrap();
                assert!(v["payload"]["level"].is_string());
                assert!(v["payload"]["service"].is_string());
                assert!(v["payload"]["message"].is_string());
                assert!(v["payload"]["fields"].is_object());
                assert_eq!(v["source"], "test");
                if let Some(prev) = by_key.insert(e.key(), v.clone()) {
                    assert_eq!(&prev, v, "a repeat must be byte-identical");
                    seen_repeat = true;
                }
            }
        }
        assert!(seen_repeat);
    }

    #[test]
    fn seq_and_lamport_increase_per_distinct_event_and_clock_merges() {
        let clock = Arc::new(LamportClock::default());
        let mut g = Generator::new(config(10, 0.0, Some(2)), Arc::clone(&clock));
        let b = g.next_batch().unwrap();
        let arr: Vec<serde_json::Value> = serde_json::from_slice(&b.body).unwrap();
        let seqs: Vec<u64> = arr.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
        let stamps: Vec<u64> = arr.iter().map(|v| v["lamport"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        assert_eq!(stamps, (1..=10).collect::<Vec<_>>());
        clock.observe(LamportStamp(500));
        clock.observe(LamportStamp(20));
        assert_eq!(clock.tick(), LamportStamp(501));
    }

    #[test]
    fn batches_have_the_requested_size_and_a_short_tail() {
        let mut g = Generator::new(config(250, 0.0, Some(4)), Arc::default());
        let sizes: Vec<usize> =
            std::iter::from_fn(|| g.next_batch().map(|b| b.events.len())).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
    }
}
