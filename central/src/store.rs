//! The embedded ingest store: SQLite for the index, a content-addressed
//! blob directory for payloads, and per-upload partial files for resume.
//!
//! ```text
//! data_dir/central.sqlite         index (WAL, synchronous=FULL)
//! data_dir/blobs/ab/abcdef…       payloads by SHA-256
//! data_dir/partial/C/C/B/<id>     uploads in progress, per gateway
//! ```
//!
//! COMMITTED is answered only after the blob is fsynced and renamed, its
//! directory fsynced, and the index row committed. Partial files are not
//! fsynced while they grow: after a power cut their tail may be torn, which
//! the final hash check catches (the upload is then restarted from zero).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use yilian_protocol::messages::Offer;
use yilian_protocol::upload::HeldState;
use yilian_protocol::{BoxIdentity, Lane};

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
    Db(#[from] rusqlite::Error),
    #[error("received bytes hash to {got}, the offer said {expected}")]
    HashMismatch { expected: String, got: String },
    #[error("received {got} bytes, the offer said {expected}")]
    SizeMismatch { expected: u64, got: u64 },
    /// The upload's writer task ended before the commit (central is
    /// stopping, or the task failed): nothing is wrong with the item.
    #[error("the writer of this upload stopped before its commit")]
    WriterStopped,
}

fn io<'a>(context: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        context,
        path: path.to_owned(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
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
#[derive(Debug, Clone, serde::Serialize)]
pub struct ItemRow {
    pub gateway: String,
    pub upload_id: String,
    pub kind: String,
    pub lane: String,
    pub source: String,
    pub metadata: serde_json::Value,
    pub size: u64,
    pub sha256: String,
    /// When the gateway received the item from the device (RFC 3339).
    pub received_at: String,
    /// When central committed it (RFC 3339).
    pub committed_at: String,
    /// From the gateway's receipt to central's commit, in milliseconds
    /// (two machines' clocks).
    pub end_to_end_ms: i64,
    pub path: String,
}

/// A DICOM study as central holds it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StudyRow {
    pub gateway: String,
    pub study_uid: String,
    pub accession: String,
    pub patient_id: String,
    pub patient_name: String,
    pub modalities: String,
    pub series: u64,
    pub instances: u64,
    pub bytes: u64,
    pub first_at: String,
    pub last_at: String,
    /// Instances the PACS has taken.
    pub forwarded: u64,
    /// Instances the PACS refused (parked in the outbox).
    pub refused_by_pacs: u64,
    /// Nothing new for the quiet period.
    pub complete: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GatewayRow {
    pub identity: String,
    pub county: String,
    pub clinic: String,
    #[serde(rename = "box")]
    pub box_name: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub software_version: String,
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    db: Mutex<Connection>,
    data_dir: PathBuf,
    blob_dir: PathBuf,
    partial_dir: PathBuf,
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
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
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

impl Store {
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let blob_dir = data_dir.join("blobs");
        let partial_dir = data_dir.join("partial");
        for d in [data_dir, &blob_dir, &partial_dir] {
            create_private_dir(d).map_err(io("create", d))?;
        }
        // Make the directories' entries durable before COMMITTED is ever
        // answered for a blob inside them.
        sync_dir(data_dir)?;
        if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let conn = Connection::open(data_dir.join("central.sqlite"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        // SQLite makes its files with the process's umask (0644 from a
        // shell): patient data is for the service user only.
        for name in ["central.sqlite", "central.sqlite-wal", "central.sqlite-shm"] {
            let p = data_dir.join(name);
            if p.exists() {
                fs::set_permissions(&p, fs::Permissions::from_mode(0o600))
                    .map_err(io("restrict permissions of", &p))?;
            }
        }
        Ok(Self {
            inner: Arc::new(StoreInner {
                db: Mutex::new(conn),
                data_dir: data_dir.to_owned(),
                blob_dir,
                partial_dir,
            }),
        })
    }

    /// Opens the index read-only, for listings while `serve` runs.
    pub fn open_read_only(data_dir: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            data_dir.join("central.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Self {
            inner: Arc::new(StoreInner {
                db: Mutex::new(conn),
                data_dir: data_dir.to_owned(),
                blob_dir: data_dir.join("blobs"),
                partial_dir: data_dir.join("partial"),
            }),
        })
    }

    pub(crate) fn db(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable
        // (SQLite rolls back the open transaction), so recover the guard.
        self.inner.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn partial_path(&self, gateway: &BoxIdentity, upload_id: &str) -> PathBuf {
        // Identity parts and upload ids are validated to be path-safe.
        self.inner
            .partial_dir
            .join(gateway.county())
            .join(gateway.clinic())
            .join(gateway.box_name())
            .join(upload_id)
    }

    pub fn blob_path(&self, sha_hex: &str) -> PathBuf {
        self.inner
            .blob_dir
            .join(&sha_hex[..2.min(sha_hex.len())])
            .join(sha_hex)
    }

    /// What central holds of an offered upload.
    pub fn held(&self, gateway: &BoxIdentity, offer: &Offer) -> Result<Held, StoreError> {
        let exists: Option<i64> = self
            .db()
            .query_row(
                "SELECT id FROM items WHERE gateway = ?1 AND upload_id = ?2",
                params![gateway.to_string(), offer.upload_id],
                |r| r.get(0),
            )
            .optional()?;
        if exists.is_some() {
            return Ok(Held::Committed(Stored::new(offer.upload_id.clone(), ())));
        }
        let path = self.partial_path(gateway, &offer.upload_id);
        let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Ok(Held::Partial(len.min(offer.size)))
    }

    /// Opens the partial file of an upload for appending at `offset`, with
    /// the hash primed over the bytes already held.
    pub fn open_partial(
        &self,
        gateway: &BoxIdentity,
        offer: &Offer,
        offset: u64,
    ) -> Result<PartialUpload, StoreError> {
        let path = self.partial_path(gateway, &offer.upload_id);
        if let Some(parent) = path.parent() {
            create_private_dir(parent).map_err(io("create", parent))?;
        }
        let mut file = OpenOptions::new()
            .mode(0o600)
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open partial upload", &path))?;
        file.set_len(offset)
            .map_err(io("truncate partial upload", &path))?;
        let mut hasher = Sha256::new();
        if offset > 0 {
            file.seek(SeekFrom::Start(0)).map_err(io("seek", &path))?;
            let mut buf = vec![0u8; 1024 * 1024];
            let mut left = offset;
            while left > 0 {
                let n = (left as usize).min(buf.len());
                file.read_exact(&mut buf[..n])
                    .map_err(io("read partial upload", &path))?;
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(io("seek", &path))?;
        Ok(PartialUpload {
            path,
            file,
            hasher,
            len: offset,
        })
    }

    /// Verifies a complete upload and stores it durably. On a hash or size
    /// mismatch the partial file is removed, so a retry starts from zero.
    pub fn commit(
        &self,
        gateway: &BoxIdentity,
        offer: &Offer,
        partial: PartialUpload,
        destinations: &[&str],
    ) -> Result<Stored<ItemRow>, StoreError> {
        let PartialUpload {
            path,
            file,
            hasher,
            len,
        } = partial;
        let got = hex::encode(hasher.finalize());
        let expected = hex::encode(&offer.sha256);
        if len != offer.size {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(StoreError::SizeMismatch {
                expected: offer.size,
                got: len,
            });
        }
        if got != expected {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(StoreError::HashMismatch { expected, got });
        }
        file.sync_all().map_err(io("fsync partial upload", &path))?;
        drop(file);
        let blob = self.blob_path(&got);
        let blob_dir = blob.parent().unwrap_or(&self.inner.blob_dir).to_owned();
        if blob.exists() {
            // Same content already stored (content addressing): keep one.
            fs::remove_file(&path).map_err(io("remove partial upload", &path))?;
        } else {
            create_private_dir(&blob_dir).map_err(io("create", &blob_dir))?;
            fs::rename(&path, &blob).map_err(io("store blob", &blob))?;
            sync_dir(&blob_dir)?;
            sync_dir(&self.inner.blob_dir)?;
        }
        self.insert_row(gateway, offer, &got, destinations)
    }

    /// Inserts the item and its outbox rows in one transaction: an item
    /// central committed always has its deliveries queued.
    fn insert_row(
        &self,
        gateway: &BoxIdentity,
        offer: &Offer,
        sha_hex: &str,
        destinations: &[&str],
    ) -> Result<Stored<ItemRow>, StoreError> {
        let lane = Lane::try_from(offer.lane).unwrap_or(Lane::Bulk).name();
        let metadata = serde_json::to_string(&offer.metadata).unwrap_or_else(|_| "{}".into());
        let committed = now_ms();
        let mut db = self.db();
        let tx = db.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO items(gateway, upload_id, kind, lane, source, metadata, size, sha256, received_ms, committed_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                gateway.to_string(),
                offer.upload_id,
                offer.kind,
                lane,
                offer.source,
                metadata,
                offer.size as i64,
                sha_hex,
                offer.received_unix_ms,
                committed
            ],
        )?;
        for d in destinations {
            tx.execute(
                "INSERT OR IGNORE INTO outbox(gateway, upload_id, destination, kind, sha256, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![gateway.to_string(), offer.upload_id, d, offer.kind, sha_hex, committed],
            )?;
        }
        tx.commit()?;
        drop(db);
        Ok(Stored::new(
            offer.upload_id.clone(),
            ItemRow {
                gateway: gateway.to_string(),
                upload_id: offer.upload_id.clone(),
                kind: offer.kind.clone(),
                lane: lane.to_owned(),
                source: offer.source.clone(),
                metadata: serde_json::to_value(&offer.metadata).unwrap_or_default(),
                size: offer.size,
                sha256: sha_hex.to_owned(),
                received_at: rfc3339(offer.received_unix_ms),
                committed_at: rfc3339(committed),
                end_to_end_ms: committed - offer.received_unix_ms,
                path: self.blob_path(sha_hex).display().to_string(),
            },
        ))
    }

    /// Adds or replaces scheduled steps of a clinic (`COUNTY/CLINIC`) and
    /// removes the completed or cancelled ones, in one transaction.
    pub fn worklist_update(
        &self,
        clinic: &str,
        upserts: &[yilian_protocol::messages::WorklistEntry],
        removals: &[String],
    ) -> Result<Stored<()>, StoreError> {
        let now = now_ms();
        let mut db = self.db();
        let tx = db.transaction()?;
        for e in upserts {
            let json = serde_json::to_string(e).unwrap_or_else(|_| "{}".into());
            tx.execute(
                "INSERT INTO worklist(clinic, accession, entry, updated_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(clinic, accession) DO UPDATE SET entry = ?3, updated_ms = ?4",
                params![clinic, e.accession_number, json, now],
            )?;
        }
        for a in removals {
            tx.execute(
                "DELETE FROM worklist WHERE clinic = ?1 AND accession = ?2",
                params![clinic, a],
            )?;
        }
        tx.commit()?;
        Ok(Stored::new(format!("worklist:{clinic}:{now}"), ()))
    }

    /// A clinic's worklist and its version (a hash of the entries, so any
    /// change, including a removal, gives a new one).
    pub fn worklist(
        &self,
        clinic: &str,
    ) -> Result<(String, Vec<yilian_protocol::messages::WorklistEntry>), StoreError> {
        use sha2::Digest;
        let db = self.db();
        let mut stmt =
            db.prepare("SELECT entry FROM worklist WHERE clinic = ?1 ORDER BY accession")?;
        let rows: Vec<String> = stmt
            .query_map(params![clinic], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut h = sha2::Sha256::new();
        for r in &rows {
            h.update(r.as_bytes());
            h.update(b"\n");
        }
        let version = hex::encode(&h.finalize()[..8]);
        let entries = rows
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect();
        Ok((version, entries))
    }

    /// DICOM studies received, newest first: instances and series counted,
    /// forwarded to the PACS or not, and complete once nothing has arrived
    /// for `quiet_ms`.
    pub fn studies(
        &self,
        gateway: Option<&str>,
        quiet_ms: i64,
    ) -> Result<Vec<StudyRow>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT i.gateway,
                    json_extract(i.metadata, '$.study_uid') AS study,
                    MAX(json_extract(i.metadata, '$.patient_id')),
                    MAX(json_extract(i.metadata, '$.patient_name')),
                    GROUP_CONCAT(DISTINCT json_extract(i.metadata, '$.modality')),
                    COUNT(DISTINCT json_extract(i.metadata, '$.series_uid')),
                    COUNT(*), SUM(i.size), MIN(i.committed_ms), MAX(i.committed_ms),
                    SUM(CASE WHEN o.state = 1 THEN 1 ELSE 0 END),
                    SUM(CASE WHEN o.state = 2 THEN 1 ELSE 0 END),
                    MAX(json_extract(i.metadata, '$.accession'))
             FROM items i
             LEFT JOIN outbox o ON o.gateway = i.gateway AND o.upload_id = i.upload_id AND o.destination = 'pacs'
             WHERE i.kind = 'dicom' AND study IS NOT NULL AND (?1 IS NULL OR i.gateway = ?1)
             GROUP BY i.gateway, study
             ORDER BY MAX(i.committed_ms) DESC",
        )?;
        let now = now_ms();
        let rows = stmt.query_map(params![gateway], |r| {
            let last: i64 = r.get(9)?;
            Ok(StudyRow {
                gateway: r.get(0)?,
                study_uid: r.get(1)?,
                patient_id: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                patient_name: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                modalities: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                series: r.get::<_, i64>(5)? as u64,
                instances: r.get::<_, i64>(6)? as u64,
                bytes: r.get::<_, i64>(7)? as u64,
                first_at: rfc3339(r.get(8)?),
                last_at: rfc3339(last),
                forwarded: r.get::<_, i64>(10)? as u64,
                refused_by_pacs: r.get::<_, i64>(11)? as u64,
                accession: r.get::<_, Option<String>>(12)?.unwrap_or_default(),
                complete: now - last >= quiet_ms,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether the index takes a write transaction (the watchdog's check).
    pub fn health(&self) -> Result<(), StoreError> {
        self.db().execute_batch("BEGIN IMMEDIATE; COMMIT")?;
        Ok(())
    }

    /// Records that a gateway said hello or sent a heartbeat.
    pub fn touch_gateway(
        &self,
        gateway: &BoxIdentity,
        software_version: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        self.db().execute(
            "INSERT INTO gateways(identity, county, clinic, box, first_seen_ms, last_seen_ms, software_version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, COALESCE(?6, ''))
             ON CONFLICT(identity) DO UPDATE SET last_seen_ms = ?5,
                software_version = COALESCE(?6, software_version)",
            params![
                gateway.to_string(),
                gateway.county(),
                gateway.clinic(),
                gateway.box_name(),
                now,
                software_version
            ],
        )?;
        Ok(())
    }

    pub fn gateways(&self) -> Result<Vec<GatewayRow>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT identity, county, clinic, box, first_seen_ms, last_seen_ms, software_version FROM gateways ORDER BY identity",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(GatewayRow {
                identity: r.get(0)?,
                county: r.get(1)?,
                clinic: r.get(2)?,
                box_name: r.get(3)?,
                first_seen_ms: r.get(4)?,
                last_seen_ms: r.get(5)?,
                software_version: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Committed items, oldest first, optionally of one gateway.
    pub fn items(
        &self,
        gateway: Option<&str>,
        limit: Option<u64>,
    ) -> Result<Vec<ItemRow>, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT gateway, upload_id, kind, lane, source, metadata, size, sha256, received_ms, committed_ms
             FROM items WHERE (?1 IS NULL OR gateway = ?1) ORDER BY id LIMIT ?2",
        )?;
        let limit = limit.map(|l| l as i64).unwrap_or(-1);
        let rows = stmt.query_map(params![gateway, limit], |r| {
            let sha: String = r.get(7)?;
            Ok(ItemRow {
                gateway: r.get(0)?,
                upload_id: r.get(1)?,
                kind: r.get(2)?,
                lane: r.get(3)?,
                source: r.get(4)?,
                metadata: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
                size: r.get::<_, i64>(6)? as u64,
                path: self.blob_path(&sha).display().to_string(),
                sha256: sha,
                received_at: rfc3339(r.get(8)?),
                committed_at: rfc3339(r.get(9)?),
                end_to_end_ms: r.get::<_, i64>(9)? - r.get::<_, i64>(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// A delivery waiting in (or done by) an outbox.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutboxRow {
    pub id: i64,
    pub gateway: String,
    pub upload_id: String,
    pub destination: String,
    pub kind: String,
    pub sha256: String,
    pub state: &'static str,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub created_ms: i64,
    pub delivered_ms: Option<i64>,
    /// The item's metadata (charset, message type, ...).
    pub metadata: serde_json::Value,
}

pub const OUTBOX_PENDING: i64 = 0;
pub const OUTBOX_DELIVERED: i64 = 1;
pub const OUTBOX_PARKED: i64 = 2;

fn outbox_state(v: i64) -> &'static str {
    match v {
        OUTBOX_PENDING => "pending",
        OUTBOX_DELIVERED => "delivered",
        _ => "parked",
    }
}

const OUTBOX_SELECT: &str =
    "SELECT o.id, o.gateway, o.upload_id, o.destination, o.kind, o.sha256, o.state, o.attempts,
        o.last_error, o.created_ms, o.delivered_ms, COALESCE(i.metadata, '{}')
     FROM outbox o LEFT JOIN items i ON i.gateway = o.gateway AND i.upload_id = o.upload_id";

fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
    Ok(OutboxRow {
        id: r.get(0)?,
        gateway: r.get(1)?,
        upload_id: r.get(2)?,
        destination: r.get(3)?,
        kind: r.get(4)?,
        sha256: r.get(5)?,
        state: outbox_state(r.get(6)?),
        attempts: r.get::<_, i64>(7)? as u32,
        last_error: r.get(8)?,
        created_ms: r.get(9)?,
        delivered_ms: r.get(10)?,
        metadata: serde_json::from_str(&r.get::<_, String>(11)?).unwrap_or_default(),
    })
}

/// Counts of one destination's outbox.
#[derive(Debug, Clone, Default)]
pub struct OutboxStats {
    pub pending: u64,
    pub delivered: u64,
    pub parked: u64,
    pub oldest_pending_ms: Option<i64>,
}

impl Store {
    /// The next delivery due for `destination`, oldest first.
    pub fn outbox_next(
        &self,
        destination: &str,
        now_ms: i64,
    ) -> Result<Option<OutboxRow>, StoreError> {
        let sql = format!(
            "{OUTBOX_SELECT} WHERE o.destination = ?1 AND o.state = 0 AND o.next_attempt_ms <= ?2 ORDER BY o.id LIMIT 1"
        );
        Ok(self
            .db()
            .query_row(&sql, params![destination, now_ms], outbox_row)
            .optional()?)
    }

    pub fn outbox_delivered(&self, id: i64) -> Result<(), StoreError> {
        self.db().execute(
            "UPDATE outbox SET state = 1, delivered_ms = ?2, last_error = NULL WHERE id = ?1",
            params![id, now_ms()],
        )?;
        Ok(())
    }

    pub fn outbox_retry(&self, id: i64, delay_ms: i64, error: &str) -> Result<(), StoreError> {
        self.db().execute(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ?2, last_error = ?3 WHERE id = ?1",
            params![id, now_ms() + delay_ms, error],
        )?;
        Ok(())
    }

    /// Set aside for an operator: the destination refused the content.
    pub fn outbox_park(&self, id: i64, error: &str) -> Result<(), StoreError> {
        self.db().execute(
            "UPDATE outbox SET state = 2, attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
            params![id, error],
        )?;
        Ok(())
    }

    /// Puts a parked delivery back in line.
    pub fn outbox_requeue(&self, id: i64) -> Result<bool, StoreError> {
        let n = self.db().execute(
            "UPDATE outbox SET state = 0, next_attempt_ms = 0 WHERE id = ?1 AND state = 2",
            params![id],
        )?;
        Ok(n == 1)
    }

    pub fn outbox_list(&self, destination: Option<&str>) -> Result<Vec<OutboxRow>, StoreError> {
        let sql = format!("{OUTBOX_SELECT} WHERE (?1 IS NULL OR o.destination = ?1) ORDER BY o.id");
        let db = self.db();
        let mut stmt = db.prepare(&sql)?;
        let rows = stmt.query_map(params![destination], outbox_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn outbox_stats(&self, destination: &str) -> Result<OutboxStats, StoreError> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT state, COUNT(*), MIN(created_ms) FROM outbox WHERE destination = ?1 GROUP BY state")?;
        let mut s = OutboxStats::default();
        let rows = stmt.query_map(params![destination], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
            ))
        })?;
        for row in rows {
            let (state, n, oldest) = row?;
            match state {
                OUTBOX_PENDING => {
                    s.pending = n as u64;
                    s.oldest_pending_ms = oldest;
                }
                OUTBOX_DELIVERED => s.delivered = n as u64,
                _ => s.parked = n as u64,
            }
        }
        Ok(s)
    }

    /// The stored bytes of a blob.
    pub fn read_blob(&self, sha_hex: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(sha_hex);
        fs::read(&path).map_err(io("read blob", &path))
    }
}

/// An upload being received.
#[derive(Debug)]
pub struct PartialUpload {
    path: PathBuf,
    file: File,
    hasher: Sha256,
    len: u64,
}

impl PartialUpload {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends and hashes. Not fsynced here: see the module comment.
    pub fn append(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all(data)
            .map_err(io("write partial upload", &self.path))?;
        self.hasher.update(data);
        self.len += data.len() as u64;
        Ok(())
    }
}
