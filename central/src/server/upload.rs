//! One stream per upload: the offer, what central already holds, the
//! chunks written on a blocking thread while more arrive, and COMMITTED
//! only with the store's proof.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use yilian_link::{MessageReader, write_message};
use yilian_protocol::BoxIdentity;
use yilian_protocol::messages::{Envelope, Offer, RejectReason};
use yilian_protocol::upload::{DEFAULT_IDLE_TIMEOUT, ReceiverEvent, UploadReceiver};

use super::StreamError;
use crate::metrics::{LaneLabels, ReasonLabels};
use crate::shared::{Shared, close};
use crate::store::{ItemRow, PartialUpload, Store, StoreError, Stored};

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

pub(super) async fn upload_stream(
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
    // With payloads in a bucket: the bytes still to come when the upload
    // opened, and its share of the parts' memory, taken at its first byte.
    let mut unheld = 0u64;
    let mut buffer: Option<crate::shared::BufferShare> = None;

    loop {
        while let Some(ev) = rx.poll_event() {
            match ev {
                ReceiverEvent::Offered(offer) => {
                    let key = format!("{identity}/{}", offer.upload_id);
                    let guard = shared.upload_lock(key).lock_owned().await;
                    let store = shared.store.clone();
                    let id = identity.clone();
                    let o = offer.clone();
                    let destinations = shared
                        .routes
                        .destinations(&offer.kind, offer.metadata.keys());
                    let routed = destinations.clone();
                    let opened = tokio::task::spawn_blocking(move || {
                        let held = store.held(&id, &o, &routed)?;
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
                                unheld = offer.size.saturating_sub(p.len());
                                if !p.is_empty() {
                                    tracing::info!(gateway = %identity, upload = %offer.upload_id, offset = p.len(), size = offer.size, "resuming upload");
                                }
                                sink = Some(spawn_sink(
                                    shared.store.clone(),
                                    identity.clone(),
                                    offer.clone(),
                                    p,
                                    guard,
                                    destinations,
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
                    if buffer.is_none()
                        && sink.is_some()
                        && let Some(b) = &shared.upload_buffer
                    {
                        // Waiting here holds the box back: this stream is
                        // not read, and QUIC's flow control stops it.
                        buffer = b.share(unheld, &shared.metrics).await;
                    }
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
                    // The writer has sent or dropped every byte it held.
                    buffer = None;
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
                            let ecg = row.metadata.get(yilian_protocol::kind::keys::ECG).is_some();
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
