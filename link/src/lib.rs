//! The QUIC transport of the gateway ⇄ central link, shared by both ends:
//! mutual TLS 1.3 against the fleet CA with one explicit crypto provider
//! (ring), UDP sockets with raised buffers, transport tuning, framed message
//! I/O on streams, and the box identity read from a peer certificate.
//!
//! The wire protocol itself (messages, upload state machines) lives in
//! `yilian-protocol`, free of I/O; this crate is the thin driver side.

#![forbid(unsafe_code)]

mod congestion;
mod error;
mod framed;
mod identity;
pub mod instances;
mod pem;
pub mod request;
mod socket;
mod tls;
mod transport;

pub use congestion::{
    Bounded, BoundedConfig, LineSharing, Model as CongestionModel, PriorityUpload,
};
pub use error::LinkError;
pub use framed::{MessageReader, write_chunk_message, write_message};
pub use identity::{
    ADMIN_SCHEME, Peer, certificate_not_after, certificate_validity, connection_peer,
    identity_from_certificate, peer_from_certificate, peer_identity,
};
pub use pem::{load_cert_chain, load_private_key};
pub use socket::{SOCKET_BUFFER_BYTES, bind_udp};
pub use tls::{
    Revocations, TlsFiles, anonymous_client_config, certificate_fingerprint, client_config,
    pinned_client_config, server_config, verify_expired_gateway_chain,
};
pub use transport::{
    Congestion, IDLE_TIMEOUT, KEEP_ALIVE, transport_config, transport_config_for,
    transport_config_sending, transport_config_with_idle,
};
