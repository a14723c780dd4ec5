//! Payload files: streaming writes that hash as they go, the fsync sequence
//! that makes a payload durable, and reads for the uplink.

use crate::disk::new_upload_id;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use sha2::{Digest, Sha256};

use crate::SpoolError;
use crate::item::InsertRow;
use crate::item::{Committed, NewItem};
use crate::shared::Shared;

/// Payload bytes held in memory before they go to the file. Larger writes
/// go straight through, so an adapter handing over big pieces has them in
/// the page cache as they arrive rather than all at the commit.
const WRITE_BUFFER: usize = 256 * 1024;

/// Streams one payload into the spool. Nothing is visible to the uplink
/// until [`SpoolWriter::commit`] returns; dropping the writer discards it.
pub struct SpoolWriter {
    shared: Arc<Shared>,
    item: NewItem,
    upload_id: String,
    hasher: Sha256,
    written: u64,
    /// Payloads start in memory and move to a file past the inline limit.
    memory: Vec<u8>,
    file: Option<(PathBuf, BufWriter<File>)>,
    /// The payload file once [`SpoolWriter::sync`] made it durable.
    synced: Option<PathBuf>,
    failed: Option<String>,
    /// Bytes this writer counted in the spool's in-flight usage.
    counted: u64,
}

impl SpoolWriter {
    pub(crate) fn new(shared: Arc<Shared>, item: NewItem) -> Result<Self, SpoolError> {
        shared.check_room(0)?;
        Ok(Self {
            counted: 0,
            shared,
            item,
            upload_id: new_upload_id(),
            hasher: Sha256::new(),
            written: 0,
            memory: Vec::new(),
            file: None,
            synced: None,
            failed: None,
        })
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The item's description as it stands.
    pub fn item(&self) -> &NewItem {
        &self.item
    }

    /// The item's description, for adapters that learn it from the payload
    /// itself (metadata, lane, dedup key) while streaming it.
    pub fn item_mut(&mut self) -> &mut NewItem {
        &mut self.item
    }

    /// SHA-256 of the bytes written so far.
    pub fn sha256_so_far(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }

    /// Appends payload bytes. Refuses early, with [`SpoolError::Full`], once
    /// the payload would take the spool over its high watermark, so a large
    /// object does not fill the disk before being refused.
    pub fn write_bytes(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        if let Some(why) = &self.failed {
            return Err(SpoolError::Damaged {
                upload_id: self.upload_id.clone(),
                detail: format!("an earlier write failed: {why}"),
            });
        }
        let result = self.write_inner(data);
        if let Err(e) = &result {
            self.failed = Some(e.to_string());
        }
        result
    }

    fn write_inner(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        if self.synced.is_some() {
            return Err(SpoolError::Damaged {
                upload_id: self.upload_id.clone(),
                detail: "written after it was synced".into(),
            });
        }
        self.shared.check_room(self.written + data.len() as u64)?;
        let written = self.write_file(data);
        if let Err(SpoolError::Io { source, .. }) = &written
            && crate::capacity::is_no_space(source)
        {
            self.shared
                .out_of_space("a payload write found the filesystem full");
        }
        written
    }

    fn write_file(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        self.hasher.update(data);
        self.written += data.len() as u64;
        if self.file.is_none()
            && self.memory.len() + data.len() <= self.shared.config.inline_threshold
        {
            self.memory.extend_from_slice(data);
            return Ok(());
        }
        if self.file.is_none() {
            // Written under its final name, in a file created ahead whose
            // name is already durable: no rename and no directory fsync
            // stand between the bytes and the acknowledgement. A file
            // without an index row is an orphan that the next open removes.
            let (id, path) = self.shared.blank_payload()?;
            self.upload_id = id;
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| SpoolError::io("open payload file", &path, e))?;
            let mut w = BufWriter::with_capacity(WRITE_BUFFER, f);
            w.write_all(&self.memory)
                .map_err(|e| SpoolError::io("write payload file", &path, e))?;
            self.count(self.memory.len() as u64);
            self.memory = Vec::new();
            self.file = Some((path, w));
        }
        if let Some((path, w)) = &mut self.file {
            w.write_all(data)
                .map_err(|e| SpoolError::io("write payload file", path.as_path(), e))?;
            self.count(data.len() as u64);
        }
        Ok(())
    }

    /// Makes the payload's bytes durable (its file's data sync; the file's
    /// name was made durable when it was created); nothing may be written
    /// after. [`SpoolWriter::commit`] does this itself: calling it first
    /// lets an adapter do other work (reading metadata) while the disk
    /// syncs, before it knows what to index.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if let Some(why) = &self.failed {
            return Err(SpoolError::Damaged {
                upload_id: self.upload_id.clone(),
                detail: format!("a write failed: {why}"),
            });
        }
        let Some((path, w)) = self.file.take() else {
            return Ok(());
        };
        let result = w
            .into_inner()
            .map_err(|e| SpoolError::io("flush payload file", &path, e.into_error()))
            .and_then(|f| {
                // The size and extents are data for fdatasync: a new file's
                // length reaches the disk with its bytes.
                f.sync_data()
                    .map_err(|e| SpoolError::io("fsync payload file", &path, e))
            });
        match result {
            Ok(()) => {
                self.synced = Some(path);
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_file(&path);
                if let SpoolError::Io { source, .. } = &e
                    && crate::capacity::is_no_space(source)
                {
                    self.shared
                        .out_of_space("a payload sync found the filesystem full");
                }
                self.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Makes the payload durable and indexes it. Returns only after the
    /// file's data sync and the index commit.
    pub fn commit(mut self) -> Result<Committed, SpoolError> {
        self.sync()?;
        let sha256: [u8; 32] = self.hasher.clone().finalize().into();
        let (inline, payload_path) = match self.synced.take() {
            None => (Some(std::mem::take(&mut self.memory)), None),
            Some(path) => (None, Some(path)),
        };
        let row = InsertRow {
            upload_id: std::mem::take(&mut self.upload_id),
            item: self.item.clone(),
            size: self.written,
            sha256,
            inline,
            payload_path,
        };
        self.shared.insert(row)
    }
}

impl SpoolWriter {
    fn count(&mut self, n: u64) {
        self.counted += n;
        self.shared.usage().writing.fetch_add(n, Ordering::SeqCst);
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        self.shared
            .usage()
            .writing
            .fetch_sub(self.counted, Ordering::SeqCst);
        let path = self.file.take().map(|(p, _)| p).or(self.synced.take());
        if let Some(path) = path {
            // Best effort: the next open removes payloads without a row.
            let _ = fs::remove_file(path);
        }
    }
}

impl Write for SpoolWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_bytes(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A leased item's payload, for the uplink to read.
#[derive(Debug)]
pub enum Payload {
    Inline(Vec<u8>),
    File(File),
}

impl Payload {
    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            Payload::Inline(data) => {
                let start = usize::try_from(offset).map_err(io::Error::other)?;
                let end = start
                    .checked_add(buf.len())
                    .filter(|e| *e <= data.len())
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::UnexpectedEof, "read past the payload")
                    })?;
                buf.copy_from_slice(&data[start..end]);
                Ok(())
            }
            Payload::File(f) => f.read_exact_at(buf, offset),
        }
    }
}
