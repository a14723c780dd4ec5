//! The county admin's tool, `yilian-provision`: the fleet CA on an offline
//! machine, enrollment tokens and bundles, and fleet commands at central.
//! The certificates themselves are `yilian-pki`'s; the requests to central
//! are `yilian-link::request`'s.
//!
//! - [`render`] — what the fleet commands print.

#![forbid(unsafe_code)]

pub mod render;
