//! Reports from the hospital over MLLP. The message is kept exactly as
//! received (bytes and charset), which is what the clinic's HIS gets.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::sync::Notify;
use yilian_codecs::hl7::report::{Report, ReportError, read_report};
use yilian_codecs::hl7::{ErrorInfo, Message, Verdict, build_ack, decode, encode};
use yilian_codecs::mllp;

use crate::metrics::CentralMetrics;
use crate::reports::metrics::MatchLabels;
use crate::store::{ReportRow, Store, StoreError, Stored};

/// Where reports are taken in, from the MLLP listener or the import
/// folder: the store, what counts them, and who is told.
#[derive(Clone)]
pub struct ReportIntake {
    pub store: Store,
    pub metrics: CentralMetrics,
    /// Facility codes (MSH-6) to clinics, as for orders.
    pub facilities: BTreeMap<String, String>,
    /// The clinics' UTC offset, for a device's acquisition time given
    /// without one.
    pub clinic_offset: time::UtcOffset,
    /// Told when a report was queued, so the box's downlink looks at once.
    pub wake: std::sync::Arc<Notify>,
}

impl ReportIntake {
    /// Commits a report durably and correlated; logs where it goes.
    pub async fn take(
        &self,
        report: Report,
        source: &str,
        message: Vec<u8>,
        from: &str,
    ) -> Result<Stored<ReportRow>, StoreError> {
        let store = self.store.clone();
        let facilities = self.facilities.clone();
        let offset = self.clinic_offset;
        let src = source.to_owned();
        let r = tokio::task::spawn_blocking(move || {
            store.report_commit(&report, &src, &message, &facilities, offset)
        })
        .await
        .map_err(|_| StoreError::WriterStopped)?;
        match &r {
            Ok(proof) => {
                let row = &proof.value;
                let by = row.matched_by.clone().unwrap_or_else(|| "unmatched".into());
                self.metrics
                    .reports
                    .received
                    .get_or_create(&MatchLabels {
                        matched_by: by.clone(),
                    })
                    .inc();
                match &row.gateway {
                    Some(g) => {
                        tracing::info!(%from, report = %row.id, gateway = %g, matched_by = %by,
                            status = %row.status, urgent = row.urgent, "report taken; queued for the clinic")
                    }
                    None => {
                        tracing::warn!(%from, report = %row.id, reason = row.unmatched_reason.as_deref().unwrap_or(""),
                            "report matches no clinic; parked: see `yilian-central reports --unmatched` and assign it")
                    }
                }
                self.wake.notify_waiters();
            }
            Err(e) => {
                self.metrics.reports.refused.inc();
                tracing::error!(%from, error = %e, "cannot store a report; it is taken again later");
            }
        }
        r
    }
}

/// The MLLP listener's side of [`ReportIntake`].
pub struct ReportListener(pub ReportIntake);

fn err(e: &ReportError) -> ErrorInfo {
    ErrorInfo {
        location: e.location.clone(),
        code: e.code,
        text: e.text.clone(),
        severity: 'E',
    }
}

impl crate::hl7_listener::Hl7Service for ReportListener {
    fn what(&self) -> &'static str {
        "reports"
    }

    async fn handle(&self, bytes: &[u8], peer: SocketAddr) -> Option<Vec<u8>> {
        let decoded = decode(bytes, None);
        let m = match Message::parse(&decoded.text) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "unreadable report message; no ACK possible");
                return None;
            }
        };
        let source = format!("{}^{}", m.get("MSH", 3, 1), m.get("MSH", 4, 1));
        let refused;
        let stored;
        let verdict = match read_report(&m) {
            Err(e) => {
                self.0.metrics.reports.refused.inc();
                tracing::warn!(%peer, %source, control = m.control_id(), field = %e.location, reason = %e.text,
                    "report refused (AE): the sending system must fix the message");
                refused = err(&e);
                Verdict::Malformed(&refused)
            }
            Ok(report) => {
                match self
                    .0
                    .take(report, &source, bytes.to_vec(), &peer.to_string())
                    .await
                {
                    Ok(proof) => {
                        stored = proof;
                        Verdict::Stored(&stored)
                    }
                    Err(_) => {
                        refused = ErrorInfo {
                            location: String::new(),
                            code: 207,
                            text: "report store unavailable; send again later".into(),
                            severity: 'E',
                        };
                        Verdict::Refused(&refused)
                    }
                }
            }
        };
        let ts: String = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        let ack = build_ack(&m, verdict, &format!("YLR{ts}"), &ts);
        Some(mllp::encode(&encode(&ack, decoded.charset)))
    }
}
