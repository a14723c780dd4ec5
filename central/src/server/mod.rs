//! The QUIC listener: one connection per gateway; its first message
//! tells a stream's kind:
//!
//! - [`control`] — Hello, then heartbeats in and worklists and published
//!   configuration out; receipts of reports delivered at the clinic in;
//! - reports down, on streams central opens ([`crate::reports::downlink`]);
//! - [`upload`] — one stream per upload, driven by the protocol crate's
//!   [`UploadReceiver`](yilian_protocol::upload::UploadReceiver);
//! - certificate renewal, answered by [`crate::admin::renew`].

mod control;
mod upload;

use control::control_stream;
use upload::upload_stream;

use std::net::SocketAddr;

use yilian_link::{LinkError, MessageReader, Peer, connection_peer};
use yilian_protocol::BoxIdentity;
use yilian_protocol::messages::envelope::Body;

use crate::metrics::GatewayLabels;
use crate::shared::{Shared, close};

/// Accepts connections until the endpoint is closed.
pub async fn accept_loop(endpoint: quinn::Endpoint, shared: Shared) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => handle_connection(conn, remote, shared).await,
                Err(e) => {
                    shared.metrics.handshake_failures.inc();
                    tracing::warn!(%remote, error = %e, "gateway handshake failed");
                }
            }
        });
    }
}

async fn handle_connection(conn: quinn::Connection, remote: SocketAddr, shared: Shared) {
    let identity = match connection_peer(&conn) {
        Ok(Peer::Gateway(id)) => id,
        Ok(Peer::Admin(name)) => {
            return crate::admin::serve_admin(conn, remote, name, shared).await;
        }
        Ok(Peer::Anonymous) => return crate::admin::serve_anonymous(conn, remote, shared).await,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "connection without a usable gateway identity");
            conn.close(close::PROTOCOL.into(), b"no identity");
            return;
        }
    };
    // The handshake already refuses revoked boxes; this covers a
    // revocation that landed during the handshake.
    if shared.fleet.is_revoked(&identity) {
        tracing::warn!(gateway = %identity, %remote, "refused a revoked box");
        let notice = shared
            .store
            .revocation_notice(&identity.to_string())
            .ok()
            .flatten()
            .unwrap_or_else(|| "revoked".into());
        conn.close(close::REVOKED.into(), notice.as_bytes());
        return;
    }
    let labels = GatewayLabels::of(&identity);
    let watched = shared.watched(&identity);
    // The series exists at zero from the box's first connection, so that
    // the first conflict is an increase an alert can see.
    let _ = shared.metrics.identity_conflicts.get_or_create(&labels);
    let superseded = shared
        .connections
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(identity.clone(), conn.clone());
    if let Some(old) = superseded {
        let old_remote = old.remote_address();
        old.close(close::SUPERSEDED.into(), b"superseded by a new connection");
        shared.takeover(&identity, remote, old_remote);
    }
    shared.metrics.connections.inc();
    if watched {
        shared.metrics.gateway_link_up.get_or_create(&labels).set(1);
    } else {
        tracing::info!(gateway = %identity, %remote, "a retired box connected; it may drain, but it is not watched (`yilian-provision retire --undo` watches it again)");
    }
    if let Some(not_after) = peer_not_after(&conn).filter(|_| watched) {
        shared
            .metrics
            .gateway_certificate_expiry
            .get_or_create(&labels)
            .set(not_after);
    }
    tracing::info!(gateway = %identity, %remote, "gateway connected");

    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let shared = shared.clone();
                let identity = identity.clone();
                let conn = conn.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_stream(send, recv, &conn, &identity, &shared).await {
                        tracing::debug!(gateway = %identity, error = %e, "stream ended with an error");
                    }
                });
            }
            Err(e) => {
                tracing::info!(gateway = %identity, reason = %e, "gateway connection closed");
                break;
            }
        }
    }
    shared.metrics.connections.dec();
    let epoch = shared.forget_epoch(&identity, &conn);
    {
        let mut conns = shared.connections.lock().unwrap_or_else(|p| p.into_inner());
        // This connection is over unless a newer one took its place; one that
        // `disconnect` already removed (a revocation) is over too.
        let replaced = conns
            .get(&identity)
            .is_some_and(|c| c.stable_id() != conn.stable_id());
        if !replaced {
            conns.remove(&identity);
            if shared.store.shares_connections() {
                // The instance the box moves to shows it from now on, or
                // the fleet exporter shows it down: never two instances
                // with two answers for one box.
                shared.metrics.forget_gateway(&identity);
            } else {
                if shared.watched(&identity) {
                    shared.metrics.gateway_link_up.get_or_create(&labels).set(0);
                }
                shared.metrics.clear_gateway_snapshot(&identity);
            }
        }
    }
    if let Some(epoch) = epoch {
        let store = shared.store.clone();
        let gw = identity.to_string();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.mark_absent(&gw, epoch)).await
        {
            tracing::debug!(gateway = %identity, error = %e, "cannot record the end of this connection in the shared index");
        }
    }
}

fn peer_not_after(conn: &quinn::Connection) -> Option<i64> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .ok()?;
    yilian_link::certificate_not_after(certs.first()?).ok()
}

#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("protocol: {0}")]
    Protocol(String),
}

/// The first message says what the stream is: Hello opens the control
/// stream, Offer an upload.
async fn handle_stream(
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    conn: &quinn::Connection,
    identity: &BoxIdentity,
    shared: &Shared,
) -> Result<(), StreamError> {
    let mut reader = MessageReader::new(recv);
    let Some(first) = reader.next().await? else {
        return Ok(());
    };
    match first.body {
        Some(Body::Hello(_)) => control_stream(first, send, reader, conn, identity, shared).await,
        Some(Body::Offer(_)) => upload_stream(first, send, reader, identity, shared).await,
        Some(Body::RenewRequest(req)) => {
            crate::admin::renew(send, req, identity, shared).await?;
            Ok(())
        }
        _ => {
            let _ = send.reset(close::PROTOCOL.into());
            Err(StreamError::Protocol(
                "stream must start with Hello, Offer or RenewRequest".into(),
            ))
        }
    }
}
