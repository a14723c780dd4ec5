//! One stream per leased item, several in flight, urgent lanes first.
//!
//! Every leased item is settled exactly once by the task that uploads it:
//! `ack` only on COMMITTED, `release` when the link failed, `defer` when
//! central is temporarily unable, `nack` or `dead_letter` when central
//! refused the item itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use yilian_link::{LinkError, MessageReader, write_chunk_message, write_message};
use yilian_protocol::RejectReason;
use yilian_protocol::messages::Offer;
use yilian_protocol::upload::{
    DEFAULT_IDLE_TIMEOUT, SenderTransmit, UploadError, UploadOutcome, UploadSender,
};
use yilian_spool::{Lane, Lease, Payload, Spool, SpoolError};

use crate::bandwidth::Limiter;
use crate::metrics::{GatewayMetrics, LaneLabels};

/// How long an item waits when central says it cannot store right now.
const UNAVAILABLE_DELAY: Duration = Duration::from_secs(30);

fn lane_priority(lane: Lane) -> i32 {
    match lane {
        Lane::Urgent => 2,
        Lane::Clinical => 1,
        Lane::Bulk => 0,
    }
}

pub(super) fn wire_lane(lane: Lane) -> yilian_protocol::Lane {
    match lane {
        Lane::Urgent => yilian_protocol::Lane::Urgent,
        Lane::Clinical => yilian_protocol::Lane::Clinical,
        Lane::Bulk => yilian_protocol::Lane::Bulk,
    }
}

/// Publishes the cap in force and the urgent allowance left.
pub(super) async fn report_bandwidth(
    limiter: Arc<Limiter>,
    metrics: GatewayMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let mut last: Option<Option<f64>> = None;
    loop {
        let cap = limiter.current_cap();
        if last != Some(cap) {
            let shown = crate::bandwidth::Rate(cap);
            tracing::info!(cap = %shown, "upload cap now");
            last = Some(cap);
        }
        metrics.rate_cap.set(cap.map_or(0.0, |bits| bits / 8.0));
        metrics
            .urgent_allowance
            .set(limiter.allowance_left().min(i64::MAX as u64) as i64);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("central closed the upload stream without a verdict")]
    NoVerdict,
    #[error("upload protocol: {0}")]
    Protocol(#[from] UploadError),
    #[error("local payload: {0}")]
    Payload(String),
}

/// How an upload's bytes go out.
#[derive(Debug, Clone, Copy)]
pub(super) struct ChunkPlan {
    pub chunk_size: usize,
    /// Central speaks protocol version 2: an item that fits in one chunk
    /// is sent right behind its offer, without waiting for the Accept.
    /// Larger items wait, so a resumed one never sends its first chunk
    /// twice.
    pub send_ahead: bool,
}

/// Uploads one leased item and settles the lease.
pub(super) async fn upload_task(
    conn: quinn::Connection,
    spool: Spool,
    lease: Lease,
    plan: ChunkPlan,
    metrics: GatewayMetrics,
    limiter: Arc<Limiter>,
    settled: crate::settled::Settled,
) -> Lane {
    let lane = lease.lane;
    let upload_id = lease.upload_id.clone();
    let started = Instant::now();
    let result = attempt(&conn, &spool, &lease, plan, &metrics, &limiter).await;
    // Whether the item reached its end (delivered or set aside), which
    // whoever waits on a delivery is told.
    let settle = move || -> Result<bool, SpoolError> {
        let mut last = false;
        match result {
            Ok(UploadOutcome::Committed) => {
                let size = lease.size;
                spool.ack(lease)?;
                last = true;
                metrics
                    .uploaded_items
                    .get_or_create(&LaneLabels {
                        lane: lane.name().to_owned(),
                    })
                    .inc();
                tracing::debug!(upload = %upload_id, lane = %lane, size, seconds = started.elapsed().as_secs_f64(), "delivered");
            }
            Ok(UploadOutcome::Rejected {
                reason,
                detail,
                retryable,
            }) => {
                metrics.retry(&format!("rejected_{reason:?}").to_lowercase());
                match reason {
                    RejectReason::Unavailable | RejectReason::Forbidden => {
                        tracing::warn!(upload = %upload_id, ?reason, %detail, "central cannot take the item now; retrying later");
                        spool.defer(lease, UNAVAILABLE_DELAY, &detail)?;
                    }
                    RejectReason::TooLarge | RejectReason::InvalidOffer => {
                        tracing::error!(upload = %upload_id, ?reason, %detail, "central refused the item; set aside for an operator");
                        spool.dead_letter(lease, &format!("{reason:?}: {detail}"))?;
                        last = true;
                    }
                    _ if retryable || reason == RejectReason::HashMismatch => {
                        tracing::warn!(upload = %upload_id, ?reason, %detail, "upload rejected; will retry");
                        spool.nack(lease, &format!("{reason:?}: {detail}"))?;
                    }
                    _ => {
                        spool.dead_letter(lease, &format!("{reason:?}: {detail}"))?;
                        last = true;
                    }
                }
            }
            Ok(UploadOutcome::TimedOut) => {
                metrics.retry("timeout");
                spool.release(lease)?;
            }
            Err(AttemptError::Link(e)) => {
                metrics.retry("link");
                tracing::debug!(upload = %upload_id, error = %e, "upload interrupted; will resume");
                spool.release(lease)?;
            }
            Err(AttemptError::NoVerdict) => {
                metrics.retry("no_verdict");
                spool.release(lease)?;
            }
            Err(AttemptError::Protocol(e)) => {
                metrics.retry("protocol");
                tracing::warn!(upload = %upload_id, error = %e, "upload protocol error");
                spool.nack(lease, &e.to_string())?;
            }
            Err(AttemptError::Payload(e)) => {
                metrics.retry("payload");
                tracing::error!(upload = %upload_id, error = %e, "spooled payload unreadable; set aside for an operator");
                spool.dead_letter(lease, &e)?;
                last = true;
            }
        }
        Ok(last)
    };
    match tokio::task::spawn_blocking(settle).await {
        Ok(Ok(true)) => settled.tell(),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot record upload result; the item will be retried")
        }
        Err(e) => tracing::error!(error = %e, "upload settlement panicked"),
    }
    lane
}

async fn attempt(
    conn: &quinn::Connection,
    spool: &Spool,
    lease: &Lease,
    plan: ChunkPlan,
    metrics: &GatewayMetrics,
    limiter: &Limiter,
) -> Result<UploadOutcome, AttemptError> {
    let payload = {
        let spool = spool.clone();
        let at = lease.payload_ref();
        tokio::task::spawn_blocking(move || spool.open_payload(&at))
            .await
            .map_err(|e| AttemptError::Payload(e.to_string()))?
            .map_err(|e| AttemptError::Payload(e.to_string()))?
    };
    let payload = Arc::new(payload);
    let offer = Offer {
        upload_id: lease.upload_id.clone(),
        sha256: lease.sha256.to_vec(),
        size: lease.size,
        kind: lease.kind.clone(),
        lane: wire_lane(lease.lane) as i32,
        metadata: lease.metadata.clone(),
        received_unix_ms: lease.received_ms,
        source: lease.source.clone(),
    };
    let mut tx = UploadSender::new(offer, plan.chunk_size, DEFAULT_IDLE_TIMEOUT, Instant::now())?;
    if plan.send_ahead && lease.size <= plan.chunk_size as u64 {
        tx.send_eagerly(lease.size);
    }
    let (mut send, recv) = conn.open_bi().await.map_err(LinkError::from)?;
    let _ = send.set_priority(lane_priority(lease.lane));
    let mut reader = MessageReader::new(recv);
    loop {
        if let Some(outcome) = tx.outcome() {
            let _ = send.finish();
            return Ok(outcome.clone());
        }
        let written = match tx.poll_transmit() {
            Some(SenderTransmit::Message(env)) => write_message(&mut send, &env).await,
            Some(SenderTransmit::Chunk { offset, len }) => {
                let data = read_chunk(payload.clone(), offset, len).await?;
                let urgent = lease.lane == Lane::Urgent;
                let r = write_paced(&mut send, offset, data, limiter, urgent, metrics).await;
                if r.is_ok() {
                    metrics.uploaded_bytes.inc_by(len as u64);
                }
                r
            }
            None => {
                let next = match tx.poll_timeout() {
                    Some(deadline) => {
                        match tokio::time::timeout_at(deadline.into(), reader.next()).await {
                            Ok(r) => r?,
                            Err(_) => {
                                tx.handle_timeout(Instant::now());
                                continue;
                            }
                        }
                    }
                    None => reader.next().await?,
                };
                match next {
                    Some(env) => tx.handle_message(env, Instant::now())?,
                    None => return Err(AttemptError::NoVerdict),
                }
                continue;
            }
        };
        if let Err(e) = written {
            // Central may have stopped the stream after rejecting: its
            // verdict would be waiting on the receive side.
            if let Ok(Ok(Some(env))) =
                tokio::time::timeout(Duration::from_secs(2), reader.next()).await
            {
                tx.handle_message(env, Instant::now())?;
                if tx.outcome().is_some() {
                    continue;
                }
            }
            return Err(AttemptError::Link(e));
        }
    }
}

/// Piece of a chunk written at a time under a cap: small enough that a
/// thin line is not flooded in one burst.
const PACED_PIECE: usize = 16 * 1024;

/// Writes one chunk, in pieces paced by the bandwidth cap when one is in
/// force.
async fn write_paced(
    send: &mut quinn::SendStream,
    offset: u64,
    data: Bytes,
    limiter: &Limiter,
    urgent: bool,
    metrics: &GatewayMetrics,
) -> Result<(), LinkError> {
    if limiter.current_cap().is_none() {
        return write_chunk_message(send, offset, data).await;
    }
    for mut part in yilian_protocol::encode_chunk_frame(offset, data) {
        while !part.is_empty() {
            let piece = part.split_to(part.len().min(PACED_PIECE));
            let waited = limiter.acquire(piece.len(), urgent).await;
            metrics.throttled.inc_by(waited.as_secs_f64());
            send.write_chunk(piece).await.map_err(LinkError::from)?;
        }
    }
    Ok(())
}

async fn read_chunk(payload: Arc<Payload>, offset: u64, len: usize) -> Result<Bytes, AttemptError> {
    tokio::task::spawn_blocking(move || {
        payload
            .read_vec_at(offset, len)
            .map(Bytes::from)
            .map_err(|e| AttemptError::Payload(format!("read at {offset}: {e}")))
    })
    .await
    .map_err(|e| AttemptError::Payload(e.to_string()))?
}
