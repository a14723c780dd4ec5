//! Device protocols and file formats as pure parsers: no I/O, no runtime,
//! no panics on any input (each parser has a fuzz target).
//!
//! - [`astm`] — ASTM E1381 link layer and E1394 records for analyzers.
//! - [`dicom`], [`dicom_extent`] — DIMSE command sets, Part 10 headers, and
//!   how much of a data set's head a DICOM library may safely parse.
//! - [`dicom_report`] — Structured Reports and Encapsulated PDF from a
//!   hospital PACS, read as reports.
//! - [`ecg`] — SCP-ECG record headers, tolerant of known device deviations.
//! - [`hl7`] — HL7 v2: charsets, parsing, escapes, acknowledgements.
//! - [`mllp`] — MLLP framing for HL7 v2 over TCP.
//! - [`sniff`] — recognises what a file is from its first bytes.

#![forbid(unsafe_code)]

pub mod astm;
pub mod crc;
pub mod dicom;
pub mod dicom_extent;
pub mod dicom_report;
pub mod ecg;
mod escapes;
pub mod hl7;
pub mod mllp;
pub mod sniff;

pub use sniff::{ContentKind, sniff};
