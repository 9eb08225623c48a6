//! Apply throughput of the state machine: 1,000,000 events, 30% duplicates, batches of
//! 1,000, each batch one Raft entry applied through `RaftStateMachine::apply`. Then a
//! retention policy keeping half of each topic, enforced by trim entries of 2,000 events as
//! the leader plans them: how long one trim entry holds up apply.
//!
//! Run: `cargo run --release -p raft-store --example apply_bench [-- EVENTS [TRIM_BATCH]]`
//! (TRIM_BATCH: events per trim entry, default 2,000 like `--trim-batch-events`)

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use raft_store::{
    Command, Control, Event, EventBatch, RetentionChange, RetentionPolicy, TypeConfig,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const BATCH: usize = 1_000;
const DUPLICATE_SHARE: f64 = 0.30;
const TOPICS: usize = 10;
const PRODUCERS: usize = 20;
/// Events per trim entry unless given: the node's default `--trim-batch-events`.
const TRIM_BUDGET: usize = 2_000;

type Entry = openraft::Entry<TypeConfig>;

fn main() -> anyhow::Result<()> {
    let total: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("EVENTS must be a number")?,
        None => 1_000_000,
    };
    let trim_budget: usize = match std::env::args().nth(2) {
        Some(n) => n.parse().context("TRIM_BATCH must be a number")?,
        None => TRIM_BUDGET,
    };
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut stores = raft_store::open(dir.path())?;
    // Generated up front, so the timed loop measures apply alone.
    let (entries, distinct) = generate(total);
    let entries_applied = entries.len() as u64;

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpu_before = cpu_by_thread();
    let started = Instant::now();
    for entry in entries {
        rt.block_on(stores.state_machine.apply([entry]))?;
    }
    let wall = started.elapsed().as_secs_f64();
    let mut cpu = cpu_by_thread();
    for (name, seconds) in cpu.iter_mut() {
        *seconds -= cpu_before.get(name).copied().unwrap_or(0.0);
    }

    let stats = stores.reader.stats()?;
    let c = stats.counters;
    anyhow::ensure!(
        c.received == c.unique_processed + c.duplicate_dropped,
        "invariant broken"
    );
    // Every generated id is new exactly once, so this catches a dedup lookup that misses a
    // key once it has left the memtable (flushes and compactions happen at this scale).
    anyhow::ensure!(
        c.unique_processed == distinct as u64,
        "stored {} events but {distinct} distinct keys were generated",
        c.unique_processed
    );
    println!("events applied:      {}", c.received);
    println!(
        "stored / duplicates: {} / {}",
        c.unique_processed, c.duplicate_dropped
    );
    println!("apply wall time:     {wall:.2} s");
    println!(
        "throughput:          {:.0} events/s",
        c.received as f64 / wall
    );
    let cpu_total: f64 = cpu.values().sum();
    let threads: Vec<String> = cpu
        .iter()
        .filter(|(_, s)| **s >= 0.01)
        .map(|(name, s)| format!("{name} {s:.2}"))
        .collect();
    println!(
        "CPU during apply:    {cpu_total:.2} s ({})",
        threads.join(", ")
    );
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    println!("load average before: {}", load.join(" "));
    // Retention: every topic keeps half of what it holds; trims as the leader plans them.
    let keep = c.unique_processed / (2 * TOPICS as u64);
    let mut index = entries_applied + 1;
    let policy = Control::Retention(RetentionChange::SetDefault(RetentionPolicy {
        max_events: Some(keep),
        ..RetentionPolicy::default()
    }));
    rt.block_on(stores.state_machine.apply([control(index, policy)]))?;
    let mut trims = Vec::new();
    while let Some(trim) = stores.reader.plan_trim(trim_budget)? {
        index += 1;
        let started = Instant::now();
        rt.block_on(
            stores
                .state_machine
                .apply([control(index, Control::Trim(trim))]),
        )?;
        trims.push(started.elapsed().as_secs_f64());
        anyhow::ensure!(trims.len() < 10_000, "trims never end");
    }
    let after = stores.reader.stats()?;
    anyhow::ensure!(
        after.topic_counts.values().all(|n| *n <= keep),
        "a topic holds more than {keep} after the trims"
    );
    let trim_total: f64 = trims.iter().sum();
    let trim_max = trims.iter().copied().fold(0.0, f64::max);
    println!(
        "trims:               {} events in {} entries of at most {trim_budget}: {:.1} ms mean, {:.1} ms max per entry ({:.0} events/s)",
        after.trimmed.events,
        trims.len(),
        1000.0 * trim_total / trims.len().max(1) as f64,
        1000.0 * trim_max,
        after.trimmed.events as f64 / trim_total.max(1e-9)
    );
    println!(
        "for comparison:      {:.1} ms mean per applied entry of {BATCH} events",
        1000.0 * wall / entries_applied as f64
    );
    println!(
        "WriteBatch bytes:    {:.1} MiB",
        mib(stores.state_machine.write_batch_bytes())
    );
    println!("on disk (with WAL):  {:.1} MiB", mib(dir_size(dir.path())?));
    drop(stores);
    println!("on disk after close: {:.1} MiB", mib(dir_size(dir.path())?));
    // Opening reads the whole dedup index into memory: its start-up cost at this size.
    let started = Instant::now();
    let reopened = raft_store::open(dir.path())?;
    let reopen = started.elapsed().as_secs_f64();
    let (indexed, bytes) = reopened.reader.dedup_index_size();
    anyhow::ensure!(
        indexed as u64 == after.digest.count,
        "reopened with {indexed} keys indexed, {} held",
        after.digest.count
    );
    println!(
        "reopen:              {reopen:.2} s (dedup index {indexed} keys, {:.1} MiB)",
        mib(bytes as u64)
    );
    Ok(())
}

/// `total` events in entries of `BATCH`; in each batch 30% repeat a key stored before
/// (possibly earlier in the same batch), shuffled among the new ones.
/// The entries to apply, and how many distinct keys they hold.
fn generate(total: usize) -> (Vec<Entry>, usize) {
    let mut rng = StdRng::seed_from_u64(42);
    let mut keys: Vec<(usize, String)> = Vec::with_capacity(total);
    let mut seqs = [0u64; PRODUCERS];
    let dups_per_batch = (BATCH as f64 * DUPLICATE_SHARE).round() as usize;
    let mut entries = Vec::with_capacity(total.div_ceil(BATCH));
    let mut generated = 0;
    while generated < total {
        let size = BATCH.min(total - generated);
        let dups = dups_per_batch.min(size);
        let mut events = Vec::with_capacity(size);
        for _ in 0..size - dups {
            let topic = rng.gen_range(0..TOPICS);
            let id = uuid::Uuid::from_u128(rng.gen()).to_string();
            keys.push((topic, id.clone()));
            events.push(event(&mut rng, &mut seqs, topic, id));
        }
        for _ in 0..dups {
            let (topic, id) = keys[rng.gen_range(0..keys.len())].clone();
            events.push(event(&mut rng, &mut seqs, topic, id));
        }
        events.shuffle(&mut rng);
        entries.push(Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), entries.len() as u64 + 1),
            payload: EntryPayload::Normal(EventBatch::new(events).into()),
        });
        generated += size;
    }
    (entries, keys.len())
}

fn control(index: u64, control: Control) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
        payload: EntryPayload::Normal(Command::Control(control)),
    }
}

fn event(rng: &mut StdRng, seqs: &mut [u64; PRODUCERS], topic: usize, event_id: String) -> Event {
    let producer = rng.gen_range(0..PRODUCERS);
    seqs[producer] += 1;
    Event {
        topic: format!("topic-{topic}"),
        event_id,
        timestamp: "2024-05-01T12:00:00.000Z".into(),
        source: format!("service-{producer}"),
        payload: format!(
            "{{\"level\":\"info\",\"msg\":\"request served\",\"latency_ms\":{},\"status\":200}}",
            rng.gen_range(1..500)
        ),
        seq: Some(seqs[producer]),
        lamport: Some(seqs[producer] * 3),
    }
}

/// User + system CPU seconds of this process's live threads, summed by thread name, from
/// `/proc/self/task/*/stat` (Linux; counted in ticks of 1/100 s, the proc interface's fixed
/// USER_HZ). Empty where `/proc` is unavailable.
fn cpu_by_thread() -> BTreeMap<String, f64> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // "pid (name) state ...": utime and stime are fields 14 and 15.
        let (Some((head, rest)), Some(open)) = (stat.rsplit_once(')'), stat.find('(')) else {
            continue;
        };
        let name = head[open + 1..].to_string();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        *by_name.entry(name).or_insert(0.0) += (ticks(11) + ticks(12)) as f64 / 100.0;
    }
    by_name
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn dir_size(path: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
