//! Reports back down to the clinics (报告回传): taken from the hospital's
//! reading systems, correlated with the clinic whose item they report on,
//! and delivered to that clinic's box over the same link the item came up.
//!
//! - [`listener`] — ORU^R01 and MDM^T02 over MLLP from the RIS, LIS and ECG
//!   reading system; AA only with the store's proof of the commit, AE with
//!   an ERR naming the missing field.
//! - [`dicom_scp`] — Structured Reports and Encapsulated PDF stored by the
//!   hospital PACS (C-STORE), taken as the same reports.
//! - [`import`] — a folder for reading systems that export PDF or XML
//!   files; the file's name finds the item it reports on.
//! - [`downlink`] — the box's queue, sent on streams central opens: the
//!   upload exchange mirrored; central forgets a report for a box only
//!   when the box answered COMMITTED from its own stable storage.
//! - [`metrics`] — turnaround histograms and what waits.
//!
//! Correlation and the durable queue live in the store
//! (`store::reports`); receipts from the clinic's sinks come up in the
//! box's heartbeats (`server::control`).

pub mod dicom_scp;
pub mod downlink;
pub mod import;
pub mod listener;
pub mod metrics;

pub use metrics::ReportMetrics;
