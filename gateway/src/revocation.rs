//! A box that central revoked knows it, says so, and stops calling.
//!
//! Central closes a revoked box's connection with the REVOKED close code
//! and a notice (`revoked by admin:alice at …: stolen`), and refuses its
//! handshakes from then on. The box keeps the notice beside its identity
//! (`revoked.json`, tied to the certificate it was revoked with) so that
//! `status` and the box's page show who revoked it, when and why, and the
//! uplink waits instead of hammering central. Enrolling again (a new
//! token, a new certificate) ends it. Nothing in the spool is dropped: an
//! administrator may still recover it.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The application close code central uses for a revoked box.
pub const CLOSE_REVOKED: u32 = 5;
const FILE: &str = "revoked.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Revoked {
    /// When the box learned it, milliseconds since the epoch.
    pub at_ms: i64,
    /// Central's notice: who, when, why.
    pub notice: String,
    /// SHA-256 of the certificate file it was revoked with.
    pub cert_sha256: String,
}

fn cert_digest(cert: &Path) -> Option<String> {
    std::fs::read(cert)
        .ok()
        .map(|b| hex::encode(Sha256::digest(&b)))
}

/// The revocation of the certificate now in `cert`, if it was revoked.
pub fn load(cert: &Path) -> Option<Revoked> {
    let dir = cert.parent()?;
    let r: Revoked = serde_json::from_str(&std::fs::read_to_string(dir.join(FILE)).ok()?).ok()?;
    (Some(&r.cert_sha256) == cert_digest(cert).as_ref()).then_some(r)
}

/// Keeps central's notice beside the identity.
pub fn record(cert: &Path, notice: &str) -> std::io::Result<Revoked> {
    let dir = cert
        .parent()
        .ok_or_else(|| std::io::Error::other("certificate path has no directory"))?;
    let r = Revoked {
        at_ms: crate::now_ms(),
        notice: notice.to_owned(),
        cert_sha256: cert_digest(cert).unwrap_or_default(),
    };
    // Durable: a box that learned it is revoked stays revoked after a
    // power cut.
    yilian_proof::disk::write_atomically(
        &dir.join(FILE),
        &serde_json::to_vec_pretty(&r).map_err(std::io::Error::other)?,
        0o644,
    )?;
    Ok(r)
}

/// Central's notice, when `e` is the connection being closed for a
/// revocation.
pub fn notice_of(e: &quinn::ConnectionError) -> Option<String> {
    match e {
        quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == quinn::VarInt::from_u32(CLOSE_REVOKED) =>
        {
            let text = String::from_utf8_lossy(&c.reason).trim().to_owned();
            Some(if text.is_empty() || text == "revoked" {
                "revoked by central (no reason given)".to_owned()
            } else {
                text
            })
        }
        // Revoked while the box was away: central's TLS verifier refuses
        // the certificate with the `certificate_revoked` alert (44). Who and
        // why were in the notice the box missed.
        quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code == quinn::TransportErrorCode::crypto(44) =>
        {
            Some(
                "central refuses this box's certificate as revoked (`yilian-provision fleet show` at central says by whom and why)"
                    .to_owned(),
            )
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_holds_for_the_certificate_it_was_made_with_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let cert = dir.path().join("gateway.pem");
        std::fs::write(&cert, "old certificate").expect("write");
        assert!(load(&cert).is_none());
        let r = record(
            &cert,
            "revoked by admin:alice at 2026-12-03T10:00:00Z: stolen",
        )
        .expect("record");
        assert_eq!(load(&cert), Some(r));
        // Enrolled again: a new certificate, the revocation no longer holds.
        std::fs::write(&cert, "new certificate").expect("write");
        assert!(load(&cert).is_none());
    }
}
