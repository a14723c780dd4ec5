//! Payload files: streaming writes that hash as they go, the fsync sequence
//! that makes a payload durable, and reads for the uplink.

use crate::disk::new_upload_id;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use sha2::{Digest, Sha256};

use crate::SpoolError;
use crate::item::InsertRow;
use crate::item::{Committed, NewItem};
use crate::shared::Shared;
use crate::writer::Op;

/// Payload bytes held in memory before they go to the file. Larger writes
/// go straight through, so an adapter handing over big pieces has them in
/// the page cache as they arrive rather than all at the commit.
const WRITE_BUFFER: usize = 256 * 1024;

/// The largest step between two starts of writeback (see
/// [`SpoolWriter::start_writeback`]).
const MAX_WRITEBACK_STEP: u64 = 16 * 1024 * 1024;

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
    failed: Option<String>,
    /// Bytes this writer counted in the spool's in-flight usage.
    counted: u64,
    /// The payload file's bytes before this offset have had their writeback
    /// started.
    kicked: u64,
}

impl SpoolWriter {
    pub(crate) fn new(shared: Arc<Shared>, item: NewItem) -> Result<Self, SpoolError> {
        shared.check_room(0)?;
        Ok(Self {
            counted: 0,
            kicked: 0,
            shared,
            item,
            upload_id: new_upload_id(),
            hasher: Sha256::new(),
            written: 0,
            memory: Vec::new(),
            file: None,
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
        self.start_writeback();
        Ok(())
    }

    /// Starts the writeback of the payload's bytes already in the file, a
    /// buffer's worth at a time, while the rest still arrives: the data
    /// sync at the commit then waits for the tail, not for the whole
    /// payload (measured: half the final sync's time for a 0.5 MB image).
    fn start_writeback(&mut self) {
        let Some((_, w)) = &self.file else {
            return;
        };
        let in_file = self.written - w.buffer().len() as u64;
        // A buffer at a time for an image; for a long stream larger steps,
        // because writeback in small pieces costs the kernel far more than
        // the sync it shortens (a 2 GiB instance in 256 KiB steps streamed
        // in at a third of the speed).
        let step = (in_file / 4).clamp(WRITE_BUFFER as u64, MAX_WRITEBACK_STEP);
        if in_file - self.kicked < step {
            return;
        }
        yilian_proof::disk::start_writeback(w.get_ref(), self.kicked, in_file - self.kicked);
        self.kicked = in_file;
    }

    /// Makes the payload durable and indexes it, with the two flushes
    /// overlapped: the index row goes to the writer thread, marked
    /// `unsynced`, while this thread syncs the payload file's data, and
    /// the commit returns only once both are done. One flush's wait per
    /// acknowledgement instead of two in a row. A power cut between the
    /// two leaves a marked row whose payload the next open checks against
    /// its hash, removing it if torn: it was never acknowledged.
    pub fn commit(mut self) -> Result<Committed, SpoolError> {
        if let Some(why) = &self.failed {
            return Err(SpoolError::Damaged {
                upload_id: self.upload_id.clone(),
                detail: format!("a write failed: {why}"),
            });
        }
        let sha256: [u8; 32] = self.hasher.clone().finalize().into();
        let Some((path, w)) = self.file.take() else {
            // Small enough to live in the index: its commit is its flush.
            let inline = std::mem::take(&mut self.memory);
            let row = self.row(sha256, Some(inline), None);
            return self.shared.submit(Op::Insert(row))?.committed();
        };
        // Every byte is in the file before the row can be seen: the uplink
        // may lease the item the moment its row commits and read it from
        // the page cache, while this thread is still syncing. (Flushing
        // after handing the row over let an upload read a short file and
        // set the item aside as damaged.)
        let f = match w.into_inner() {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_file(&path);
                let e = e.into_error();
                if crate::capacity::is_no_space(&e) {
                    self.shared
                        .out_of_space("a payload write found the filesystem full");
                }
                return Err(SpoolError::io("flush payload file", &path, e));
            }
        };
        let row = self.row(sha256, None, Some(path.clone()));
        let insert = match self.shared.submit(Op::Insert(row)) {
            Ok(insert) => insert,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        };
        // The size and extents are data for fdatasync: a new file's length
        // reaches the disk with its bytes; its name was made durable when it
        // was created.
        let synced = f
            .sync_data()
            .map_err(|e| SpoolError::io("fsync payload file", &path, e));
        let committed = insert.committed();
        match (synced, committed) {
            (Ok(()), Ok(c)) => {
                if !c.duplicate {
                    self.shared.synced(c.id);
                }
                Ok(c)
            }
            (Err(e), committed) => {
                if let SpoolError::Io { source, .. } = &e
                    && crate::capacity::is_no_space(source)
                {
                    self.shared
                        .out_of_space("a payload sync found the filesystem full");
                }
                match committed {
                    // Indexed but not durable: never acknowledged, so the
                    // row goes (and the file with it).
                    Ok(c) if !c.duplicate => {
                        if let Err(d) = self.shared.call(Op::Discard { id: c.id }) {
                            tracing::error!(item = c.id, error = %d, "spool could not remove an item whose payload failed to sync; the next open checks it");
                        }
                    }
                    // A duplicate's file was removed by the writer thread.
                    Ok(_) => {}
                    Err(_) => {
                        let _ = fs::remove_file(&path);
                    }
                }
                Err(e)
            }
            (Ok(()), Err(e)) => Err(e),
        }
    }

    fn row(
        &mut self,
        sha256: [u8; 32],
        inline: Option<Vec<u8>>,
        payload_path: Option<PathBuf>,
    ) -> InsertRow {
        InsertRow {
            upload_id: std::mem::take(&mut self.upload_id),
            item: self.item.clone(),
            size: self.written,
            sha256,
            inline,
            payload_path,
        }
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
        if let Some((path, _)) = self.file.take() {
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

    /// The `len` bytes at `offset`, read into a buffer that is not zeroed
    /// first (the uplink reads every byte it sends; clearing each chunk's
    /// buffer beforehand cost as much as a copy). Moves the file's cursor:
    /// one reader at a time.
    pub fn read_vec_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        match self {
            Payload::Inline(_) => {
                let mut buf = vec![0u8; len];
                self.read_exact_at(&mut buf, offset)?;
                Ok(buf)
            }
            Payload::File(f) => {
                let mut file = f;
                file.seek(SeekFrom::Start(offset))?;
                let mut buf = Vec::with_capacity(len);
                file.take(len as u64).read_to_end(&mut buf)?;
                if buf.len() < len {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{} of {len} bytes at {offset} before the payload's end",
                            buf.len()
                        ),
                    ));
                }
                Ok(buf)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]
    use super::*;
    use crate::capacity::Capacity;
    use crate::config::SpoolConfig;
    use crate::item::Lane;
    use crate::writer::{Reply, Usage};

    /// The row may be leased the moment it commits, while the appender
    /// still syncs: when the writer thread receives it, every byte must
    /// already be in the file (the write buffer flushed), or an upload
    /// could read a short payload.
    #[test]
    fn the_payload_is_whole_in_its_file_before_its_row_is_handed_over() {
        let dir = tempfile::tempdir().expect("tmp");
        let payload_dir = dir.path().join("payload");
        fs::create_dir_all(&payload_dir).expect("mkdir");
        let config = SpoolConfig::new(dir.path());
        let (tx, rx) = std::sync::mpsc::sync_channel::<crate::writer::Request>(4);
        let shared = Arc::new(Shared {
            capacity: Arc::new(Capacity::new(
                dir.path(),
                config.quota_bytes,
                config.reserve_bytes,
            )),
            config,
            payload_dir,
            blanks: std::sync::Mutex::new(Vec::new()),
            tx,
            usage: Arc::new(Usage::default()),
        });
        // The writer thread's part, checking what it is handed.
        let index = std::thread::spawn(move || {
            let req = rx.recv().expect("a request");
            let Op::Insert(row) = req.op else {
                panic!("expected an insert")
            };
            let path = row.payload_path.clone().expect("a payload file");
            let in_file = fs::metadata(&path).expect("payload").len();
            req.reply.send(Ok(Reply::Committed(Committed {
                id: 1,
                upload_id: row.upload_id.clone(),
                sha256: row.sha256,
                size: row.size,
                duplicate: false,
            })));
            (in_file, row.size)
        });
        let mut w =
            SpoolWriter::new(shared, NewItem::new(Lane::Bulk, "file", "test")).expect("writer");
        // Pieces the write buffer holds back: the last one is still in it
        // when the commit begins.
        for piece in vec![7u8; 300_000].chunks(100_000) {
            w.write_bytes(piece).expect("write");
        }
        w.commit().expect("commit");
        let (in_file, size) = index.join().expect("index");
        assert_eq!(
            in_file, size,
            "the row was handed over before its bytes were in the file"
        );
    }
}
