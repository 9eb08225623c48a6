//! Port allocation: one port pair per test cluster, free on every node IP.
//!
//! Node i listens on 127.0.0.i:P and its proxy on 127.0.0.i:P+1. Ports come from below the
//! kernel's ephemeral range (32768+) so outbound connections never take them; a per-process
//! counter starting at a pid-derived offset avoids clashes between tests of one binary, and
//! a bind probe skips ports another process holds.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port handed out.
const FIRST: u32 = 12_000;
/// Ports handed out stay below this (the ephemeral range starts at 32768).
const LIMIT: u32 = 32_000;
/// Ports reserved per cluster: node and proxy port, spaced for readability in logs.
const STRIDE: u32 = 10;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The loopback address node `id` uses: 127.0.0.id.
pub fn node_ip(id: u64) -> Ipv4Addr {
    let last = u8::try_from(id).expect("node id fits in the last octet");
    assert!(last > 0, "node ids start at 1");
    Ipv4Addr::new(127, 0, 0, last)
}

/// A port P such that P, P+1 and P+2 (a node's client listener, its proxy, its peer
/// listener) are free on 127.0.0.1 ..= 127.0.0.`max_nodes`.
pub fn allocate(max_nodes: u64) -> u16 {
    let slots = (LIMIT - FIRST) / STRIDE;
    let _ = NEXT.compare_exchange(
        0,
        (std::process::id() * 37) % slots + 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..slots {
        let slot = NEXT.fetch_add(1, Ordering::SeqCst) % slots;
        let port = FIRST + slot * STRIDE;
        let port = u16::try_from(port).expect("port below 65536");
        if (1..=max_nodes).all(|id| (port..=port + 2).all(|p| free(node_ip(id), p))) {
            return port;
        }
    }
    panic!("no free port pair found between {FIRST} and {LIMIT}");
}

fn free(ip: Ipv4Addr, port: u16) -> bool {
    TcpListener::bind(SocketAddrV4::new(ip, port)).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn allocations_are_distinct_and_free() {
        let a = allocate(4);
        let b = allocate(4);
        assert_ne!(a, b);
        assert!(free(node_ip(4), a + 1));
    }

    #[test]
    fn node_ip_is_the_id() {
        assert_eq!(node_ip(3), Ipv4Addr::new(127, 0, 0, 3));
    }
}
