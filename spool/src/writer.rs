//! The one thread that writes the index. Requests that arrive while a
//! transaction commits wait in the channel and are committed together in
//! the next one: one fsync for many appends (group commit).

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};

use rusqlite::{Connection, OptionalExtension, params};

use crate::SpoolError;
use crate::capacity::{Capacity, is_sqlite_full};
use crate::config::SpoolConfig;
use crate::item::{Committed, InsertRow, ItemSummary, Lane, Lease, NackOutcome, SpoolStats};
use crate::queries;
use crate::queries::Cached;

/// Most requests committed in one transaction.
const MAX_GROUP: usize = 512;

pub(crate) enum Op {
    Insert(InsertRow),
    Lease {
        lane: Lane,
        now_ms: i64,
    },
    Ack {
        id: i64,
        now_ms: i64,
    },
    Release {
        id: i64,
    },
    Nack {
        id: i64,
        error: String,
        now_ms: i64,
    },
    Requeue {
        id: i64,
    },
    /// The payload of a row committed while its sync ran failed to sync:
    /// the item was never acknowledged, so it goes.
    Discard {
        id: i64,
    },
    Defer {
        id: i64,
        until_ms: i64,
        error: String,
    },
    Kill {
        id: i64,
        error: String,
    },
    Purge {
        now_ms: i64,
    },
    /// An append is about to pass the high mark: evict delivered items to
    /// make room for `size` bytes, or refuse.
    MakeRoom {
        size: u64,
    },
    Stats,
    List {
        dead_only: bool,
        limit: u32,
    },
}

pub(crate) enum Reply {
    Committed(Committed),
    /// The request was processed (evictions it caused stand) but refused.
    Refused(SpoolError),
    Lease(Option<Lease>),
    Nack(NackOutcome),
    Count(u64),
    Stats(SpoolStats),
    Items(Vec<ItemSummary>),
    Done,
}

pub(crate) struct Request {
    pub op: Op,
    pub reply: ReplyTo,
}

/// Where a request's answer goes: a thread blocked on it, or a task
/// awaiting it (woken straight from this thread, no blocking thread
/// between).
pub(crate) enum ReplyTo {
    Blocked(SyncSender<Result<Reply, SpoolError>>),
    Awaited(futures_channel::oneshot::Sender<Result<Reply, SpoolError>>),
}

impl ReplyTo {
    pub(crate) fn send(self, r: Result<Reply, SpoolError>) {
        // A caller that stopped waiting (its connection closed) needs no
        // answer; what it asked for stands or not by the commit alone.
        match self {
            ReplyTo::Blocked(tx) => {
                let _ = tx.send(r);
            }
            ReplyTo::Awaited(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

/// Accounting shared with appenders for early refusal.
#[derive(Debug, Default)]
pub(crate) struct Usage {
    pub used: AtomicU64,
    /// Payload bytes written to files by appends not yet committed: on the
    /// disk, not yet in `used`.
    pub writing: AtomicU64,
    pub refusing: AtomicBool,
    /// Rows whose payload sync has returned since the last transaction:
    /// their `unsynced` marks are cleared by the next one, whatever else
    /// it does, so clearing them costs no flush of its own.
    pub synced: std::sync::Mutex<Vec<i64>>,
}

pub(crate) struct Writer {
    pub conn: Connection,
    pub config: SpoolConfig,
    pub usage: Arc<Usage>,
    pub capacity: Arc<Capacity>,
    /// The WAL and shared-memory files are made owner-only once they exist
    /// (SQLite creates them with the process's umask).
    pub index_files_private: bool,
}

impl Writer {
    pub fn run(mut self, rx: Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.run_batch(batch);
        }
        // Closing: the sync marks still listed go now, so a clean stop
        // leaves nothing for the next open to check.
        if !self
            .usage
            .synced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            self.run_batch(Vec::new());
        }
    }

    fn run_batch(&mut self, batch: Vec<Request>) {
        let mut results = Vec::with_capacity(batch.len());
        let mut unlink_after_commit: Vec<PathBuf> = Vec::new();
        if let Err(e) = self.conn.run("BEGIN IMMEDIATE", []) {
            tracing::error!(error = %e, "spool index: cannot begin a transaction");
            if is_sqlite_full(&e) {
                self.capacity
                    .release_reserve("the spool index could not begin a transaction");
            }
            let code = e.sqlite_error_code();
            for req in batch {
                let err = match code {
                    Some(_) => SpoolError::Db(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                        Some(e.to_string()),
                    )),
                    None => SpoolError::Closed,
                };
                req.reply.send(Err(err));
            }
            return;
        }
        let cleared = self.clear_synced();
        let used_before = self.usage.used.load(Ordering::SeqCst);
        let mut replies = Vec::with_capacity(batch.len());
        for req in batch {
            // Each request in its own savepoint: one failing request must not
            // undo the others in the group. A failed request also gives back
            // what it changed in memory: usage, and files it meant to unlink.
            let unlink_mark = unlink_after_commit.len();
            let used_mark = self.usage.used.load(Ordering::SeqCst);
            let r = self
                .conn
                .run("SAVEPOINT op", [])
                .map_err(SpoolError::from)
                .and_then(|_| self.apply(req.op, &mut unlink_after_commit));
            let end = if r.is_ok() {
                self.conn.run("RELEASE op", [])
            } else {
                self.conn
                    .run("ROLLBACK TO op", [])
                    .and_then(|_| self.conn.run("RELEASE op", []))
            };
            let r = match (r, end) {
                (Ok(v), Ok(_)) => Ok(v),
                (Err(e), _) => Err(e),
                (Ok(_), Err(e)) => Err(SpoolError::Db(e)),
            };
            if r.is_err() {
                unlink_after_commit.truncate(unlink_mark);
                self.usage.used.store(used_mark, Ordering::SeqCst);
            }
            results.push(r);
            replies.push(req.reply);
        }
        match self.conn.run("COMMIT", []) {
            Ok(_) => {
                if !self.index_files_private {
                    self.index_files_private = crate::disk::make_private(&self.config.dir).is_ok();
                }
                for path in unlink_after_commit {
                    let _ = fs::remove_file(&path);
                }
                for (reply, r) in replies.into_iter().zip(results) {
                    reply.send(r);
                }
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                self.usage.used.store(used_before, Ordering::SeqCst);
                // The marks are still in the index: the next transaction
                // clears them (or a resend would be told "busy" for ever).
                self.usage
                    .synced
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(cleared);
                if is_sqlite_full(&e) {
                    // Deliveries must still be recordable: without that the
                    // box can never free the space it is out of.
                    self.capacity
                        .release_reserve("the spool index could not commit for lack of space");
                }
                let msg = e.to_string();
                tracing::error!(error = %msg, "spool index commit failed; the requests in this group were refused");
                for (reply, r) in replies.into_iter().zip(results) {
                    // Refused inserts keep their own error; everything else
                    // reports the failed commit.
                    let r = match r {
                        Ok(_) => Err(SpoolError::Db(rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                            Some(msg.clone()),
                        ))),
                        Err(e) => Err(e),
                    };
                    reply.send(r);
                }
            }
        }
    }

    fn apply(&mut self, op: Op, unlink: &mut Vec<PathBuf>) -> Result<Reply, SpoolError> {
        match op {
            Op::Insert(row) => match self.insert(row, unlink) {
                Ok(c) => Ok(Reply::Committed(c)),
                Err(e @ (SpoolError::Full { .. } | SpoolError::InFlight { .. })) => {
                    Ok(Reply::Refused(e))
                }
                Err(e) => Err(e),
            },
            Op::Lease { lane, now_ms } => {
                queries::lease(&self.conn, lane, now_ms).map(Reply::Lease)
            }
            Op::Ack { id, now_ms } => {
                let n = self.conn.run(
                    "UPDATE items SET state = 2, delivered_ms = ?2, last_error = NULL WHERE id = ?1 AND state IN (0, 1)",
                    params![id, now_ms],
                )?;
                if n == 0 {
                    self.must_exist(id)?;
                }
                Ok(Reply::Done)
            }
            Op::Release { id } => {
                self.conn.run(
                    "UPDATE items SET state = 0 WHERE id = ?1 AND state = 1",
                    params![id],
                )?;
                Ok(Reply::Done)
            }
            Op::Nack { id, error, now_ms } => self.nack(id, &error, now_ms).map(Reply::Nack),
            Op::Requeue { id } => {
                let n = self.conn.run(
                    "UPDATE items SET state = 0, attempts = 0, next_attempt_ms = 0 WHERE id = ?1 AND state = 3",
                    params![id],
                )?;
                if n == 0 {
                    self.must_exist(id)?;
                }
                Ok(Reply::Done)
            }
            Op::Discard { id } => {
                let row: Option<(String, i64, bool)> = self
                    .conn
                    .query_row(
                        "SELECT upload_id, size, inline_payload IS NULL FROM items WHERE id = ?1",
                        params![id],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                if let Some((upload_id, size, is_file)) = row {
                    self.remove_item(id, &upload_id, size, is_file, unlink)?;
                }
                Ok(Reply::Done)
            }
            Op::Defer {
                id,
                until_ms,
                error,
            } => {
                self.conn.run(
                    "UPDATE items SET state = 0, next_attempt_ms = ?2, last_error = ?3 WHERE id = ?1 AND state = 1",
                    params![id, until_ms, error],
                )?;
                Ok(Reply::Done)
            }
            Op::Kill { id, error } => {
                let n = self.conn.run(
                    "UPDATE items SET state = 3, last_error = ?2 WHERE id = ?1 AND state IN (0, 1)",
                    params![id, error],
                )?;
                if n == 0 {
                    self.must_exist(id)?;
                }
                Ok(Reply::Done)
            }
            Op::Purge { now_ms } => {
                let cutoff = now_ms.saturating_sub(self.config.retention.as_millis() as i64);
                self.evict_delivered(Some(cutoff), u64::MAX, unlink)
                    .map(Reply::Count)
            }
            Op::MakeRoom { size } => match self.make_room(size, unlink) {
                Ok(()) => Ok(Reply::Done),
                Err(e @ SpoolError::Full { .. }) => Ok(Reply::Refused(e)),
                Err(e) => Err(e),
            },
            Op::Stats => {
                // A refusing spool frees itself: on a full disk no append
                // gets as far as the insert that would evict, so delivered
                // items go here, every few seconds, until the refusal lifts.
                if self.usage.refusing.load(Ordering::SeqCst) {
                    match self.make_room(0, unlink) {
                        Ok(()) => tracing::info!("spool accepts items again"),
                        Err(SpoolError::Full { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                let mut s = queries::stats(&self.conn)?;
                s.used_bytes = self.usage.used.load(Ordering::SeqCst);
                s.quota_bytes = self
                    .capacity
                    .effective_quota(s.used_bytes + self.usage.writing.load(Ordering::SeqCst));
                s.quota_configured_bytes = self.config.quota_bytes;
                s.fs_available_bytes = self.capacity.last_available();
                s.reserve_held = self.capacity.reserve_held();
                s.refusing = self.usage.refusing.load(Ordering::SeqCst);
                Ok(Reply::Stats(s))
            }
            Op::List { dead_only, limit } => {
                queries::list(&self.conn, dead_only, limit).map(Reply::Items)
            }
        }
    }

    /// Clears the `unsynced` marks of rows whose payload sync has returned,
    /// inside the transaction just begun; returns the ids it cleared, to be
    /// given back if the transaction does not commit. A mark that cannot
    /// be cleared stays listed for the next transaction.
    fn clear_synced(&mut self) -> Vec<i64> {
        let ids = std::mem::take(&mut *self.usage.synced.lock().unwrap_or_else(|p| p.into_inner()));
        let mut cleared = Vec::with_capacity(ids.len());
        let mut kept = Vec::new();
        for id in ids {
            match self
                .conn
                .execute("DELETE FROM unsynced WHERE id = ?1", params![id])
            {
                Ok(_) => cleared.push(id),
                Err(e) => {
                    tracing::debug!(item = id, error = %e, "spool could not clear a sync mark yet");
                    kept.push(id);
                }
            }
        }
        if !kept.is_empty() {
            self.usage
                .synced
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(kept);
        }
        cleared
    }

    fn is_unsynced(&self, id: i64) -> Result<bool, SpoolError> {
        // A sync that returned but whose mark is not yet cleared counts as
        // done: the list is drained at the start of every transaction.
        if self
            .usage
            .synced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
        {
            return Ok(false);
        }
        Ok(self
            .conn
            .query_row("SELECT 1 FROM unsynced WHERE id = ?1", params![id], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }

    fn must_exist(&self, id: i64) -> Result<(), SpoolError> {
        let found: Option<i64> = self
            .conn
            .query_row("SELECT id FROM items WHERE id = ?1", params![id], |r| {
                r.get(0)
            })
            .optional()?;
        found.map(|_| ()).ok_or(SpoolError::NotFound(id))
    }

    fn insert(
        &mut self,
        row: InsertRow,
        unlink: &mut Vec<PathBuf>,
    ) -> Result<Committed, SpoolError> {
        if let Some(key) = &row.item.dedup_key {
            let existing = self
                .conn
                .prepare_cached(
                    "SELECT id, upload_id, sha256, size FROM items WHERE dedup_key = ?1",
                )?
                .query_row(params![key], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })
                .optional()?;
            if let Some((id, upload_id, sha, size)) = existing {
                unlink.extend(row.payload_path);
                if self.is_unsynced(id)? {
                    // The first copy's bytes may not be on the disk yet:
                    // answering this sender on their strength could
                    // acknowledge what a power cut then takes.
                    return Err(SpoolError::InFlight { upload_id });
                }
                let mut sha256 = [0u8; 32];
                if sha.len() == 32 {
                    sha256.copy_from_slice(&sha);
                }
                return Ok(Committed {
                    id,
                    upload_id,
                    sha256,
                    size: size as u64,
                    duplicate: true,
                });
            }
        }
        if let Err(e) = self.make_room(row.size, unlink) {
            unlink.extend(row.payload_path);
            return Err(e);
        }
        let metadata = serde_json::to_string(&row.item.metadata).unwrap_or_else(|_| "{}".into());
        let now_ms = crate::disk::now_ms();
        self.conn.run(
            "INSERT INTO items(upload_id, lane, kind, source, metadata, size, sha256, inline_payload, dedup_key, state, received_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, ?10)",
            params![
                row.upload_id,
                row.item.lane as i64,
                row.item.kind,
                row.item.source,
                metadata,
                row.size as i64,
                row.sha256.as_slice(),
                row.inline,
                row.item.dedup_key,
                now_ms
            ],
        )?;
        let id = self.conn.last_insert_rowid();
        if row.payload_path.is_some() {
            self.conn
                .run("INSERT INTO unsynced(id) VALUES (?1)", params![id])?;
        }
        self.usage.used.fetch_add(row.size, Ordering::SeqCst);
        Ok(Committed {
            id,
            upload_id: row.upload_id,
            sha256: row.sha256,
            size: row.size,
            duplicate: false,
        })
    }

    /// Applies the watermarks: refuses above the high mark, and when it is
    /// reached evicts delivered items (oldest first) down to the low mark.
    /// Undelivered items are never evicted.
    fn make_room(&mut self, size: u64, unlink: &mut Vec<PathBuf>) -> Result<(), SpoolError> {
        let used = self.usage.used.load(Ordering::SeqCst);
        let writing = self.usage.writing.load(Ordering::SeqCst);
        // The payload being inserted is already on the disk and still in
        // `writing` (its writer drops after the insert): held, not free.
        let quota = self.capacity.effective_quota(used + writing);
        let (high, low) = self.config.marks(quota);
        let refusing = self.usage.refusing.load(Ordering::SeqCst);
        // While refusing, the bar is the low mark, so eviction must aim for
        // it too: otherwise items delivered after the first refusal stay
        // held below the high mark and the refusal never lifts.
        if used + size > high || (refusing && used + size > low) {
            let target = low.saturating_sub(size);
            self.evict_delivered(None, target, unlink)?;
        }
        let used = self.usage.used.load(Ordering::SeqCst);
        let over = used + size > high;
        // Hysteresis: once refusing, accept again only below the low mark,
        // so devices do not flap between accepted and refused.
        let still_refusing = over || (refusing && used + size > low);
        self.usage.refusing.store(still_refusing, Ordering::SeqCst);
        if still_refusing {
            return Err(SpoolError::Full {
                used,
                high_mark: high,
                low_mark: low,
                by_disk: self.capacity.limited_by_disk(),
            });
        }
        Ok(())
    }

    /// Deletes delivered items, oldest delivery first, that were delivered
    /// before `cutoff_ms` (all delivered items when `None`), until usage is
    /// at or below `target`. Returns how many went.
    fn evict_delivered(
        &mut self,
        cutoff_ms: Option<i64>,
        target: u64,
        unlink: &mut Vec<PathBuf>,
    ) -> Result<u64, SpoolError> {
        let cutoff = cutoff_ms.unwrap_or(i64::MAX);
        let victims: Vec<(i64, String, i64, bool)> = {
            let mut stmt = self.conn.prepare(
                "SELECT id, upload_id, size, inline_payload IS NULL FROM items
                 WHERE state = 2 AND delivered_ms < ?1 ORDER BY delivered_ms, id",
            )?;
            stmt.query_map(params![cutoff], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?
        };
        let mut evicted = 0;
        for (id, upload_id, size, is_file) in victims {
            if target != u64::MAX && self.usage.used.load(Ordering::SeqCst) <= target {
                break;
            }
            self.remove_item(id, &upload_id, size, is_file, unlink)?;
            evicted += 1;
        }
        if evicted > 0 {
            tracing::debug!(evicted, "spool evicted delivered items");
        }
        Ok(evicted)
    }

    /// Deletes an item's row (and its sync mark), gives back its bytes,
    /// and lists its payload file for removal once the deletion commits.
    fn remove_item(
        &mut self,
        id: i64,
        upload_id: &str,
        size: i64,
        is_file: bool,
        unlink: &mut Vec<PathBuf>,
    ) -> Result<(), SpoolError> {
        self.conn
            .run("DELETE FROM items WHERE id = ?1", params![id])?;
        self.conn
            .run("DELETE FROM unsynced WHERE id = ?1", params![id])?;
        if is_file {
            unlink.push(self.config.dir.join("payload").join(upload_id));
        }
        self.usage.used.fetch_sub(size as u64, Ordering::SeqCst);
        Ok(())
    }

    fn nack(&mut self, id: i64, error: &str, now_ms: i64) -> Result<NackOutcome, SpoolError> {
        let attempts: Option<i64> = self
            .conn
            .query_row(
                "SELECT attempts FROM items WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        let attempts = attempts.ok_or(SpoolError::NotFound(id))? as u32 + 1;
        if attempts >= self.config.max_attempts {
            self.conn.run(
                "UPDATE items SET state = 3, attempts = ?2, last_error = ?3 WHERE id = ?1",
                params![id, attempts, error],
            )?;
            return Ok(NackOutcome::DeadLettered);
        }
        let base = self.config.retry_base.as_millis() as u64;
        let delay = base
            .saturating_mul(1u64 << (attempts - 1).min(30))
            .min(self.config.retry_max.as_millis() as u64);
        self.conn.run(
            "UPDATE items SET state = 0, attempts = ?2, last_error = ?3, next_attempt_ms = ?4 WHERE id = ?1",
            params![id, attempts, error, now_ms + delay as i64],
        )?;
        Ok(NackOutcome::RetryIn(delay))
    }
}
