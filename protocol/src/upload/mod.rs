//! Sans-IO state machines for the two ends of one upload stream.
//!
//! ```text
//! gateway (UploadSender)                    central (UploadReceiver)
//!   Offer{id, sha256, size, ...}  ───────►  Event::Offered → driver looks up
//!                                 ◄───────  Accept{offset}    what it holds
//!   Chunk{offset..}  × n          ───────►  Event::Data (driver writes)
//!                                           Event::Complete → driver verifies
//!                                 ◄───────  Committed | Rejected  and commits
//! ```
//!
//! Neither machine touches a socket, a file or a clock. The driver feeds
//! received messages to `handle_message`, sends whatever `poll_transmit`
//! returns, and calls `handle_timeout` when `poll_timeout` says so. An upload
//! interrupted anywhere is resumed by a fresh pair of machines: the sender
//! offers again and the receiver answers with the offset it holds, so resume
//! works the same after a link cut and after either side restarted.

mod receiver;
mod sender;

pub use receiver::{HeldState, ReceiverEvent, UploadReceiver};
pub use sender::{SenderTransmit, UploadOutcome, UploadSender};

use std::time::Duration;

/// Default size of one chunk. Large enough that per-message overhead is
/// negligible, small enough that a cut link re-sends little.
pub const DEFAULT_CHUNK_SIZE: usize = 256 * 1024;

/// How long either end waits for the peer's next message before giving up.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A broken upload protocol: the peer sent something that cannot happen in
/// a correct exchange. The stream should be reset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    #[error("unexpected {got} while {state}")]
    Unexpected {
        got: &'static str,
        state: &'static str,
    },
    #[error("chunk at offset {got}, expected {expected}")]
    OutOfOrder { got: u64, expected: u64 },
    #[error("chunk ends at {end}, beyond the offered size {size}")]
    PastEnd { end: u64, size: u64 },
    #[error("accept offset {offset} is beyond the offered size {size}")]
    BadOffset { offset: u64, size: u64 },
    #[error("offer is invalid: {0}")]
    InvalidOffer(&'static str),
    #[error("committed hash does not match the offer")]
    CommitMismatch,
}

/// Checks what both ends require of an offer.
pub fn validate_offer(offer: &crate::messages::Offer) -> Result<(), UploadError> {
    if offer.upload_id.is_empty() || offer.upload_id.len() > 128 {
        return Err(UploadError::InvalidOffer(
            "upload id must be 1 to 128 bytes",
        ));
    }
    if !offer
        .upload_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(UploadError::InvalidOffer(
            "upload id may only hold letters, digits, '-' and '_'",
        ));
    }
    if offer.sha256.len() != 32 {
        return Err(UploadError::InvalidOffer("sha256 must be 32 bytes"));
    }
    Ok(())
}

pub(crate) fn body_name(body: &Option<crate::messages::envelope::Body>) -> &'static str {
    use crate::messages::envelope::Body;
    match body {
        None => "unknown message",
        Some(Body::Hello(_)) => "Hello",
        Some(Body::HelloAck(_)) => "HelloAck",
        Some(Body::Heartbeat(_)) => "Heartbeat",
        Some(Body::HeartbeatAck(_)) => "HeartbeatAck",
        Some(Body::Goodbye(_)) => "Goodbye",
        Some(Body::Offer(_)) => "Offer",
        Some(Body::Accept(_)) => "Accept",
        Some(Body::Chunk(_)) => "Chunk",
        Some(Body::Committed(_)) => "Committed",
        Some(Body::Rejected(_)) => "Rejected",
        Some(Body::EnrollRequest(_)) => "EnrollRequest",
        Some(Body::CertificateResponse(_)) => "CertificateResponse",
        Some(Body::RenewRequest(_)) => "RenewRequest",
        Some(Body::AdminRequest(_)) => "AdminRequest",
        Some(Body::AdminResponse(_)) => "AdminResponse",
    }
}

#[cfg(test)]
mod sim_tests;
