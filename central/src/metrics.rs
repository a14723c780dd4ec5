//! Central's Prometheus metrics. Labels are low-cardinality: lane, reason,
//! and the box identity parts taken from certificates; never patient or
//! item identifiers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use yilian_protocol::BoxIdentity;
use yilian_protocol::exposition::{self, Family as ExposedFamily};

/// Label names central sets from the certificate; a gateway's own labels of
/// the same names are dropped, so a box cannot speak for another.
const IDENTITY_LABELS: [&str; 3] = ["county", "clinic", "gateway"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabels {
    pub lane: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct GatewayLabels {
    pub county: String,
    pub clinic: String,
    pub gateway: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayLaneLabels {
    pub county: String,
    pub clinic: String,
    pub gateway: String,
    pub lane: String,
}

impl GatewayLabels {
    pub fn of(id: &BoxIdentity) -> Self {
        Self {
            county: id.county().to_owned(),
            clinic: id.clinic().to_owned(),
            gateway: id.box_name().to_owned(),
        }
    }

    pub fn with_lane(&self, lane: &str) -> GatewayLaneLabels {
        GatewayLaneLabels {
            county: self.county.clone(),
            clinic: self.clinic.clone(),
            gateway: self.gateway.clone(),
            lane: lane.to_owned(),
        }
    }
}

type GaugeF = Gauge<f64, AtomicU64>;

#[derive(Clone)]
pub struct CentralMetrics {
    pub registry: Arc<Registry>,
    /// Series read from the index rather than seen by this instance (the
    /// outboxes, reports waiting): with instances sharing the index, only
    /// the fleet exporter shows them, so each comes out once.
    fleet_registry: Arc<Registry>,
    exports_fleet: Arc<AtomicBool>,
    pub items_committed: Family<LaneLabels, Counter>,
    pub bytes_received: Counter,
    pub bytes_committed: Counter,
    pub rejections: Family<ReasonLabels, Counter>,
    pub handshake_failures: Counter,
    pub connections: Gauge,
    /// Memory reserved for parts gathered for the bucket, and the uploads
    /// that waited for it.
    pub upload_buffer: Gauge,
    pub upload_buffer_waits: Counter,
    pub gateway_last_seen: Family<GatewayLabels, GaugeF>,
    pub gateway_link_up: Family<GatewayLabels, Gauge>,
    pub gateway_backlog_items: Family<GatewayLaneLabels, Gauge>,
    pub gateway_backlog_bytes: Family<GatewayLaneLabels, Gauge>,
    pub gateway_oldest_age: Family<GatewayLaneLabels, GaugeF>,
    pub gateway_certificate_expiry: Family<GatewayLabels, Gauge>,
    pub identity_conflicts: Family<GatewayLabels, Counter>,
    pub gateway_config: Family<GatewayConfigLabels, Gauge>,
    pub outbox_items: Family<OutboxLabels, Gauge>,
    pub outbox_results: Family<OutboxResultLabels, Counter>,
    pub outbox_oldest_age: Family<DestinationLabels, GaugeF>,
    /// Gateway receipt to central commit, every item, by lane.
    pub end_to_end: Family<LaneLabels, Histogram, fn() -> Histogram>,
    /// The same for ECGs only (the remote-ECG service's promise).
    pub ecg_end_to_end: Family<LaneLabels, Histogram, fn() -> Histogram>,
    pub ecg_quarantined: Counter,
    /// Reports down to the clinics and their turnaround.
    pub reports: crate::reports::ReportMetrics,
    /// The latest metrics each connected gateway reported.
    fleet: Arc<Mutex<BTreeMap<BoxIdentity, Vec<ExposedFamily>>>>,
    /// The configuration version each gateway last reported, so the old
    /// series goes when a new version is applied.
    config_versions: Arc<Mutex<BTreeMap<GatewayLabels, String>>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboxLabels {
    pub destination: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboxResultLabels {
    pub destination: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    pub destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayConfigLabels {
    pub county: String,
    pub clinic: String,
    pub gateway: String,
    pub version: String,
}

impl std::fmt::Debug for CentralMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CentralMetrics")
    }
}

/// Seconds to hours: a STAT ECG on a good link takes well under a second,
/// one held by an outage hours.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
    ])
}

impl CentralMetrics {
    /// Records a committed item's end-to-end time.
    pub fn observe_commit(&self, lane: &str, ecg: bool, end_to_end_ms: i64) {
        // Clocks of two machines: a negative span is skew, counted as zero.
        let secs = end_to_end_ms.max(0) as f64 / 1000.0;
        let l = LaneLabels {
            lane: lane.to_owned(),
        };
        self.end_to_end.get_or_create(&l).observe(secs);
        if ecg {
            self.ecg_end_to_end.get_or_create(&l).observe(secs);
        }
    }

    pub fn new() -> Self {
        let mut r = Registry::default();
        let mut f = Registry::default();
        let m = Self {
            registry: Arc::new(Registry::default()),
            fleet_registry: Arc::new(Registry::default()),
            exports_fleet: Arc::new(AtomicBool::new(true)),
            items_committed: Family::default(),
            bytes_received: Counter::default(),
            bytes_committed: Counter::default(),
            rejections: Family::default(),
            handshake_failures: Counter::default(),
            connections: Gauge::default(),
            upload_buffer: Gauge::default(),
            upload_buffer_waits: Counter::default(),
            gateway_last_seen: Family::default(),
            gateway_link_up: Family::default(),
            gateway_backlog_items: Family::default(),
            gateway_backlog_bytes: Family::default(),
            gateway_oldest_age: Family::default(),
            gateway_certificate_expiry: Family::default(),
            identity_conflicts: Family::default(),
            gateway_config: Family::default(),
            outbox_items: Family::default(),
            outbox_results: Family::default(),
            outbox_oldest_age: Family::default(),
            end_to_end: Family::new_with_constructor(latency_histogram),
            ecg_end_to_end: Family::new_with_constructor(latency_histogram),
            ecg_quarantined: Counter::default(),
            reports: crate::reports::ReportMetrics::register(&mut r, &mut f),
            fleet: Arc::default(),
            config_versions: Arc::default(),
        };
        r.register(
            "yilian_central_items_committed",
            "Items stored durably and answered COMMITTED, by lane",
            m.items_committed.clone(),
        );
        r.register_with_unit(
            "yilian_central_received",
            "Payload bytes received on upload streams, including bytes of uploads later rejected",
            Unit::Bytes,
            m.bytes_received.clone(),
        );
        r.register_with_unit(
            "yilian_central_committed",
            "Payload bytes of committed items",
            Unit::Bytes,
            m.bytes_committed.clone(),
        );
        r.register_with_unit(
            "yilian_central_end_to_end",
            "Time from the gateway receiving an item from its device to central committing it, by lane (across two clocks: NTP matters)",
            Unit::Seconds,
            m.end_to_end.clone(),
        );
        r.register_with_unit(
            "yilian_central_ecg_end_to_end",
            "Time from the gateway receiving an ECG to central committing it, by lane (urgent = STAT)",
            Unit::Seconds,
            m.ecg_end_to_end.clone(),
        );
        r.register(
            "yilian_central_ecg_quarantined",
            "ECG-source items committed marked for review (unreadable, damaged, not an ECG)",
            m.ecg_quarantined.clone(),
        );
        r.register(
            "yilian_central_upload_rejections",
            "Uploads answered REJECTED, by reason",
            m.rejections.clone(),
        );
        r.register(
            "yilian_central_identity_conflicts",
            "Times a box's connection was taken over from another address while the first kept coming back: two boxes with one identity",
            m.identity_conflicts.clone(),
        );
        r.register(
            "yilian_central_handshake_failures",
            "QUIC/TLS handshakes that failed (bad, expired or foreign certificates among them)",
            m.handshake_failures.clone(),
        );
        r.register(
            "yilian_central_gateway_connections",
            "Gateway connections currently open",
            m.connections.clone(),
        );
        r.register_with_unit(
            "yilian_central_upload_buffer",
            "Memory reserved for parts of uploads being gathered for the bucket ([blobs] buffer_mib)",
            Unit::Bytes,
            m.upload_buffer.clone(),
        );
        r.register(
            "yilian_central_upload_buffer_waits",
            "Uploads that waited for memory to gather their parts in (the budget was in use)",
            m.upload_buffer_waits.clone(),
        );
        r.register(
            "yilian_gateway_last_seen_timestamp_seconds",
            "When central last heard from the gateway (hello or heartbeat)",
            m.gateway_last_seen.clone(),
        );
        r.register(
            "yilian_gateway_link_up",
            "Whether the gateway is connected now",
            m.gateway_link_up.clone(),
        );
        r.register(
            "yilian_gateway_backlog_items",
            "Items waiting on the gateway, by lane, as of its last heartbeat",
            m.gateway_backlog_items.clone(),
        );
        r.register_with_unit(
            "yilian_gateway_backlog",
            "Bytes waiting on the gateway, by lane, as of its last heartbeat",
            Unit::Bytes,
            m.gateway_backlog_bytes.clone(),
        );
        r.register_with_unit(
            "yilian_gateway_backlog_oldest_age",
            "Age of the oldest item waiting on the gateway, by lane",
            Unit::Seconds,
            m.gateway_oldest_age.clone(),
        );
        r.register(
            "yilian_gateway_certificate_expiry_timestamp_seconds",
            "When the certificate the gateway last connected with expires",
            m.gateway_certificate_expiry.clone(),
        );
        r.register(
            "yilian_gateway_config_info",
            "Configuration version (SHA-256 prefix) the gateway reported",
            m.gateway_config.clone(),
        );
        f.register(
            "yilian_central_outbox_items",
            "Deliveries to downstream systems (LIS, PACS, ECG system) by state",
            m.outbox_items.clone(),
        );
        r.register(
            "yilian_central_outbox_attempts",
            "Delivery attempts to downstream systems by result (delivered, retry, parked)",
            m.outbox_results.clone(),
        );
        f.register_with_unit(
            "yilian_central_outbox_oldest_pending_age",
            "Age of the oldest delivery not yet accepted downstream",
            Unit::Seconds,
            m.outbox_oldest_age.clone(),
        );
        // Known label values start at zero (rates work from the start).
        for lane in ["urgent", "clinical", "bulk"] {
            let l = LaneLabels {
                lane: lane.to_owned(),
            };
            let _ = m.items_committed.get_or_create(&l);
            let _ = m.end_to_end.get_or_create(&l);
            let _ = m.ecg_end_to_end.get_or_create(&l);
        }
        for reason in [
            "hashmismatch",
            "invalidoffer",
            "toolarge",
            "unavailable",
            "forbidden",
            "protocolviolation",
        ] {
            let _ = m.rejections.get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            });
        }
        Self {
            registry: Arc::new(r),
            fleet_registry: Arc::new(f),
            ..m
        }
    }

    /// Whether this instance shows the fleet-wide series (see
    /// `fleet_registry`); always on an embedded hub.
    pub fn set_fleet_exporter(&self, on: bool) {
        self.exports_fleet.store(on, Ordering::Relaxed);
    }

    /// Prepares a destination's series at zero.
    pub fn register_destination(&self, destination: &str) {
        for state in ["pending", "delivered", "parked"] {
            let _ = self.outbox_items.get_or_create(&OutboxLabels {
                destination: destination.to_owned(),
                state: state.to_owned(),
            });
        }
        for result in ["delivered", "retry", "parked"] {
            let _ = self.outbox_results.get_or_create(&OutboxResultLabels {
                destination: destination.to_owned(),
                result: result.to_owned(),
            });
        }
        let _ = self.outbox_oldest_age.get_or_create(&DestinationLabels {
            destination: destination.to_owned(),
        });
    }

    pub fn outbox_result(&self, destination: &str, result: &str) {
        self.outbox_results
            .get_or_create(&OutboxResultLabels {
                destination: destination.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn observe_outbox(&self, destination: &str, s: &crate::store::OutboxStats, now_ms: i64) {
        for (state, n) in [
            ("pending", s.pending),
            ("delivered", s.delivered),
            ("parked", s.parked),
        ] {
            self.outbox_items
                .get_or_create(&OutboxLabels {
                    destination: destination.to_owned(),
                    state: state.to_owned(),
                })
                .set(n as i64);
        }
        let age = s
            .oldest_pending_ms
            .map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0);
        self.outbox_oldest_age
            .get_or_create(&DestinationLabels {
                destination: destination.to_owned(),
            })
            .set(age);
    }

    /// Items committed since start, all lanes.
    pub fn items_committed_total(&self) -> u64 {
        ["urgent", "clinical", "bulk"]
            .iter()
            .map(|l| {
                self.items_committed
                    .get_or_create(&LaneLabels {
                        lane: (*l).to_owned(),
                    })
                    .get()
            })
            .sum()
    }

    /// Records the configuration version a gateway reported.
    pub fn set_gateway_config(&self, labels: &GatewayLabels, version: &str) {
        let version: String = version.chars().take(12).collect();
        let with = |v: &str| GatewayConfigLabels {
            county: labels.county.clone(),
            clinic: labels.clinic.clone(),
            gateway: labels.gateway.clone(),
            version: v.to_owned(),
        };
        let mut known = self
            .config_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(old) = known.insert(labels.clone(), version.clone())
            && old != version
        {
            self.gateway_config.remove(&with(&old));
        }
        self.gateway_config.get_or_create(&with(&version)).set(1);
    }

    /// Records a gateway's reported metrics (only `yilian_` families).
    pub fn set_gateway_snapshot(&self, id: &BoxIdentity, text: &str) {
        let families = exposition::parse(text, "yilian_");
        self.fleet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), families);
    }

    /// Forgets a gateway's reported metrics (it disconnected): stale values
    /// must not look current. Its last-seen series stays.
    /// A box no longer watched (revoked, retired): all its series go at
    /// once, so nothing shows it up or pages for it.
    /// Also a box whose connection to this instance ended while instances
    /// share the index: the one it moves to shows it, or the fleet
    /// exporter shows it down.
    pub fn forget_gateway(&self, id: &BoxIdentity) {
        let labels = GatewayLabels::of(id);
        self.gateway_last_seen.remove(&labels);
        self.gateway_link_up.remove(&labels);
        self.gateway_certificate_expiry.remove(&labels);
        for lane in ["urgent", "clinical", "bulk"] {
            let l = labels.with_lane(lane);
            self.gateway_backlog_items.remove(&l);
            self.gateway_backlog_bytes.remove(&l);
            self.gateway_oldest_age.remove(&l);
        }
        let version = self
            .config_versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&labels);
        if let Some(version) = version {
            self.gateway_config.remove(&GatewayConfigLabels {
                county: labels.county.clone(),
                clinic: labels.clinic.clone(),
                gateway: labels.gateway.clone(),
                version,
            });
        }
        self.clear_gateway_snapshot(id);
    }

    pub fn clear_gateway_snapshot(&self, id: &BoxIdentity) {
        self.fleet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// Central's own registry followed by every connected gateway's series,
    /// each family once, with `county`, `clinic` and `gateway` labels.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        if let Some(stripped) = out.strip_suffix("# EOF\n") {
            out.truncate(stripped.len());
        }
        if self.exports_fleet.load(Ordering::Relaxed) {
            let mut fleet_wide = String::new();
            if prometheus_client::encoding::text::encode(&mut fleet_wide, &self.fleet_registry)
                .is_ok()
            {
                out.push_str(fleet_wide.strip_suffix("# EOF\n").unwrap_or(&fleet_wide));
            }
        }
        let fleet = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
        let mut merged: BTreeMap<&str, MergedFamily<'_>> = BTreeMap::new();
        for (id, families) in fleet.iter() {
            for f in families {
                let entry = merged.entry(f.name.as_str()).or_insert((f, Vec::new()));
                // A family whose type differs between software versions is
                // shown as the first gateway declared it.
                if entry.0.kind == f.kind {
                    entry.1.extend(f.samples.iter().map(|s| (id, s)));
                }
            }
        }
        for (name, (family, samples)) in merged {
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {}", family.kind);
            if !family.unit.is_empty() {
                let _ = writeln!(out, "# UNIT {name} {}", family.unit);
            }
            for (id, s) in samples {
                let _ = write!(
                    out,
                    "{}{{county=\"{}\",clinic=\"{}\",gateway=\"{}\"",
                    s.name,
                    exposition::escape_label(id.county()),
                    exposition::escape_label(id.clinic()),
                    exposition::escape_label(id.box_name())
                );
                for (k, v) in &s.labels {
                    if !IDENTITY_LABELS.contains(&k.as_str()) {
                        let _ = write!(out, ",{k}=\"{}\"", exposition::escape_label(v));
                    }
                }
                let _ = writeln!(out, "}} {}", format_value(s.value));
            }
        }
        out.push_str("# EOF\n");
        out
    }
}

/// One family across gateways: its declaration and every gateway's samples.
type MergedFamily<'a> = (
    &'a ExposedFamily,
    Vec<(&'a BoxIdentity, &'a exposition::Sample)>,
);

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v:?}")
    }
}

impl Default for CentralMetrics {
    fn default() -> Self {
        Self::new()
    }
}
