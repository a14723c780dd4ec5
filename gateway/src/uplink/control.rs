//! The control stream: a heartbeat with the backlog, metrics and versions
//! every interval; central's answers carry the clinic's worklist and the
//! configuration published for this box.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use yilian_link::{MessageReader, write_message};
use yilian_protocol::messages::{Envelope, Heartbeat, HeartbeatAck, LaneBacklog, envelope::Body};
use yilian_spool::{Lane, Spool};

use super::UplinkError;
use super::upload::wire_lane;
use crate::metrics::GatewayMetrics;

/// What each heartbeat reports besides the backlog.
#[derive(Clone)]
pub(super) struct HeartbeatSource {
    pub(super) spool: Spool,
    pub(super) metrics: GatewayMetrics,
    pub(super) config_version: String,
    pub(super) interval: Duration,
    pub(super) worklist: crate::worklist::WorklistCache,
    pub(super) pushed: crate::pushed::Pushed,
    pub(super) config_source: PathBuf,
    pub(super) reload: Arc<Notify>,
    /// Where the clock's offset from central is shown.
    pub(super) status: tokio::sync::watch::Sender<super::LinkStatus>,
    /// Receipts of reports delivered at the clinic go up until recorded.
    pub(super) reports: crate::reports::ReportStore,
}

pub(super) async fn heartbeat_loop(
    mut send: quinn::SendStream,
    mut reader: MessageReader,
    source: HeartbeatSource,
) -> Result<(), UplinkError> {
    let mut seq = 0u64;
    // When each heartbeat left, for the clock comparison.
    let mut sent_at: Option<(u64, i64)> = None;
    let spool = source.spool.clone();
    let mut tick = tokio::time::interval(source.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                seq += 1;
                let s = spool.clone();
                let stats = tokio::task::spawn_blocking(move || s.stats()).await.ok().and_then(Result::ok);
                let r = source.reports.clone();
                let mut receipts = tokio::task::spawn_blocking(move || r.pending_receipts(100))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                // Central's operators read these in English.
                for r in &mut receipts {
                    r.detail = crate::reports::sinks::describe(&r.detail, crate::i18n::Language::En);
                }
                let now = crate::now_ms();
                sent_at = Some((seq, now));
                let backlog = stats.map(|st| {
                    Lane::ALL.iter().map(|&lane| {
                        let l = &st.lanes[lane as usize];
                        LaneBacklog {
                            lane: wire_lane(lane) as i32,
                            items: l.items,
                            bytes: l.bytes,
                            oldest_age_seconds: l.oldest_received_ms.map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0),
                        }
                    }).collect()
                }).unwrap_or_default();
                let hb = Envelope::new(Body::Heartbeat(Heartbeat {
                    seq,
                    sent_unix_ms: now,
                    backlog,
                    metrics_text: source.metrics.encode(),
                    config_version: source.config_version.clone(),
                    certificate_not_after: source.metrics.certificate_expiry.get(),
                    worklist_version: source.worklist.version(),
                    pushed_config_version: source.pushed.version(),
                    pushed_config_error: source.pushed.error(),
                    receipts,
                }));
                write_message(&mut send, &hb).await?;
            }
            msg = reader.next() => match msg? {
                Some(Envelope { body: Some(Body::HeartbeatAck(HeartbeatAck { seq: acked, worklist, config, central_unix_ms, receipts_recorded })), .. }) => {
                    if let Some((s, sent)) = sent_at
                        && s == acked
                        && central_unix_ms > 0
                    {
                        // Central read its clock about halfway between our
                        // send and our receipt.
                        let offset = (sent + crate::now_ms()) / 2 - central_unix_ms;
                        source.metrics.clock_offset.set(offset as f64 / 1000.0);
                        source.status.send_modify(|st| st.clock_offset_ms = Some(offset));
                    }
                    if let Some(w) = worklist {
                        let (cache, n) = (source.worklist.clone(), w.entries.len());
                        let version = w.version.clone();
                        match tokio::task::spawn_blocking(move || cache.replace(w.version, w.entries)).await {
                            Ok(Ok(())) => tracing::info!(version = %version, entries = n, "worklist updated from central"),
                            _ => tracing::error!("cannot store the worklist central sent; the old one stays in use"),
                        }
                    }
                    if let Some(c) = config {
                        apply_pushed(&source, c).await;
                    }
                    if !receipts_recorded.is_empty() {
                        let r = source.reports.clone();
                        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || r.receipts_recorded(&receipts_recorded)).await {
                            tracing::warn!(error = %e, "cannot note the receipts central recorded; they go up again");
                        }
                    }
                }
                Some(_) => {}
                None => return Ok(()),
            }
        }
    }
}

/// Validates configuration published at central; keeps it and asks for a
/// restart with it, or records the refusal that the next heartbeats report.
async fn apply_pushed(source: &HeartbeatSource, push: yilian_protocol::messages::ConfigPush) {
    let pushed = source.pushed.clone();
    let path = source.config_source.clone();
    let version = push.version.clone();
    if version.is_empty() {
        // Withdrawn at central: back to the box's own file.
        let r = tokio::task::spawn_blocking(move || pushed.withdraw()).await;
        if matches!(r, Ok(true)) {
            tracing::info!(
                "the published configuration was withdrawn at central; running with this box's own file"
            );
            source.reload.notify_one();
        }
        return;
    }
    let r =
        tokio::task::spawn_blocking(move || pushed.offer(&path, &push.version, &push.toml)).await;
    match r {
        Ok(Ok(())) => {
            tracing::info!(version = %version, "applying the configuration published at central");
            source.reload.notify_one();
        }
        Ok(Err(reason)) => tracing::error!(version = %version, %reason,
            "refused the configuration published at central; the current one stays in use"),
        Err(_) => {}
    }
}
