//! Device protocols and file formats as pure parsers: no I/O, no runtime,
//! no panics on any input (each parser has a fuzz target).
//!
//! - [`sniff`] — recognises what a file is from its first bytes.

#![forbid(unsafe_code)]

pub mod sniff;

pub use sniff::{ContentKind, sniff};
