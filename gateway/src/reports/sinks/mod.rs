//! Delivery of held reports to the clinic, one loop per configured sink:
//! take the oldest due report (urgent first), hand it to the sink, record
//! what happened. A sink that is down is retried with backoff; a sink
//! that refuses a report for good (the HIS answering AE) records the
//! refusal, which goes to central as a receipt and shows on the page.
//!
//! - [`folder`] — PDF or text, and a JSON sidecar, for the clinic's PC;
//! - [`printer`] — paper through CUPS;
//! - [`hl7`] — the clinic's HIS over MLLP;
//! - [`dicom`] — the clinic's DICOM viewer (Encapsulated PDF, Basic Text SR);
//! - [`app_ack`] — the hospital LIS's answers to the clinic's HL7 senders.

pub mod app_ack;
pub mod dicom;
pub mod folder;
pub mod hl7;
pub mod printer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use yilian_codecs::hl7::report::{Report, read_report};
use yilian_codecs::hl7::{Message, decode};
use yilian_gateway_config::clock::Clock;
use yilian_gateway_config::schema::{ReportSinkSection, SinkType};

use super::store::{HeldReport, ReportStore};
use crate::metrics::GatewayMetrics;

/// What became of one attempt.
#[derive(Debug)]
pub enum SinkVerdict {
    /// Delivered; the detail says where (a file name, a print job).
    Delivered(String),
    /// Not now (the HIS is down, the printer is off); try again later.
    Retry(Why),
    /// Refused for good; a person must look.
    Failed(Why),
}

/// Why a delivery did not happen, for a person: a catalogue key (`why-…`,
/// which says what to do, in the technician's language) and the technical
/// detail it quotes.
#[derive(Debug, Clone)]
pub struct Why {
    pub key: &'static str,
    pub detail: String,
}

impl Why {
    pub fn new(key: &'static str, detail: impl std::fmt::Display) -> Self {
        Self {
            key,
            detail: detail.to_string(),
        }
    }

    /// As the store keeps it: `key<TAB>detail`.
    fn stored(&self) -> String {
        format!("{}\t{}", self.key, self.detail)
    }
}

/// A stored reason in `lang` (text kept by an older version as it is).
pub fn describe(stored: &str, lang: crate::i18n::Language) -> String {
    match stored.split_once('\t') {
        Some((key, detail)) if key.starts_with("why-") => {
            crate::i18n::Catalog::get().t_args(lang, key, &[("detail", detail.into())])
        }
        _ => stored.to_owned(),
    }
}

/// A report ready for a sink: as held, its bytes, and as read.
pub struct Ready<'a> {
    pub held: &'a HeldReport,
    pub bytes: &'a [u8],
    pub report: &'a Report,
    pub clock: Clock,
}

pub trait Sink: Send {
    fn deliver(&mut self, ready: &Ready<'_>) -> impl Future<Output = SinkVerdict> + Send;
}

/// Reads a held report back; a report central took always reads.
fn read(bytes: &[u8]) -> Result<Report, String> {
    let d = decode(bytes, None);
    let m = Message::parse(&d.text).map_err(|e| e.to_string())?;
    read_report(&m).map_err(|e| e.to_string())
}

/// Starts the loop of every configured sink.
#[allow(clippy::too_many_arguments)]
pub fn spawn_all(
    sinks: &[ReportSinkSection],
    hl7: &[yilian_gateway_config::schema::Hl7Section],
    open_senders: &Arc<crate::intake::open_senders::OpenSenders>,
    store: &ReportStore,
    metrics: &GatewayMetrics,
    arrived: &Arc<Notify>,
    clock: Clock,
    stop: &watch::Receiver<bool>,
    tasks: &mut tokio::task::JoinSet<()>,
) {
    // Always running: an answer goes on the sender's open connection or
    // to its address; for a sender with neither it is recorded as refused
    // (with what to configure) after a few minutes, not left waiting.
    tasks.spawn(
        app_ack::AppAcks {
            hl7: hl7.to_vec(),
            open: open_senders.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            arrived: arrived.clone(),
            stop: stop.clone(),
        }
        .run(),
    );
    for s in sinks {
        metrics.register_report_sink(&s.name);
        let run = Runner {
            name: s.name.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            arrived: arrived.clone(),
            clock,
            stop: stop.clone(),
        };
        match s.sink_type {
            SinkType::Folder => {
                tasks.spawn(run.drive(folder::FolderSink::new(s)));
            }
            SinkType::Printer => {
                tasks.spawn(run.drive(printer::PrinterSink::new(s)));
            }
            SinkType::Hl7 => {
                tasks.spawn(run.drive(hl7::HisSink::new(s)));
            }
            SinkType::Dicom => {
                tasks.spawn(run.drive(dicom::ViewerSink::new(s)));
            }
        }
    }
}

struct Runner {
    name: String,
    store: ReportStore,
    metrics: GatewayMetrics,
    arrived: Arc<Notify>,
    clock: Clock,
    stop: watch::Receiver<bool>,
}

impl Runner {
    async fn drive<S: Sink>(mut self, mut sink: S) {
        loop {
            let woken = self.arrived.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let (s, n) = (self.store.clone(), self.name.clone());
            let due = tokio::task::spawn_blocking(move || s.due(&n, 16)).await;
            let due = match due {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => {
                    tracing::error!(sink = %self.name, error = %e, "cannot read the report deliveries");
                    Vec::new()
                }
                Err(_) => return,
            };
            let idle = due.is_empty();
            for d in due {
                if *self.stop.borrow() {
                    return;
                }
                let verdict = {
                    let (s, h) = (self.store.clone(), d.report.clone());
                    match tokio::task::spawn_blocking(move || s.read(&h)).await {
                        Ok(Ok(bytes)) => match read(&bytes) {
                            Ok(report) => {
                                let ready = Ready {
                                    held: &d.report,
                                    bytes: &bytes,
                                    report: &report,
                                    clock: self.clock,
                                };
                                tokio::select! {
                                    v = sink.deliver(&ready) => v,
                                    _ = self.stop.changed() => return,
                                }
                            }
                            Err(e) => SinkVerdict::Failed(Why::new("why-report-unreadable", e)),
                        },
                        Ok(Err(e)) => SinkVerdict::Retry(Why::new("why-box-disk", e)),
                        Err(e) => SinkVerdict::Retry(Why::new("why-box-disk", e)),
                    }
                };
                self.record(&d.report.id, d.attempts, verdict).await;
            }
            if idle {
                tokio::select! {
                    _ = &mut woken => {}
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = self.stop.changed() => return,
                }
            }
        }
    }

    async fn record(&self, id: &str, attempts: u32, verdict: SinkVerdict) {
        record(
            &self.store,
            &self.metrics,
            &self.name,
            id,
            attempts,
            verdict,
        )
        .await;
    }
}

/// Records what became of one delivery attempt at `sink`.
pub(super) async fn record(
    store: &ReportStore,
    metrics: &GatewayMetrics,
    sink: &str,
    id: &str,
    attempts: u32,
    verdict: SinkVerdict,
) {
    let (store, id_owned, name) = (store.clone(), id.to_owned(), sink.to_owned());
    let outcome = match &verdict {
        SinkVerdict::Delivered(_) => "delivered",
        SinkVerdict::Retry(_) => "retry",
        SinkVerdict::Failed(_) => "failed",
    };
    metrics.report_delivery(sink, outcome);
    let r = tokio::task::spawn_blocking(move || match verdict {
        SinkVerdict::Delivered(detail) => {
            tracing::info!(report = %id_owned, sink = %name, %detail, "report delivered at the clinic");
            store.finish(&id_owned, &name, true, &detail)
        }
        SinkVerdict::Failed(why) => {
            let why = why.stored();
            tracing::error!(report = %id_owned, sink = %name, reason = %describe(&why, crate::i18n::Language::En),
                "a report was refused at the clinic; it is kept on the box and shown on its page");
            store.finish(&id_owned, &name, false, &why)
        }
        SinkVerdict::Retry(why) => {
            let why = why.stored();
            // 2 s, doubling, at most 5 minutes.
            let delay = (2_000i64 << attempts.min(8)).min(300_000);
            tracing::warn!(report = %id_owned, sink = %name, reason = %describe(&why, crate::i18n::Language::En), retry_in_s = delay / 1000,
                "cannot deliver a report at the clinic now; retrying");
            store.retry(&id_owned, &name, delay, &why)
        }
    })
    .await;
    if let Ok(Err(e)) = r {
        tracing::error!(report = %id, sink, error = %e, "cannot record a report delivery");
    }
}

/// A name safe in any file system, from text a hospital chose.
pub(crate) fn safe(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(max)
        .collect();
    if out.is_empty() {
        "unknown".into()
    } else {
        out
    }
}
