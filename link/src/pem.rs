//! PEM loading with errors that name the file.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::LinkError;

pub fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, LinkError> {
    let data = std::fs::read(path).map_err(|source| LinkError::File {
        context: "read certificate",
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LinkError::Pem {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(LinkError::Pem {
            path: path.to_owned(),
            detail: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, LinkError> {
    let data = std::fs::read(path).map_err(|source| LinkError::File {
        context: "read private key",
        path: path.to_owned(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| LinkError::Pem {
        path: path.to_owned(),
        detail: format!("no usable private key: {e}"),
    })
}
