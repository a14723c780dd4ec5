//! The acknowledgement contract, in types.
//!
//! A device may be told "stored" (DICOM 0x0000, HL7 AA/CA, the ASTM ACK of
//! the final frame, the XMODEM ACK of the final EOT, a drop-folder file
//! removed) only once its data is on stable storage; a box may be told
//! COMMITTED only once central's store holds the item durably. Every
//! builder of such an answer takes a [`Durable`]: a value only a durable
//! store hands out when its commit has returned — the spool's `Committed`
//! on the box, the store's `Stored` at central.
//!
//! [`disk`] holds the filesystem steps every store takes to make data
//! durable (atomic replacement, directory fsync, owner-only directories);
//! [`direct`] appends whole blocks past the page cache, for receivers whose
//! CPU goes into copying bytes there.
//!
//! This crate depends on nothing, so that the protocol state machines
//! (`codecs`, `protocol`) and the stores (`spool`, central's store) can
//! all name the proof without depending on each other.
//!
//! A bool, a status code or a string is not a proof:
//!
//! ```compile_fail
//! fn ack(_proof: &impl yilian_proof::Durable) {}
//! ack(&true); // `bool` does not implement `Durable`
//! ```
//!
//! Where a protocol forces an exception (ASTM frames acknowledged one by
//! one as E1381 requires before the message is complete, bare ASTM records
//! and raw SCP-ECG streams that have no acknowledgement at all), the place
//! says so in its documentation.

#![forbid(unsafe_code)]

pub mod direct;
pub mod disk;

/// Evidence that an item is on stable storage: its bytes synced and its
/// index entry committed.
///
/// Implemented by the durable stores only (`yilian_spool::Committed`,
/// central's `Stored`). Tests that play a peer which stores nothing
/// implement it for their own types; product code never does.
pub trait Durable {
    /// The store's name for what was made durable (an upload id).
    fn durable_id(&self) -> &str;
}

impl<T: Durable + ?Sized> Durable for &T {
    fn durable_id(&self) -> &str {
        (**self).durable_id()
    }
}
