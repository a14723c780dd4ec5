//! The gateway's durable store-and-forward queue.
//!
//! An item is appended by a device adapter and acknowledged to the device
//! only with the [`Committed`] proof in hand: that value exists only once the
//! payload file's data is synced (in a file created ahead, its name made
//! durable then) and the index row committed with `synchronous=FULL`. The
//! two flushes run at once, the row marked `unsynced` until the payload's
//! sync returned; a power cut between them leaves a marked row that the
//! next open checks against its hash, removing it if torn (its device was
//! never answered). The uplink then [`Spool::lease`]s
//! items by lane, and [`Spool::ack`]s them when central answered COMMITTED;
//! nothing undelivered is ever evicted.
//!
//! Layout of a spool directory:
//! - `index.sqlite` (+ WAL): one row per item, small payloads inline;
//! - `payload/<upload_id>`: large payloads. Created empty ahead of need, a
//!   batch per directory fsync, and written under that final name; one
//!   without an index row (unused, or the process stopped before the
//!   commit) was never acknowledged and is removed at open.
//!
//! All index writes go through one writer thread that commits whatever
//! requests are waiting in one transaction (group commit), so many devices
//! appending at once share one fsync.

#![forbid(unsafe_code)]

mod capacity;
mod config;
mod disk;
mod error;
mod files;
mod item;
mod queries;
mod schema;
mod shared;
mod spool;
mod writer;

pub use config::SpoolConfig;
pub use error::SpoolError;
pub use files::{Payload, SpoolWriter};
pub use item::{
    Committed, ItemState, ItemSummary, Lane, LaneStats, Lease, NackOutcome, NewItem, PayloadRef,
    SpoolStats,
};
pub use shared::Committing;
pub use spool::{Spool, requeue_in};

/// Creates a directory, and its missing parents, readable by its owner
/// only, whatever the umask: spool and data directories hold patient data.
pub use disk::create_private_dir;
