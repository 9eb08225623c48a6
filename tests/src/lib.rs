//! Harness for cluster-level tests: starts real `aggregator` processes on loopback (node i on
//! 127.0.0.i), puts a link-cutting TCP proxy in front of each, and drives them over HTTP.
//!
//! Nothing here links server code; the tests see the cluster exactly as a client does.
//!
//! Environment: `AGGREGATOR_BIN` / `PUBLISHER_BIN` override where the binaries are found (default:
//! next to the test executable's `deps/` dir); `CLUSTER_TESTS_KEEP=1` keeps every cluster's temp
//! dir (data and node logs) instead of deleting it; `CHAOS_SEED=N` replays a nemesis run. When a
//! test fails, the tail of every node's log is printed.

pub mod binaries;
pub mod client;
pub mod cluster;
pub mod event;
pub mod load;
pub mod model;
pub mod observe;
pub mod pki;
pub mod ports;
pub mod process;
pub mod prom;
pub mod proxy;
pub mod publisher;
pub mod raw_http;
pub mod sse;
pub mod wait;

pub use client::{ApiClient, PublishReply};
pub use cluster::{ClusterOptions, TestCluster};
pub use event::{event, event_at, EventBuilder};
pub use model::{DigestReply, EventsPage, PublishResponse, Stats, StoredEventJson};
pub use observe::{assert_each_once, metric_value};
pub use wait::wait_until;

/// Identifier of a cluster member, as the server numbers them.
pub type NodeId = u64;
