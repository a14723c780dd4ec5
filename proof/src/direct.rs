//! Appending to a file without copying every byte into the page cache:
//! whole aligned blocks go to the disk with `O_DIRECT`, staged in an
//! aligned buffer, and only the unaligned end of the data (under one
//! block) goes through the ordinary file, when the writer
//! [finishes](DirectAppend::finish). A payload of half a megabyte is then
//! one or two writes the disk takes by DMA instead of a copy into the page
//! cache and its writeback, which on a virtual machine cost more CPU than
//! receiving the bytes did.
//!
//! What it does not change: the data is durable only after the caller's
//! `fdatasync` (a direct write may sit in the disk's volatile cache, and a
//! new file's size and extents are metadata the sync commits), so every
//! acknowledgement still waits for that sync.
//!
//! Where the file system refuses `O_DIRECT` (tmpfs, some network and FUSE
//! file systems), at the open or at a write, the same calls write through
//! the ordinary file instead, starting the writeback of every
//! [`WRITEBACK_STEP`] so that the final sync waits for the last few
//! megabytes only.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Alignment the kernel wants of `O_DIRECT` buffers, offsets and sizes:
/// the logical block size, which 4096 covers on every disk in use.
pub const ALIGN: usize = 4096;

/// Bytes written through the page cache between two starts of writeback,
/// where direct writes are refused.
pub const WRITEBACK_STEP: u64 = 16 * 1024 * 1024;

/// Appends to one file from a known offset; see the module's text.
pub struct DirectAppend {
    /// The file opened with `O_DIRECT`; None where the file system
    /// refuses direct writes.
    direct: Option<File>,
    /// The same file opened normally: for the unaligned end, for
    /// everything where direct writes are refused, and for the caller's
    /// sync.
    file: File,
    buf: Vec<u8>,
    /// Where the aligned region starts in `buf`.
    start: usize,
    /// Bytes staged before one direct write (a multiple of [`ALIGN`]).
    chunk: usize,
    /// Bytes staged in the aligned region.
    staged: usize,
    /// File offset of the first staged byte (a multiple of [`ALIGN`]).
    pos: u64,
    /// The staged bytes are also in the file (written by `finish`).
    tail_written: bool,
    /// Without direct writes: bytes before this offset have had their
    /// writeback started.
    kicked: u64,
}

impl std::fmt::Debug for DirectAppend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectAppend")
            .field("direct", &self.direct.is_some())
            .field("pos", &self.pos)
            .field("staged", &self.staged)
            .finish()
    }
}

impl DirectAppend {
    /// Continues `file` (the file at `path`, `offset` bytes long, open for
    /// reading and writing) in writes of `chunk` bytes (rounded up to a
    /// whole block), direct where the file system allows them.
    pub fn open(path: &Path, file: File, offset: u64, chunk: usize) -> io::Result<Self> {
        let mut direct = match OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path)
        {
            Ok(f) => Some(f),
            Err(e) if refused(&e) => None,
            Err(e) => return Err(e),
        };
        let chunk = chunk.max(1).next_multiple_of(ALIGN);
        let mut buf = vec![0u8; chunk + ALIGN];
        let start = match buf.as_ptr().align_offset(ALIGN) {
            start if start <= ALIGN => start,
            // No aligned region (never seen): ordinary writes then.
            _ => {
                direct = None;
                0
            }
        };
        // A file ending inside a block (a stream cut after `finish`) has
        // that block's start staged again, to be rewritten whole.
        let pos = offset - offset % ALIGN as u64;
        let staged = (offset - pos) as usize;
        file.read_exact_at(&mut buf[start..start + staged], pos)?;
        Ok(Self {
            direct,
            file,
            buf,
            start,
            chunk,
            staged,
            pos,
            tail_written: true,
            kicked: pos,
        })
    }

    /// The file, for its sync (after [`DirectAppend::finish`]).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether whole blocks still go to the disk directly.
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    pub fn append(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = (self.chunk - self.staged).min(data.len());
            let at = self.start + self.staged;
            self.buf[at..at + n].copy_from_slice(&data[..n]);
            self.staged += n;
            self.tail_written = false;
            data = &data[n..];
            if self.staged == self.chunk {
                self.write_blocks(self.chunk)?;
            }
        }
        Ok(())
    }

    /// Writes what is staged: its whole blocks directly, the rest (under
    /// one block) through the ordinary file. Afterwards the file holds
    /// every byte appended, and appending may go on.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.tail_written {
            return Ok(());
        }
        let whole = self.staged - self.staged % ALIGN;
        if whole > 0 {
            self.write_blocks(whole)?;
        }
        if self.staged > 0 {
            self.file
                .write_all_at(&self.buf[self.start..self.start + self.staged], self.pos)?;
        }
        self.tail_written = true;
        Ok(())
    }

    /// Writes the first `n` staged bytes (whole blocks) and moves what is
    /// left to the front of the buffer.
    fn write_blocks(&mut self, n: usize) -> io::Result<()> {
        let blocks = &self.buf[self.start..self.start + n];
        let refused_now = match &self.direct {
            Some(d) => match d.write_all_at(blocks, self.pos) {
                Ok(()) => false,
                Err(e) if refused(&e) => true,
                Err(e) => return Err(e),
            },
            None => false,
        };
        if refused_now || self.direct.is_none() {
            self.direct = None;
            self.file.write_all_at(blocks, self.pos)?;
        }
        self.pos += n as u64;
        if self.direct.is_none() && self.pos - self.kicked >= WRITEBACK_STEP {
            crate::disk::start_writeback(&self.file, self.kicked, self.pos - self.kicked);
            self.kicked = self.pos;
        }
        self.buf
            .copy_within(self.start + n..self.start + self.staged, self.start);
        self.staged -= n;
        Ok(())
    }
}

impl Drop for DirectAppend {
    /// Whatever was appended stays in the file (a stream that ends without
    /// a commit resumes after it). Best effort: a tail lost here is only
    /// received again.
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// `O_DIRECT` is not supported here (the open or the write says so).
fn refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}
