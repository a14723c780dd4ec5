//! The box's own durable copy of the reports central sent down, and
//! where each went at the clinic.
//!
//! ```text
//! spool_dir/reports/reports.sqlite     index and deliveries (WAL, synchronous=FULL)
//! spool_dir/reports/R….hl7             each report as the hospital sent it
//! spool_dir/reports/partial/R…         a report still arriving
//! ```
//!
//! COMMITTED goes to central only after the report's file is synced and
//! renamed, its directory synced, and its row committed with one delivery
//! per sink that takes it: from then on the box alone answers for it.
//! Deliveries then run per sink, each recorded once, and each receipt
//! stays until central says it recorded it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use yilian_proof::disk::{create_private_dir, now_ms, sync_dir};
use yilian_protocol::messages::{Offer, ReportReceipt};

#[derive(Debug, thiserror::Error)]
pub enum ReportStoreError {
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("report index: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("received {got} bytes hashing to {sha}; central offered {expected} bytes")]
    Mismatch {
        expected: u64,
        got: u64,
        sha: String,
    },
}

fn io<'a>(
    context: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ReportStoreError + 'a {
    move |source| ReportStoreError::Io {
        context,
        path: path.to_owned(),
        source,
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS reports(
    id TEXT PRIMARY KEY,
    metadata TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    urgent INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    central_received_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries(
    report_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    detail TEXT NOT NULL DEFAULT '',
    done_ms INTEGER,
    receipt_sent INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(report_id, sink)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(sink, state, next_attempt_ms);
CREATE INDEX IF NOT EXISTS deliveries_receipts ON deliveries(receipt_sent, state);
";

const WAITING: i64 = 0;
const DELIVERED: i64 = 1;
const FAILED: i64 = 2;

/// A report the box holds.
#[derive(Debug, Clone)]
pub struct HeldReport {
    pub id: String,
    pub metadata: BTreeMap<String, String>,
    pub urgent: bool,
    pub received_ms: i64,
    pub path: PathBuf,
}

impl HeldReport {
    pub fn meta(&self, key: &str) -> &str {
        self.metadata.get(key).map_or("", String::as_str)
    }
}

/// A delivery due at a sink.
#[derive(Debug, Clone)]
pub struct Due {
    pub report: HeldReport,
    pub attempts: u32,
}

/// One report as the page and `status` list it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReportView {
    pub id: String,
    pub received_ms: i64,
    pub urgent: bool,
    pub status: String,
    pub title: String,
    pub patient_id: String,
    pub kind: String,
    /// `sink: delivered|waiting|failed`, with the last error while waiting.
    pub sinks: Vec<SinkState>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SinkState {
    pub sink: String,
    pub state: &'static str,
    pub error: Option<String>,
    pub done_ms: Option<i64>,
}

/// Counts per sink, for metrics and the page.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SinkCounts {
    pub waiting: u64,
    pub delivered: u64,
    pub failed: u64,
}

/// Proof that a report is on the box's stable storage; only
/// [`ReportStore::commit`] and [`ReportStore::held`] make one.
#[derive(Debug)]
pub struct ReportHeld {
    id: String,
    sealed: (),
}

impl yilian_proof::Durable for ReportHeld {
    fn durable_id(&self) -> &str {
        let () = self.sealed;
        &self.id
    }
}

/// What the box holds of an offered report.
#[derive(Debug)]
pub enum Holding {
    Partial(u64),
    Held(ReportHeld),
}

#[derive(Clone)]
pub struct ReportStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Mutex<Connection>,
    dir: PathBuf,
    partial: PathBuf,
}

impl std::fmt::Debug for ReportStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportStore")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ReportStore {
    pub fn open(spool_dir: &Path) -> Result<Self, ReportStoreError> {
        let dir = spool_dir.join("reports");
        let partial = dir.join("partial");
        for d in [&dir, &partial] {
            create_private_dir(d).map_err(io("create", d))?;
        }
        sync_dir(spool_dir).map_err(io("fsync directory", spool_dir))?;
        sync_dir(&dir).map_err(io("fsync directory", &dir))?;
        let conn = Connection::open(dir.join("reports.sqlite"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            inner: Arc::new(Inner {
                db: Mutex::new(conn),
                dir,
                partial,
            }),
        })
    }

    /// Opens an existing report index read-only, for `status` whether or
    /// not the gateway runs; `None` when the box never received a report.
    pub fn inspect(spool_dir: &Path) -> Result<Option<Self>, ReportStoreError> {
        let dir = spool_dir.join("reports");
        let index = dir.join("reports.sqlite");
        if !index.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(
            &index,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Some(Self {
            inner: Arc::new(Inner {
                db: Mutex::new(conn),
                partial: dir.join("partial"),
                dir,
            }),
        }))
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        self.inner.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn file(&self, id: &str) -> PathBuf {
        self.inner.dir.join(format!("{id}.hl7"))
    }

    fn partial_path(&self, id: &str) -> PathBuf {
        self.inner.partial.join(id)
    }

    /// What the box already holds of `id`.
    pub fn held(&self, id: &str) -> Result<Holding, ReportStoreError> {
        let known = self
            .db()
            .query_row("SELECT 1 FROM reports WHERE id = ?1", params![id], |_| {
                Ok(())
            })
            .optional()?
            .is_some();
        if known {
            return Ok(Holding::Held(ReportHeld {
                id: id.to_owned(),
                sealed: (),
            }));
        }
        let p = self.partial_path(id);
        Ok(Holding::Partial(
            fs::metadata(&p).map(|m| m.len()).unwrap_or(0),
        ))
    }

    /// The partial file of `id`, cut to `offset` (what was answered).
    pub fn open_partial(&self, id: &str, offset: u64) -> Result<File, ReportStoreError> {
        let p = self.partial_path(id);
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(io("open", &p))?;
        f.set_len(offset).map_err(io("truncate", &p))?;
        Ok(f)
    }

    pub fn append(&self, file: &mut File, id: &str, data: &[u8]) -> Result<(), ReportStoreError> {
        file.write_all(data)
            .map_err(io("write", &self.partial_path(id)))
    }

    /// Verifies a complete report, makes it durable with one delivery per
    /// sink in `sinks`, and returns the proof COMMITTED is built from.
    pub fn commit(&self, offer: &Offer, sinks: &[String]) -> Result<ReportHeld, ReportStoreError> {
        let id = offer.upload_id.as_str();
        if !valid_id(id) {
            return Err(ReportStoreError::Mismatch {
                expected: offer.size,
                got: 0,
                sha: "an invalid report id".into(),
            });
        }
        let partial = self.partial_path(id);
        let bytes = fs::read(&partial).map_err(io("read", &partial))?;
        let sha = Sha256::digest(&bytes);
        if bytes.len() as u64 != offer.size || sha.as_slice() != offer.sha256.as_slice() {
            let _ = fs::remove_file(&partial);
            return Err(ReportStoreError::Mismatch {
                expected: offer.size,
                got: bytes.len() as u64,
                sha: hex::encode(sha),
            });
        }
        File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(io("fsync", &partial))?;
        let path = self.file(id);
        fs::rename(&partial, &path).map_err(io("keep report", &path))?;
        sync_dir(&self.inner.dir).map_err(io("fsync directory", &self.inner.dir))?;
        let urgent = offer.lane == yilian_protocol::Lane::Urgent as i32;
        let metadata = serde_json::to_string(&offer.metadata).unwrap_or_else(|_| "{}".into());
        let now = now_ms();
        let mut db = self.db();
        let tx = db.transaction()?;
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO reports(id, metadata, sha256, size, urgent, received_ms, central_received_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, metadata, hex::encode(sha), offer.size as i64, urgent as i64, now, offer.received_unix_ms],
        )?;
        if inserted > 0 {
            for sink in sinks {
                tx.execute(
                    "INSERT OR IGNORE INTO deliveries(report_id, sink) VALUES (?1, ?2)",
                    params![id, sink],
                )?;
            }
        }
        tx.commit()?;
        Ok(ReportHeld {
            id: id.to_owned(),
            sealed: (),
        })
    }

    fn held_report(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<HeldReport> {
        let id: String = r.get(0)?;
        let metadata: String = r.get(1)?;
        Ok(HeldReport {
            path: self.file(&id),
            id,
            metadata: serde_json::from_str(&metadata).unwrap_or_default(),
            urgent: r.get::<_, i64>(2)? != 0,
            received_ms: r.get(3)?,
        })
    }

    /// Deliveries due at `sink`, urgent first, then oldest.
    pub fn due(&self, sink: &str, limit: usize) -> Result<Vec<Due>, ReportStoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT r.id, r.metadata, r.urgent, r.received_ms, d.attempts FROM deliveries d \
             JOIN reports r ON r.id = d.report_id \
             WHERE d.sink = ?1 AND d.state = 0 AND d.next_attempt_ms <= ?2 \
             ORDER BY r.urgent DESC, r.received_ms, r.id LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![sink, now_ms(), limit as i64], |r| {
            Ok(Due {
                report: self.held_report(r)?,
                attempts: r.get::<_, i64>(4)? as u32,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a delivery's end: delivered, or refused for good.
    pub fn finish(
        &self,
        id: &str,
        sink: &str,
        delivered: bool,
        detail: &str,
    ) -> Result<(), ReportStoreError> {
        self.db().execute(
            "UPDATE deliveries SET state = ?3, detail = ?4, done_ms = ?5, last_error = CASE WHEN ?3 = 2 THEN ?4 END \
             WHERE report_id = ?1 AND sink = ?2 AND state = 0",
            params![id, sink, if delivered { DELIVERED } else { FAILED }, detail, now_ms()],
        )?;
        Ok(())
    }

    pub fn retry(
        &self,
        id: &str,
        sink: &str,
        delay_ms: i64,
        why: &str,
    ) -> Result<(), ReportStoreError> {
        self.db().execute(
            "UPDATE deliveries SET attempts = attempts + 1, next_attempt_ms = ?3, last_error = ?4 \
             WHERE report_id = ?1 AND sink = ?2 AND state = 0",
            params![id, sink, now_ms() + delay_ms, why],
        )?;
        Ok(())
    }

    /// Receipts not yet recorded at central.
    pub fn pending_receipts(&self, limit: usize) -> Result<Vec<ReportReceipt>, ReportStoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT report_id, sink, done_ms, state, detail FROM deliveries \
             WHERE receipt_sent = 0 AND state <> 0 ORDER BY done_ms LIMIT ?1",
        )?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok(ReportReceipt {
                report_id: r.get(0)?,
                sink: r.get(1)?,
                at_unix_ms: r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                outcome: if r.get::<_, i64>(3)? == DELIVERED {
                    "delivered"
                } else {
                    "failed"
                }
                .to_owned(),
                detail: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Central recorded these receipts (`report/sink` keys).
    pub fn receipts_recorded(&self, keys: &[String]) -> Result<(), ReportStoreError> {
        let mut db = self.db();
        let tx = db.transaction()?;
        for k in keys {
            if let Some((id, sink)) = k.split_once('/') {
                tx.execute(
                    "UPDATE deliveries SET receipt_sent = 1 WHERE report_id = ?1 AND sink = ?2",
                    params![id, sink],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Reports received, and per sink what is waiting, delivered, failed.
    pub fn counts(&self) -> Result<(u64, BTreeMap<String, SinkCounts>), ReportStoreError> {
        let db = self.db();
        let received: i64 = db.query_row("SELECT COUNT(*) FROM reports", [], |r| r.get(0))?;
        let mut stmt =
            db.prepare("SELECT sink, state, COUNT(*) FROM deliveries GROUP BY sink, state")?;
        let mut out: BTreeMap<String, SinkCounts> = BTreeMap::new();
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (sink, state, n) = row?;
            let c = out.entry(sink).or_default();
            match state {
                WAITING => c.waiting = n as u64,
                DELIVERED => c.delivered = n as u64,
                _ => c.failed = n as u64,
            }
        }
        Ok((received as u64, out))
    }

    /// The newest reports with where each went.
    pub fn recent(&self, limit: usize) -> Result<Vec<ReportView>, ReportStoreError> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT id, metadata, urgent, received_ms FROM reports ORDER BY received_ms DESC, id LIMIT ?1",
        )?;
        let reports: Vec<(String, String, i64, i64)> = stmt
            .query_map(params![limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        let mut sinks = db.prepare(
            "SELECT sink, state, last_error, done_ms FROM deliveries WHERE report_id = ?1 ORDER BY sink",
        )?;
        let mut out = Vec::new();
        for (id, metadata, urgent, received_ms) in reports {
            let m: BTreeMap<String, String> = serde_json::from_str(&metadata).unwrap_or_default();
            let get = |k: &str| m.get(k).cloned().unwrap_or_default();
            let states = sinks
                .query_map(params![id], |r| {
                    Ok(SinkState {
                        sink: r.get(0)?,
                        state: match r.get::<_, i64>(1)? {
                            WAITING => "waiting",
                            DELIVERED => "delivered",
                            _ => "failed",
                        },
                        error: r.get(2)?,
                        done_ms: r.get(3)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            out.push(ReportView {
                status: get("status"),
                title: get("title"),
                patient_id: get("patient_id"),
                kind: get("report_kind"),
                id,
                received_ms,
                urgent: urgent != 0,
                sinks: states,
            });
        }
        Ok(out)
    }

    /// Forgets reports received more than `retention` ago whose every
    /// delivery is finished and whose receipts central recorded (the
    /// clinic has them; central keeps the archive), and partial files as
    /// old: without it the box's disk would only fill. Returns how many.
    pub fn purge(&self, retention: std::time::Duration) -> Result<u64, ReportStoreError> {
        let cutoff = now_ms() - retention.as_millis() as i64;
        let ids: Vec<String> = {
            let mut db = self.db();
            let tx = db.transaction()?;
            let ids: Vec<String> = {
                let mut stmt = tx.prepare(
                    "SELECT id FROM reports r WHERE r.received_ms < ?1 AND NOT EXISTS \
                       (SELECT 1 FROM deliveries d WHERE d.report_id = r.id AND (d.state = 0 OR d.receipt_sent = 0))",
                )?;
                stmt.query_map(params![cutoff], |r| r.get(0))?
                    .collect::<Result<_, _>>()?
            };
            for id in &ids {
                tx.execute("DELETE FROM deliveries WHERE report_id = ?1", params![id])?;
                tx.execute("DELETE FROM reports WHERE id = ?1", params![id])?;
            }
            tx.commit()?;
            ids
        };
        // Rows first: a file left by a power cut here is only litter.
        for id in &ids {
            let _ = fs::remove_file(self.file(id));
        }
        if let Ok(rd) = fs::read_dir(&self.inner.partial) {
            let old = std::time::SystemTime::now()
                .checked_sub(retention)
                .unwrap_or(std::time::UNIX_EPOCH);
            for e in rd.flatten() {
                if e.metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t < old)
                {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(ids.len() as u64)
    }

    /// The report's bytes as received.
    pub fn read(&self, report: &HeldReport) -> Result<Vec<u8>, ReportStoreError> {
        fs::read(&report.path).map_err(io("read report", &report.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(id: &str, bytes: &[u8]) -> Offer {
        Offer {
            upload_id: id.into(),
            sha256: Sha256::digest(bytes).to_vec(),
            size: bytes.len() as u64,
            kind: "report".into(),
            lane: yilian_protocol::Lane::Urgent as i32,
            metadata: BTreeMap::from([("status".into(), "F".into())]),
            received_unix_ms: 1,
            source: "RIS^H".into(),
        }
    }

    #[test]
    fn a_report_is_held_once_and_delivered_once_per_sink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ReportStore::open(dir.path()).expect("open");
        let body = b"MSH|^~\\&|RIS|H|||20261203||ORU^R01|1|P|2.5\r";
        assert!(matches!(
            store.held("R1").expect("held"),
            Holding::Partial(0)
        ));
        let mut f = store.open_partial("R1", 0).expect("partial");
        store.append(&mut f, "R1", &body[..10]).expect("append");
        drop(f);
        // The link broke: the next offer resumes at 10.
        assert!(matches!(
            store.held("R1").expect("held"),
            Holding::Partial(10)
        ));
        let mut f = store.open_partial("R1", 10).expect("partial");
        store.append(&mut f, "R1", &body[10..]).expect("append");
        drop(f);
        let sinks = vec!["folder".to_owned(), "his".to_owned()];
        store.commit(&offer("R1", body), &sinks).expect("commit");
        assert!(matches!(store.held("R1").expect("held"), Holding::Held(_)));
        assert_eq!(store.due("folder", 10).expect("due").len(), 1);
        store
            .finish("R1", "folder", true, "written")
            .expect("finish");
        assert!(store.due("folder", 10).expect("due").is_empty());
        let receipts = store.pending_receipts(10).expect("receipts");
        assert_eq!(receipts.len(), 1);
        store
            .receipts_recorded(&[receipts[0].key()])
            .expect("recorded");
        assert!(store.pending_receipts(10).expect("receipts").is_empty());
        let (received, counts) = store.counts().expect("counts");
        assert_eq!(received, 1);
        assert_eq!(counts["his"].waiting, 1);
        assert_eq!(counts["folder"].delivered, 1);
    }

    #[test]
    fn reports_are_forgotten_only_once_delivered_and_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ReportStore::open(dir.path()).expect("open");
        let body = b"MSH|^~\\&|RIS|H|||20261203||ORU^R01|1|P|2.5\r";
        for id in ["R1", "R2"] {
            let mut f = store.open_partial(id, 0).expect("partial");
            store.append(&mut f, id, body).expect("append");
            drop(f);
            store
                .commit(&offer(id, body), &["folder".to_owned()])
                .expect("commit");
        }
        store
            .finish("R1", "folder", true, "written")
            .expect("finish");
        let keys: Vec<String> = store
            .pending_receipts(10)
            .expect("receipts")
            .iter()
            .map(ReportReceipt::key)
            .collect();
        let zero = std::time::Duration::ZERO;
        // Delivered but its receipt not yet recorded at central: kept.
        assert_eq!(store.purge(zero).expect("purge"), 0);
        store.receipts_recorded(&keys).expect("recorded");
        // Within retention: kept.
        assert_eq!(
            store
                .purge(std::time::Duration::from_secs(3600))
                .expect("purge"),
            0
        );
        // R1 is done; R2 still waits for its folder.
        assert_eq!(store.purge(zero).expect("purge"), 1);
        assert!(!dir.path().join("reports/R1.hl7").exists());
        assert!(dir.path().join("reports/R2.hl7").exists());
        assert_eq!(store.due("folder", 10).expect("due").len(), 1);
    }

    #[test]
    fn a_torn_report_is_refused_and_starts_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ReportStore::open(dir.path()).expect("open");
        let mut f = store.open_partial("R2", 0).expect("partial");
        store.append(&mut f, "R2", b"not it").expect("append");
        drop(f);
        assert!(store.commit(&offer("R2", b"the report"), &[]).is_err());
        assert!(matches!(
            store.held("R2").expect("held"),
            Holding::Partial(0)
        ));
    }
}
