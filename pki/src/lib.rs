//! The fleet's certificates, as a library without an async runtime or a
//! network: central issues with it, the box enrolls and renews with it,
//! and the admin tool creates the CA with it.
//!
//! - [`ca`] — the fleet root CA (kept offline), the issuing CA central
//!   holds, and the certificates they issue: boxes
//!   (`yilian://county/clinic/box`, client auth), central (server auth),
//!   administrators (`yilian-admin://name`, client auth).
//! - [`csr`] — the box's side of enrollment: its own key and CSR.
//! - [`token`] — single-use enrollment tokens.
//! - [`identity`] — who a certificate names, and when it is valid.

#![forbid(unsafe_code)]

pub mod ca;
pub mod csr;
pub mod identity;
pub mod token;

pub use ca::{FleetCa, IssuedCert, PkiError};
pub use identity::{ADMIN_SCHEME, BOX_SCHEME, CertificateError, Peer};
