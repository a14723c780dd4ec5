//! Who a certificate names, and when it is valid: the box identity
//! (`yilian://county/clinic/box`) or an administrator
//! (`yilian-admin://name`) in the subjectAltName URI.

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use yilian_protocol::BoxIdentity;

/// SAN URI scheme of box certificates.
pub const BOX_SCHEME: &str = "yilian://";
/// SAN URI scheme of administrator certificates.
pub const ADMIN_SCHEME: &str = "yilian-admin://";

/// A certificate that does not say who it is for, or cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CertificateError(pub String);

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

fn parse<'a>(
    der: &'a CertificateDer<'_>,
) -> Result<x509_parser::certificate::X509Certificate<'a>, CertificateError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| CertificateError(format!("unparsable: {e}")))
}

fn san_uris(der: &CertificateDer<'_>) -> Result<Vec<String>, CertificateError> {
    let cert = parse(der)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertificateError(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| CertificateError("no subjectAltName".into()))?;
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
pub fn identity_from_certificate(
    der: &CertificateDer<'_>,
) -> Result<BoxIdentity, CertificateError> {
    let uri = san_uris(der)?
        .into_iter()
        .find(|u| u.starts_with(BOX_SCHEME))
        .ok_or_else(|| CertificateError("no yilian:// URI in subjectAltName".into()))?;
    BoxIdentity::from_uri(&uri).map_err(|e| CertificateError(e.to_string()))
}

/// A box or an administrator, from a client certificate's SAN URI.
pub fn peer_from_certificate(der: &CertificateDer<'_>) -> Result<Peer, CertificateError> {
    for uri in san_uris(der)? {
        if let Some(name) = uri.strip_prefix(ADMIN_SCHEME)
            && !name.is_empty()
        {
            return Ok(Peer::Admin(name.to_owned()));
        }
        if uri.starts_with(BOX_SCHEME) {
            return BoxIdentity::from_uri(&uri)
                .map(Peer::Gateway)
                .map_err(|e| CertificateError(e.to_string()));
        }
    }
    Err(CertificateError(
        "no yilian:// or yilian-admin:// URI in subjectAltName".into(),
    ))
}

/// Validity of a certificate, as seconds since the Unix epoch.
pub fn certificate_validity(der: &CertificateDer<'_>) -> Result<(i64, i64), CertificateError> {
    let cert = parse(der)?;
    Ok((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

/// Expiry of a certificate, as seconds since the Unix epoch.
pub fn certificate_not_after(der: &CertificateDer<'_>) -> Result<i64, CertificateError> {
    Ok(parse(der)?.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FleetCa;

    /// A box certificate names its box; every cut of it and random bytes
    /// are refused with an error, never a panic.
    #[test]
    fn names_the_box_and_refuses_damaged_certificates() {
        use rustls_pki_types::pem::PemObject;
        let (ca, _) =
            FleetCa::generate("test fleet", std::time::Duration::from_secs(3600)).expect("ca");
        let id = BoxIdentity::parse("anxi/hutou/box-1").expect("identity");
        let issued = ca
            .issue_gateway(
                &id,
                time::OffsetDateTime::now_utc(),
                std::time::Duration::from_secs(3600),
            )
            .expect("issue");
        let der: Vec<u8> = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
            .expect("pem")
            .to_vec();
        let cert = CertificateDer::from(der.clone());
        assert_eq!(identity_from_certificate(&cert), Ok(id.clone()));
        assert_eq!(peer_from_certificate(&cert), Ok(Peer::Gateway(id)));
        for cut in 0..der.len() {
            let _ = peer_from_certificate(&CertificateDer::from(&der[..cut]));
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut bytes = der.clone();
            let at = (x as usize) % bytes.len();
            bytes[at] ^= (x >> 32) as u8 | 1;
            let _ = peer_from_certificate(&CertificateDer::from(bytes));
        }
    }
}
