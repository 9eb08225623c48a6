//! A bounded nemesis run: sequential writers publish while nodes are killed, paused and
//! partitioned in a seeded random order. Afterwards every acknowledged write is stored exactly
//! once with its acknowledged stamp on every node, and each writer's stamps increase in the
//! order it was acknowledged. `CHAOS_SEED=N` replays a run (the seed is printed).

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::time::Duration;

use tests::event::unique;
use tests::load::Writer;
use tests::{assert_each_once, TestCluster};

/// Faults injected, one after the other.
const STEPS: usize = 8;
/// How long each fault lasts.
const FAULT: Duration = Duration::from_millis(1500);

/// xorshift64*: enough randomness for choosing faults, reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nemesis_run_loses_and_duplicates_no_acknowledged_write() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(uuid::Uuid::new_v4().as_fields().0) | 1);
    eprintln!("CHAOS_SEED={seed}");
    let mut rng = Rng(seed);
    let mut cluster = TestCluster::start(3).await;
    let topic = unique("chaos");
    let urls: Vec<String> = (1..=3).map(|i| cluster.url(i)).collect();
    let writers: Vec<Writer> = (0..3)
        .map(|w| {
            let client = cluster.client.with_timeout(Duration::from_secs(3));
            Writer::start(client, urls.clone(), &topic, &format!("chaos-w{w}"), 3)
        })
        .collect();

    for step in 0..STEPS {
        let node = rng.below(3) + 1;
        let fault = rng.below(4);
        let what = match fault {
            0 => {
                cluster.kill(node);
                tokio::time::sleep(FAULT).await;
                cluster.restart(node);
                format!("kill -9 node {node}")
            }
            1 => {
                cluster.pause(node);
                tokio::time::sleep(FAULT).await;
                cluster.resume(node);
                format!("pause node {node}")
            }
            2 => {
                let others: Vec<u64> = (1..=3).filter(|&i| i != node).collect();
                cluster.partition(&[node], &others);
                tokio::time::sleep(FAULT).await;
                cluster.heal();
                format!("isolate node {node}")
            }
            _ => match cluster.leader().await {
                Ok(leader) => {
                    cluster.kill(leader);
                    tokio::time::sleep(FAULT).await;
                    cluster.restart(leader);
                    format!("kill -9 leader {leader}")
                }
                Err(e) => format!("no leader to kill ({e})"),
            },
        };
        let acked: usize = writers.iter().map(Writer::acked).sum();
        eprintln!("step {step}: {what}; {acked} keys acked so far");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut reports = Vec::new();
    for w in writers {
        reports.push(w.stop().await);
    }
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let digest = cluster
        .wait_converged(&[1, 2, 3], Duration::from_secs(30))
        .await;

    let mut keys = Vec::new();
    let mut unacked = 0;
    for (w, r) in reports.iter().enumerate() {
        assert!(
            r.ack_order.windows(2).all(|p| p[0] < p[1]),
            "writer {w}: stamps not increasing in acknowledgement order (seed {seed})"
        );
        keys.extend(r.acked.keys().cloned());
        unacked += r.unacked.len();
        eprintln!(
            "writer {w}: {} acked, {} failed attempts",
            r.acked.len(),
            r.failed_attempts
        );
    }
    assert!(
        keys.len() >= 100,
        "too little progress to judge: {} acked",
        keys.len()
    );
    for id in 1..=3 {
        let events = cluster.topic_events(id, &topic).await;
        assert_each_once(id, &events, &keys);
        for e in &events {
            let acked = reports.iter().find_map(|r| r.acked.get(&e.key()));
            if let Some(&stamp) = acked {
                assert_eq!(e.lamport, stamp, "node {id}: {:?} (seed {seed})", e.key());
            }
        }
        assert!(
            events.len() <= keys.len() + unacked,
            "node {id}: {} stored, {} acked + {unacked} in flight (seed {seed})",
            events.len(),
            keys.len()
        );
        let s = cluster.stats(id).await;
        assert_eq!(s.received, s.unique_processed + s.duplicate_dropped);
        assert_eq!(s.unique_processed, digest.count);
    }
}
