//! Link-cutting TCP proxies: one in front of every node, so a test can partition the cluster.
//!
//! Peers reach node j only through its proxy (the address in `--peers` / `--advertise`). The
//! server binds its outbound connections to its own listen IP, so a connection arriving from
//! 127.0.0.k comes from node k. `LinkControl` holds the set of cut links; a proxy refuses new
//! connections over a cut link and drops existing ones the moment the link is cut.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::NodeId;

/// The cut links, as unordered pairs (smaller id first).
pub type CutLinks = BTreeSet<(NodeId, NodeId)>;

/// Shared switchboard of which links are cut; cheap to clone.
#[derive(Clone, Debug)]
pub struct LinkControl {
    tx: watch::Sender<CutLinks>,
}

impl Default for LinkControl {
    fn default() -> Self {
        Self::new()
    }
}

impl LinkControl {
    /// All links up.
    pub fn new() -> Self {
        Self {
            tx: watch::Sender::new(CutLinks::new()),
        }
    }

    /// Cuts every link between a node of `a` and a node of `b` (both directions).
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut cut = CutLinks::new();
        for &x in a {
            for &y in b {
                if x != y {
                    cut.insert(pair(x, y));
                }
            }
        }
        self.tx.send_replace(cut);
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.tx.send_replace(CutLinks::new());
    }

    /// Whether the link between `x` and `y` is currently cut.
    pub fn is_cut(&self, x: NodeId, y: NodeId) -> bool {
        self.tx.borrow().contains(&pair(x, y))
    }

    fn subscribe(&self) -> watch::Receiver<CutLinks> {
        self.tx.subscribe()
    }
}

fn pair(x: NodeId, y: NodeId) -> (NodeId, NodeId) {
    (x.min(y), x.max(y))
}

/// The node a connection comes from, judged by its source IP (127.0.0.k is node k).
pub fn source_node(addr: SocketAddr) -> Option<NodeId> {
    match addr.ip() {
        IpAddr::V4(ip) if ip.octets()[..3] == [127, 0, 0] => Some(NodeId::from(ip.octets()[3])),
        _ => None,
    }
}

/// A running proxy for one node; stops accepting when dropped.
#[derive(Debug)]
pub struct Proxy {
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on `listen` and forwards to `target`, the real address of node `to`.
    pub async fn start(
        to: NodeId,
        listen: SocketAddr,
        target: SocketAddr,
        links: &LinkControl,
    ) -> Self {
        let listener = TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| panic!("proxy for node {to} cannot bind {listen}: {e}"));
        let links = links.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((inbound, peer)) = listener.accept().await else {
                    continue;
                };
                let from = source_node(peer);
                if from.is_some_and(|from| links.is_cut(from, to)) {
                    drop(inbound);
                    continue;
                }
                tokio::spawn(forward(inbound, target, from, to, links.subscribe()));
            }
        });
        Self { accept }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies bytes both ways until either side closes, or the link is cut, or the harness is gone.
async fn forward(
    mut inbound: TcpStream,
    target: SocketAddr,
    from: Option<NodeId>,
    to: NodeId,
    mut links: watch::Receiver<CutLinks>,
) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        // Node down: the peer sees the connection close, as with a refused connect.
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let cut = async {
        let Some(from) = from else {
            // Not a node: never cut, but still stop when the harness goes away.
            while links.changed().await.is_ok() {}
            return;
        };
        loop {
            if links.borrow_and_update().contains(&pair(from, to)) {
                return;
            }
            if links.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
        () = cut => {}
    }
    // Dropping both streams closes them: the link is gone for this connection.
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpSocket;

    fn echo_server(l: TcpListener) {
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
    }

    async fn connect_from(src: [u8; 4], to: SocketAddr) -> TcpStream {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::from((src, 0))).unwrap();
        sock.connect(to).await.unwrap()
    }

    async fn roundtrip(s: &mut TcpStream) -> bool {
        if s.write_all(b"ping").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 4];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) && &buf == b"ping"
    }

    #[tokio::test]
    async fn cuts_new_and_existing_connections_and_heals() {
        // `allocate` probes that ports are free and then lets them go: another process on the
        // machine can take one in between (a CI run saw 127.0.0.2:P+1 taken). Both listeners
        // are bound here, so a pair lost that way is only skipped.
        let (real, front, echo) = loop {
            let port = crate::ports::allocate(3);
            let real = SocketAddr::from(([127, 0, 0, 2], port));
            let front = SocketAddr::from(([127, 0, 0, 2], port + 1));
            let Ok(echo) = TcpListener::bind(real).await else {
                continue;
            };
            if std::net::TcpListener::bind(front).is_ok() {
                break (real, front, echo);
            }
        };
        echo_server(echo);
        let links = LinkControl::new();
        let _proxy = Proxy::start(2, front, real, &links).await;

        let mut from1 = connect_from([127, 0, 0, 1], front).await;
        let mut from3 = connect_from([127, 0, 0, 3], front).await;
        assert!(roundtrip(&mut from1).await);
        assert!(roundtrip(&mut from3).await);

        links.partition(&[1], &[2, 3]);
        assert!(links.is_cut(2, 1) && !links.is_cut(2, 3));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!roundtrip(&mut from1).await, "existing link 1-2 must drop");
        assert!(roundtrip(&mut from3).await, "link 3-2 stays up");
        let mut again = connect_from([127, 0, 0, 1], front).await;
        assert!(!roundtrip(&mut again).await, "new link 1-2 is refused");

        links.heal();
        let mut healed = connect_from([127, 0, 0, 1], front).await;
        assert!(roundtrip(&mut healed).await);
    }

    #[test]
    fn source_node_reads_last_octet() {
        assert_eq!(source_node("127.0.0.3:5".parse().unwrap()), Some(3));
        assert_eq!(source_node("10.0.0.3:5".parse().unwrap()), None);
    }
}
