//! The index schema and connection settings.

use std::path::Path;

use rusqlite::Connection;

use crate::SpoolError;

/// 2 added `unsynced`. Every statement is `IF NOT EXISTS`, so an index at
/// any earlier version is brought up to date by running them all.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS items(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    upload_id TEXT NOT NULL UNIQUE,
    lane INTEGER NOT NULL,
    kind TEXT NOT NULL,
    source TEXT NOT NULL,
    metadata TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 BLOB NOT NULL,
    inline_payload BLOB,
    dedup_key TEXT UNIQUE,
    state INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    received_ms INTEGER NOT NULL,
    delivered_ms INTEGER,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS items_by_state_lane ON items(state, lane, id);
-- Items whose row was committed while their payload file's data sync was
-- still running (the two overlap so an acknowledgement waits for one flush,
-- not two in a row). A power cut can leave such a row with a torn payload;
-- the next open checks each one against its hash. Cleared once the sync
-- returned, in whichever transaction comes next.
CREATE TABLE IF NOT EXISTS unsynced(id INTEGER PRIMARY KEY);
";

/// Opens the index for writing: WAL, and `synchronous=FULL` so that a
/// commit returns only after the WAL is fsynced.
pub(crate) fn open_rw(path: &Path) -> Result<Connection, SpoolError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(SpoolError::SchemaTooNew {
            path: path.to_owned(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    // Nothing is written when the index is already current: on a full disk
    // a write here would fail, and the box must still be able to open its
    // spool and deliver what it holds.
    if found < SCHEMA_VERSION {
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    Ok(conn)
}

/// Opens the index read-only, for `status` while the gateway runs.
pub(crate) fn open_ro(path: &Path) -> Result<Connection, SpoolError> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}
