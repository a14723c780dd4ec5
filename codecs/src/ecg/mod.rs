//! ECG record formats.

pub mod scp;
pub mod xmodem;

pub use scp::{Deviation, ScpError, ScpHeader, ScpRecord, read_scp};
pub use xmodem::{Mode as ModemMode, ModemReceiver, TransferEvent};
