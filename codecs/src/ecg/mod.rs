//! ECG record formats.

pub mod scp;

pub use scp::{Deviation, ScpError, ScpHeader, ScpRecord, read_scp};
