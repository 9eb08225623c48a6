//! Integration tests of the raft-store crate, in one binary so RocksDB is linked once.

// A failed unwrap is a failed test here.
#![allow(clippy::unwrap_used)]

mod common;
mod conformance;
mod crash;
mod install;
mod log;
mod log_crash;
mod props;
mod queries;
