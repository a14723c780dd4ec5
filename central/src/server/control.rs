//! The control stream: Hello and its answer, then heartbeats; each
//! answer carries the clinic's worklist and the configuration published
//! for the box when they changed.

use yilian_link::{MessageReader, write_message};
use yilian_protocol::messages::{
    ConfigPush, Envelope, HeartbeatAck, HelloAck, WorklistSnapshot, envelope::Body,
};
use yilian_protocol::{BoxIdentity, Lane, SUPPORTED_VERSIONS};

use super::StreamError;
use crate::metrics::GatewayLabels;
use crate::registry::ReportedState;
use crate::shared::Shared;

pub(super) async fn control_stream(
    first: Envelope,
    mut send: quinn::SendStream,
    mut reader: MessageReader,
    conn: &quinn::Connection,
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
    // With instances sharing the index, the newest connection of a box
    // wins across them too: the one that said Hello (the box says it only
    // on the connection it keeps, never on a parallel try it closes) takes
    // the box's next epoch, and the instance holding an older one closes it
    // (`close_superseded`).
    if shared.store.shares_connections() {
        let store = shared.store.clone();
        let (gw, from) = (identity.to_string(), conn.remote_address().to_string());
        match tokio::task::spawn_blocking(move || store.claim_connection(&gw, &from)).await {
            Ok(Ok(Some((epoch, _)))) => shared.set_epoch(identity, epoch, conn),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(gateway = %identity, error = %e,
                    "cannot record this connection in the shared index; another instance may hold an older one of this box until its idle timeout");
            }
            Err(_) => {}
        }
    }
    let ack = Envelope::new(Body::HelloAck(HelloAck {
        protocol_version: version,
        central_version: env!("CARGO_PKG_VERSION").to_owned(),
        central_unix_ms: crate::store::now_ms(),
        identity: identity.to_string(),
    }));
    write_message(&mut send, &ack).await?;
    if hello.takes_reports {
        tokio::spawn(crate::reports::downlink::serve_box(
            conn.clone(),
            identity.clone(),
            shared.store.clone(),
            shared.reports_wake.clone(),
        ));
    }

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
                let receipts_recorded = record_receipts(shared, identity, &hb.receipts).await;
                write_message(
                    &mut send,
                    &Envelope::new(Body::HeartbeatAck(HeartbeatAck {
                        seq: hb.seq,
                        worklist,
                        config,
                        central_unix_ms: crate::store::now_ms(),
                        receipts_recorded,
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

/// Records where reports reached the clinic; returns the receipts now
/// durable, which the box stops sending.
async fn record_receipts(
    shared: &Shared,
    identity: &BoxIdentity,
    receipts: &[yilian_protocol::messages::ReportReceipt],
) -> Vec<String> {
    if receipts.is_empty() {
        return Vec::new();
    }
    let (store, gateway, receipts) = (
        shared.store.clone(),
        identity.to_string(),
        receipts.to_vec(),
    );
    let r = tokio::task::spawn_blocking(move || {
        let mut recorded = Vec::new();
        let mut timings = Vec::new();
        for receipt in &receipts {
            match store.report_receipt(&gateway, receipt) {
                Ok(t) => {
                    recorded.push(receipt.key());
                    timings.extend(t);
                    if receipt.outcome == "delivered" {
                        tracing::info!(gateway = %gateway, report = %receipt.report_id, sink = %receipt.sink,
                            "report delivered at the clinic");
                    } else {
                        tracing::warn!(gateway = %gateway, report = %receipt.report_id, sink = %receipt.sink,
                            detail = %receipt.detail, "a clinic's sink refused a report; the box's technician must look");
                    }
                }
                Err(e) => {
                    tracing::error!(gateway = %gateway, error = %e, "cannot record a report receipt; the box sends it again");
                    break;
                }
            }
        }
        (recorded, timings)
    })
    .await;
    match r {
        Ok((recorded, timings)) => {
            for t in &timings {
                shared.metrics.reports.observe(t);
            }
            recorded
        }
        Err(_) => Vec::new(),
    }
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
