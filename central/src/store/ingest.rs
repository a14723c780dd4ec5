//! Uploads in progress (partial files, resumable) and their durable
//! commit: blob synced and renamed, index row and outbox rows in one
//! transaction.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use crate::store::sql::params;
use sha2::{Digest, Sha256};
use yilian_protocol::messages::Offer;
use yilian_protocol::{BoxIdentity, Lane};

use super::{Held, ItemRow, Store, StoreError, Stored, blobs, io, now_ms, rfc3339};
use sha2::digest::common::hazmat::SerializableState;
use yilian_proof::direct::DirectAppend;
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

    /// What central holds of an offered upload. With payloads in a bucket,
    /// content already there under the offer's hash (stored by any
    /// instance, only ever after its hash was checked) is committed
    /// without its bytes being sent again.
    pub fn held(
        &self,
        gateway: &BoxIdentity,
        offer: &Offer,
        destinations: &[&str],
    ) -> Result<Held, StoreError> {
        let exists: Option<i64> = self.db().query_row(
            "SELECT id FROM items WHERE gateway = ?1 AND upload_id = ?2",
            params![gateway.to_string(), offer.upload_id],
            |r| r.get(0),
        )?;
        if exists.is_some() {
            return Ok(Held::Committed(Stored::new(offer.upload_id.clone(), ())));
        }
        let Some(s3) = self.inner.blobs.s3() else {
            let path = self.partial_path(gateway, &offer.upload_id);
            let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            return Ok(Held::Partial(len.min(offer.size)));
        };
        let expected = hex::encode(&offer.sha256);
        if expected.len() == 64 && s3.head(&blobs::key(&expected))? == Some(offer.size) {
            let stored = self.insert_row(gateway, offer, &expected, destinations)?;
            return Ok(Held::Committed(Stored::new(stored.value.upload_id, ())));
        }
        let end: Option<i64> = self.db().query_row(
            "SELECT COALESCE(MAX(end_offset), 0) FROM upload_parts WHERE gateway = ?1 AND upload_id = ?2",
            params![gateway.to_string(), offer.upload_id],
            |r| r.get(0),
        )?;
        Ok(Held::Partial(
            (end.unwrap_or(0).max(0) as u64).min(offer.size),
        ))
    }

    /// Opens an upload for appending at `offset` (what [`Store::held`]
    /// answered), with the hash primed over the bytes already held.
    pub fn open_partial(
        &self,
        gateway: &BoxIdentity,
        offer: &Offer,
        offset: u64,
    ) -> Result<PartialUpload, StoreError> {
        if self.inner.blobs.s3().is_some() {
            return self.open_parts(gateway, offer, offset);
        }
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
        // Every write is at its offset: the file's cursor plays no part.
        let out = DirectAppend::open(&path, file, offset, DIRECT_CHUNK)
            .map_err(io("open partial upload for direct writes", &path))?;
        Ok(PartialUpload {
            hasher,
            len: offset,
            sink: Sink::File { path, out },
        })
    }

    /// The bucket's side of `open_partial`: the parts stored so far (by
    /// whichever instance), and the hash state after the last of them.
    fn open_parts(
        &self,
        gateway: &BoxIdentity,
        offer: &Offer,
        offset: u64,
    ) -> Result<PartialUpload, StoreError> {
        let gw = gateway.to_string();
        let key = blobs::key(&hex::encode(&offer.sha256));
        let mut db = self.db();
        let begun: Option<(String, String)> = db.query_row(
            "SELECT multipart_id, object_key FROM uploads_begun WHERE gateway = ?1 AND upload_id = ?2",
            params![gw, offer.upload_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let parts: Vec<(String, i64, String, String)> = db.query(
            "SELECT multipart_id, end_offset, etag, hash_state FROM upload_parts
             WHERE gateway = ?1 AND upload_id = ?2 ORDER BY part",
            params![gw, offer.upload_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        drop(db);
        let mut parts_state = S3Parts {
            store: self.clone(),
            gateway: gw.clone(),
            upload_id: offer.upload_id.clone(),
            key: key.clone(),
            multipart: None,
            etags: Vec::new(),
            pending: Vec::new(),
            flushed: 0,
            size: offer.size,
        };
        let resumable = match (&begun, parts.last()) {
            (Some((id, k)), Some((_, end, _, _))) => {
                offset > 0 && *k == key && *end as u64 == offset && parts.iter().all(|p| p.0 == *id)
            }
            _ => false,
        };
        if resumable && let (Some((id, _)), Some((_, _, _, state))) = (&begun, parts.last()) {
            let hasher = restore_hash(state).ok_or_else(|| {
                StoreError::Inconsistent(format!(
                    "upload {}: its stored hash state is unreadable",
                    offer.upload_id
                ))
            })?;
            parts_state.multipart = Some(id.clone());
            parts_state.etags = parts.iter().map(|p| p.2.clone()).collect();
            parts_state.flushed = offset;
            return Ok(PartialUpload {
                hasher,
                len: offset,
                sink: Sink::Parts(Box::new(parts_state)),
            });
        }
        // From the start: what an earlier attempt left is dropped.
        if let Some((id, k)) = begun {
            parts_state.forget(Some((&k, &id)));
        }
        Ok(PartialUpload {
            hasher: Sha256::new(),
            len: 0,
            sink: Sink::Parts(Box::new(parts_state)),
        })
    }

    /// Drops uploads nobody has added to for `idle`: a box retired or
    /// reinstalled mid-upload leaves its partial behind. Partial files
    /// under `data_dir/partial`, or multipart uploads in the bucket (each
    /// claimed by deleting its row first, so of several instances sweeping
    /// at once one aborts it). Returns how many were dropped.
    pub fn sweep_abandoned(&self, idle: std::time::Duration) -> Result<u64, StoreError> {
        let cutoff = now_ms() - idle.as_millis() as i64;
        let Some(s3) = self.inner.blobs.s3() else {
            return Ok(sweep_files(&self.inner.partial_dir, idle));
        };
        let stale: Vec<(String, String, String, String)> = self.db().query(
            "SELECT gateway, upload_id, multipart_id, object_key FROM uploads_begun WHERE active_ms < ?1",
            params![cutoff],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )?;
        let mut dropped = 0;
        for (gateway, upload_id, multipart, key) in stale {
            let claimed = {
                let mut db = self.db();
                let mut tx = db.transaction()?;
                let n = tx.execute(
                    "DELETE FROM uploads_begun WHERE gateway = ?1 AND upload_id = ?2 AND multipart_id = ?3 AND active_ms < ?4",
                    params![gateway, upload_id, multipart, cutoff],
                )?;
                tx.execute(
                    "DELETE FROM upload_parts WHERE gateway = ?1 AND upload_id = ?2 AND multipart_id = ?3",
                    params![gateway, upload_id, multipart],
                )?;
                tx.commit()?;
                n
            };
            if claimed == 0 {
                continue;
            }
            // The row is gone either way: an upload still in use finds its
            // multipart upload gone at its next part and starts over.
            if let Err(e) = s3.abort_multipart(&key, &multipart) {
                tracing::warn!(gateway = %gateway, upload = %upload_id, error = %e,
                    "cannot abort an abandoned multipart upload; its parts stay in the bucket until its own lifecycle rule removes them");
                continue;
            }
            tracing::info!(gateway = %gateway, upload = %upload_id, "abandoned partial upload dropped from the bucket");
            dropped += 1;
        }
        Ok(dropped)
    }

    /// Verifies a complete upload and stores it durably. On a hash or size
    /// mismatch what was held is dropped, so a retry starts from zero.
    pub fn commit(
        &self,
        gateway: &BoxIdentity,
        offer: &Offer,
        partial: PartialUpload,
        destinations: &[&str],
    ) -> Result<Stored<ItemRow>, StoreError> {
        let PartialUpload {
            mut hasher,
            len,
            sink,
        } = partial;
        let expected = hex::encode(&offer.sha256);
        match sink {
            Sink::File { path, mut out } => {
                out.finish().map_err(io("write partial upload", &path))?;
                let got = hex::encode(hasher.finalize());
                if let Err(e) = verify(offer, len, &got, &expected) {
                    drop(out);
                    let _ = fs::remove_file(&path);
                    return Err(e);
                }
                out.file()
                    .sync_all()
                    .map_err(io("fsync partial upload", &path))?;
                drop(out);
                self.inner.blobs.adopt_file(&got, &path)?;
                self.insert_row(gateway, offer, &got, destinations)
            }
            Sink::Parts(mut parts) => {
                hasher.update(&parts.pending);
                let got = hex::encode(hasher.finalize());
                if let Err(e) = verify(offer, len, &got, &expected) {
                    let begun = parts.multipart.clone();
                    let key = parts.key.clone();
                    parts.forget(begun.as_deref().map(|id| (key.as_str(), id)));
                    return Err(e);
                }
                if let Err(e) = parts.finish() {
                    parts.forget_if_gone(&e);
                    return Err(e);
                }
                self.insert_row(gateway, offer, &got, destinations)
            }
        }
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
        if !self.inner.blobs.is_dir() {
            for table in ["upload_parts", "uploads_begun"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE gateway = ?1 AND upload_id = ?2"),
                    params![gateway.to_string(), offer.upload_id],
                )?;
            }
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
                path: self.blob_location(sha_hex),
            },
        ))
    }
}

/// Removes partial files not written to for `idle`.
fn sweep_files(dir: &std::path::Path, idle: std::time::Duration) -> u64 {
    let mut dropped = 0;
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        // Directories stay: one removed under an upload that is just
        // opening would fail that upload for nothing.
        if meta.is_dir() {
            dropped += sweep_files(&path, idle);
        } else if meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > idle)
            && fs::remove_file(&path).is_ok()
        {
            tracing::info!(file = %path.display(), "abandoned partial upload removed");
            dropped += 1;
        }
    }
    dropped
}

fn verify(offer: &Offer, len: u64, got: &str, expected: &str) -> Result<(), StoreError> {
    if len != offer.size {
        return Err(StoreError::SizeMismatch {
            expected: offer.size,
            got: len,
        });
    }
    if got != expected {
        return Err(StoreError::HashMismatch {
            expected: expected.to_owned(),
            got: got.to_owned(),
        });
    }
    Ok(())
}

/// The SHA-256 state after a part, as stored beside it (hex).
fn save_hash(hasher: &Sha256) -> String {
    hex::encode(hasher.serialize())
}

fn restore_hash(state: &str) -> Option<Sha256> {
    let bytes = hex::decode(state).ok()?;
    let array = bytes.as_slice().try_into().ok()?;
    Sha256::deserialize(array).ok()
}

/// Bytes of an upload staged before one direct write. At most this much of
/// what a killed instance received is not in its partial file (the box
/// resumes from the file's length and sends it again).
const DIRECT_CHUNK: usize = 1024 * 1024;

/// An upload being received.
#[derive(Debug)]
pub struct PartialUpload {
    /// Over every byte before `len` (the bucket's sink hashes a part as it
    /// is sent, and the rest at the commit).
    hasher: Sha256,
    len: u64,
    sink: Sink,
}

#[derive(Debug)]
enum Sink {
    /// A file under `data_dir/partial`, renamed into the blobs at the commit.
    File {
        path: PathBuf,
        /// Whole blocks written straight to the disk, past the page cache
        /// (whose copy took most of the receiving CPU), where the file
        /// system allows it.
        out: DirectAppend,
    },
    /// Parts of a multipart upload in the bucket, recorded in the index.
    Parts(Box<S3Parts>),
}

#[derive(Debug)]
struct S3Parts {
    store: Store,
    gateway: String,
    upload_id: String,
    key: String,
    multipart: Option<String>,
    etags: Vec<String>,
    /// Received, not yet sent as a part (less than one part).
    pending: Vec<u8>,
    /// Bytes in the parts sent.
    flushed: u64,
    /// The whole upload's size, as offered.
    size: u64,
}

impl S3Parts {
    fn s3(&self) -> Result<&blobs::s3::S3Blobs, StoreError> {
        self.store
            .inner
            .blobs
            .s3()
            .ok_or_else(|| StoreError::Inconsistent("payloads are not in a bucket".into()))
    }

    /// Sends the first `part_size` pending bytes as the next part and
    /// records it with the hash state after it.
    fn send_part(&mut self, hasher: &mut Sha256, size: usize) -> Result<(), StoreError> {
        let rest = self.pending.split_off(size);
        let part = std::mem::replace(&mut self.pending, rest);
        hasher.update(&part);
        let now = now_ms();
        let id = match &self.multipart {
            Some(id) => id.clone(),
            None => {
                let id = self.s3()?.create_multipart(&self.key)?;
                let inserted = self.store.db().execute(
                    "INSERT INTO uploads_begun(gateway, upload_id, multipart_id, object_key, begun_ms, active_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT(gateway, upload_id) DO NOTHING",
                    params![self.gateway, self.upload_id, id, self.key, now],
                )?;
                if inserted == 0 {
                    let _ = self.s3()?.abort_multipart(&self.key, &id);
                    return Err(StoreError::Contended);
                }
                self.multipart = Some(id.clone());
                id
            }
        };
        let size = part.len() as u64;
        let etag = self
            .s3()?
            .put_part(&self.key, &id, self.etags.len(), part)?;
        let mut db = self.store.db();
        let mut tx = db.transaction()?;
        let inserted = tx.execute(
            "INSERT INTO upload_parts(gateway, upload_id, part, multipart_id, size, end_offset, etag, hash_state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(gateway, upload_id, part) DO NOTHING",
            params![
                self.gateway,
                self.upload_id,
                self.etags.len() as i64,
                id,
                size as i64,
                (self.flushed + size) as i64,
                etag,
                save_hash(hasher)
            ],
        )?;
        tx.execute(
            "UPDATE uploads_begun SET active_ms = ?3 WHERE gateway = ?1 AND upload_id = ?2",
            params![self.gateway, self.upload_id, now],
        )?;
        tx.commit()?;
        if inserted == 0 {
            return Err(StoreError::Contended);
        }
        self.etags.push(etag);
        self.flushed += size;
        Ok(())
    }

    /// Makes the object: one PUT for an upload smaller than a part, else
    /// the last part and the multipart upload's completion.
    fn finish(&mut self) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut self.pending);
        match self.multipart.clone() {
            None => self.s3()?.put(&self.key, pending)?,
            Some(id) => {
                if !pending.is_empty() || self.etags.is_empty() {
                    let etag = self
                        .s3()?
                        .put_part(&self.key, &id, self.etags.len(), pending)?;
                    self.etags.push(etag);
                }
                let etags = self.etags.clone();
                self.s3()?.complete_multipart(&self.key, &id, etags)?;
            }
        }
        Ok(())
    }

    /// After the multipart upload turned out gone, drops its rows: the next
    /// attempt starts from zero instead of sending parts to nothing forever.
    fn forget_if_gone(&mut self, e: &StoreError) {
        if matches!(e, StoreError::Blob(blobs::BlobError::UploadGone(_))) {
            tracing::warn!(upload = %self.upload_id, "the upload's multipart upload is gone from the bucket; it starts again from zero");
            self.forget(None);
        }
    }

    /// Drops what is held of this upload: the multipart upload (if any)
    /// and its rows. Best effort: an orphan is cleaned up later.
    fn forget(&mut self, begun: Option<(&str, &str)>) {
        if let Some((key, id)) = begun
            && let Ok(s3) = self.s3()
            && let Err(e) = s3.abort_multipart(key, id)
        {
            tracing::warn!(upload = %self.upload_id, error = %e, "cannot abort a multipart upload; the cleanup will retry");
        }
        let mut db = self.store.db();
        for table in ["upload_parts", "uploads_begun"] {
            let _ = db.execute(
                &format!("DELETE FROM {table} WHERE gateway = ?1 AND upload_id = ?2"),
                params![self.gateway, self.upload_id],
            );
        }
        self.multipart = None;
        self.etags.clear();
        self.flushed = 0;
    }
}

impl PartialUpload {
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends and hashes. Not fsynced here: see the module comment. In a
    /// bucket, each full part is sent and recorded as it completes.
    pub fn append(&mut self, data: &[u8]) -> Result<(), StoreError> {
        match &mut self.sink {
            Sink::File { path, out } => {
                out.append(data).map_err(io("write partial upload", path))?;
                self.hasher.update(data);
                self.len += data.len() as u64;
            }
            Sink::Parts(parts) => {
                let size = parts.s3()?.part_size();
                if parts.pending.capacity() - parts.pending.len() < data.len() {
                    // One allocation per part, of the part's size (or what
                    // is left of the upload): what the server's memory
                    // budget reserved for it, never a doubling beyond.
                    let unsent = parts.size.saturating_sub(parts.flushed) as usize;
                    let want = unsent.min(size).max(parts.pending.len() + data.len());
                    parts.pending.reserve_exact(want - parts.pending.len());
                }
                parts.pending.extend_from_slice(data);
                self.len += data.len() as u64;
                while parts.pending.len() >= size {
                    if let Err(e) = parts.send_part(&mut self.hasher, size) {
                        parts.forget_if_gone(&e);
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }
}
