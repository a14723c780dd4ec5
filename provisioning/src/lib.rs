//! The county admin's tool: the fleet CA and the certificates it issues.
//!
//! Gateways get a certificate whose SAN URI carries their identity
//! (`yilian://county/clinic/box`) and client-auth usage; central gets one for
//! its DNS name (or IP) with server-auth usage. Both chain to the fleet CA.

#![forbid(unsafe_code)]

pub mod ca;

pub use ca::{FleetCa, IssuedCert, ProvisionError};
