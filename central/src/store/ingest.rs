//! Uploads in progress (partial files, resumable) and their durable
//! commit: blob synced and renamed, index row and outbox rows in one
//! transaction.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use crate::store::sql::params;
use sha2::{Digest, Sha256};
use yilian_protocol::messages::Offer;
use yilian_protocol::{BoxIdentity, Lane};

use super::{Held, ItemRow, Store, StoreError, Stored, io, now_ms, rfc3339, sync_dir};
use yilian_proof::disk::create_private_dir;

impl Store {
    fn partial_path(&self, gateway: &BoxIdentity, upload_id: &str) -> PathBuf {
        // Identity parts and upload ids are validated to be path-safe.
        self.inner
            .partial_dir
            .join(gateway.county())
            .join(gateway.clinic())
            .join(gateway.box_name())
            .join(upload_id)
    }

    /// What central holds of an offered upload.
    pub fn held(&self, gateway: &BoxIdentity, offer: &Offer) -> Result<Held, StoreError> {
        let exists: Option<i64> = self.db().query_row(
            "SELECT id FROM items WHERE gateway = ?1 AND upload_id = ?2",
            params![gateway.to_string(), offer.upload_id],
            |r| r.get(0),
        )?;
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
            kicked: offset,
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
            ..
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
        let mut tx = db.transaction()?;
        tx.execute(
            "INSERT INTO items(gateway, upload_id, kind, lane, source, metadata, size, sha256, received_ms, committed_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT(gateway, upload_id) DO NOTHING",
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
                "INSERT INTO outbox(gateway, upload_id, destination, kind, sha256, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT(gateway, upload_id, destination) DO NOTHING",
                params![
                    gateway.to_string(),
                    offer.upload_id,
                    d,
                    offer.kind,
                    sha_hex,
                    committed
                ],
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
}

/// Bytes received between two starts of writeback (see `append`).
const WRITEBACK_STEP: u64 = 16 * 1024 * 1024;

/// An upload being received.
#[derive(Debug)]
pub struct PartialUpload {
    path: PathBuf,
    file: File,
    hasher: Sha256,
    len: u64,
    /// Bytes before this offset have had their writeback started.
    kicked: u64,
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
        // The commit's sync then waits for the last few megabytes, not for
        // a whole study's worth of dirty pages.
        if self.len - self.kicked >= WRITEBACK_STEP {
            yilian_proof::disk::start_writeback(&self.file, self.kicked, self.len - self.kicked);
            self.kicked = self.len;
        }
        Ok(())
    }
}
