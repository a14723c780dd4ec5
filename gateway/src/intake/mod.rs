//! Device adapters that feed the spool. Each one acknowledges its device
//! (or, for a folder, removes the file) only with a spool `Committed` proof.

pub mod astm;
pub mod dicom;
pub mod ecg_serial;
pub mod folder;
pub mod mllp;
pub mod serial;
pub mod warn_limit;
