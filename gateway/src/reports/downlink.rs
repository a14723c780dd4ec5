//! Reports arriving from central on streams it opens: the upload exchange
//! mirrored, driven by the protocol crate's [`UploadReceiver`] at this
//! end. The box says what it already holds (a cut delivery resumes where
//! it stopped; a report it holds is answered COMMITTED again, never kept
//! twice) and answers COMMITTED only with the store's proof that the
//! report and its deliveries are on this box's stable storage.

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use yilian_link::{LinkError, MessageReader, write_message};
use yilian_protocol::messages::{Offer, RejectReason, envelope::Body};
use yilian_protocol::upload::{DEFAULT_IDLE_TIMEOUT, HeldState, ReceiverEvent, UploadReceiver};

use super::store::{Holding, ReportStore, ReportStoreError};
use crate::metrics::GatewayMetrics;

/// The kind central gives a report on the wire.
pub const REPORT_KIND: &str = "report";
/// Larger is not a report (a PDF of a few MB is).
const MAX_REPORT: u64 = 64 * 1024 * 1024;
/// Report streams served at once; central sends at most three routine and
/// four urgent reports at a time.
const MAX_STREAMS: usize = 8;

/// What the box's end of the downlink needs.
#[derive(Clone)]
pub struct Downlink {
    pub store: ReportStore,
    /// The sinks each report is queued for, by kind.
    pub sinks: Vec<yilian_gateway_config::schema::ReportSinkSection>,
    pub metrics: GatewayMetrics,
    /// Told when a report arrived, so the sinks look at once.
    pub arrived: Arc<Notify>,
}

impl Downlink {
    /// Serves the streams central opens on `conn` until it closes.
    pub async fn serve(self, conn: quinn::Connection) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS));
        loop {
            let (send, recv) = match conn.accept_bi().await {
                Ok(s) => s,
                Err(_) => return,
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let me = self.clone();
            tokio::spawn(async move {
                if let Err(e) = me.stream(send, recv).await {
                    tracing::debug!(error = %e, "report stream ended with an error; central sends it again");
                }
                drop(permit);
            });
        }
    }

    async fn stream(
        &self,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Result<(), LinkError> {
        let mut reader = MessageReader::new(recv);
        let mut rx = UploadReceiver::new(MAX_REPORT, DEFAULT_IDLE_TIMEOUT, Instant::now());
        let Some(first) = reader.next().await? else {
            return Ok(());
        };
        match &first.body {
            Some(Body::Offer(o)) if o.kind == REPORT_KIND => {}
            _ => {
                // Central opens streams only for reports; anything else is
                // from a newer central this box does not understand.
                let _ = send.reset(0u32.into());
                return Ok(());
            }
        }
        if let Err(e) = rx.handle_message(first, Instant::now()) {
            tracing::warn!(error = %e, "central offered a report this box cannot take");
        }
        let mut partial: Option<(Offer, File)> = None;
        loop {
            while let Some(ev) = rx.poll_event() {
                match ev {
                    ReceiverEvent::Offered(offer) => {
                        let (store, id) = (self.store.clone(), offer.upload_id.clone());
                        let opened = tokio::task::spawn_blocking(move || {
                            let held = store.held(&id)?;
                            let file = match &held {
                                Holding::Partial(n) => Some(store.open_partial(&id, *n)?),
                                Holding::Held(_) => None,
                            };
                            Ok::<_, ReportStoreError>((held, file))
                        })
                        .await;
                        match opened {
                            Ok(Ok((Holding::Held(proof), _))) => {
                                tracing::info!(report = %offer.upload_id, "report held already (its COMMITTED was lost); telling central again");
                                let _ = rx.held(HeldState::Committed(&proof));
                            }
                            Ok(Ok((Holding::Partial(n), Some(file)))) => {
                                if n > 0 {
                                    tracing::info!(report = %offer.upload_id, offset = n, size = offer.size, "resuming a report");
                                }
                                partial = Some((offer, file));
                                let _ = rx.held(HeldState::Partial(n));
                            }
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => {
                                tracing::error!(error = %e, "cannot keep a report from central; it stays at central and comes again");
                                rx.reject(RejectReason::Unavailable, &e.to_string(), true);
                            }
                            Err(e) => rx.reject(RejectReason::Unavailable, &e.to_string(), true),
                        }
                    }
                    ReceiverEvent::Data { data, .. } => {
                        if let Some((offer, file)) = partial.take() {
                            let store = self.store.clone();
                            let r = tokio::task::spawn_blocking(move || {
                                let mut file = file;
                                store
                                    .append(&mut file, &offer.upload_id, &data)
                                    .map(|()| (offer, file))
                            })
                            .await;
                            match r {
                                Ok(Ok(p)) => partial = Some(p),
                                Ok(Err(e)) => {
                                    tracing::error!(error = %e, "cannot write a report from central");
                                    rx.reject(RejectReason::Unavailable, &e.to_string(), true);
                                }
                                Err(e) => {
                                    rx.reject(RejectReason::Unavailable, &e.to_string(), true)
                                }
                            }
                        }
                    }
                    ReceiverEvent::Complete => {
                        let Some((offer, file)) = partial.take() else {
                            rx.reject(RejectReason::Unavailable, "nothing received", true);
                            continue;
                        };
                        drop(file);
                        let kind = offer
                            .metadata
                            .get("report_kind")
                            .cloned()
                            .unwrap_or_default();
                        // An application ACK goes to the sender it answers;
                        // a report to every sink that takes its kind.
                        let sinks: Vec<String> =
                            if offer.metadata.get("format").map(String::as_str) == Some("ack") {
                                vec![crate::reports::sinks::app_ack::SINK.to_owned()]
                            } else {
                                self.sinks
                                    .iter()
                                    .filter(|s| s.takes(&kind))
                                    .map(|s| s.name.clone())
                                    .collect()
                            };
                        let store = self.store.clone();
                        let o = offer.clone();
                        let r = tokio::task::spawn_blocking(move || store.commit(&o, &sinks)).await;
                        match r {
                            Ok(Ok(proof)) => {
                                self.metrics.reports_received.inc();
                                tracing::info!(report = %offer.upload_id, urgent = offer.lane == yilian_protocol::Lane::Urgent as i32,
                                    status = offer.metadata.get("status").map_or("", String::as_str),
                                    "report from the hospital received");
                                let _ = rx.committed(&proof);
                                self.arrived.notify_waiters();
                            }
                            Ok(Err(e @ ReportStoreError::Mismatch { .. })) => {
                                tracing::warn!(error = %e, "a report arrived damaged; it is sent again from the start");
                                rx.reject(RejectReason::HashMismatch, &e.to_string(), true);
                            }
                            Ok(Err(e)) => {
                                tracing::error!(error = %e, "cannot keep a report from central; it stays at central and comes again");
                                rx.reject(RejectReason::Unavailable, &e.to_string(), true);
                            }
                            Err(e) => rx.reject(RejectReason::Unavailable, &e.to_string(), true),
                        }
                    }
                }
            }
            while let Some(env) = rx.poll_transmit() {
                write_message(&mut send, &env).await?;
            }
            if rx.is_done() {
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
                return Ok(());
            }
            let next = match rx.poll_timeout() {
                Some(d) => match tokio::time::timeout_at(d.into(), reader.next()).await {
                    Ok(r) => r?,
                    Err(_) => {
                        rx.handle_timeout(Instant::now());
                        continue;
                    }
                },
                None => reader.next().await?,
            };
            match next {
                Some(env) => {
                    if let Err(e) = rx.handle_message(env, Instant::now()) {
                        tracing::warn!(error = %e, "report stream protocol violation; stream reset");
                        let _ = send.reset(0u32.into());
                        return Ok(());
                    }
                }
                None => return Ok(()),
            }
        }
    }
}
