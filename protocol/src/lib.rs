//! The gateway ⇄ central wire protocol, free of I/O.
//!
//! - [`messages`] — the versioned protobuf schema (prost derives, field tags are
//!   the wire contract: never renumber, only add).
//! - [`frame`] — length-prefixed framing of [`messages::Envelope`]s on a stream.
//! - [`version`] — protocol version negotiation in the hello exchange.
//! - [`upload`] — sans-IO state machines for both ends of one upload
//!   (offer → held offset → chunks → COMMITTED / REJECTED), in the style of
//!   quinn-proto: inputs via `handle_*`, outputs via `poll_*`, time passed in.
//! - [`identity`] — the box identity carried in certificates.
//! - [`pushed`] — what central may publish into a box's configuration.

#![forbid(unsafe_code)]

pub mod exposition;
pub mod frame;
pub mod identity;
pub mod kind;
pub mod messages;
pub mod pushed;
pub mod upload;
pub mod version;

pub use frame::{FrameDecoder, FrameError, encode_chunk_frame, encode_frame};
pub use identity::{BoxIdentity, IdentityError};
pub use kind::ItemKind;
pub use messages::{Envelope, Lane, RejectReason, envelope::Body};
pub use version::{PROTOCOL_VERSION, SUPPORTED_VERSIONS};

/// The ALPN protocol id of the link.
pub const ALPN: &[u8] = b"yilian/1";
