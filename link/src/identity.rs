//! The box identity as certificates carry it.

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use yilian_protocol::BoxIdentity;

use crate::LinkError;

/// SAN URI scheme of administrator certificates.
pub const ADMIN_SCHEME: &str = "yilian-admin://";

/// Who is at the other end of a connection to central.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// A box, by its `yilian://` identity.
    Gateway(BoxIdentity),
    /// An administrator running `yilian-provision`, by name.
    Admin(String),
    /// No certificate: only enrollment and expired-certificate renewal.
    Anonymous,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Gateway(id) => write!(f, "{id}"),
            Peer::Admin(name) => write!(f, "admin:{name}"),
            Peer::Anonymous => f.write_str("(no certificate)"),
        }
    }
}

fn san_uris(der: &CertificateDer<'_>) -> Result<Vec<String>, LinkError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| LinkError::Identity(format!("unparsable: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| LinkError::Identity(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| LinkError::Identity("no subjectAltName".into()))?;
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect())
}

/// The `yilian://county/clinic/box` SAN URI of a certificate.
pub fn identity_from_certificate(der: &CertificateDer<'_>) -> Result<BoxIdentity, LinkError> {
    let uri = san_uris(der)?
        .into_iter()
        .find(|u| u.starts_with("yilian://"))
        .ok_or_else(|| LinkError::Identity("no yilian:// URI in subjectAltName".into()))?;
    BoxIdentity::from_uri(&uri).map_err(|e| LinkError::Identity(e.to_string()))
}

/// A box or an administrator, from a client certificate's SAN URI.
pub fn peer_from_certificate(der: &CertificateDer<'_>) -> Result<Peer, LinkError> {
    for uri in san_uris(der)? {
        if let Some(name) = uri.strip_prefix(ADMIN_SCHEME)
            && !name.is_empty()
        {
            return Ok(Peer::Admin(name.to_owned()));
        }
        if uri.starts_with("yilian://") {
            return BoxIdentity::from_uri(&uri)
                .map(Peer::Gateway)
                .map_err(|e| LinkError::Identity(e.to_string()));
        }
    }
    Err(LinkError::Identity(
        "no yilian:// or yilian-admin:// URI in subjectAltName".into(),
    ))
}

/// The verified peer of an established connection to central.
pub fn connection_peer(conn: &quinn::Connection) -> Result<Peer, LinkError> {
    let Some(any) = conn.peer_identity() else {
        return Ok(Peer::Anonymous);
    };
    let certs = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| LinkError::Identity("peer identity is not a certificate chain".into()))?;
    match certs.first() {
        Some(leaf) => peer_from_certificate(leaf),
        None => Ok(Peer::Anonymous),
    }
}

/// Validity of a certificate, as seconds since the Unix epoch.
pub fn certificate_validity(der: &CertificateDer<'_>) -> Result<(i64, i64), LinkError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| LinkError::Identity(format!("unparsable: {e}")))?;
    Ok((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
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
