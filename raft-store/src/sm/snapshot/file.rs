//! The snapshot data openraft moves around (`SnapshotData`): a file on disk, never a buffer,
//! so building, sending and receiving a snapshot hold one chunk in memory, whatever the
//! store's size.
//!
//! Two kinds exist. A snapshot to send is the current data file opened read-only, with the
//! length and XXH3-64 its record promises: the checksum is computed as openraft reads the
//! file from the start, and the read that reaches the end fails if the bytes differ, so a
//! damaged file never delivers its last chunk and no follower installs it. Verifying as it is
//! read, not before, keeps `get_current_snapshot` cheap: openraft calls it at every start-up,
//! and reading a multi-GiB file there would make start-up time grow with the store. A
//! snapshot being received is a new file in the snapshot directory (`*.part`) that openraft
//! writes chunks into; the install renames it once it is checked (`mod.rs`).

use std::future::Future;
use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use xxhash_rust::xxh3::Xxh3;

/// Extension of files being received; any found when a new receive starts, or at open, are
/// left over from a receive that never finished.
pub(crate) const PART_EXT: &str = "part";

/// Bytes of a received snapshot written between two syncs. Synced only at the end, the
/// hundreds of MiB of a large snapshot reached the disk in one burst, ahead of the Raft log's
/// small syncs on every node sharing the disk (each acknowledgement waits on those).
const SYNC_EVERY_BYTES: u64 = 4 << 20;

/// openraft's `SnapshotData`: a snapshot's bytes in a file.
///
/// Invariants: `verify` is `Some` only for a file opened to be sent, and then `hashed` counts
/// the bytes from offset 0 already fed to `hasher`; `incoming` is `Some` only for a file
/// created by [`SnapshotFile::receive`].
pub struct SnapshotFile {
    file: tokio::fs::File,
    /// Where the reads are now (tracked, since tokio's `File` does not say without a seek).
    pos: u64,
    verify: Option<Verify>,
    incoming: Option<Incoming>,
    /// Declared last, so dropped last: see [`LastClose`]. Never read; it acts when dropped.
    _last_close: LastClose,
}

/// A second descriptor of a snapshot's file, closed last and on the blocking pool.
///
/// A snapshot file is deleted while still open when a newer snapshot replaces it during a
/// send (or a backup download). The kernel frees such a file's blocks at its last close: a
/// second or more for a multi-GiB file on a busy disk. Closed on the async runtime's thread,
/// that stalled every task of the node, heartbeats included, and a follower campaigned
/// (seen at ten million events: docs/performance.md, "Snapshots at size"). With this
/// descriptor outliving tokio's, tokio's close is always cheap and the costly one happens
/// off the runtime.
struct LastClose(Option<Arc<std::fs::File>>);

impl Drop for LastClose {
    fn drop(&mut self) {
        let Some(file) = self.0.take() else {
            return;
        };
        let close = move || {
            crate::failpoints::crash_point(crate::failpoints::SNAPSHOT_FILE_CLOSE);
            drop(file);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(close)),
            Err(_) => close(),
        }
    }
}

/// A file being received: where it is, and its syncs as it is written.
struct Incoming {
    path: PathBuf,
    /// The same file, for syncing on the blocking pool while tokio's handle is in use.
    sync_handle: Arc<std::fs::File>,
    unsynced: u64,
    /// A sync under way; writes wait for it.
    syncing: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

/// The running check of a file being read for sending.
struct Verify {
    len: u64,
    checksum: u64,
    hasher: Xxh3,
    hashed: u64,
}

impl SnapshotFile {
    /// A file opened for sending, promised to hold `len` bytes hashing to `checksum`.
    pub(crate) fn to_send(
        file: std::fs::File,
        len: u64,
        checksum: u64,
    ) -> io::Result<SnapshotFile> {
        let last_close = LastClose(Some(Arc::new(file.try_clone()?)));
        Ok(SnapshotFile {
            file: tokio::fs::File::from_std(file),
            pos: 0,
            verify: Some(Verify {
                len,
                checksum,
                hasher: Xxh3::new(),
                hashed: 0,
            }),
            incoming: None,
            _last_close: last_close,
        })
    }

    /// A new, empty file at `path` for openraft to write a received snapshot into.
    pub(crate) fn receive(path: &Path) -> io::Result<SnapshotFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        let sync_handle = Arc::new(file.try_clone()?);
        let last_close = LastClose(Some(sync_handle.clone()));
        Ok(SnapshotFile {
            file: tokio::fs::File::from_std(file),
            pos: 0,
            verify: None,
            incoming: Some(Incoming {
                path: path.to_path_buf(),
                sync_handle,
                unsynced: 0,
                syncing: None,
            }),
            _last_close: last_close,
        })
    }

    /// Where this file was created, if it holds a received snapshot.
    pub(crate) fn incoming_path(&self) -> Option<&Path> {
        self.incoming.as_ref().map(|i| i.path.as_path())
    }

    /// The file itself, for blocking code; waits for writes still in flight.
    pub(crate) async fn into_std(self) -> std::fs::File {
        self.file.into_std().await
    }

    /// Feeds the bytes just read at `[start, start + bytes.len())` to the running checksum;
    /// an error once the whole promised length is hashed and does not match.
    fn check(&mut self, start: u64, bytes: &[u8]) -> io::Result<()> {
        let Some(v) = self.verify.as_mut() else {
            return Ok(());
        };
        // A read that skips ahead of what was hashed (a seek forward) cannot be verified.
        if start > v.hashed {
            return Err(damaged(
                "read out of order, so its checksum cannot be checked",
            ));
        }
        let end = start + bytes.len() as u64;
        if end > v.len {
            return Err(damaged("longer than its record says"));
        }
        if end > v.hashed {
            // Only the part not hashed before: openraft re-reads a chunk it has to resend.
            let skip = (v.hashed - start) as usize;
            v.hasher.update(&bytes[skip..]);
            v.hashed = end;
            if end == v.len && v.hasher.digest() != v.checksum {
                tracing::error!("the current snapshot's data file does not match its checksum");
                return Err(damaged("checksum mismatch"));
            }
        }
        Ok(())
    }
}

impl SnapshotFile {
    /// A read at `pos` found the end of the file: an error if that is short of the promise.
    fn check_end(&self, pos: u64) -> io::Result<()> {
        match &self.verify {
            Some(v) if pos < v.len => Err(damaged("shorter than its record says")),
            _ => Ok(()),
        }
    }
}

fn damaged(detail: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("snapshot data file damaged: {detail}"),
    )
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.file).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let start = this.pos;
                let read = &buf.filled()[before..];
                this.pos += read.len() as u64;
                let at_end = read.is_empty() && buf.remaining() > 0;
                let checked = if at_end {
                    this.check_end(start)
                } else {
                    this.check(start, read)
                };
                if let Err(e) = checked {
                    buf.set_filled(before);
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Some(incoming) = this.incoming.as_mut() else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "a snapshot being sent is read-only",
            )));
        };
        if incoming.unsynced >= SYNC_EVERY_BYTES || incoming.syncing.is_some() {
            if incoming.syncing.is_none() {
                // What tokio still holds must reach the file before the sync starts.
                match Pin::new(&mut this.file).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {}
                    other => return other.map(|r| r.map(|()| 0)),
                }
                let handle = incoming.sync_handle.clone();
                incoming.syncing = Some(tokio::task::spawn_blocking(move || handle.sync_data()));
            }
            if let Some(syncing) = incoming.syncing.as_mut() {
                let synced = match Pin::new(syncing).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(synced)) => synced,
                    Poll::Ready(Err(e)) => Err(io::Error::other(e)),
                };
                incoming.syncing = None;
                incoming.unsynced = 0;
                synced?;
            }
        }
        match Pin::new(&mut this.file).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.pos += n as u64;
                incoming.unsynced += n as u64;
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.get_mut().file).start_seek(position)
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let this = self.get_mut();
        match Pin::new(&mut this.file).poll_complete(cx) {
            Poll::Ready(Ok(pos)) => {
                this.pos = pos;
                Poll::Ready(Ok(pos))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    use xxhash_rust::xxh3::xxh3_64;

    fn file_with(bytes: &[u8]) -> (tempfile::TempDir, std::fs::File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, bytes).unwrap();
        (dir, std::fs::File::open(path).unwrap())
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn an_intact_file_reads_whole_with_rereads_and_seeks_to_the_start() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let (_dir, file) = file_with(&data);
        rt().block_on(async {
            let mut f = SnapshotFile::to_send(file, data.len() as u64, xxh3_64(&data)).unwrap();
            let end = f.seek(SeekFrom::End(0)).await.unwrap();
            assert_eq!(end, data.len() as u64);
            let mut first = vec![0; 4000];
            f.seek(SeekFrom::Start(0)).await.unwrap();
            f.read_exact(&mut first).await.unwrap();
            // A resend reads the same chunk again.
            f.seek(SeekFrom::Start(0)).await.unwrap();
            f.read_exact(&mut first).await.unwrap();
            let mut rest = Vec::new();
            f.read_to_end(&mut rest).await.unwrap();
            first.extend(rest);
            assert_eq!(first, data);
        });
    }

    #[test]
    fn a_damaged_file_fails_the_read_that_reaches_its_end() {
        let data = vec![7u8; 5000];
        let (_dir, file) = file_with(&data);
        rt().block_on(async {
            let mut f = SnapshotFile::to_send(file, data.len() as u64, xxh3_64(b"other")).unwrap();
            let mut out = Vec::new();
            let err = f.read_to_end(&mut out).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        });
    }

    #[test]
    fn a_file_longer_than_promised_fails() {
        let data = vec![1u8; 100];
        let (_dir, file) = file_with(&data);
        rt().block_on(async {
            let mut f = SnapshotFile::to_send(file, 50, xxh3_64(&data[..50])).unwrap();
            let mut out = Vec::new();
            assert!(f.read_to_end(&mut out).await.is_err());
        });
    }

    #[test]
    fn a_file_shorter_than_promised_fails() {
        let data = vec![1u8; 100];
        let (_dir, file) = file_with(&data);
        rt().block_on(async {
            let mut f = SnapshotFile::to_send(file, 200, xxh3_64(&data)).unwrap();
            let mut out = Vec::new();
            assert!(f.read_to_end(&mut out).await.is_err());
        });
    }

    #[test]
    fn a_received_file_holds_what_was_written_across_its_syncs() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.part");
        let data: Vec<u8> = (0..(SYNC_EVERY_BYTES as usize * 2 + 12345))
            .map(|i| (i % 251) as u8)
            .collect();
        rt().block_on(async {
            let mut f = SnapshotFile::receive(&path).unwrap();
            for chunk in data.chunks(1 << 20) {
                f.write_all(chunk).await.unwrap();
            }
            f.shutdown().await.unwrap();
            drop(f.into_std().await);
        });
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn a_file_to_send_refuses_writes() {
        use tokio::io::AsyncWriteExt;
        let (_dir, file) = file_with(b"abc");
        rt().block_on(async {
            let mut f = SnapshotFile::to_send(file, 3, xxh3_64(b"abc")).unwrap();
            assert!(f.write_all(b"x").await.is_err());
        });
    }
}
