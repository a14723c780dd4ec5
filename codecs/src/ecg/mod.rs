//! ECG record formats.

pub mod aecg;
pub mod scp;
pub mod scp_stream;
pub mod xmodem;

pub use aecg::{AecgError, AecgHeader, read_aecg};
pub use scp::{Deviation, ScpError, ScpHeader, ScpRecord, read_scp};
pub use scp_stream::ScpFramer;
pub use xmodem::{Mode as ModemMode, ModemReceiver, TransferEvent};
