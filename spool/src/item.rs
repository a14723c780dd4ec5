use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// Priority lane. Mirrors the wire protocol's lanes; the spool keeps its own
/// type so that it depends on nothing else in the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    Urgent = 0,
    Clinical = 1,
    Bulk = 2,
}

impl Lane {
    pub const ALL: [Lane; 3] = [Lane::Urgent, Lane::Clinical, Lane::Bulk];

    pub fn name(self) -> &'static str {
        match self {
            Lane::Urgent => "urgent",
            Lane::Clinical => "clinical",
            Lane::Bulk => "bulk",
        }
    }

    pub(crate) fn from_db(v: i64) -> Lane {
        match v {
            0 => Lane::Urgent,
            1 => Lane::Clinical,
            _ => Lane::Bulk,
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where an item is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemState {
    Ready = 0,
    Leased = 1,
    Delivered = 2,
    Dead = 3,
}

impl ItemState {
    pub(crate) fn from_db(v: i64) -> ItemState {
        match v {
            0 => ItemState::Ready,
            1 => ItemState::Leased,
            2 => ItemState::Delivered,
            _ => ItemState::Dead,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ItemState::Ready => "ready",
            ItemState::Leased => "uploading",
            ItemState::Delivered => "delivered",
            ItemState::Dead => "dead",
        }
    }
}

/// What an adapter appends, besides the payload bytes.
#[derive(Debug, Clone)]
pub struct NewItem {
    pub lane: Lane,
    /// What the payload is (`file`, `dicom`, `hl7`, ...).
    pub kind: String,
    /// Adapter and device, e.g. `folder:ecg-share`.
    pub source: String,
    pub metadata: BTreeMap<String, String>,
    /// When set, a second append with the same key returns the first item's
    /// proof instead of storing it again (a device re-sending after a lost
    /// acknowledgement, a file picked up again after a crash).
    pub dedup_key: Option<String>,
}

impl NewItem {
    pub fn new(lane: Lane, kind: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            lane,
            kind: kind.into(),
            source: source.into(),
            metadata: BTreeMap::new(),
            dedup_key: None,
        }
    }
}

/// Proof that an item is on stable storage. Only the spool creates it, and
/// it cannot be cloned: an adapter holding one may acknowledge the device.
#[derive(Debug)]
pub struct Committed {
    pub(crate) id: i64,
    pub(crate) upload_id: String,
    pub(crate) sha256: [u8; 32],
    pub(crate) size: u64,
    pub(crate) duplicate: bool,
}

/// The spool's commit is the proof every success answer to a device needs.
impl yilian_proof::Durable for Committed {
    fn durable_id(&self) -> &str {
        &self.upload_id
    }
}

impl Committed {
    pub fn id(&self) -> i64 {
        self.id
    }
    pub fn upload_id(&self) -> &str {
        &self.upload_id
    }
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    /// The item was already in the spool under the same dedup key.
    pub fn is_duplicate(&self) -> bool {
        self.duplicate
    }
}

/// An item handed to the uplink. Give it back with `ack`, `release` or
/// `nack`; if the process dies first, the item is ready again at next open.
#[derive(Debug)]
pub struct Lease {
    pub id: i64,
    pub upload_id: String,
    pub lane: Lane,
    pub kind: String,
    pub source: String,
    pub metadata: BTreeMap<String, String>,
    pub size: u64,
    pub sha256: [u8; 32],
    pub received_ms: i64,
    pub attempts: u32,
    pub(crate) inline: bool,
}

impl Lease {
    /// A handle for reading the payload, which (unlike the lease) may be
    /// cloned and moved to other threads.
    pub fn payload_ref(&self) -> PayloadRef {
        PayloadRef {
            id: self.id,
            upload_id: self.upload_id.clone(),
            size: self.size,
            inline: self.inline,
        }
    }
}

/// Where a leased item's payload is; see [`crate::Spool::open_payload`].
#[derive(Debug, Clone)]
pub struct PayloadRef {
    pub(crate) id: i64,
    pub(crate) upload_id: String,
    pub(crate) size: u64,
    pub(crate) inline: bool,
}

/// What `nack` did with the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackOutcome {
    /// Ready again after this many milliseconds.
    RetryIn(u64),
    /// Too many failures: dead-lettered for an operator.
    DeadLettered,
}

/// One item as listed for operators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ItemSummary {
    pub id: i64,
    pub upload_id: String,
    pub lane: &'static str,
    pub kind: String,
    pub source: String,
    pub metadata: BTreeMap<String, String>,
    pub size: u64,
    pub sha256: String,
    pub state: &'static str,
    pub attempts: u32,
    pub received_ms: i64,
    pub delivered_ms: Option<i64>,
    pub last_error: Option<String>,
}

/// Backlog of one lane: items not yet delivered.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LaneStats {
    pub items: u64,
    pub bytes: u64,
    /// Receive time of the oldest undelivered item.
    pub oldest_received_ms: Option<i64>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SpoolStats {
    /// Indexed by `Lane as usize`.
    pub lanes: [LaneStats; 3],
    pub dead: u64,
    pub delivered_kept: u64,
    pub used_bytes: u64,
    /// The quota in force: the configured one, or less when the
    /// filesystem cannot hold that much.
    pub quota_bytes: u64,
    /// The quota as configured.
    pub quota_configured_bytes: u64,
    /// Free space on the spool's filesystem at the last look.
    pub fs_available_bytes: u64,
    /// Whether the disk reserve is in place (released when the disk ran out).
    pub reserve_held: bool,
    pub refusing: bool,
}

/// A payload ready to be indexed: what the writer thread inserts.
pub(crate) struct InsertRow {
    pub upload_id: String,
    pub item: NewItem,
    pub size: u64,
    pub sha256: [u8; 32],
    pub inline: Option<Vec<u8>>,
    /// The payload file, written in place and being synced while the row
    /// commits (the row is marked `unsynced`); removed again if the insert
    /// is refused or turns out to be a duplicate.
    pub payload_path: Option<PathBuf>,
}
