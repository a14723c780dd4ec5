//! Reports from the hospital, delivered at the clinic (报告回传).
//!
//! - [`downlink`] — reports arriving from central, answered COMMITTED only
//!   once on this box's stable storage;
//! - [`store`] — the box's copy of each report and where it went;
//! - [`sinks`] — the folder, the printer and the HIS they go to.
//!
//! Receipts of each delivery go up in the heartbeats until central says it
//! recorded them (`uplink::control`).

pub mod downlink;
pub mod sinks;
pub mod store;

pub use downlink::Downlink;
pub use store::{ReportStore, ReportStoreError};
