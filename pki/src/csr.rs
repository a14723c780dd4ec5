//! The box side of enrollment: a key made on the box, a CSR for it, and the
//! fingerprints that pin the fleet CA.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData, SanType};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use yilian_protocol::BoxIdentity;

use crate::PkiError;

/// A fresh private key (ECDSA P-256), PEM. It never leaves the box.
pub fn generate_key() -> Result<String, PkiError> {
    Ok(KeyPair::generate()?.serialize_pem())
}

/// A CSR for `key_pem` asking for `identity`. Central ignores everything in
/// it but the public key; the subject is there for humans reading it.
pub fn request(key_pem: &str, identity: &BoxIdentity) -> Result<String, PkiError> {
    let key = KeyPair::from_pem(key_pem)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity.to_string());
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(identity.to_uri().try_into()?)];
    Ok(params.serialize_request(&key)?.pem()?)
}

/// Whether a CSR (whose signature is checked) is for the key that `cert`
/// certifies: the proof of possession a box with an expired certificate
/// gives.
pub fn request_matches_certificate(
    csr_pem: &str,
    cert: &CertificateDer<'_>,
) -> Result<bool, PkiError> {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| PkiError::Csr(e.to_string()))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| PkiError::Invalid(format!("unparsable certificate: {e}")))?;
    Ok(parsed.public_key().subject_public_key.data.as_ref() == csr.public_key.der_bytes())
}

/// The `yilian://` identity a CSR asks for, if it names one (its signature
/// is checked too).
pub fn requested_identity(csr_pem: &str) -> Result<Option<String>, PkiError> {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| PkiError::Csr(e.to_string()))?;
    Ok(csr.params.subject_alt_names.iter().find_map(|n| match n {
        SanType::URI(u) => u.as_str().strip_prefix("yilian://").map(str::to_owned),
        _ => None,
    }))
}

/// SHA-256 of a certificate's DER, lowercase hex: what a token pins.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// [`fingerprint`] of the first certificate in a PEM text.
pub fn fingerprint_pem(pem: &str) -> Result<String, PkiError> {
    let cert = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| PkiError::Invalid("no CERTIFICATE block".into()))?
        .map_err(|e| PkiError::Invalid(format!("bad PEM: {e}")))?;
    Ok(fingerprint(&cert))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FleetCa;
    use std::time::Duration;
    use time::OffsetDateTime;

    #[test]
    fn central_signs_only_the_key_with_its_own_identity() {
        let (root, _) = FleetCa::generate("root", Duration::from_secs(86400)).expect("root");
        let issuing = root
            .issue_issuing_ca("issuing", Duration::from_secs(86400))
            .expect("issuing");
        let dir = tempfile::tempdir().expect("tmp");
        let (c, k) = (dir.path().join("i.pem"), dir.path().join("i.key"));
        std::fs::write(&c, &issuing.cert_pem).expect("write");
        std::fs::write(&k, &issuing.key_pem).expect("write");
        let issuing = FleetCa::load_files(&c, &k).expect("load");

        let key = generate_key().expect("key");
        // The box asks for another identity; central's decides.
        let asked = BoxIdentity::parse("x/y/z").expect("id");
        let csr = request(&key, &asked).expect("csr");
        let id = BoxIdentity::parse("anxi/hutou/box-1").expect("id");
        let pem = issuing
            .sign_gateway_csr(
                &csr,
                &id,
                OffsetDateTime::now_utc(),
                Duration::from_secs(60),
            )
            .expect("sign");
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse");
        assert!(cert.subject().to_string().contains("anxi/hutou/box-1"));
        assert!(request_matches_certificate(&csr, &der).expect("match"));
        assert_eq!(
            requested_identity(&csr).expect("csr").as_deref(),
            Some("x/y/z")
        );
        let other = request(&generate_key().expect("key"), &id).expect("csr");
        assert!(!request_matches_certificate(&other, &der).expect("match"));
        // A CSR whose signature does not verify is refused.
        let mut bad = csr.clone().into_bytes();
        let at = bad.len() / 2;
        bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).expect("ascii");
        assert!(
            issuing
                .sign_gateway_csr(
                    &bad,
                    &id,
                    OffsetDateTime::now_utc(),
                    Duration::from_secs(60)
                )
                .is_err()
        );
    }
}
