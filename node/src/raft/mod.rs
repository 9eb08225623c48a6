//! The Raft member and everything that speaks for it: starting it ([`start`]), forming a new
//! cluster once ([`bootstrap`]), the views the API reads of who leads ([`leadership`]), the
//! `/raft/*` wire format both sides share ([`wire`], [`rpc_stream`]), the client side of it
//! ([`network`]; the server side is `api::raft_rpc`), and the background tasks that steer
//! openraft: elections held off during a snapshot install ([`election_hold`]), the record of
//! recent leader changes ([`elections`]), snapshots by log bytes ([`snapshot_policy`]), purges
//! behind the snapshot ([`log_retention`]) and the leader's retention trims ([`trimmer`]).
//!
//! Imports go one way: this module uses `config` and `raft_store`, never `api`.

pub mod bootstrap;
pub mod election_hold;
pub mod elections;
pub mod leadership;
pub mod log_retention;
pub mod network;
pub mod rpc_stream;
pub mod snapshot_policy;
pub mod start;
pub mod trimmer;
pub mod wire;

pub use start::{start, Raft};
