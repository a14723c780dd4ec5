//! rustls configurations for both ends: TLS 1.3 only, ALPN `yilian/1`,
//! mutual authentication against the fleet CA, and the ring provider passed
//! explicitly (two providers compiled in make rustls panic at run time).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use yilian_protocol::ALPN;

use crate::identity::{Peer, peer_from_certificate};
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

fn quic_client(mut tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, LinkError> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| LinkError::Verifier(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// The QUIC client configuration of a gateway (or an administrator): its
/// certificate and key, and the fleet CA to verify central against.
pub fn client_config(files: &TlsFiles) -> Result<quinn::ClientConfig, LinkError> {
    let chain = load_cert_chain(&files.cert)?;
    let key = load_private_key(&files.key)?;
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(files)?)
        .with_client_auth_cert(chain, key)?;
    quic_client(tls)
}

/// A client without a certificate that verifies central against the fleet
/// CA in `ca`: how a box whose certificate expired while it was offline
/// asks for a new one.
pub fn anonymous_client_config(ca: &std::path::Path) -> Result<quinn::ClientConfig, LinkError> {
    let files = TlsFiles {
        ca: ca.to_owned(),
        cert: PathBuf::new(),
        key: PathBuf::new(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&files)?)
        .with_no_client_auth();
    quic_client(tls)
}

/// A client without a certificate that accepts central only if its chain
/// contains the fleet CA with SHA-256 fingerprint `ca_sha256` (hex) and
/// verifies against it: how a box that has nothing but an enrollment token
/// tells the fleet's central from an impostor.
pub fn pinned_client_config(ca_sha256: &str) -> Result<quinn::ClientConfig, LinkError> {
    let verifier = Arc::new(PinnedFleetVerifier {
        pin: ca_sha256.to_ascii_lowercase(),
        provider: provider(),
    });
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    quic_client(tls)
}

/// SHA-256 of a certificate's DER, lowercase hex.
pub fn certificate_fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// Box identities central refuses at the handshake, shared between the
/// TLS verifier and the fleet registry.
#[derive(Debug, Clone, Default)]
pub struct Revocations(Arc<RwLock<HashSet<String>>>);

impl Revocations {
    pub fn insert(&self, identity: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(identity.to_owned());
    }

    pub fn contains(&self, identity: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(identity)
    }
}

/// Central's QUIC server configuration. A client certificate, when
/// presented, must chain to the fleet CA, carry client-auth usage and a
/// `yilian://` box identity that is not revoked, or a `yilian-admin://`
/// one; every refusal is logged with the reason. Connections without a
/// certificate are let through for enrollment only (central's stream
/// handler allows them nothing else).
pub fn server_config(
    files: &TlsFiles,
    revoked: Revocations,
) -> Result<quinn::ServerConfig, LinkError> {
    let chain = load_cert_chain(&files.cert)?;
    let key = load_private_key(&files.key)?;
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(files)?), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| LinkError::Verifier(e.to_string()))?;
    let verifier = Arc::new(FleetClientVerifier {
        inner: webpki,
        revoked,
    });
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
    revoked: Revocations,
}

impl ClientCertVerifier for FleetClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
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
        let peer = peer_from_certificate(end_entity);
        let claimed = peer
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_else(|e| format!("(no identity: {e})"));
        if let Err(e) = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            tracing::warn!(gateway = %claimed, reason = %e, "refused gateway certificate");
            return Err(e);
        }
        match peer {
            Err(e) => {
                tracing::warn!(reason = %e, "refused a certificate without a yilian:// identity");
                Err(rustls::Error::General(format!(
                    "certificate carries no gateway identity: {e}"
                )))
            }
            Ok(Peer::Gateway(id)) if self.revoked.contains(&id.to_string()) => {
                tracing::warn!(gateway = %id, "refused a revoked box");
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Revoked,
                ))
            }
            Ok(_) => Ok(ClientCertVerified::assertion()),
        }
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

/// See [`pinned_client_config`].
#[derive(Debug)]
struct PinnedFleetVerifier {
    pin: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedFleetVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(anchor) = intermediates
            .iter()
            .find(|c| certificate_fingerprint(c) == self.pin)
        else {
            return Err(rustls::Error::General(format!(
                "central's certificate chain does not hold the fleet CA the token names \
                 (SHA-256 {}): this is not the fleet's central, or the token is for another fleet",
                self.pin
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Checks an old box chain against the fleet CA as of a moment when it was
/// still valid; the caller bounds how long ago that may be. Returns the
/// identity it carries.
pub fn verify_expired_gateway_chain(
    ca: &std::path::Path,
    chain: &[CertificateDer<'static>],
    valid_at: UnixTime,
) -> Result<yilian_protocol::BoxIdentity, LinkError> {
    let files = TlsFiles {
        ca: ca.to_owned(),
        cert: PathBuf::new(),
        key: PathBuf::new(),
    };
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&files)?), provider())
            .build()
            .map_err(|e| LinkError::Verifier(e.to_string()))?;
    let (leaf, rest) = chain
        .split_first()
        .ok_or_else(|| LinkError::Identity("empty certificate chain".into()))?;
    verifier
        .verify_client_cert(leaf, rest, valid_at)
        .map_err(|e| LinkError::Identity(e.to_string()))?;
    Ok(crate::identity::identity_from_certificate(leaf)?)
}
