//! HL7 v2: charset resolution, parsing, escapes, acknowledgements.
//!
//! Bytes are decoded to text *before* splitting on delimiters: in GBK and
//! GB18030 the bytes `|`, `^`, `~` and `\` occur as trail bytes of Chinese
//! characters, so splitting raw bytes corrupts names.

pub mod ack;
pub mod charset;
pub mod escape;
pub mod message;
pub mod rebuild;
pub mod report;

pub use ack::{AckCode, AckCondition, AckMode, ErrorInfo, Verdict, build_ack};
pub use charset::{Charset, CharsetSource, Decoded, decode, encode};
pub use message::{Delimiters, Hl7Error, Message};
