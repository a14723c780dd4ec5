//! The public handle.

use crate::disk::now_ms;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;

use rusqlite::params;

use crate::capacity::{Capacity, fs_space};
use crate::config::SpoolConfig;
use crate::files::{Payload, SpoolWriter};
use crate::item::{
    Committed, InsertRow, ItemSummary, Lane, Lease, NackOutcome, NewItem, PayloadRef, SpoolStats,
};
use crate::shared::{Committing, Shared};
use crate::writer::{Op, Reply, Request, Usage, Writer};
use crate::{SpoolError, queries, schema};

/// A handle to an open spool; cheap to clone, usable from many threads.
/// All methods block: call them from a blocking context.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Shared>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.inner.config.dir)
            .finish()
    }
}

impl Spool {
    /// Opens (creating if needed) and recovers a spool: returns leased items
    /// to ready, checks the items whose payload was still syncing when the
    /// process stopped (removing those torn, never acknowledged), removes
    /// payload files no index row refers to (those being written when the
    /// process stopped), and dead-letters rows whose payload file is gone
    /// (which the commit's ordering makes impossible short of disk damage).
    pub fn open(config: SpoolConfig) -> Result<Spool, SpoolError> {
        config.validate().map_err(SpoolError::Config)?;
        let dir = config.dir.clone();
        let payload_dir = dir.join("payload");
        for d in [&dir, &payload_dir] {
            crate::disk::create_private_dir(d)
                .map_err(|e| SpoolError::io("create spool directory", d, e))?;
        }
        let capacity = Arc::new(Capacity::new(
            &dir,
            config.quota_bytes,
            config.reserve_bytes,
        ));
        // On a full filesystem SQLite cannot even open its index (recovery
        // and the journal need a little space): give the reserve back first,
        // so the box can still deliver what it holds.
        if let Ok(space) = fs_space(&dir)
            && space.available < config.reserve_bytes.max(1 << 20)
        {
            capacity.release_reserve("the filesystem was full when the spool opened");
        }
        // The directories' own entries must be durable before anything in
        // them is acknowledged: payload commits only fsync `payload/`.
        crate::disk::sync_dir(&dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::disk::sync_dir(parent)?;
        }
        // Spools written by earlier versions staged payloads in `tmp/`.
        let legacy_tmp = dir.join("tmp");
        let removed_partial = if legacy_tmp.is_dir() {
            let n = clear_dir(&legacy_tmp)?;
            fs::remove_dir(&legacy_tmp)
                .map_err(|e| SpoolError::io("remove directory", &legacy_tmp, e))?;
            n
        } else {
            0
        };
        let index = dir.join("index.sqlite");
        let conn = match schema::open_rw(&index) {
            Err(SpoolError::Db(e))
                if crate::capacity::is_sqlite_full(&e)
                    && capacity.release_reserve("the index could not open for lack of space") =>
            {
                schema::open_rw(&index)?
            }
            other => other?,
        };
        crate::disk::make_private(&dir)?;
        let released = conn.execute("UPDATE items SET state = 0 WHERE state = 1", [])?;
        let torn = check_unsynced(&conn, &payload_dir)?;
        let (orphans, missing) = reconcile_payloads(&conn, &payload_dir)?;
        if removed_partial + released + torn + orphans + missing > 0 {
            tracing::info!(
                partial_payloads_removed = removed_partial,
                unacknowledged_torn_payloads_removed = torn,
                leases_returned = released,
                orphan_payloads_removed = orphans,
                missing_payloads = missing,
                "spool recovered after an unclean stop"
            );
        }
        let used: i64 =
            conn.query_row("SELECT COALESCE(SUM(size), 0) FROM items", [], |r| r.get(0))?;
        let usage = Arc::new(Usage::default());
        usage.used.store(used as u64, Ordering::SeqCst);
        capacity.ensure_reserve();
        let effective = capacity.effective_quota(used as u64);
        if effective < config.quota_bytes {
            let total = fs_space(&dir).map(|s| s.total).unwrap_or(0);
            tracing::warn!(
                quota_bytes = config.quota_bytes,
                effective_quota_bytes = effective,
                filesystem_bytes = total,
                dir = %dir.display(),
                "the spool's quota is more than its filesystem can hold; the spool holds at most the effective quota (lower `quota` in [spool] to silence this)"
            );
        }
        let (high, _) = config.marks(effective);
        usage.refusing.store(used as u64 > high, Ordering::SeqCst);

        let (tx, rx) = mpsc::sync_channel::<Request>(1024);
        let writer = Writer {
            conn,
            config: config.clone(),
            usage: usage.clone(),
            capacity: capacity.clone(),
            index_files_private: false,
        };
        std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| SpoolError::io("start spool writer thread", &dir, e))?;
        Ok(Spool {
            inner: Arc::new(Shared {
                config,
                payload_dir,
                blanks: std::sync::Mutex::new(Vec::new()),
                tx,
                usage,
                capacity,
            }),
        })
    }

    pub fn config(&self) -> &SpoolConfig {
        &self.inner.config
    }

    /// Stores a payload held in memory. Returns after it is durable.
    pub fn append(&self, item: NewItem, payload: &[u8]) -> Result<Committed, SpoolError> {
        let mut w = self.writer(item)?;
        w.write_bytes(payload)?;
        w.commit()
    }

    /// Appends a payload small enough to live in the index (at most the
    /// inline threshold; larger ones are refused with a configuration
    /// error, for [`Spool::append`]) from async code, without a blocking
    /// thread: the returned future resolves to the proof once the writer
    /// thread committed it, sharing that flush with whatever else its
    /// transaction holds. Nothing is written before it is handed over, so
    /// a caller that drops the future leaves at most a committed item
    /// whose device was not answered, as a cut connection does.
    pub fn append_small(&self, item: NewItem, payload: Vec<u8>) -> Result<Committing, SpoolError> {
        use sha2::Digest;
        if payload.len() > self.inner.config.inline_threshold {
            return Err(SpoolError::Config(format!(
                "a payload of {} bytes is larger than the inline threshold ({} bytes)",
                payload.len(),
                self.inner.config.inline_threshold
            )));
        }
        let row = InsertRow {
            upload_id: crate::disk::new_upload_id(),
            item,
            size: payload.len() as u64,
            sha256: sha2::Sha256::digest(&payload).into(),
            inline: Some(payload),
            payload_path: None,
        };
        self.inner.submit_awaited(Op::Insert(row))
    }

    /// Starts a streaming append for a payload too large for memory.
    pub fn writer(&self, item: NewItem) -> Result<SpoolWriter, SpoolError> {
        SpoolWriter::new(self.inner.clone(), item)
    }

    /// Leases the oldest ready item of the first lane in `lanes` that has one.
    pub fn lease(&self, lanes: &[Lane]) -> Result<Option<Lease>, SpoolError> {
        let now_ms = now_ms();
        for &lane in lanes {
            if let Reply::Lease(Some(l)) = self.inner.call(Op::Lease { lane, now_ms })? {
                return Ok(Some(l));
            }
        }
        Ok(None)
    }

    /// Opens a leased item's payload for reading.
    pub fn payload(&self, lease: &Lease) -> Result<Payload, SpoolError> {
        self.open_payload(&lease.payload_ref())
    }

    /// Opens a payload by reference, checking its size against the index.
    pub fn open_payload(&self, lease: &PayloadRef) -> Result<Payload, SpoolError> {
        if lease.inline {
            let conn = schema::open_ro(&self.inner.config.dir.join("index.sqlite"))?;
            let data: Vec<u8> = conn.query_row(
                "SELECT inline_payload FROM items WHERE id = ?1",
                params![lease.id],
                |r| r.get(0),
            )?;
            return Ok(Payload::Inline(data));
        }
        let path = self.inner.payload_dir.join(&lease.upload_id);
        let f = fs::File::open(&path).map_err(|e| SpoolError::io("open payload", &path, e))?;
        let len = f
            .metadata()
            .map_err(|e| SpoolError::io("stat payload", &path, e))?
            .len();
        if len != lease.size {
            return Err(SpoolError::Damaged {
                upload_id: lease.upload_id.clone(),
                detail: format!("file holds {len} bytes, index says {}", lease.size),
            });
        }
        Ok(Payload::File(f))
    }

    /// Central committed the item: mark it delivered.
    pub fn ack(&self, lease: Lease) -> Result<(), SpoolError> {
        self.inner
            .call(Op::Ack {
                id: lease.id,
                now_ms: now_ms(),
            })
            .map(|_| ())
    }

    /// The attempt failed through no fault of the item (link down): ready
    /// again at once, no attempt counted.
    pub fn release(&self, lease: Lease) -> Result<(), SpoolError> {
        self.inner.call(Op::Release { id: lease.id }).map(|_| ())
    }

    /// The attempt failed because of the item (central rejected it): retry
    /// with backoff, and dead-letter it after `max_attempts`. Other items
    /// keep flowing meanwhile.
    pub fn nack(&self, lease: Lease, error: &str) -> Result<NackOutcome, SpoolError> {
        match self.inner.call(Op::Nack {
            id: lease.id,
            error: error.to_owned(),
            now_ms: now_ms(),
        })? {
            Reply::Nack(n) => Ok(n),
            _ => Err(SpoolError::Closed),
        }
    }

    /// Central cannot take the item right now (its disk or database is
    /// unavailable): ready again after `delay`, no attempt counted, so an
    /// outage at central never dead-letters anything.
    pub fn defer(
        &self,
        lease: Lease,
        delay: std::time::Duration,
        reason: &str,
    ) -> Result<(), SpoolError> {
        self.inner
            .call(Op::Defer {
                id: lease.id,
                until_ms: now_ms() + delay.as_millis() as i64,
                error: reason.to_owned(),
            })
            .map(|_| ())
    }

    /// Central refused the item for good (too large, invalid): set it aside
    /// for an operator at once.
    pub fn dead_letter(&self, lease: Lease, reason: &str) -> Result<(), SpoolError> {
        self.inner
            .call(Op::Kill {
                id: lease.id,
                error: reason.to_owned(),
            })
            .map(|_| ())
    }

    /// Dead-lettered items, newest first.
    pub fn dead_letters(&self, limit: u32) -> Result<Vec<ItemSummary>, SpoolError> {
        match self.inner.call(Op::List {
            dead_only: true,
            limit,
        })? {
            Reply::Items(v) => Ok(v),
            _ => Err(SpoolError::Closed),
        }
    }

    /// Puts a dead-lettered item back in its lane with a fresh attempt count.
    pub fn requeue(&self, id: i64) -> Result<(), SpoolError> {
        self.inner.call(Op::Requeue { id }).map(|_| ())
    }

    /// Removes delivered items older than the retention. Returns how many.
    pub fn purge_expired(&self) -> Result<u64, SpoolError> {
        match self.inner.call(Op::Purge { now_ms: now_ms() })? {
            Reply::Count(n) => Ok(n),
            _ => Err(SpoolError::Closed),
        }
    }

    /// Counts per lane and usage. Also puts the disk reserve back once the
    /// filesystem has room for it again (this is called every few seconds).
    pub fn stats(&self) -> Result<SpoolStats, SpoolError> {
        self.inner.capacity.ensure_reserve();
        match self.inner.call(Op::Stats)? {
            Reply::Stats(s) => Ok(s),
            _ => Err(SpoolError::Closed),
        }
    }

    /// The newest items in any state, newest first.
    pub fn recent(&self, limit: u32) -> Result<Vec<ItemSummary>, SpoolError> {
        match self.inner.call(Op::List {
            dead_only: false,
            limit,
        })? {
            Reply::Items(v) => Ok(v),
            _ => Err(SpoolError::Closed),
        }
    }

    /// The quota in force for a spool holding `used` bytes: the configured
    /// one, capped by what the spool's filesystem can hold (for `status`,
    /// read without opening the spool).
    pub fn effective_quota(config: &SpoolConfig, used: u64) -> u64 {
        Capacity::new(&config.dir, config.quota_bytes, config.reserve_bytes).effective_quota(used)
    }

    /// Reads a spool directory without opening it for writing, e.g. for
    /// `status` while the gateway runs.
    pub fn inspect(dir: &Path, limit: u32) -> Result<(SpoolStats, Vec<ItemSummary>), SpoolError> {
        let conn = schema::open_ro(&dir.join("index.sqlite"))?;
        let stats = queries::stats(&conn)?;
        let items = queries::list(&conn, false, limit)?;
        Ok((stats, items))
    }

    /// Items whose metadata `key` is one of `values` (DICOM instances by
    /// their SOP Instance UIDs), in one pass over the index, read like
    /// [`Spool::inspect`].
    pub fn inspect_by_metadata(
        dir: &Path,
        key: &str,
        values: &[String],
    ) -> Result<Vec<ItemSummary>, SpoolError> {
        let conn = schema::open_ro(&dir.join("index.sqlite"))?;
        queries::list_by_metadata(&conn, key, values)
    }

    /// The newest `limit` items whose metadata has `key` (e.g. `ecg`), read
    /// like [`Spool::inspect`] from a spool another process may hold.
    pub fn inspect_with_key(
        dir: &Path,
        key: &str,
        limit: u32,
    ) -> Result<Vec<ItemSummary>, SpoolError> {
        let conn = schema::open_ro(&dir.join("index.sqlite"))?;
        queries::list_with_key(&conn, key, limit)
    }
}

/// Requeues a dead-lettered item in a spool that another process (the
/// running gateway) has open: a single index update, without the recovery
/// steps of [`Spool::open`].
pub fn requeue_in(dir: &Path, id: i64) -> Result<bool, SpoolError> {
    let conn = schema::open_rw(&dir.join("index.sqlite"))?;
    let n = conn.execute(
        "UPDATE items SET state = 0, attempts = 0, next_attempt_ms = 0 WHERE id = ?1 AND state = 3",
        params![id],
    )?;
    Ok(n == 1)
}

fn clear_dir(dir: &Path) -> Result<usize, SpoolError> {
    let mut n = 0;
    for entry in fs::read_dir(dir).map_err(|e| SpoolError::io("list", dir, e))? {
        let entry = entry.map_err(|e| SpoolError::io("list", dir, e))?;
        fs::remove_file(entry.path())
            .map_err(|e| SpoolError::io("remove partial payload", entry.path(), e))?;
        n += 1;
    }
    Ok(n)
}

/// Rows committed while their payload's data sync was still running when
/// the process or the power stopped. A payload that matches its size and
/// hash stays, synced again (the process may have died with only the page
/// cache holding it). One that does not was never acknowledged (the answer
/// waits for both), so it goes with its row, and the device's resend is
/// stored anew rather than answered as a duplicate of torn bytes.
fn check_unsynced(conn: &rusqlite::Connection, payload_dir: &Path) -> Result<usize, SpoolError> {
    let rows: Vec<(i64, String, i64, Vec<u8>)> = {
        let mut stmt = conn.prepare(
            "SELECT i.id, i.upload_id, i.size, i.sha256 FROM unsynced u JOIN items i ON i.id = u.id
             WHERE i.inline_payload IS NULL",
        )?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?
    };
    let marks: i64 = conn.query_row("SELECT COUNT(*) FROM unsynced", [], |r| r.get(0))?;
    let mut torn = 0;
    for (id, upload_id, size, sha256) in rows {
        let path = payload_dir.join(&upload_id);
        match payload_matches(&path, size as u64, &sha256) {
            Ok(true) => {}
            outcome => {
                let why = match outcome {
                    Err(e) => e.to_string(),
                    Ok(_) => "its size or hash does not match".to_owned(),
                };
                tracing::warn!(item = id, upload_id = %upload_id, why = %why,
                    "an item whose payload was still being written when the gateway stopped is incomplete and was removed; it was never acknowledged, so its device sends it again");
                // The file goes with the orphans, once this is committed.
                conn.execute("DELETE FROM items WHERE id = ?1", params![id])?;
                torn += 1;
            }
        }
    }
    // Nothing written when nothing is marked: on a full disk the spool
    // must still open.
    if marks > 0 {
        conn.execute("DELETE FROM unsynced", [])?;
    }
    Ok(torn)
}

/// Whether the file at `path` holds `size` bytes hashing to `sha256`; if
/// so it is synced before the answer.
fn payload_matches(path: &Path, size: u64, sha256: &[u8]) -> std::io::Result<bool> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = fs::File::open(path)?;
    if f.metadata()?.len() != size {
        return Ok(false);
    }
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    if hasher.finalize().as_slice() != sha256 {
        return Ok(false);
    }
    f.sync_data()?;
    Ok(true)
}

fn reconcile_payloads(
    conn: &rusqlite::Connection,
    payload_dir: &Path,
) -> Result<(usize, usize), SpoolError> {
    let mut known = std::collections::HashSet::new();
    let mut missing = 0;
    {
        let mut stmt = conn
            .prepare("SELECT id, upload_id, size, state FROM items WHERE inline_payload IS NULL")?;
        let rows: Vec<(i64, String, i64, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        for (id, upload_id, size, state) in rows {
            let path = payload_dir.join(&upload_id);
            let ok = fs::metadata(&path)
                .map(|m| m.len() == size as u64)
                .unwrap_or(false);
            if !ok && state != 3 {
                tracing::error!(item = id, upload_id = %upload_id, "spool payload file missing or wrong size; item dead-lettered");
                // Its dedup key goes with the payload: the device's resend
                // must be stored anew, not answered as already held.
                conn.execute(
                    "UPDATE items SET state = 3, dedup_key = NULL, last_error = 'payload file missing or wrong size at spool open' WHERE id = ?1",
                    params![id],
                )?;
                missing += 1;
            }
            known.insert(upload_id);
        }
    }
    let mut orphans = 0;
    for entry in fs::read_dir(payload_dir).map_err(|e| SpoolError::io("list", payload_dir, e))? {
        let entry = entry.map_err(|e| SpoolError::io("list", payload_dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !known.contains(&name) {
            // Written (perhaps in part) but the process died before the
            // index commit: never acknowledged, so safe to remove.
            fs::remove_file(entry.path())
                .map_err(|e| SpoolError::io("remove orphan payload", entry.path(), e))?;
            orphans += 1;
        }
    }
    Ok((orphans, missing))
}
