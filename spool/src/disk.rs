//! What the spool does to the filesystem besides writing payloads:
//! directory fsyncs, owner-only directories and files (patient data,
//! whatever the umask), payload names, and the clock.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::SpoolError;

pub use yilian_proof::disk::create_private_dir;
pub(crate) use yilian_proof::disk::now_ms;

/// Fsyncs a directory so that a name created, renamed or removed inside it
/// is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    yilian_proof::disk::sync_dir(dir).map_err(|e| SpoolError::io("fsync directory", dir, e))
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
