//! What a node reports about its build, its process and its disk: `build_info`, the standard
//! process metrics (the prometheus crate's process collector: resident memory, CPU seconds,
//! open file descriptors; Linux only), and the space left on the data directory's
//! filesystem, which an alert watches before RocksDB or the Raft log run out of it.

use std::path::Path;

use prometheus::{IntGaugeVec, Opts, Registry};

/// `build_info{version,os,arch} 1`: which build runs where (the value is always 1; the labels
/// are the information, joined onto other series by instance).
pub fn build_info() -> prometheus::Result<IntGaugeVec> {
    let info = IntGaugeVec::new(
        Opts::new(
            "build_info",
            "Always 1; the labels say which aggregator build this node runs",
        ),
        &["version", "os", "arch"],
    )?;
    info.with_label_values(&[
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH,
    ])
    .set(1);
    Ok(info)
}

/// A registry without the `aggregator_` prefix holding the process collector, so its series
/// keep the names every exporter uses (`process_resident_memory_bytes`, ...), which existing
/// dashboards and alerts expect.
pub fn process_registry() -> prometheus::Result<Registry> {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(registry)
}

/// Space of the filesystem holding a directory, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes an unprivileged process may still write (`f_bavail`: root's reserve excluded).
    pub available: u64,
    /// Size of the filesystem.
    pub capacity: u64,
}

/// The space of the filesystem holding `dir` (a `statvfs` call, which may block on a network
/// filesystem: call it off the async runtime). `None` when the call fails; the gauges then
/// keep their last value, and the failure is logged at debug.
pub fn disk_space(dir: &Path) -> Option<DiskSpace> {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => {
            // The C types behind these differ between platforms (u32 or u64); all fit u64.
            #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
            let (avail, blocks, frag) = (
                s.blocks_available() as u64,
                s.blocks() as u64,
                s.fragment_size() as u64,
            );
            Some(DiskSpace {
                available: avail.saturating_mul(frag),
                capacity: blocks.saturating_mul(frag),
            })
        }
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %e, "statvfs of the data directory");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_space_of_a_real_directory_is_plausible() {
        let dir = tempfile::tempdir().unwrap();
        let space = disk_space(dir.path()).unwrap();
        assert!(space.capacity > 0);
        assert!(space.available <= space.capacity);
        assert_eq!(disk_space(&dir.path().join("missing")), None);
    }
}
