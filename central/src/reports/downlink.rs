//! The way down: while a box that takes reports is connected, its waiting
//! reports go to it on streams central opens, urgent ones first, a few at
//! a time. Each is the upload exchange mirrored (the protocol crate's
//! [`UploadSender`] at central, its receiver at the box): the box answers
//! with what it already holds, so a cut delivery resumes, and COMMITTED
//! only once the report is on its own stable storage. Only then does
//! central mark it held; anything less is retried, and the box keeps one
//! copy whatever it is sent twice.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use yilian_link::{LinkError, MessageReader, write_chunk_message, write_message};
use yilian_protocol::messages::Offer;
use yilian_protocol::upload::{
    DEFAULT_CHUNK_SIZE, DEFAULT_IDLE_TIMEOUT, SenderTransmit, UploadError, UploadOutcome,
    UploadSender,
};
use yilian_protocol::{BoxIdentity, Lane};

use crate::store::{ReportRow, Store, StoreError, now_ms};

/// Routine reports in flight to one box at once.
const IN_FLIGHT: usize = 3;
/// Urgent reports (critical values, STAT) in flight besides: they never
/// wait for a routine PDF to finish, and their streams' higher priority
/// puts their bytes first on the link.
const URGENT_IN_FLIGHT: usize = 4;

/// The item kind of a report on the wire.
pub const REPORT_KIND: &str = "report";

#[derive(Debug, thiserror::Error)]
enum DownlinkError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("the box closed the report stream without a verdict")]
    NoVerdict,
    #[error("report protocol: {0}")]
    Protocol(#[from] UploadError),
    #[error("stored report: {0}")]
    Store(#[from] StoreError),
}

/// What the box is told about a report besides its bytes.
fn metadata(r: &ReportRow) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            m.insert(k.to_owned(), v.to_owned());
        }
    };
    put("format", "hl7");
    put("message_type", &r.message_type);
    put("control_id", &r.control_id);
    put("report_kind", &r.kind);
    put("status", &r.status);
    put("title", &r.title);
    put("patient_id", &r.patient_id);
    put("accession", &r.accession);
    put("placer_order", &r.placer);
    put("study_uid", &r.study_uid);
    put("replaces", r.replaces.as_deref().unwrap_or(""));
    put("matched_by", r.matched_by.as_deref().unwrap_or(""));
    if r.urgent {
        put("urgent", "1");
    }
    if r.kind == "ack" {
        m.insert("format".into(), "ack".into());
    }
    for (k, v) in &r.extra {
        m.entry(k.clone()).or_insert_with(|| v.clone());
    }
    m
}

/// Serves one connection of a box that takes reports, until it closes.
pub async fn serve_box(
    conn: quinn::Connection,
    identity: BoxIdentity,
    store: Store,
    wake: Arc<Notify>,
) {
    let gateway = identity.to_string();
    let mut tasks: JoinSet<(String, bool)> = JoinSet::new();
    let mut in_flight: HashSet<String> = HashSet::new();
    let (mut routine, mut urgent) = (0usize, 0usize);
    loop {
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if routine < IN_FLIGHT || urgent < URGENT_IN_FLIGHT {
            // Urgent rows come first: with the routine slots full, the
            // look still finds an urgent report that just arrived.
            let (s, g) = (store.clone(), gateway.clone());
            let look = URGENT_IN_FLIGHT + IN_FLIGHT * 2;
            let due = tokio::task::spawn_blocking(move || s.report_downlink_next(&g, look)).await;
            match due {
                Ok(Ok(rows)) => {
                    for row in rows {
                        let is_urgent = row.report.urgent;
                        let free = if is_urgent {
                            urgent < URGENT_IN_FLIGHT
                        } else {
                            routine < IN_FLIGHT
                        };
                        if !free || !in_flight.insert(row.report.id.clone()) {
                            continue;
                        }
                        if is_urgent {
                            urgent += 1;
                        } else {
                            routine += 1;
                        }
                        let (conn, store, g) = (conn.clone(), store.clone(), gateway.clone());
                        tasks.spawn(async move {
                            let id = row.report.id.clone();
                            settle(&conn, &store, &g, row.report, row.attempts).await;
                            (id, is_urgent)
                        });
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(gateway = %gateway, error = %e, "cannot read the report queue")
                }
                Err(_) => return,
            }
        }
        tokio::select! {
            _ = &mut woken => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            Some(done) = tasks.join_next() => {
                if let Ok((id, was_urgent)) = done {
                    in_flight.remove(&id);
                    if was_urgent {
                        urgent -= 1;
                    } else {
                        routine -= 1;
                    }
                }
            }
            _ = conn.closed() => {
                while tasks.join_next().await.is_some() {}
                return;
            }
        }
    }
}

/// Delivers one report and records what became of it.
async fn settle(
    conn: &quinn::Connection,
    store: &Store,
    gateway: &str,
    report: ReportRow,
    attempts: u32,
) {
    let started = Instant::now();
    let outcome = deliver(conn, store, &report).await;
    let s = store.clone();
    let (id, g) = (report.id.clone(), gateway.to_owned());
    let retry = |why: String| {
        // 5 s, doubling, at most 10 minutes.
        let delay = (5_000i64 << attempts.min(7)).min(600_000);
        move || s.report_downlink_retry(&id, &g, delay, &why)
    };
    let recorded = match outcome {
        Ok(UploadOutcome::Committed) => {
            tracing::info!(gateway, report = %report.id, urgent = report.urgent, status = %report.status,
                waited_s = (now_ms() - report.received_ms) as f64 / 1000.0,
                seconds = started.elapsed().as_secs_f64(), "report held by the clinic's box");
            let (s, id, g) = (store.clone(), report.id.clone(), gateway.to_owned());
            tokio::task::spawn_blocking(move || s.report_at_box(&id, &g)).await
        }
        Ok(UploadOutcome::Rejected { reason, detail, .. }) => {
            tracing::warn!(gateway, report = %report.id, ?reason, %detail, "the box cannot take a report now; retrying");
            tokio::task::spawn_blocking(retry(format!("{reason:?}: {detail}"))).await
        }
        Ok(UploadOutcome::TimedOut) => {
            tokio::task::spawn_blocking(retry("the box did not answer in time".into())).await
        }
        Err(e) => {
            tracing::debug!(gateway, report = %report.id, error = %e, "report delivery interrupted; will resume");
            tokio::task::spawn_blocking(retry(e.to_string())).await
        }
    };
    if let Ok(Err(e)) = recorded {
        tracing::error!(gateway, report = %report.id, error = %e, "cannot record a report delivery; it will be sent again (the box keeps one copy)");
    }
}

async fn deliver(
    conn: &quinn::Connection,
    store: &Store,
    report: &ReportRow,
) -> Result<UploadOutcome, DownlinkError> {
    let bytes = {
        let (s, sha) = (store.clone(), report.sha256.clone());
        Bytes::from(
            tokio::task::spawn_blocking(move || s.read_blob(&sha))
                .await
                .map_err(|e| StoreError::Io {
                    context: "read report",
                    path: Default::default(),
                    source: std::io::Error::other(e.to_string()),
                })??,
        )
    };
    let offer = Offer {
        upload_id: report.id.clone(),
        sha256: hex::decode(&report.sha256).unwrap_or_default(),
        size: bytes.len() as u64,
        kind: REPORT_KIND.to_owned(),
        lane: if report.urgent {
            Lane::Urgent
        } else {
            Lane::Clinical
        } as i32,
        metadata: metadata(report),
        received_unix_ms: report.received_ms,
        source: report.source.clone(),
    };
    let mut tx = UploadSender::new(
        offer,
        DEFAULT_CHUNK_SIZE,
        DEFAULT_IDLE_TIMEOUT,
        Instant::now(),
    )?;
    let (mut send, recv) = conn.open_bi().await.map_err(LinkError::from)?;
    let _ = send.set_priority(if report.urgent { 2 } else { 1 });
    let mut reader = MessageReader::new(recv);
    loop {
        if let Some(outcome) = tx.outcome() {
            let _ = send.finish();
            return Ok(outcome.clone());
        }
        match tx.poll_transmit() {
            Some(SenderTransmit::Message(env)) => write_message(&mut send, &env).await?,
            Some(SenderTransmit::Chunk { offset, len }) => {
                let start = offset as usize;
                let data = bytes.slice(start..(start + len).min(bytes.len()));
                write_chunk_message(&mut send, offset, data).await?;
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
                    None => return Err(DownlinkError::NoVerdict),
                }
            }
        }
    }
}
