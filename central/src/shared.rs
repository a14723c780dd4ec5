//! What every connection shares: the store, the metrics, the fleet, the
//! live connection of each box, the locks that keep a resumed upload from
//! racing its predecessor, and which boxes are watched. The QUIC driver
//! (`server`) and the admin channel (`admin`) both work on it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use yilian_protocol::BoxIdentity;

use crate::fleet::Fleet;
use crate::metrics::CentralMetrics;
use crate::store::Store;

/// Application close codes on the connection.
pub mod close {
    pub const SUPERSEDED: u32 = 1;
    pub const VERSION: u32 = 2;
    pub const PROTOCOL: u32 = 3;
    pub const SHUTDOWN: u32 = 4;
    /// The box was revoked by an administrator.
    pub const REVOKED: u32 = 5;
}

/// State shared by all connections.
#[derive(Clone)]
pub struct Shared {
    pub store: Store,
    pub metrics: CentralMetrics,
    pub max_upload_bytes: u64,
    /// Where committed items are queued for delivery.
    pub routes: crate::routes::Routes,
    /// Enrollment, renewal, revocation, published configuration.
    pub fleet: Fleet,
    /// The live connection of each box: a new one supersedes the old, whose
    /// streams are then closed at once instead of lingering until the idle
    /// timeout (the box only ever keeps one).
    pub(crate) connections: Arc<Mutex<HashMap<BoxIdentity, quinn::Connection>>>,
    /// One lock per upload in progress, so that a resumed upload cannot
    /// start while the previous stream's writer is still draining.
    upload_locks: Arc<Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>>,
    /// Boxes not watched (revoked, retired): no series, no alerts.
    unwatched: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Recent takeovers of each box's connection, to tell a clone (two
    /// boxes with one identity taking turns) from a box reconnecting.
    takeovers: Arc<Mutex<HashMap<BoxIdentity, Takeovers>>>,
    /// Told when a report was queued for a box (see [`crate::reports`]).
    pub reports_wake: Arc<tokio::sync::Notify>,
    /// With instances sharing the index: the epoch each local connection
    /// claimed, with the connection's stable id (see
    /// [`Shared::superseded_elsewhere`]).
    epochs: Arc<Mutex<HashMap<BoxIdentity, (i64, usize)>>>,
    /// With payloads in a bucket: the memory budget for parts being
    /// gathered, shared by every upload in progress.
    pub(crate) upload_buffer: Option<UploadBuffer>,
}

/// Memory for the parts uploads gather before sending them to the bucket
/// (`[blobs] buffer_mib`). Each upload holds one part's worth from its
/// first byte to its commit; the next ones wait in turn (first come, first
/// served), their boxes held back by flow control.
#[derive(Clone)]
pub(crate) struct UploadBuffer {
    /// Permits are KiB.
    budget: Arc<tokio::sync::Semaphore>,
    part: usize,
}

/// One upload's share of the budget, given back when dropped.
pub(crate) struct BufferShare {
    _permit: tokio::sync::OwnedSemaphorePermit,
    bytes: i64,
    metrics: CentralMetrics,
}

impl Drop for BufferShare {
    fn drop(&mut self) {
        self.metrics.upload_buffer.dec_by(self.bytes);
    }
}

impl UploadBuffer {
    fn new(part: usize, budget: usize) -> Self {
        Self {
            budget: Arc::new(tokio::sync::Semaphore::new(budget / 1024)),
            part,
        }
    }

    /// Waits for the memory of one part of an upload with `left` bytes
    /// still to come.
    pub(crate) async fn share(&self, left: u64, metrics: &CentralMetrics) -> Option<BufferShare> {
        let bytes = (left.min(self.part as u64) as usize).max(1);
        let kib = u32::try_from(bytes.div_ceil(1024)).ok()?;
        let permit = match self.budget.clone().try_acquire_many_owned(kib) {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                metrics.upload_buffer_waits.inc();
                self.budget.clone().acquire_many_owned(kib).await.ok()?
            }
            Err(tokio::sync::TryAcquireError::Closed) => return None,
        };
        metrics.upload_buffer.inc_by(bytes as i64);
        Some(BufferShare {
            _permit: permit,
            bytes: bytes as i64,
            metrics: metrics.clone(),
        })
    }
}

/// When a box's connection was taken over, and from where.
type Takeovers = Vec<(Instant, SocketAddr)>;

/// Takeovers within this window, from more than one address, mean two
/// boxes share an identity.
const CLONE_WINDOW: Duration = Duration::from_secs(60);
const CLONE_TAKEOVERS: usize = 3;

impl Shared {
    pub fn new(store: Store, metrics: CentralMetrics, max_upload_bytes: u64, fleet: Fleet) -> Self {
        Self {
            metrics,
            max_upload_bytes,
            fleet,
            routes: Default::default(),
            connections: Arc::default(),
            upload_locks: Arc::default(),
            unwatched: Arc::default(),
            takeovers: Arc::default(),
            reports_wake: Arc::default(),
            epochs: Arc::default(),
            upload_buffer: store
                .part_buffer()
                .map(|(part, budget)| UploadBuffer::new(part, budget)),
            store,
        }
    }

    /// Whether a box's state is exported (it is neither revoked nor retired).
    pub fn watched(&self, identity: &BoxIdentity) -> bool {
        !self
            .unwatched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&identity.to_string())
    }

    /// Marks a box unwatched (or watched again) and drops its series.
    pub fn set_watched(&self, identity: &BoxIdentity, watched: bool) {
        let mut set = self.unwatched.lock().unwrap_or_else(|p| p.into_inner());
        if watched {
            set.remove(&identity.to_string());
        } else {
            set.insert(identity.to_string());
            self.metrics.forget_gateway(identity);
        }
    }

    /// The boxes whose watching differs from `unwatched` (as the index
    /// has it now): each with whether it is to be watched.
    pub(crate) fn watch_changes(
        &self,
        unwatched: &std::collections::HashSet<String>,
    ) -> Vec<(BoxIdentity, bool)> {
        let now = self.unwatched.lock().unwrap_or_else(|p| p.into_inner());
        now.symmetric_difference(unwatched)
            .filter_map(|who| BoxIdentity::parse(who).ok())
            .map(|id| {
                let watched = !unwatched.contains(&id.to_string());
                (id, watched)
            })
            .collect()
    }

    pub fn load_unwatched(&self, ids: std::collections::HashSet<String>) {
        *self.unwatched.lock().unwrap_or_else(|p| p.into_inner()) = ids;
    }

    /// Records that a connection from `remote` took over `identity`'s
    /// (from `previous`); counts and logs it as a conflict when that looks
    /// like two boxes with one identity.
    pub(crate) fn takeover(
        &self,
        identity: &BoxIdentity,
        remote: SocketAddr,
        previous: SocketAddr,
    ) {
        let now = Instant::now();
        let addrs = {
            let mut map = self.takeovers.lock().unwrap_or_else(|p| p.into_inner());
            let seen = map.entry(identity.clone()).or_default();
            seen.retain(|(t, _)| now.duration_since(*t) < CLONE_WINDOW);
            seen.push((now, remote));
            let mut addrs: Vec<SocketAddr> = seen.iter().map(|(_, a)| *a).collect();
            // The one taken over counts: at another instance, it is the only
            // sign of the other box this instance gets.
            addrs.push(previous);
            addrs.sort();
            addrs.dedup();
            (seen.len() >= CLONE_TAKEOVERS && addrs.len() > 1).then_some(addrs)
        };
        if let Some(addrs) = addrs {
            self.metrics
                .identity_conflicts
                .get_or_create(&crate::metrics::GatewayLabels::of(identity))
                .inc();
            tracing::error!(gateway = %identity, %remote, %previous, addresses = ?addrs,
                "two boxes present the same identity and keep taking the connection from each other; \
                 find the clone at these addresses (a copied disk or key), revoke the identity if it was stolen, and enroll each box under its own name");
        }
    }

    /// Remembers the epoch a local connection claimed in the shared index.
    pub(crate) fn set_epoch(&self, identity: &BoxIdentity, epoch: i64, conn: &quinn::Connection) {
        self.epochs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(identity.clone(), (epoch, conn.stable_id()));
    }

    /// Forgets a local connection's epoch when it ends (unless a newer
    /// local connection replaced it): the epoch, if it was still this
    /// connection's.
    pub(crate) fn forget_epoch(
        &self,
        identity: &BoxIdentity,
        conn: &quinn::Connection,
    ) -> Option<i64> {
        let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
        match epochs.get(identity) {
            Some(&(epoch, id)) if id == conn.stable_id() => {
                epochs.remove(identity);
                Some(epoch)
            }
            _ => None,
        }
    }

    /// A connection another instance claimed: if it is newer than the one
    /// this instance holds for the box, the one here is closed (the box
    /// moved, or a clone connected there). Returns whether one was closed.
    pub(crate) fn superseded_elsewhere(&self, claimed: &crate::store::ClaimedConnection) -> bool {
        let Ok(identity) = BoxIdentity::parse(&claimed.gateway) else {
            return false;
        };
        let stable = {
            let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
            match epochs.get(&identity) {
                Some(&(mine, stable)) if claimed.epoch > mine => {
                    epochs.remove(&identity);
                    stable
                }
                _ => return false,
            }
        };
        let conn = {
            let mut conns = self.connections.lock().unwrap_or_else(|p| p.into_inner());
            match conns.get(&identity) {
                Some(c) if c.stable_id() == stable => conns.remove(&identity),
                _ => None,
            }
        };
        let Some(conn) = conn else {
            return false;
        };
        let previous = conn.remote_address();
        conn.close(
            close::SUPERSEDED.into(),
            b"superseded by a newer connection at another central instance",
        );
        tracing::info!(gateway = %identity, remote = %claimed.remote, %previous,
            "the box has a newer connection at another central instance; its connection here is closed");
        if let Ok(remote) = claimed.remote.parse::<SocketAddr>() {
            self.takeover(&identity, remote, previous);
        }
        true
    }

    /// Closes a box's live connection, if it has one. Returns whether it had.
    pub fn disconnect(&self, identity: &BoxIdentity, code: u32, reason: &[u8]) -> bool {
        let conn = self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(identity);
        if let Some(c) = &conn {
            c.close(code.into(), reason);
        }
        conn.is_some()
    }

    /// Whether a box has a live connection now.
    pub fn is_connected(&self, identity: &str) -> bool {
        self.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .any(|k| k.to_string() == identity)
    }

    pub(crate) fn upload_lock(&self, key: String) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.upload_locks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lock) = map.get(&key).and_then(Weak::upgrade) {
            return lock;
        }
        if map.len() > 1024 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(key, Arc::downgrade(&lock));
        lock
    }
}
