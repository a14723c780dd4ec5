//! The box identity as certificates carry it.

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use yilian_protocol::BoxIdentity;

use crate::LinkError;

/// The `yilian://county/clinic/box` SAN URI of a certificate.
pub fn identity_from_certificate(der: &CertificateDer<'_>) -> Result<BoxIdentity, LinkError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| LinkError::Identity(format!("unparsable: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| LinkError::Identity(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| LinkError::Identity("no subjectAltName".into()))?;
    let uri = san
        .value
        .general_names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(u) if u.starts_with("yilian://") => Some(*u),
            _ => None,
        })
        .ok_or_else(|| LinkError::Identity("no yilian:// URI in subjectAltName".into()))?;
    BoxIdentity::from_uri(uri).map_err(|e| LinkError::Identity(e.to_string()))
}

/// Expiry of a certificate, as seconds since the Unix epoch.
pub fn certificate_not_after(der: &CertificateDer<'_>) -> Result<i64, LinkError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| LinkError::Identity(format!("unparsable: {e}")))?;
    Ok(cert.validity().not_after.timestamp())
}

/// The verified identity of the peer of an established connection.
pub fn peer_identity(conn: &quinn::Connection) -> Result<BoxIdentity, LinkError> {
    let any = conn
        .peer_identity()
        .ok_or_else(|| LinkError::Identity("peer presented no certificate".into()))?;
    let certs = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| LinkError::Identity("peer identity is not a certificate chain".into()))?;
    let leaf = certs
        .first()
        .ok_or_else(|| LinkError::Identity("empty certificate chain".into()))?;
    identity_from_certificate(leaf)
}
