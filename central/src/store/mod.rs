//! The embedded ingest store: SQLite for the index, a content-addressed
//! blob directory for payloads, and per-upload partial files for resume.
//!
//! ```text
//! data_dir/central.sqlite         index (WAL, synchronous=FULL)
//! data_dir/blobs/ab/abcdef…       payloads by SHA-256
//! data_dir/partial/C/C/B/<id>     uploads in progress, per gateway
//! ```
//!
//! - [`ingest`] — uploads in progress and their durable commit;
//! - [`outbox`] — deliveries to the LIS, PACS and ECG system;
//! - [`worklist`] — the clinics' scheduled procedures;
//! - [`views`] — the gateway registry and what the CLI lists.
//!
//! COMMITTED is answered only after the blob is fsynced and renamed, its
//! directory fsynced, and the index row committed. Partial files are not
//! fsynced while they grow: after a power cut their tail may be torn, which
//! the final hash check catches (the upload is then restarted from zero).

use std::fs::{self};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use yilian_protocol::upload::HeldState;

pub mod blobs;
mod connections;
mod ingest;
mod instances;
pub mod migrate;
mod outbox;
mod reports;
pub mod sql;
mod views;
mod worklist;

pub use blobs::{BlobBackend, BlobError, LocalBlob};
pub use connections::ClaimedConnection;
pub use ingest::PartialUpload;
pub use instances::TakenOver;
pub use outbox::{LEASE_MS, OutboxRow, OutboxStats};
pub use reports::{DownlinkRow, DownlinkStats, ReportRow, Turnaround};
pub use views::{GatewayRow, ItemRow, StudyRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("index: {0}")]
    Db(#[from] sql::DbError),
    #[error("received bytes hash to {got}, the offer said {expected}")]
    HashMismatch { expected: String, got: String },
    #[error("received {got} bytes, the offer said {expected}")]
    SizeMismatch { expected: u64, got: u64 },
    /// The upload's writer task ended before the commit (central is
    /// stopping, or the task failed): nothing is wrong with the item.
    #[error("the writer of this upload stopped before its commit")]
    WriterStopped,
    #[error("payloads: {0}")]
    Blob(#[from] BlobError),
    #[error("migration: {0}")]
    Migration(String),
    /// Another central instance holds this upload (a box that reached two
    /// instances at once); retryable.
    #[error("another central instance is receiving this upload")]
    Contended,
    /// The index holds something this version cannot use (an unreadable
    /// hash state, a bucket operation on a directory store).
    #[error("the index is inconsistent: {0}")]
    Inconsistent(String),
}

pub(crate) fn io<'a>(
    context: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        context,
        path: path.to_owned(),
        source,
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    yilian_proof::disk::sync_dir(dir).map_err(io("fsync directory", dir))
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS items(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    gateway TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    lane TEXT NOT NULL,
    source TEXT NOT NULL,
    metadata TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    received_ms INTEGER NOT NULL,
    committed_ms INTEGER NOT NULL,
    UNIQUE(gateway, upload_id)
);
CREATE INDEX IF NOT EXISTS items_by_sha ON items(sha256);
-- Uploads in progress in a bucket: the multipart upload each lives in and
-- the parts already stored, each with the SHA-256 state after it, so any
-- instance resumes at the end of the last part.
CREATE TABLE IF NOT EXISTS uploads_begun(
    gateway TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    multipart_id TEXT NOT NULL,
    object_key TEXT NOT NULL,
    begun_ms INTEGER NOT NULL,
    active_ms INTEGER NOT NULL,
    PRIMARY KEY(gateway, upload_id)
);
-- Secrets every instance sharing the index uses (the token key).
CREATE TABLE IF NOT EXISTS shared_secrets(
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- The newest connection of each box, when instances share the index.
CREATE TABLE IF NOT EXISTS box_connections(
    gateway TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL,
    remote TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS box_connections_by_time ON box_connections(at_ms);
-- Which instance each connected box is at (instances sharing the index).
CREATE TABLE IF NOT EXISTS box_presence(
    gateway TEXT PRIMARY KEY,
    instance INTEGER NOT NULL,
    epoch INTEGER NOT NULL
);
-- Deliveries being made, and by which instance (instances sharing the
-- index): a dead instance's are taken over at once.
CREATE TABLE IF NOT EXISTS outbox_leases(
    outbox_id INTEGER PRIMARY KEY,
    instance INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS upload_parts(
    gateway TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    part INTEGER NOT NULL,
    multipart_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    end_offset INTEGER NOT NULL,
    etag TEXT NOT NULL,
    hash_state TEXT NOT NULL,
    PRIMARY KEY(gateway, upload_id, part)
);
CREATE TABLE IF NOT EXISTS outbox(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    gateway TEXT NOT NULL,
    upload_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_ms INTEGER NOT NULL,
    delivered_ms INTEGER,
    UNIQUE(gateway, upload_id, destination)
);
CREATE INDEX IF NOT EXISTS outbox_ready ON outbox(destination, state, next_attempt_ms, id);
CREATE TABLE IF NOT EXISTS worklist(
    clinic TEXT NOT NULL,
    accession TEXT NOT NULL,
    entry TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY(clinic, accession)
);
CREATE TABLE IF NOT EXISTS gateways(
    identity TEXT PRIMARY KEY,
    county TEXT NOT NULL,
    clinic TEXT NOT NULL,
    box TEXT NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    software_version TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS gateway_state(
    identity TEXT PRIMARY KEY,
    certificate_not_after INTEGER NOT NULL DEFAULT 0,
    config_version TEXT NOT NULL DEFAULT '',
    pushed_config_version TEXT NOT NULL DEFAULT '',
    pushed_config_error TEXT NOT NULL DEFAULT '',
    backlog TEXT NOT NULL DEFAULT '[]',
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens(
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    used_ms INTEGER,
    used_from TEXT
);
CREATE TABLE IF NOT EXISTS revocations(
    identity TEXT PRIMARY KEY,
    revoked_ms INTEGER NOT NULL,
    revoked_by TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS retirements(
    identity TEXT PRIMARY KEY,
    retired_ms INTEGER NOT NULL,
    retired_by TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS configs(
    scope TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    toml TEXT NOT NULL,
    set_ms INTEGER NOT NULL,
    set_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
";

/// One committed item, as `yilian-central items` lists it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    /// The index's connections: one for SQLite (one writer anyway), a pool
    /// for PostgreSQL whose first member holds this instance's session
    /// locks (see `primary_db`).
    db: Vec<Mutex<sql::Db>>,
    /// Where the next look for a free connection starts.
    next: AtomicUsize,
    data_dir: PathBuf,
    blobs: blobs::Blobs,
    partial_dir: PathBuf,
    /// Whether several instances may share the index (PostgreSQL).
    shared: bool,
    /// This instance's id among them (see `instances`); 0 when embedded.
    instance: i64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data_dir", &self.inner.data_dir)
            .finish()
    }
}

pub use yilian_proof::disk::now_ms;

pub fn rfc3339(ms: i64) -> String {
    // The format stops at the year 9999; "never" is often stored as the
    // largest number.
    const LAST: i64 = 253_402_300_799_999;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.clamp(0, LAST) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Proof that the store committed something durably: an item (blob synced
/// and renamed, row committed) or a worklist change. Only this module makes
/// one (its `sealed` field is private), and only once the commit returned;
/// central's COMMITTED to a box and its AA to the RIS are built from it.
#[derive(Debug)]
pub struct Stored<T> {
    pub value: T,
    id: String,
    sealed: (),
}

impl<T> Stored<T> {
    fn new(id: String, value: T) -> Self {
        Self {
            value,
            id,
            sealed: (),
        }
    }
}

impl<T> yilian_proof::Durable for Stored<T> {
    fn durable_id(&self) -> &str {
        let () = self.sealed;
        &self.id
    }
}

/// What the store holds of an offered upload.
#[derive(Debug)]
pub enum Held {
    /// Nothing or a prefix of this many bytes.
    Partial(u64),
    /// Committed before (a resend after a lost COMMITTED), with its proof.
    Committed(Stored<()>),
}

impl Held {
    /// As the upload state machine takes it.
    pub fn state(&self) -> HeldState<'_> {
        match self {
            Held::Partial(n) => HeldState::Partial(*n),
            Held::Committed(p) => HeldState::Committed(p),
        }
    }
}

use yilian_proof::disk::create_private_dir;

/// `[store]`: which engine holds the index. SQLite in the data directory
/// is the embedded default (a county hub); PostgreSQL lets several
/// central instances share one index.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Sqlite,
    Postgres(sql::PostgresSettings),
}

impl Store {
    /// Opens the index where `[store]` says, the payloads under `data_dir`.
    pub fn open_backend(data_dir: &Path, backend: &Backend) -> Result<Self, StoreError> {
        Self::open_with(data_dir, backend, &BlobBackend::Dir)
    }

    /// Opens the index where `[store]` says and the payloads where
    /// `[blobs]` says.
    pub fn open_with(
        data_dir: &Path,
        backend: &Backend,
        blobs: &BlobBackend,
    ) -> Result<Self, StoreError> {
        let store = match backend {
            Backend::Sqlite => Self::open(data_dir),
            Backend::Postgres(settings) => Self::open_postgres(data_dir, settings),
        }?;
        store.with_blobs(blobs)
    }

    /// The same index with its payloads elsewhere (an S3 bucket).
    fn with_blobs(self, backend: &BlobBackend) -> Result<Self, StoreError> {
        if matches!(backend, BlobBackend::Dir) {
            return Ok(self);
        }
        let blobs = blobs::Blobs::open(&self.inner.data_dir, backend)?;
        let inner = Arc::try_unwrap(self.inner)
            .map_err(|_| StoreError::Inconsistent("the store is shared already".into()))?;
        Ok(Self {
            inner: Arc::new(StoreInner { blobs, ..inner }),
        })
    }

    /// For listings while `serve` runs: SQLite's file opened read-only; a
    /// PostgreSQL server serves both anyway.
    pub fn open_read_only_backend(data_dir: &Path, backend: &Backend) -> Result<Self, StoreError> {
        Self::open_read_only_with(data_dir, backend, &BlobBackend::Dir)
    }

    pub fn open_read_only_with(
        data_dir: &Path,
        backend: &Backend,
        blobs: &BlobBackend,
    ) -> Result<Self, StoreError> {
        let store = match backend {
            Backend::Sqlite => Self::open_read_only(data_dir),
            Backend::Postgres(settings) => Self::open_postgres(data_dir, settings),
        }?;
        store.with_blobs(blobs)
    }

    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let (blob_dir, partial_dir) = Self::prepare_dirs(data_dir)?;
        let conn = Self::sqlite(data_dir)?;
        conn.execute_batch(SCHEMA).map_err(sql::DbError::from)?;
        conn.execute_batch(reports::SCHEMA)
            .map_err(sql::DbError::from)?;
        // SQLite makes its files with the process's umask (0644 from a
        // shell): patient data is for the service user only.
        for name in ["central.sqlite", "central.sqlite-wal", "central.sqlite-shm"] {
            let p = data_dir.join(name);
            if p.exists() {
                fs::set_permissions(&p, fs::Permissions::from_mode(0o600))
                    .map_err(io("restrict permissions of", &p))?;
            }
        }
        Ok(Self::with(
            sql::Db::sqlite(conn),
            data_dir,
            blob_dir,
            partial_dir,
        ))
    }

    /// The index on PostgreSQL (several central instances share it); the
    /// payloads stay under `data_dir`.
    pub fn open_postgres(
        data_dir: &Path,
        settings: &sql::PostgresSettings,
    ) -> Result<Self, StoreError> {
        let (blob_dir, partial_dir) = Self::prepare_dirs(data_dir)?;
        let db = sql::Db::postgres(settings, &format!("{SCHEMA}{}", reports::SCHEMA))?;
        let mut store = Self::with(db, data_dir, blob_dir, partial_dir);
        let size = settings
            .pool_size
            .clamp(*sql::POOL_SIZE.start(), *sql::POOL_SIZE.end());
        let inner = Arc::get_mut(&mut store.inner)
            .ok_or_else(|| StoreError::Inconsistent("the store is shared already".into()))?;
        for _ in 1..size {
            inner
                .db
                .push(Mutex::new(sql::Db::postgres_connection(settings)?));
        }
        store.hold_instance_lock(&mut store.primary_db())?;
        Ok(store)
    }

    fn with(db: sql::Db, data_dir: &Path, blob_dir: PathBuf, partial_dir: PathBuf) -> Self {
        let shared = db.is_postgres();
        Self {
            inner: Arc::new(StoreInner {
                shared,
                instance: if shared {
                    instances::new_instance_id()
                } else {
                    0
                },
                db: vec![Mutex::new(db)],
                next: AtomicUsize::new(0),
                data_dir: data_dir.to_owned(),
                blobs: blobs::Blobs::Dir(blob_dir),
                partial_dir,
            }),
        }
    }

    /// Makes the payload directories and their entries durable before
    /// COMMITTED is ever answered for a blob inside them.
    fn prepare_dirs(data_dir: &Path) -> Result<(PathBuf, PathBuf), StoreError> {
        let blob_dir = data_dir.join("blobs");
        let partial_dir = data_dir.join("partial");
        for d in [data_dir, &blob_dir, &partial_dir] {
            create_private_dir(d).map_err(io("create", d))?;
        }
        sync_dir(data_dir)?;
        if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok((blob_dir, partial_dir))
    }

    fn sqlite(data_dir: &Path) -> Result<rusqlite::Connection, sql::DbError> {
        let conn = rusqlite::Connection::open(data_dir.join("central.sqlite"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(conn)
    }

    /// Opens the index read-only, for listings while `serve` runs.
    pub fn open_read_only(data_dir: &Path) -> Result<Self, StoreError> {
        let conn = rusqlite::Connection::open_with_flags(
            data_dir.join("central.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql::DbError::from)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql::DbError::from)?;
        Ok(Self::with(
            sql::Db::sqlite(conn),
            data_dir,
            data_dir.join("blobs"),
            data_dir.join("partial"),
        ))
    }

    /// A connection of the index: the first free one of the pool, else
    /// the next in turn once it is free.
    pub(crate) fn db(&self) -> MutexGuard<'_, sql::Db> {
        let pool = &self.inner.db;
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed) % pool.len();
        for i in 0..pool.len() {
            match pool[(start + i) % pool.len()].try_lock() {
                Ok(g) => return g,
                // See `primary_db`.
                Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        pool[start].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection that holds this instance's session locks (being
    /// alive, the LIS, the fleet exporter): a lock taken on another
    /// connection of the pool would count as another session's.
    pub(crate) fn primary_db(&self) -> MutexGuard<'_, sql::Db> {
        // A panic while holding the lock leaves the connection usable
        // (SQLite rolls back the open transaction), so recover the guard.
        self.inner.db[0].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// With payloads in a bucket: the part size uploads are sent in, and
    /// the memory budget for parts being gathered (see `[blobs]`).
    pub fn part_buffer(&self) -> Option<(usize, usize)> {
        self.inner
            .blobs
            .s3()
            .map(|s3| (s3.part_size(), s3.buffer_bytes()))
    }

    /// Where a payload is, as listings show it (a path, or `s3://…`).
    pub fn blob_location(&self, sha_hex: &str) -> String {
        self.inner.blobs.location(sha_hex)
    }

    /// The stored bytes of a blob.
    pub fn read_blob(&self, sha_hex: &str) -> Result<Vec<u8>, StoreError> {
        Ok(self.inner.blobs.read(sha_hex)?)
    }

    /// The stored size of a blob, or None when it is missing.
    pub fn blob_size(&self, sha_hex: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.inner.blobs.size(sha_hex)?)
    }

    /// A blob as a local file (fetched into `data_dir/fetched` from a
    /// bucket, removed again when dropped). Blocks: call it from a
    /// blocking thread.
    pub fn local_blob(&self, sha_hex: &str) -> Result<LocalBlob, StoreError> {
        Ok(self
            .inner
            .blobs
            .local(sha_hex, &self.inner.data_dir.join("fetched"))?)
    }
}
