//! The cluster's targets: base URLs, round-robin choice of the node for a new request, the next
//! node for a retry, and a short "avoid" mark on nodes that refused a connection or asked to
//! back off, shared by every request.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The cluster's base URLs and which of them looked down recently.
#[derive(Debug)]
pub struct Targets {
    bases: Vec<String>,
    /// `<base>/publish`, parsed once (reqwest would parse a string on every request).
    pub(super) publish_urls: Vec<Option<reqwest::Url>>,
    next: AtomicUsize,
    /// Milliseconds since `epoch` until which a target is avoided.
    down_until: Vec<AtomicU64>,
    epoch: Instant,
}

impl Targets {
    /// Targets from normalized base URLs (see `cli::parse_target`); at least one.
    pub fn new(bases: Vec<String>) -> Self {
        let publish_urls = bases
            .iter()
            .map(|b| reqwest::Url::parse(&format!("{b}/publish")).ok())
            .collect();
        let down_until = bases.iter().map(|_| AtomicU64::new(0)).collect();
        Targets {
            bases,
            publish_urls,
            next: AtomicUsize::new(0),
            down_until,
            epoch: Instant::now(),
        }
    }

    /// The base URLs.
    pub fn bases(&self) -> &[String] {
        &self.bases
    }

    /// Base URL of target `i`.
    pub fn base(&self, i: usize) -> &str {
        self.bases.get(i).map(String::as_str).unwrap_or("")
    }

    /// Where a new request goes: round robin over the targets not marked down.
    pub fn pick(&self) -> usize {
        let start = self.next.fetch_add(1, Ordering::Relaxed) % self.bases.len().max(1);
        self.first_up_from(start)
    }

    /// Where a retry goes: the next target after `i` not marked down.
    pub fn after(&self, i: usize) -> usize {
        self.first_up_from((i + 1) % self.bases.len().max(1))
    }

    /// Avoid target `i` for `how_long`.
    pub fn mark_down(&self, i: usize, how_long: Duration) {
        if let Some(slot) = self.down_until.get(i) {
            let until = self.now_ms() + how_long.as_millis() as u64;
            slot.fetch_max(until, Ordering::Relaxed);
        }
    }

    /// Whether target `i` is marked down now.
    pub fn is_down(&self, i: usize) -> bool {
        let now = self.now_ms();
        self.down_until
            .get(i)
            .is_some_and(|d| d.load(Ordering::Relaxed) > now)
    }

    fn first_up_from(&self, start: usize) -> usize {
        let n = self.bases.len().max(1);
        let now = self.now_ms();
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| {
                self.down_until
                    .get(i)
                    .is_none_or(|d| d.load(Ordering::Relaxed) <= now)
            })
            .unwrap_or(start)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_rotate_and_skip_ones_marked_down() {
        let t = Targets::new(vec!["a".into(), "b".into(), "c".into()]);
        let picks: Vec<usize> = (0..6).map(|_| t.pick()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        t.mark_down(1, Duration::from_secs(60));
        assert_eq!(t.after(0), 2);
        assert_eq!(t.pick(), 0);
        assert_eq!(t.pick(), 2);
        t.mark_down(0, Duration::from_secs(60));
        t.mark_down(2, Duration::from_secs(60));
        // All down: keep going in order rather than stall.
        assert_eq!(t.after(0), 1);
    }
}
