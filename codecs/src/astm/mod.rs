//! ASTM E1381 (LIS01) low-level protocol and E1394 (LIS2) records, as used
//! by laboratory analyzers over RS-232 or TCP.

pub mod frame;
pub mod link;
pub mod records;
pub mod to_hl7;

pub use frame::{FrameError, ParsedFrame, checksum, encode_frames};
pub use link::{AstmLink, LinkConfig, LinkEvent, OnInterrupt};
pub use records::{AstmDelimiters, AstmMessage, Record, RecordError};

pub const ENQ: u8 = 0x05;
pub const ACK: u8 = 0x06;
pub const NAK: u8 = 0x15;
pub const EOT: u8 = 0x04;
pub const STX: u8 = 0x02;
pub const ETX: u8 = 0x03;
pub const ETB: u8 = 0x17;
pub const CR: u8 = 0x0D;
pub const LF: u8 = 0x0A;
