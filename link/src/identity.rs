//! The verified peer of a QUIC connection, from its certificate (what a
//! certificate names is [`yilian_pki::identity`]'s business).

use rustls_pki_types::CertificateDer;
use yilian_protocol::BoxIdentity;

pub use yilian_pki::identity::{
    ADMIN_SCHEME, Peer, certificate_not_after, certificate_validity, identity_from_certificate,
    peer_from_certificate,
};

use crate::LinkError;

/// The leaf certificate the peer of `conn` presented, if any.
fn peer_leaf(conn: &quinn::Connection) -> Result<Option<CertificateDer<'static>>, LinkError> {
    let Some(any) = conn.peer_identity() else {
        return Ok(None);
    };
    let certs = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| LinkError::Identity("peer identity is not a certificate chain".into()))?;
    Ok(certs.first().cloned())
}

/// The verified peer of an established connection to central.
pub fn connection_peer(conn: &quinn::Connection) -> Result<Peer, LinkError> {
    match peer_leaf(conn)? {
        Some(leaf) => Ok(peer_from_certificate(&leaf)?),
        None => Ok(Peer::Anonymous),
    }
}

/// The verified identity of the peer of an established connection.
pub fn peer_identity(conn: &quinn::Connection) -> Result<BoxIdentity, LinkError> {
    let leaf = peer_leaf(conn)?
        .ok_or_else(|| LinkError::Identity("peer presented no certificate".into()))?;
    Ok(identity_from_certificate(&leaf)?)
}
