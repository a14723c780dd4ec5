//! How much the spool may hold: the configured quota, capped by what its
//! filesystem can really take, and the reserve that keeps a full disk from
//! stopping the box.
//!
//! A quota larger than the free space (a 20 GiB default on a 16 GB card) is
//! easy to configure. Without a cap the disk fills before the quota does,
//! SQLite then cannot write its journal, the gateway cannot even open its
//! index, and items already acknowledged to devices stay on the box with
//! no way to upload them. So:
//! - the effective quota is `min(quota, held + available − headroom)`:
//!   devices are refused (retryably) before the filesystem is full, and the
//!   watermarks apply to what the disk can hold;
//! - a reserve file of `reserve_bytes` sits in the spool directory. When
//!   the filesystem runs out anyway (another program filled it, or a write
//!   failed with ENOSPC), the reserve is released so the index can still
//!   open, record deliveries and evict; it is made again once there is room.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The name of the reserve file inside the spool directory.
pub(crate) const RESERVE_FILE: &str = "reserve";

/// Bytes the filesystem can give an unprivileged writer, and its size.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FsSpace {
    pub available: u64,
    pub total: u64,
}

pub(crate) fn fs_space(dir: &Path) -> io::Result<FsSpace> {
    let s = rustix::fs::statvfs(dir).map_err(io::Error::from)?;
    Ok(FsSpace {
        available: s.f_bavail.saturating_mul(s.f_frsize),
        total: s.f_blocks.saturating_mul(s.f_frsize),
    })
}

/// The reserve file and the effective quota, shared by the writer thread
/// and the appenders.
#[derive(Debug)]
pub(crate) struct Capacity {
    dir: PathBuf,
    quota: u64,
    reserve_bytes: u64,
    /// The effective quota last computed, for statistics.
    effective: AtomicU64,
    /// Bytes the filesystem had free at the last look.
    available: AtomicU64,
    /// Held while the reserve file is made or released.
    reserve: Mutex<()>,
}

impl Capacity {
    pub fn new(dir: &Path, quota: u64, reserve_bytes: u64) -> Self {
        Self {
            dir: dir.to_owned(),
            quota,
            reserve_bytes,
            effective: AtomicU64::new(quota),
            available: AtomicU64::new(u64::MAX),
            reserve: Mutex::new(()),
        }
    }

    /// Free space the spool leaves for its index (journal growth, a
    /// checkpoint) on top of the reserve file.
    fn headroom(&self) -> u64 {
        self.reserve_bytes.max(1 << 20)
    }

    /// The quota in force with `held` bytes in the spool: the configured one,
    /// or less when the filesystem cannot hold that much. When the
    /// filesystem cannot be asked, the configured quota stands.
    pub fn effective_quota(&self, held: u64) -> u64 {
        let q = match fs_space(&self.dir) {
            Ok(s) => {
                self.available.store(s.available, Ordering::Relaxed);
                let room = held.saturating_add(s.available.saturating_sub(self.headroom()));
                self.quota.min(room)
            }
            Err(_) => self.quota,
        };
        self.effective.store(q, Ordering::Relaxed);
        q
    }

    /// Whether the filesystem, not the configured quota, sets the limit now.
    pub fn limited_by_disk(&self) -> bool {
        self.effective.load(Ordering::Relaxed) < self.quota
    }

    pub fn last_available(&self) -> u64 {
        self.available.load(Ordering::Relaxed)
    }

    fn reserve_path(&self) -> PathBuf {
        self.dir.join(RESERVE_FILE)
    }

    pub fn reserve_held(&self) -> bool {
        fs::metadata(self.reserve_path()).is_ok_and(|m| m.len() >= self.reserve_bytes)
    }

    /// Gives the reserve's space back to the filesystem. Returns whether
    /// there was one to give.
    pub fn release_reserve(&self, why: &str) -> bool {
        let _g = self.reserve.lock().unwrap_or_else(|p| p.into_inner());
        match fs::remove_file(self.reserve_path()) {
            Ok(()) => {
                tracing::warn!(
                    reserve_bytes = self.reserve_bytes,
                    why,
                    "spool released its disk reserve so the box keeps running and delivering; devices are refused until space frees"
                );
                true
            }
            Err(_) => false,
        }
    }

    /// Makes the reserve file when it is missing and the filesystem has
    /// room for it besides the headroom. Written (not sparse), so its
    /// blocks are really held.
    pub fn ensure_reserve(&self) {
        if self.reserve_bytes == 0 || self.reserve_held() {
            return;
        }
        let _g = self.reserve.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(space) = fs_space(&self.dir) else {
            return;
        };
        if space.available < self.reserve_bytes.saturating_add(self.headroom()) {
            return;
        }
        let path = self.reserve_path();
        let made = (|| -> io::Result<()> {
            let mut f: File = OpenOptions::new()
                .mode(0o600)
                .create(true)
                .write(true)
                .truncate(true)
                .open(&path)?;
            let block = vec![0u8; 1 << 20];
            let mut left = self.reserve_bytes;
            while left > 0 {
                let n = left.min(block.len() as u64) as usize;
                f.write_all(&block[..n])?;
                left -= n as u64;
            }
            f.sync_all()
        })();
        match made {
            Ok(()) => tracing::info!(
                reserve_bytes = self.reserve_bytes,
                "spool disk reserve in place"
            ),
            Err(e) => {
                let _ = fs::remove_file(&path);
                tracing::debug!(error = %e, "cannot make the spool's disk reserve yet");
            }
        }
    }
}

/// Whether an error means the filesystem is out of space.
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error())
        || e.kind() == io::ErrorKind::StorageFull
}

/// Whether an SQLite error means the disk is full.
pub(crate) fn is_sqlite_full(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DiskFull))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_made_released_and_made_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Capacity::new(dir.path(), u64::MAX, 2 << 20);
        c.ensure_reserve();
        assert!(c.reserve_held());
        assert_eq!(
            fs::metadata(dir.path().join(RESERVE_FILE))
                .map(|m| m.len())
                .ok(),
            Some(2 << 20)
        );
        assert!(c.release_reserve("test"));
        assert!(!c.reserve_held());
        assert!(!c.release_reserve("test"), "nothing left to release");
        c.ensure_reserve();
        assert!(c.reserve_held());
    }

    #[test]
    fn the_effective_quota_never_exceeds_the_configured_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Capacity::new(dir.path(), 1000, 0);
        assert_eq!(c.effective_quota(0), 1000);
        assert!(!c.limited_by_disk());
        let huge = Capacity::new(dir.path(), u64::MAX, 0);
        let q = huge.effective_quota(5);
        assert!(q < u64::MAX, "capped by the filesystem");
        assert!(huge.limited_by_disk());
    }
}
