//! The turnaround the alliance reports on (报告回传): from the clinic's
//! acquisition to the report delivered at the clinic, the reading time at
//! the hospital within it, and what waits on the way down.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::store::{DownlinkStats, Turnaround};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReportLabels {
    /// `imaging`, `ecg`, `lab`, `document`.
    pub kind: String,
    /// `urgent` (STAT, critical values) or `routine`.
    pub priority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MatchLabels {
    /// How the clinic was found (`accession`, `study_uid`, ...), or
    /// `unmatched`.
    pub matched_by: String,
}

type GaugeF = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug)]
pub struct ReportMetrics {
    pub received: Family<MatchLabels, Counter>,
    pub refused: Counter,
    pub turnaround: Family<ReportLabels, Histogram, fn() -> Histogram>,
    pub reading: Family<ReportLabels, Histogram, fn() -> Histogram>,
    pub down: Family<ReportLabels, Histogram, fn() -> Histogram>,
    pub waiting: Gauge,
    pub unmatched: Gauge,
    pub oldest_waiting: GaugeF,
}

/// Minutes to days: a STAT ECG read in five minutes, an imaging report
/// the next morning.
fn turnaround_histogram() -> Histogram {
    Histogram::new([
        1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0,
        86400.0, 259200.0,
    ])
}

impl ReportMetrics {
    /// `fleet` takes the series read from the index (one instance shows them).
    pub fn register(r: &mut Registry, fleet: &mut Registry) -> Self {
        let m = Self {
            received: Family::default(),
            refused: Counter::default(),
            turnaround: Family::new_with_constructor(turnaround_histogram),
            reading: Family::new_with_constructor(turnaround_histogram),
            down: Family::new_with_constructor(turnaround_histogram),
            waiting: Gauge::default(),
            unmatched: Gauge::default(),
            oldest_waiting: GaugeF::default(),
        };
        r.register(
            "yilian_central_reports_received",
            "Reports taken from the hospital (RIS, LIS, ECG reading), by how their clinic was found",
            m.received.clone(),
        );
        r.register(
            "yilian_central_reports_refused",
            "Report messages answered AE/AR (missing fields, not a report, store unavailable)",
            m.refused.clone(),
        );
        r.register_with_unit(
            "yilian_central_report_turnaround",
            "From the clinic's box receiving the item to its report delivered at the clinic, by kind and priority (across clocks: NTP matters)",
            Unit::Seconds,
            m.turnaround.clone(),
        );
        r.register_with_unit(
            "yilian_central_report_reading",
            "From the clinic's box receiving the item to its report reaching central: the hospital's reading time and the way up",
            Unit::Seconds,
            m.reading.clone(),
        );
        r.register_with_unit(
            "yilian_central_report_downlink",
            "From a report reaching central to its delivery at the clinic",
            Unit::Seconds,
            m.down.clone(),
        );
        fleet.register(
            "yilian_central_reports_waiting",
            "Reports not yet held by their clinic's box",
            m.waiting.clone(),
        );
        fleet.register(
            "yilian_central_reports_unmatched",
            "Reports parked because no clinic could be found for them (`yilian-central reports --unmatched`)",
            m.unmatched.clone(),
        );
        fleet.register_with_unit(
            "yilian_central_reports_oldest_waiting_age",
            "Age of the oldest report not yet held by its clinic's box",
            Unit::Seconds,
            m.oldest_waiting.clone(),
        );
        for kind in ["imaging", "ecg", "lab", "document"] {
            for priority in ["urgent", "routine"] {
                let l = ReportLabels {
                    kind: kind.into(),
                    priority: priority.into(),
                };
                let _ = m.turnaround.get_or_create(&l);
                let _ = m.reading.get_or_create(&l);
                let _ = m.down.get_or_create(&l);
            }
        }
        let _ = m.received.get_or_create(&MatchLabels {
            matched_by: "unmatched".into(),
        });
        m
    }

    pub fn observe(&self, t: &Turnaround) {
        let l = ReportLabels {
            kind: t.kind.clone(),
            priority: if t.urgent { "urgent" } else { "routine" }.into(),
        };
        let secs = |ms: i64| ms.max(0) as f64 / 1000.0;
        if let Some(total) = t.total_ms {
            self.turnaround.get_or_create(&l).observe(secs(total));
        }
        if let Some(reading) = t.reading_ms {
            self.reading.get_or_create(&l).observe(secs(reading));
        }
        self.down.get_or_create(&l).observe(secs(t.down_ms));
    }

    pub fn set_stats(&self, s: &DownlinkStats, now_ms: i64) {
        self.waiting.set(s.waiting as i64);
        self.unmatched.set(s.unmatched as i64);
        self.oldest_waiting.set(
            s.oldest_waiting_ms
                .map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0),
        );
    }
}
