//! The box certificate: enrollment with a token, renewal over the link at
//! two thirds of its life, and renewal by proof of the old key when it
//! expired while the box was offline. The private key is made here and
//! never leaves the box; renewal keeps it, so the key and certificate files
//! are never out of step.

use std::path::Path;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use yilian_link::TlsFiles;
use yilian_link::request::{self, RequestError};
use yilian_pki::{csr, token};
use yilian_protocol::BoxIdentity;
use yilian_protocol::messages::{RenewRequest, envelope::Body};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0}")]
    Request(#[from] RequestError),
    #[error("enrollment token: {0}")]
    Token(#[from] token::TokenError),
    #[error("{path}: {detail}")]
    File { path: String, detail: String },
    #[error("central's answer does not fit: {0}")]
    Mismatch(String),
    #[error("key or request: {0}")]
    Key(#[from] yilian_pki::PkiError),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> CertError {
    CertError::File {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// Where the certificate stands at `now` (seconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Valid; renew at this time.
    NotYet { renew_at: i64 },
    /// Past two thirds of its life: renew over the link.
    Due,
    /// Expired: only the grace path (proof of the old key) is left.
    Expired,
}

/// Decides from the certificate's own dates and the clock as it reads now,
/// so a clock that jumps forward makes renewal due (or the grace path
/// needed) at once, and one that jumps back only delays it.
pub fn renewal(not_before: i64, not_after: i64, now: i64) -> Renewal {
    if now >= not_after {
        return Renewal::Expired;
    }
    let renew_at = not_before + (not_after - not_before) * 2 / 3;
    if now >= renew_at {
        Renewal::Due
    } else {
        Renewal::NotYet { renew_at }
    }
}

/// Validity of the certificate in `path`, seconds since the epoch.
pub fn validity(path: &Path) -> Option<(i64, i64)> {
    let chain = yilian_link::load_cert_chain(path).ok()?;
    yilian_link::certificate_validity(chain.first()?).ok()
}

/// What enrollment or renewal installed.
#[derive(Debug, Clone)]
pub struct Installed {
    pub identity: String,
    pub not_after: i64,
}

/// `yilian-gateway enroll`: makes a key, sends a CSR with the token to the
/// central that proves it holds the fleet CA the token names, and installs
/// key, certificate and fleet CA.
pub async fn enroll(
    files: &TlsFiles,
    central: &str,
    server_name: Option<&str>,
    token_text: &str,
) -> Result<Installed, CertError> {
    let claims = token::peek(token_text)?;
    let identity =
        BoxIdentity::parse(&claims.gateway).map_err(|e| CertError::Mismatch(e.to_string()))?;
    let key_pem = csr::generate_key()?;
    let request = csr::request(&key_pem, &identity)?;
    let name = server_name.map_or_else(|| request::host_of(central), str::to_owned);
    let answer = request::enroll(central, &name, &claims.ca_sha256, token_text, &request).await?;
    if csr::fingerprint_pem(&answer.ca_pem)? != claims.ca_sha256 {
        return Err(CertError::Mismatch(
            "the fleet CA central sent is not the one the token names".into(),
        ));
    }
    install(
        files,
        &answer.chain_pem,
        Some(&key_pem),
        &claims.gateway,
        Some(&answer.ca_pem),
    )
}

/// Renewal on the box's live connection, with its current key.
pub async fn renew_online(
    conn: &quinn::Connection,
    files: &TlsFiles,
) -> Result<Installed, CertError> {
    let (identity, key_pem) = current(files)?;
    let request = csr::request(&key_pem, &identity)?;
    let env = request::on_connection(
        conn,
        Body::RenewRequest(RenewRequest {
            csr_pem: request,
            expired_chain_pem: String::new(),
        }),
    )
    .await?;
    let answer = request::certificate(env)?;
    install(files, &answer.chain_pem, None, &identity.to_string(), None)
}

/// Renewal when the certificate expired: a connection without one, the old
/// chain, and a CSR signed by the old key.
pub async fn renew_expired(
    files: &TlsFiles,
    central: &str,
    server_name: &str,
) -> Result<Installed, CertError> {
    let (identity, key_pem) = current(files)?;
    let chain = std::fs::read_to_string(&files.cert).map_err(|e| file_err(&files.cert, e))?;
    let request = csr::request(&key_pem, &identity)?;
    let answer = request::renew_expired(central, server_name, &files.ca, &chain, &request).await?;
    install(files, &answer.chain_pem, None, &identity.to_string(), None)
}

fn current(files: &TlsFiles) -> Result<(BoxIdentity, String), CertError> {
    let chain = yilian_link::load_cert_chain(&files.cert).map_err(|e| file_err(&files.cert, e))?;
    let leaf = chain
        .first()
        .ok_or_else(|| file_err(&files.cert, "no certificate"))?;
    let identity =
        yilian_link::identity_from_certificate(leaf).map_err(|e| file_err(&files.cert, e))?;
    let key_pem = std::fs::read_to_string(&files.key).map_err(|e| file_err(&files.key, e))?;
    Ok((identity, key_pem))
}

/// Checks what central issued (identity, our key) and writes it: the key
/// first (a new enrollment), then the chain, each replaced atomically.
fn install(
    files: &TlsFiles,
    chain_pem: &str,
    new_key_pem: Option<&str>,
    expected_identity: &str,
    ca_pem: Option<&str>,
) -> Result<Installed, CertError> {
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| CertError::Mismatch("no certificate in the answer".into()))?
        .map_err(|e| CertError::Mismatch(e.to_string()))?;
    let identity = yilian_link::identity_from_certificate(&leaf)
        .map_err(|e| CertError::Mismatch(e.to_string()))?;
    if identity.to_string() != expected_identity {
        return Err(CertError::Mismatch(format!(
            "certificate is for {identity}, expected {expected_identity}"
        )));
    }
    let key_pem = match new_key_pem {
        Some(k) => k.to_owned(),
        None => std::fs::read_to_string(&files.key).map_err(|e| file_err(&files.key, e))?,
    };
    // The certificate must certify our key: a CSR from it is the check.
    let probe = csr::request(&key_pem, &identity)?;
    if !csr::request_matches_certificate(&probe, &leaf)? {
        return Err(CertError::Mismatch(
            "the certificate is not for this box's key".into(),
        ));
    }
    let (_, not_after) =
        yilian_link::certificate_validity(&leaf).map_err(|e| CertError::Mismatch(e.to_string()))?;
    if let Some(k) = new_key_pem {
        write_atomically(&files.key, k, 0o600)?;
    }
    if let Some(ca) = ca_pem {
        write_atomically(&files.ca, ca, 0o644)?;
    }
    write_atomically(&files.cert, chain_pem, 0o644)?;
    Ok(Installed {
        identity: identity.to_string(),
        not_after,
    })
}

fn write_atomically(path: &Path, text: &str, mode: u32) -> Result<(), CertError> {
    if let Some(dir) = path.parent() {
        // The key lives here: the directory is for the service user only.
        yilian_proof::disk::create_private_dir(dir).map_err(|e| file_err(dir, e))?;
    }
    yilian_proof::disk::write_atomically(path, text.as_bytes(), mode).map_err(|e| file_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_follows_the_clock_as_it_reads_now() {
        let (nb, na) = (1_000, 1_000 + 3 * 86_400);
        assert_eq!(
            renewal(nb, na, nb + 10),
            Renewal::NotYet {
                renew_at: nb + 2 * 86_400
            }
        );
        assert_eq!(renewal(nb, na, nb + 2 * 86_400), Renewal::Due);
        // The clock jumps a year ahead: past expiry, grace path.
        assert_eq!(renewal(nb, na, nb + 365 * 86_400), Renewal::Expired);
        // It jumps back before issue: nothing to do yet.
        assert!(matches!(renewal(nb, na, 0), Renewal::NotYet { .. }));
    }
}
