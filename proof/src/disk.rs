//! The filesystem steps that make data durable, written once for every
//! store on both sides of the link: a file replaced atomically and synced
//! with its directory, a directory's entries synced, an owner-only
//! directory whatever the umask, and the wall clock in milliseconds that
//! every record carries.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 for a clock set before it).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Fsyncs a directory, so that a name created, renamed or removed in it
/// survives a power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Starts writing `len` bytes of `file` from `offset` to the disk without
/// waiting, so that a later data sync waits only for what was written
/// since: a file received piece by piece has most of its bytes on the disk
/// by the time it is complete, and never holds gigabytes of dirty pages.
/// Linux's POSIX_FADV_DONTNEED starts the writeback of the range's dirty
/// pages before it drops the clean ones (pages still being written stay
/// cached): the effect of `sync_file_range(SYNC_FILE_RANGE_WRITE)`, which
/// has no safe binding. Only a hint: a failure changes nothing that the
/// sync, which every acknowledgement still waits for, does not check.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    if let Some(len) = std::num::NonZeroU64::new(len) {
        let _ = rustix::fs::fadvise(file, offset, Some(len), rustix::fs::Advice::DontNeed);
    }
}

/// Creates `dir` and its missing parents with mode 0700, whatever the
/// umask: spool, data and identity directories hold patient data or keys.
/// An existing directory is left as it is (an administrator may have
/// shared it on purpose).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // `mode` is filtered by the umask; say it again.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// The temporary name [`write_atomically`] writes beside `path`: hidden,
/// so that whatever watches the directory (a reading system's import
/// folder, a drop-folder intake) leaves it alone.
fn temporary(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".new");
    path.with_file_name(name)
}

/// Replaces `path` with `bytes` so that a power cut leaves either the old
/// file or the new one, never a mix: written beside it with `mode`, synced,
/// renamed over it, and the directory synced.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_atomically_with(path, mode, |f| f.write_all(bytes))
}

/// [`write_atomically`] for contents written by `fill` (a copy from
/// another file, say).
pub fn write_atomically_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = temporary(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    // A file left from an earlier run keeps its old mode: say it again.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    let written = fill(&mut f).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path)?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_a_file_with_its_mode_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("yilian-proof-{}", std::process::id()));
        create_private_dir(&dir).expect("dir");
        assert_eq!(
            fs::metadata(&dir).expect("stat").permissions().mode() & 0o777,
            0o700
        );
        let path = dir.join("key.pem");
        write_atomically(&path, b"old", 0o644).expect("first");
        write_atomically(&path, b"new", 0o600).expect("second");
        assert_eq!(fs::read(&path).expect("read"), b"new");
        assert_eq!(
            fs::metadata(&path).expect("stat").permissions().mode() & 0o777,
            0o600
        );
        assert!(!temporary(&path).exists());
        let failed = write_atomically_with(&path, 0o600, |_| Err(io::Error::other("disk")));
        assert!(failed.is_err());
        assert_eq!(fs::read(&path).expect("read"), b"new");
        assert!(!temporary(&path).exists());
        fs::remove_dir_all(&dir).expect("clean");
    }
}
