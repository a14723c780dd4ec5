//! rustls configurations for both ends: TLS 1.3 only, ALPN `yilian/1`,
//! mutual authentication against the fleet CA, and the ring provider passed
//! explicitly (two providers compiled in make rustls panic at run time).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use yilian_protocol::ALPN;

use crate::identity::identity_from_certificate;
use crate::{LinkError, load_cert_chain, load_private_key, transport_config};

/// Where one end's certificate, key and the fleet CA are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(files: &TlsFiles) -> Result<RootCertStore, LinkError> {
    let mut roots = RootCertStore::empty();
    for ca in load_cert_chain(&files.ca)? {
        roots.add(ca).map_err(|e| LinkError::Pem {
            path: files.ca.clone(),
            detail: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The gateway's QUIC client configuration.
pub fn client_config(files: &TlsFiles) -> Result<quinn::ClientConfig, LinkError> {
    let chain = load_cert_chain(&files.cert)?;
    let key = load_private_key(&files.key)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(files)?)
        .with_client_auth_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| LinkError::Verifier(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// Central's QUIC server configuration. Client certificates are required,
/// must chain to the fleet CA, carry client-auth usage and a
/// `yilian://` identity; every refusal is logged with the reason.
pub fn server_config(files: &TlsFiles) -> Result<quinn::ServerConfig, LinkError> {
    let chain = load_cert_chain(&files.cert)?;
    let key = load_private_key(&files.key)?;
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(files)?), provider())
        .build()
        .map_err(|e| LinkError::Verifier(e.to_string()))?;
    let verifier = Arc::new(FleetClientVerifier { inner: webpki });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| LinkError::Verifier(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// Wraps the webpki verifier to require a box identity and to log why a
/// certificate was refused: in TLS 1.3 the client only learns of the
/// refusal after its `connect()` succeeded, so central's log is where an
/// operator finds the reason.
#[derive(Debug)]
struct FleetClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for FleetClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let claimed = identity_from_certificate(end_entity)
            .map(|id| id.to_string())
            .unwrap_or_else(|e| format!("(no identity: {e})"));
        if let Err(e) = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            tracing::warn!(gateway = %claimed, reason = %e, "refused gateway certificate");
            return Err(e);
        }
        if let Err(e) = identity_from_certificate(end_entity) {
            tracing::warn!(reason = %e, "refused gateway certificate without a yilian:// identity");
            return Err(rustls::Error::General(format!(
                "certificate carries no gateway identity: {e}"
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
