//! The QUIC listener: one connection per gateway, a control stream opened
//! with Hello, and one stream per upload driven by the protocol crate's
//! [`UploadReceiver`].

use std::net::SocketAddr;

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use yilian_link::{LinkError, MessageReader, Peer, connection_peer, write_message};
use yilian_protocol::messages::{
    ConfigPush, Envelope, HeartbeatAck, HelloAck, Offer, RejectReason, WorklistSnapshot,
    envelope::Body,
};
use yilian_protocol::upload::{DEFAULT_IDLE_TIMEOUT, ReceiverEvent, UploadReceiver};
use yilian_protocol::{BoxIdentity, Lane, SUPPORTED_VERSIONS};

use crate::metrics::{GatewayLabels, LaneLabels, ReasonLabels};
use crate::registry::ReportedState;
use crate::shared::{Shared, close};
use crate::store::{ItemRow, PartialUpload, Store, StoreError, Stored};

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
    let superseded = shared
        .connections
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(identity.clone(), conn.clone());
    if let Some(old) = superseded {
        let old_remote = old.remote_address();
        old.close(close::SUPERSEDED.into(), b"superseded by a new connection");
        if let Some(addrs) = shared.takeover(&identity, remote) {
            shared
                .metrics
                .identity_conflicts
                .get_or_create(&labels)
                .inc();
            tracing::error!(gateway = %identity, %remote, previous = %old_remote, addresses = ?addrs,
                "two boxes present the same identity and keep taking the connection from each other; \
                 find the clone at these addresses (a copied disk or key), revoke the identity if it was stolen, and enroll each box under its own name");
        }
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
                tokio::spawn(async move {
                    if let Err(e) = handle_stream(send, recv, &identity, &shared).await {
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
    let mut conns = shared.connections.lock().unwrap_or_else(|p| p.into_inner());
    // This connection is over unless a newer one took its place; one that
    // `disconnect` already removed (a revocation) is over too.
    let replaced = conns
        .get(&identity)
        .is_some_and(|c| c.stable_id() != conn.stable_id());
    if !replaced {
        conns.remove(&identity);
        if shared.watched(&identity) {
            shared.metrics.gateway_link_up.get_or_create(&labels).set(0);
        }
        shared.metrics.clear_gateway_snapshot(&identity);
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
    identity: &BoxIdentity,
    shared: &Shared,
) -> Result<(), StreamError> {
    let mut reader = MessageReader::new(recv);
    let Some(first) = reader.next().await? else {
        return Ok(());
    };
    match first.body {
        Some(Body::Hello(_)) => control_stream(first, send, reader, identity, shared).await,
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

async fn control_stream(
    first: Envelope,
    mut send: quinn::SendStream,
    mut reader: MessageReader,
    identity: &BoxIdentity,
    shared: &Shared,
) -> Result<(), StreamError> {
    let Some(Body::Hello(hello)) = first.body else {
        return Err(StreamError::Protocol("expected Hello".into()));
    };
    let labels = GatewayLabels::of(identity);
    let Some(version) = yilian_protocol::version::negotiate(
        SUPPORTED_VERSIONS,
        hello.protocol_min..=hello.protocol_max,
    ) else {
        tracing::warn!(
            gateway = %identity,
            gateway_versions = ?(hello.protocol_min..=hello.protocol_max),
            ours = ?SUPPORTED_VERSIONS,
            "no common protocol version; the gateway needs a software update"
        );
        let bye = Envelope::new(Body::Goodbye(yilian_protocol::messages::Goodbye {
            reason: format!("no common protocol version: central speaks {SUPPORTED_VERSIONS:?}"),
        }));
        write_message(&mut send, &bye).await?;
        let _ = send.finish();
        return Ok(());
    };
    touch(shared, identity, Some(&hello.software_version)).await;
    let watched = shared.watched(identity);
    if watched {
        shared
            .metrics
            .gateway_last_seen
            .get_or_create(&labels)
            .set(crate::store::now_ms() as f64 / 1000.0);
    }
    tracing::info!(gateway = %identity, software = %hello.software_version, version, "gateway said hello");
    let ack = Envelope::new(Body::HelloAck(HelloAck {
        protocol_version: version,
        central_version: env!("CARGO_PKG_VERSION").to_owned(),
        central_unix_ms: crate::store::now_ms(),
        identity: identity.to_string(),
    }));
    write_message(&mut send, &ack).await?;

    while let Some(env) = reader.next().await? {
        match env.body {
            Some(Body::Heartbeat(hb)) => {
                touch(shared, identity, None).await;
                let now = crate::store::now_ms();
                if watched {
                    shared
                        .metrics
                        .gateway_last_seen
                        .get_or_create(&labels)
                        .set(now as f64 / 1000.0);
                    shared
                        .metrics
                        .set_gateway_snapshot(identity, &hb.metrics_text);
                }
                if !hb.config_version.is_empty() {
                    shared
                        .metrics
                        .set_gateway_config(&labels, &hb.config_version);
                }
                for b in &hb.backlog {
                    let lane = Lane::try_from(b.lane).unwrap_or(Lane::Bulk).name();
                    let l = labels.with_lane(lane);
                    shared
                        .metrics
                        .gateway_backlog_items
                        .get_or_create(&l)
                        .set(b.items as i64);
                    shared
                        .metrics
                        .gateway_backlog_bytes
                        .get_or_create(&l)
                        .set(b.bytes as i64);
                    shared
                        .metrics
                        .gateway_oldest_age
                        .get_or_create(&l)
                        .set(b.oldest_age_seconds);
                }
                // The clinic's worklist goes down when the box's copy differs.
                let store = shared.store.clone();
                let clinic = format!("{}/{}", identity.county(), identity.clinic());
                let worklist = tokio::task::spawn_blocking(move || store.worklist(&clinic))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .filter(|(version, _)| *version != hb.worklist_version)
                    .map(|(version, entries)| WorklistSnapshot { version, entries });
                if let Some(w) = &worklist {
                    tracing::info!(gateway = %identity, version = %w.version, entries = w.entries.len(),
                        "sending the clinic's worklist");
                }
                let config = record_and_config(shared, identity, &hb).await;
                write_message(
                    &mut send,
                    &Envelope::new(Body::HeartbeatAck(HeartbeatAck {
                        seq: hb.seq,
                        worklist,
                        config,
                    })),
                )
                .await?;
            }
            Some(Body::Goodbye(bye)) => {
                tracing::info!(gateway = %identity, reason = %bye.reason, "gateway said goodbye");
                break;
            }
            // Newer gateways may send what we do not know yet.
            _ => {}
        }
    }
    Ok(())
}

/// Keeps what the heartbeat reports for `fleet list`, and returns the
/// configuration published for the box when it neither runs nor has
/// refused that version.
async fn record_and_config(
    shared: &Shared,
    identity: &BoxIdentity,
    hb: &yilian_protocol::messages::Heartbeat,
) -> Option<ConfigPush> {
    let backlog: Vec<serde_json::Value> = hb
        .backlog
        .iter()
        .map(|b| {
            serde_json::json!({
                "lane": Lane::try_from(b.lane).unwrap_or(Lane::Bulk).name(),
                "items": b.items,
                "bytes": b.bytes,
                "oldest_age_seconds": b.oldest_age_seconds,
            })
        })
        .collect();
    let state = ReportedState {
        certificate_not_after: hb.certificate_not_after,
        config_version: hb.config_version.clone(),
        pushed_config_version: hb.pushed_config_version.clone(),
        pushed_config_error: hb.pushed_config_error.clone(),
        backlog: serde_json::Value::Array(backlog),
    };
    let store = shared.store.clone();
    let id = identity.clone();
    let r = tokio::task::spawn_blocking(move || {
        store.record_state(&id.to_string(), &state)?;
        store.config_for(id.county(), id.clinic(), &id.to_string())
    })
    .await;
    let published = match r {
        Ok(Ok(Some(p))) => p,
        // Withdrawn (`config unset`) while the box still runs it: tell it.
        Ok(Ok(None)) if !hb.pushed_config_version.is_empty() => {
            tracing::info!(gateway = %identity, "published configuration withdrawn; telling the box");
            return Some(ConfigPush {
                version: String::new(),
                toml: String::new(),
            });
        }
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            tracing::warn!(gateway = %identity, error = %e, "cannot record the box's state");
            return None;
        }
        Err(_) => return None,
    };
    let refused_already = hb
        .pushed_config_error
        .split_once(':')
        .is_some_and(|(v, _)| v == published.version);
    if published.version == hb.pushed_config_version || refused_already {
        return None;
    }
    tracing::info!(gateway = %identity, version = %published.version, scope = %published.scope,
        "sending published configuration");
    Some(ConfigPush {
        version: published.version,
        toml: published.toml,
    })
}

async fn touch(shared: &Shared, identity: &BoxIdentity, software: Option<&str>) {
    let store = shared.store.clone();
    let id = identity.clone();
    let sw = software.map(str::to_owned);
    let r = tokio::task::spawn_blocking(move || store.touch_gateway(&id, sw.as_deref())).await;
    if let Ok(Err(e)) = r {
        tracing::warn!(gateway = %identity, error = %e, "cannot record gateway contact");
    }
}

enum SinkMsg {
    Data(Bytes),
    Commit(oneshot::Sender<Result<Stored<ItemRow>, StoreError>>),
}

/// Writes an upload's bytes on a blocking thread, so that disk writes and
/// hashing overlap with receiving. On a broken stream it drains what was
/// received before exiting, so the partial file holds every byte that
/// arrived: the resume offset is exact.
fn spawn_sink(
    store: Store,
    identity: BoxIdentity,
    offer: Offer,
    mut partial: PartialUpload,
    guard: tokio::sync::OwnedMutexGuard<()>,
    destinations: Vec<&'static str>,
) -> mpsc::Sender<SinkMsg> {
    let (tx, mut rx) = mpsc::channel::<SinkMsg>(16);
    tokio::task::spawn_blocking(move || {
        let _guard = guard;
        let mut failed: Option<StoreError> = None;
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                SinkMsg::Data(data) => {
                    if failed.is_none()
                        && let Err(e) = partial.append(&data)
                    {
                        failed = Some(e);
                    }
                }
                SinkMsg::Commit(reply) => {
                    let r = match failed.take() {
                        Some(e) => Err(e),
                        None => store.commit(&identity, &offer, partial, &destinations),
                    };
                    let _ = reply.send(r);
                    return;
                }
            }
        }
    });
    tx
}

async fn upload_stream(
    first: Envelope,
    mut send: quinn::SendStream,
    mut reader: MessageReader,
    identity: &BoxIdentity,
    shared: &Shared,
) -> Result<(), StreamError> {
    let mut rx = UploadReceiver::new(
        shared.max_upload_bytes,
        DEFAULT_IDLE_TIMEOUT,
        Instant::now(),
    );
    rx.handle_message(first, Instant::now())
        .map_err(|e| StreamError::Protocol(e.to_string()))?;
    let mut sink: Option<mpsc::Sender<SinkMsg>> = None;
    let mut bytes_this_stream = 0u64;

    loop {
        while let Some(ev) = rx.poll_event() {
            match ev {
                ReceiverEvent::Offered(offer) => {
                    let key = format!("{identity}/{}", offer.upload_id);
                    let guard = shared.upload_lock(key).lock_owned().await;
                    let store = shared.store.clone();
                    let id = identity.clone();
                    let o = offer.clone();
                    let opened = tokio::task::spawn_blocking(move || {
                        let held = store.held(&id, &o)?;
                        let partial = match held {
                            crate::store::Held::Partial(offset) => {
                                Some(store.open_partial(&id, &o, offset)?)
                            }
                            crate::store::Held::Committed(_) => None,
                        };
                        Ok::<_, StoreError>((held, partial))
                    })
                    .await;
                    match opened {
                        Ok(Ok((held, partial))) => {
                            if let Some(p) = partial {
                                if !p.is_empty() {
                                    tracing::info!(gateway = %identity, upload = %offer.upload_id, offset = p.len(), size = offer.size, "resuming upload");
                                }
                                sink = Some(spawn_sink(
                                    shared.store.clone(),
                                    identity.clone(),
                                    offer.clone(),
                                    p,
                                    guard,
                                    shared.destinations_for(&offer),
                                ));
                            }
                            rx.held(held.state())
                                .map_err(|e| StreamError::Protocol(e.to_string()))?;
                        }
                        Ok(Err(e)) => {
                            tracing::error!(gateway = %identity, error = %e, "cannot open upload in the store");
                            reject(
                                shared,
                                &mut rx,
                                RejectReason::Unavailable,
                                &e.to_string(),
                                true,
                            );
                        }
                        Err(e) => {
                            reject(
                                shared,
                                &mut rx,
                                RejectReason::Unavailable,
                                &e.to_string(),
                                true,
                            );
                        }
                    }
                }
                ReceiverEvent::Data { data, .. } => {
                    shared.metrics.bytes_received.inc_by(data.len() as u64);
                    bytes_this_stream += data.len() as u64;
                    if let Some(s) = &sink
                        && s.send(SinkMsg::Data(data)).await.is_err()
                    {
                        reject(
                            shared,
                            &mut rx,
                            RejectReason::Unavailable,
                            "store writer stopped",
                            true,
                        );
                    }
                }
                ReceiverEvent::Complete => {
                    let (tx, reply) = oneshot::channel();
                    let result = match sink.take() {
                        // A writer that is gone is central's trouble, not the
                        // item's: unavailable (retry), never a verification
                        // failure with made-up sizes.
                        Some(s) if s.send(SinkMsg::Commit(tx)).await.is_ok() => {
                            reply.await.unwrap_or(Err(StoreError::WriterStopped))
                        }
                        _ => Err(StoreError::WriterStopped),
                    };
                    match result {
                        Ok(stored) => {
                            let row = &stored.value;
                            shared
                                .metrics
                                .items_committed
                                .get_or_create(&LaneLabels {
                                    lane: row.lane.clone(),
                                })
                                .inc();
                            shared.metrics.bytes_committed.inc_by(row.size);
                            let ecg = row.metadata.get("ecg").is_some();
                            shared
                                .metrics
                                .observe_commit(&row.lane, ecg, row.end_to_end_ms);
                            if let Some(reason) =
                                row.metadata.get("quarantine").and_then(|v| v.as_str())
                                && ecg
                            {
                                shared.metrics.ecg_quarantined.inc();
                                tracing::warn!(gateway = %identity, upload = %row.upload_id, reason,
                                    "ECG item quarantined by its gateway: filed for review, not for reading");
                            }
                            tracing::info!(
                                gateway = %identity, upload = %row.upload_id, kind = %row.kind, lane = %row.lane,
                                size = row.size, received_on_this_stream = bytes_this_stream, "committed"
                            );
                            rx.committed(&stored)
                                .map_err(|e| StreamError::Protocol(e.to_string()))?;
                        }
                        Err(
                            e @ (StoreError::HashMismatch { .. } | StoreError::SizeMismatch { .. }),
                        ) => {
                            tracing::warn!(gateway = %identity, error = %e, "upload failed verification; it will restart from zero");
                            reject(
                                shared,
                                &mut rx,
                                RejectReason::HashMismatch,
                                &e.to_string(),
                                true,
                            );
                        }
                        Err(e) => {
                            tracing::error!(gateway = %identity, error = %e, "cannot store upload");
                            reject(
                                shared,
                                &mut rx,
                                RejectReason::Unavailable,
                                &e.to_string(),
                                true,
                            );
                        }
                    }
                }
            }
        }
        while let Some(env) = rx.poll_transmit() {
            write_message(&mut send, &env).await?;
        }
        if rx.is_done() {
            let _ = send.finish();
            // Let the verdict reach the gateway before the stream drops.
            let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
            return Ok(());
        }
        let deadline = rx.poll_timeout();
        let next = match deadline {
            Some(d) => {
                let wait = d.saturating_duration_since(Instant::now());
                match tokio::time::timeout(wait, reader.next()).await {
                    Ok(r) => r?,
                    Err(_) => {
                        rx.handle_timeout(Instant::now());
                        continue;
                    }
                }
            }
            None => reader.next().await?,
        };
        match next {
            Some(env) => {
                if let Err(e) = rx.handle_message(env, Instant::now()) {
                    tracing::warn!(gateway = %identity, error = %e, "upload protocol violation; stream reset");
                    let _ = send.reset(close::PROTOCOL.into());
                    return Err(StreamError::Protocol(e.to_string()));
                }
            }
            // The gateway finished its side early: it gave up this attempt.
            None => return Ok(()),
        }
    }
}

fn reject(
    shared: &Shared,
    rx: &mut UploadReceiver,
    reason: RejectReason,
    detail: &str,
    retryable: bool,
) {
    shared
        .metrics
        .rejections
        .get_or_create(&ReasonLabels {
            reason: format!("{reason:?}").to_lowercase(),
        })
        .inc();
    rx.reject(reason, detail, retryable);
}
