//! The county admin's tool and the fleet's certificate authority.
//!
//! - [`ca`] — the fleet root CA (kept offline), the issuing CA central holds,
//!   and the certificates they issue: boxes (`yilian://county/clinic/box`,
//!   client auth), central (server auth), administrators
//!   (`yilian-admin://name`, client auth).
//! - [`csr`] — the box's side of enrollment: its own key and CSR.
//! - [`token`] — single-use enrollment tokens.
//! - [`admin`] — the authenticated client `yilian-provision` uses to run
//!   fleet commands at central.

#![forbid(unsafe_code)]

pub mod admin;
pub mod ca;
pub mod csr;
pub mod render;
pub mod token;

pub use ca::{FleetCa, IssuedCert, ProvisionError};
