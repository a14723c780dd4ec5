//! The state an open spool's handles share with the payload writers they
//! hand out: the writer thread's channel, usage and capacity, and the
//! payload files created ahead.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, SyncSender};

use crate::SpoolError;
use crate::capacity::Capacity;
use crate::config::SpoolConfig;
use crate::item::Committed;
use crate::writer::{Op, Reply, ReplyTo, Request, Usage};

/// Payload files created ahead per directory fsync.
const BLANKS_PER_BATCH: usize = 16;

/// The open spool's state, shared by its handles and by the payload
/// writers they hand out.
pub(crate) struct Shared {
    pub(crate) config: SpoolConfig,
    pub(crate) payload_dir: PathBuf,
    /// Upload ids whose payload files exist, empty, with durable names.
    pub(crate) blanks: std::sync::Mutex<Vec<String>>,
    pub(crate) tx: SyncSender<Request>,
    pub(crate) usage: Arc<Usage>,
    pub(crate) capacity: Arc<Capacity>,
}

impl Shared {
    /// An upload id whose payload file already exists, empty, under a name
    /// that is durable. Created a batch at a time with one directory fsync
    /// for the batch, so a payload's commit needs only its own data sync,
    /// not a directory fsync each. Unused ones have no index row and go at
    /// the next open like any orphan.
    pub(crate) fn blank_payload(&self) -> Result<(String, PathBuf), SpoolError> {
        let mut blanks = self.blanks.lock().unwrap_or_else(|p| p.into_inner());
        if blanks.is_empty() {
            // Handed out only once the directory fsync made every name in
            // the batch durable; a failed batch leaves orphans for the next
            // open, never a file whose name could vanish.
            let mut batch = Vec::with_capacity(BLANKS_PER_BATCH);
            for _ in 0..BLANKS_PER_BATCH {
                let id = crate::disk::new_upload_id();
                let path = self.payload_dir.join(&id);
                crate::disk::private_file()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| SpoolError::io("create payload file", &path, e))?;
                batch.push(id);
            }
            crate::disk::sync_dir(&self.payload_dir)?;
            *blanks = batch;
        }
        let id = blanks.pop().ok_or_else(|| {
            SpoolError::io(
                "create payload file",
                &self.payload_dir,
                std::io::Error::other("no payload file"),
            )
        })?;
        let path = self.payload_dir.join(&id);
        Ok((id, path))
    }

    pub(crate) fn call(&self, op: Op) -> Result<Reply, SpoolError> {
        self.submit(op)?.wait()
    }

    /// Hands `op` to the writer thread without waiting for its answer, so
    /// the caller can do other work (a payload's data sync) meanwhile.
    pub(crate) fn submit(&self, op: Op) -> Result<Pending, SpoolError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Request {
                op,
                reply: ReplyTo::Blocked(tx),
            })
            .map_err(|_| SpoolError::Closed)?;
        Ok(Pending(rx))
    }

    /// Hands `op` to the writer thread for a task that awaits the answer.
    /// Sending waits only if the writer is a full channel (1,024 requests)
    /// behind, when every device is waiting on the disk anyway.
    pub(crate) fn submit_awaited(&self, op: Op) -> Result<Committing, SpoolError> {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.tx
            .send(Request {
                op,
                reply: ReplyTo::Awaited(tx),
            })
            .map_err(|_| SpoolError::Closed)?;
        Ok(Committing(rx))
    }

    /// Refuses early when adding `extra` bytes would pass the high mark and
    /// no delivered item can be evicted to make room, so a payload is not
    /// written only to be refused at its commit.
    pub(crate) fn check_room(&self, extra: u64) -> Result<(), SpoolError> {
        let used = self.usage.used.load(Ordering::SeqCst);
        let writing = self.usage.writing.load(Ordering::SeqCst);
        let refusing = self.usage.refusing.load(Ordering::SeqCst);
        // Payloads being written are on the disk (missing from its free
        // space) but not yet in `used`: held, so not charged twice.
        let quota = self.capacity.effective_quota(used + writing);
        let (high, _) = self.config.marks(quota);
        // While refusing, the writer thread decides at the insert (it may
        // evict delivered items first). Below the high mark there is room.
        if refusing || used + extra <= high {
            return Ok(());
        }
        // `used` counts delivered items kept for the retention period too:
        // the writer thread evicts them before it refuses. Refusing here on
        // the count alone turned a device away each time a spool of
        // delivered data reached its high mark, and on a disk another
        // program filled, kept refusing after the refusal had lifted.
        match self.call(Op::MakeRoom { size: extra })? {
            Reply::Refused(e) => Err(e),
            _ => Ok(()),
        }
    }

    pub(crate) fn usage(&self) -> &Usage {
        &self.usage
    }

    /// A write found the filesystem full: give the reserve back so the
    /// index can go on recording deliveries and evictions.
    pub(crate) fn out_of_space(&self, what: &str) {
        self.capacity.release_reserve(what);
    }

    /// Records that a payload's data sync returned: its row's `unsynced`
    /// mark goes with the next transaction.
    pub(crate) fn synced(&self, id: i64) {
        self.usage
            .synced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(id);
    }
}

/// A request handed to the writer thread, its answer still to come.
pub(crate) struct Pending(Receiver<Result<Reply, SpoolError>>);

impl Pending {
    pub(crate) fn wait(self) -> Result<Reply, SpoolError> {
        self.0.recv().map_err(|_| SpoolError::Closed)?
    }

    /// The answer to an [`Op::Insert`].
    pub(crate) fn committed(self) -> Result<Committed, SpoolError> {
        match self.wait()? {
            Reply::Committed(c) => Ok(c),
            Reply::Refused(e) => Err(e),
            _ => Err(SpoolError::Closed),
        }
    }
}

/// An insert handed to the writer thread by async code: resolves to the
/// proof once the index committed it.
pub struct Committing(futures_channel::oneshot::Receiver<Result<Reply, SpoolError>>);

impl std::fmt::Debug for Committing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Committing")
    }
}

impl std::future::Future for Committing {
    type Output = Result<Committed, SpoolError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| match r {
            Ok(Ok(Reply::Committed(c))) => Ok(c),
            Ok(Ok(Reply::Refused(e)) | Err(e)) => Err(e),
            Ok(Ok(_)) | Err(_) => Err(SpoolError::Closed),
        })
    }
}
