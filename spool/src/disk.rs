//! What the spool does to the filesystem besides writing payloads:
//! directory fsyncs, owner-only directories and files (patient data,
//! whatever the umask), payload names, and the clock.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::SpoolError;

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Fsyncs a directory so that a name created, renamed or removed inside it
/// is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io("fsync directory", dir, e))
}

/// Creates `dir` and its missing parents with mode 0700, whatever the
/// umask: spool and data directories hold patient data. An existing
/// directory is left as it is (an administrator may have shared it on
/// purpose).
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

/// Opens options for a new file readable by its owner only.
pub(crate) fn private_file() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(0o600);
    o
}

/// Makes the index and its journal files owner-only: SQLite creates them
/// with the process's umask (0644 when started from a shell).
pub(crate) fn make_private(dir: &Path) -> Result<(), SpoolError> {
    for name in ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"] {
        let path = dir.join(name);
        match fs::metadata(&path) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                    .map_err(|e| SpoolError::io("restrict permissions of", &path, e))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(SpoolError::io("stat", &path, e)),
        }
    }
    Ok(())
}

pub(crate) fn new_upload_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}
