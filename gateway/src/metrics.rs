//! The gateway's Prometheus metrics. The same registry is served on
//! `/metrics` locally and summarised in heartbeats to central.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use yilian_spool::{Lane, SpoolStats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabels {
    pub lane: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    pub adapter: String,
    pub device: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EcgLabels {
    pub device: String,
    pub lane: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuarantineLabels {
    pub device: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    pub version: String,
}

type GaugeF = Gauge<f64, AtomicU64>;
type CounterF = Counter<f64, AtomicU64>;

/// Why an upload attempt did not end in COMMITTED.
pub const RETRY_REASONS: &[&str] = &[
    "link",
    "timeout",
    "no_verdict",
    "protocol",
    "payload",
    "rejected_hashmismatch",
    "rejected_unavailable",
    "rejected_forbidden",
    "rejected_toolarge",
    "rejected_invalidoffer",
    "rejected_protocolviolation",
    "rejected_unspecified",
];

/// Why the spool refused an item (`SpoolError::reason`).
pub const REFUSAL_REASONS: &[&str] = &[
    "full",
    "disk_full",
    "io",
    "index",
    "damaged",
    "busy",
    "closed",
];

#[derive(Clone)]
pub struct GatewayMetrics {
    registry: Arc<Registry>,
    pub backlog_items: Family<LaneLabels, Gauge>,
    pub backlog_bytes: Family<LaneLabels, Gauge>,
    pub backlog_oldest_age: Family<LaneLabels, GaugeF>,
    pub dead_letters: Gauge,
    pub spool_used: Gauge,
    pub spool_quota: Gauge,
    pub spool_fs_available: Gauge,
    pub spool_reserve_held: Gauge,
    pub refusals: Family<ReasonLabels, Counter>,
    pub intake_items: Family<DeviceLabels, Counter>,
    pub intake_bytes: Family<DeviceLabels, Counter>,
    pub device_up: Family<DeviceLabels, Gauge>,
    pub device_connections: Family<DeviceLabels, Gauge>,
    pub device_last_connection: Family<DeviceLabels, Gauge>,
    pub uploaded_items: Family<LaneLabels, Counter>,
    pub uploaded_bytes: Counter,
    pub upload_retries: Family<ReasonLabels, Counter>,
    pub link_up: Gauge,
    pub revoked: Gauge,
    pub link_connects: Counter,
    pub link_rtt: GaugeF,
    pub link_bandwidth: GaugeF,
    pub link_window: Gauge,
    pub link_giving_way: Gauge,
    /// The box's clock minus central's, from the last heartbeat.
    pub clock_offset: GaugeF,
    pub rate_cap: GaugeF,
    pub urgent_allowance: Gauge,
    pub throttled: CounterF,
    pub certificate_expiry: Gauge,
    pub config_info: Family<VersionLabels, Gauge>,
    pub ecg_received: Family<EcgLabels, Counter>,
    pub ecg_quarantined: Family<QuarantineLabels, Counter>,
    /// Reports from the hospital taken from central.
    pub reports_received: Counter,
    pub report_deliveries: Family<SinkOutcomeLabels, Counter>,
    pub reports_waiting: Family<SinkLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkOutcomeLabels {
    pub sink: String,
    /// `delivered`, `retry`, `failed`.
    pub outcome: String,
}

impl std::fmt::Debug for GatewayMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayMetrics")
    }
}

impl GatewayMetrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Self {
            registry: Arc::new(Registry::default()),
            backlog_items: Family::default(),
            backlog_bytes: Family::default(),
            backlog_oldest_age: Family::default(),
            dead_letters: Gauge::default(),
            spool_used: Gauge::default(),
            spool_quota: Gauge::default(),
            spool_fs_available: Gauge::default(),
            spool_reserve_held: Gauge::default(),
            refusals: Family::default(),
            intake_items: Family::default(),
            intake_bytes: Family::default(),
            device_up: Family::default(),
            device_connections: Family::default(),
            device_last_connection: Family::default(),
            uploaded_items: Family::default(),
            uploaded_bytes: Counter::default(),
            upload_retries: Family::default(),
            link_up: Gauge::default(),
            revoked: Gauge::default(),
            link_connects: Counter::default(),
            link_rtt: GaugeF::default(),
            link_bandwidth: GaugeF::default(),
            link_window: Gauge::default(),
            link_giving_way: Gauge::default(),
            clock_offset: GaugeF::default(),
            rate_cap: GaugeF::default(),
            urgent_allowance: Gauge::default(),
            throttled: CounterF::default(),
            certificate_expiry: Gauge::default(),
            reports_received: Counter::default(),
            report_deliveries: Family::default(),
            reports_waiting: Family::default(),
            config_info: Family::default(),
            ecg_received: Family::default(),
            ecg_quarantined: Family::default(),
        };
        r.register(
            "yilian_gateway_ecg_received",
            "ECGs taken from a device, by device and lane (urgent = STAT)",
            m.ecg_received.clone(),
        );
        r.register(
            "yilian_gateway_ecg_quarantined",
            "Payloads from an ECG source stored but quarantined for a person to check, by device and reason",
            m.ecg_quarantined.clone(),
        );
        r.register(
            "yilian_spool_backlog_items",
            "Items in the spool not yet committed by central, by lane",
            m.backlog_items.clone(),
        );
        r.register_with_unit(
            "yilian_spool_backlog",
            "Bytes in the spool not yet committed by central, by lane",
            Unit::Bytes,
            m.backlog_bytes.clone(),
        );
        r.register_with_unit(
            "yilian_spool_backlog_oldest_age",
            "Age of the oldest item not yet committed by central, by lane",
            Unit::Seconds,
            m.backlog_oldest_age.clone(),
        );
        r.register(
            "yilian_spool_dead_letter_items",
            "Items set aside for an operator after repeated rejection",
            m.dead_letters.clone(),
        );
        r.register_with_unit(
            "yilian_spool_used",
            "Payload bytes held by the spool, delivered items kept for retention included",
            Unit::Bytes,
            m.spool_used.clone(),
        );
        r.register_with_unit(
            "yilian_spool_quota",
            "Spool quota in force: the configured one, or less when the spool's filesystem cannot hold that much",
            Unit::Bytes,
            m.spool_quota.clone(),
        );
        r.register_with_unit(
            "yilian_spool_filesystem_available",
            "Free space on the spool's filesystem",
            Unit::Bytes,
            m.spool_fs_available.clone(),
        );
        r.register(
            "yilian_spool_reserve_held",
            "1 while the spool's disk reserve is in place; 0 once released because the disk ran out",
            m.spool_reserve_held.clone(),
        );
        r.register(
            "yilian_spool_refusals",
            "Items refused to a device because the spool could not take them, by reason",
            m.refusals.clone(),
        );
        r.register(
            "yilian_intake_items",
            "Items accepted from devices, by adapter and device",
            m.intake_items.clone(),
        );
        r.register_with_unit(
            "yilian_intake",
            "Payload bytes accepted from devices, by adapter and device",
            Unit::Bytes,
            m.intake_bytes.clone(),
        );
        r.register(
            "yilian_device_up",
            "1 while a configured device can reach the box: its listener bound, its serial port present, its drop folder there",
            m.device_up.clone(),
        );
        r.register(
            "yilian_device_connections",
            "Connections (associations, sessions, open serial ports) from a device now",
            m.device_connections.clone(),
        );
        r.register_with_unit(
            "yilian_device_last_connection_timestamp",
            "When a device last connected (its serial port last opened); 0 if never since start",
            Unit::Seconds,
            m.device_last_connection.clone(),
        );
        r.register(
            "yilian_uplink_items",
            "Items committed by central, by lane",
            m.uploaded_items.clone(),
        );
        r.register_with_unit(
            "yilian_uplink_sent",
            "Payload bytes sent to central, resent bytes included",
            Unit::Bytes,
            m.uploaded_bytes.clone(),
        );
        r.register(
            "yilian_uplink_retries",
            "Upload attempts that did not end in COMMITTED, by reason",
            m.upload_retries.clone(),
        );
        r.register(
            "yilian_uplink_up",
            "Whether the link to central is up",
            m.link_up.clone(),
        );
        r.register(
            "yilian_gateway_revoked",
            "1 when central revoked this box's certificate: it no longer connects until enrolled again",
            m.revoked.clone(),
        );
        r.register(
            "yilian_uplink_connects",
            "Successful connections to central (hello answered)",
            m.link_connects.clone(),
        );
        r.register_with_unit(
            "yilian_uplink_rtt",
            "Round-trip time to central as QUIC estimates it",
            Unit::Seconds,
            m.link_rtt.clone(),
        );
        r.register(
            "yilian_uplink_bandwidth_estimate_bytes_per_second",
            "The line's bandwidth toward central as the box's congestion controller estimates it (congestion = \"bounded\")",
            m.link_bandwidth.clone(),
        );
        r.register_with_unit(
            "yilian_uplink_window",
            "Bytes the congestion controller lets be in flight",
            Unit::Bytes,
            m.link_window.clone(),
        );
        r.register(
            "yilian_uplink_giving_way",
            "1 while bulk uploads have slowed down for the clinic's other traffic on the line (share_line = true)",
            m.link_giving_way.clone(),
        );
        r.register_with_unit(
            "yilian_gateway_clock_offset",
            "This box's clock minus central's, measured at each heartbeat (certificates and times depend on it)",
            Unit::Seconds,
            m.clock_offset.clone(),
        );
        // Prometheus wants base units, so the cap configured in bit/s is
        // published in bytes per second.
        r.register(
            "yilian_uplink_rate_cap_bytes_per_second",
            "Upload cap in force now from the bandwidth schedule; 0 when unlimited",
            m.rate_cap.clone(),
        );
        r.register_with_unit(
            "yilian_uplink_urgent_allowance",
            "Bytes urgent items may still send beyond the cap this hour",
            Unit::Bytes,
            m.urgent_allowance.clone(),
        );
        r.register_with_unit(
            "yilian_uplink_throttled",
            "Time uploads waited for the bandwidth cap, summed over uploads",
            Unit::Seconds,
            m.throttled.clone(),
        );
        r.register(
            "yilian_certificate_expiry_timestamp_seconds",
            "When this gateway's certificate expires",
            m.certificate_expiry.clone(),
        );
        r.register(
            "yilian_config_info",
            "Version (SHA-256 prefix) of the configuration this gateway runs",
            m.config_info.clone(),
        );
        let build = Family::<VersionLabels, Gauge>::default();
        build
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        r.register(
            "yilian_build_info",
            "Software version of this gateway",
            build,
        );
        // Known label values start at zero, so that rates and increases
        // work from the first scrape instead of after the first event.
        for lane in Lane::ALL {
            let l = LaneLabels {
                lane: lane.name().to_owned(),
            };
            let _ = m.uploaded_items.get_or_create(&l);
        }
        for reason in RETRY_REASONS {
            let _ = m.upload_retries.get_or_create(&ReasonLabels {
                reason: (*reason).to_owned(),
            });
        }
        for reason in REFUSAL_REASONS {
            let _ = m.refusals.get_or_create(&ReasonLabels {
                reason: (*reason).to_owned(),
            });
        }
        r.register(
            "yilian_gateway_reports_received",
            "Reports from the hospital this box took from central (held on its disk)",
            m.reports_received.clone(),
        );
        r.register(
            "yilian_gateway_report_deliveries",
            "Attempts to deliver reports at the clinic, by sink and outcome (delivered, retry, failed)",
            m.report_deliveries.clone(),
        );
        r.register(
            "yilian_gateway_reports_waiting",
            "Reports held on the box not yet delivered to a sink",
            m.reports_waiting.clone(),
        );
        Self {
            registry: Arc::new(r),
            ..m
        }
    }

    /// Starts a report sink's series at zero.
    pub fn register_report_sink(&self, sink: &str) {
        for outcome in ["delivered", "retry", "failed"] {
            let _ = self.report_deliveries.get_or_create(&SinkOutcomeLabels {
                sink: sink.to_owned(),
                outcome: outcome.to_owned(),
            });
        }
        let _ = self.reports_waiting.get_or_create(&SinkLabels {
            sink: sink.to_owned(),
        });
    }

    pub fn report_delivery(&self, sink: &str, outcome: &str) {
        self.report_deliveries
            .get_or_create(&SinkOutcomeLabels {
                sink: sink.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Refreshes the spool gauges from a stats snapshot.
    pub fn observe_spool(&self, stats: &SpoolStats, now_ms: i64) {
        for lane in Lane::ALL {
            let s = &stats.lanes[lane as usize];
            let l = LaneLabels {
                lane: lane.name().to_owned(),
            };
            self.backlog_items.get_or_create(&l).set(s.items as i64);
            self.backlog_bytes.get_or_create(&l).set(s.bytes as i64);
            let age = s
                .oldest_received_ms
                .map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0);
            self.backlog_oldest_age.get_or_create(&l).set(age);
        }
        self.dead_letters.set(stats.dead as i64);
        self.spool_used.set(stats.used_bytes as i64);
        self.spool_quota.set(stats.quota_bytes as i64);
        self.spool_fs_available
            .set(i64::try_from(stats.fs_available_bytes).unwrap_or(i64::MAX));
        self.spool_reserve_held.set(i64::from(stats.reserve_held));
    }

    pub fn refused(&self, reason: &str) {
        self.refusals
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn accepted(&self, adapter: &str, device: &str, bytes: u64) {
        let l = DeviceLabels {
            adapter: adapter.to_owned(),
            device: device.to_owned(),
        };
        self.intake_items.get_or_create(&l).inc();
        self.intake_bytes.get_or_create(&l).inc_by(bytes);
    }

    /// Starts a configured device's series at zero (nothing received, not
    /// up, no connection), so dashboards and alerts see it before it sends.
    pub fn register_device(&self, adapter: &str, device: &str) {
        let l = DeviceLabels {
            adapter: adapter.to_owned(),
            device: device.to_owned(),
        };
        let _ = self.intake_items.get_or_create(&l);
        let _ = self.intake_bytes.get_or_create(&l);
        let _ = self.device_up.get_or_create(&l);
        let _ = self.device_connections.get_or_create(&l);
        let _ = self.device_last_connection.get_or_create(&l);
    }

    pub fn device_up(&self, adapter: &str, device: &str, up: bool) {
        self.device_up
            .get_or_create(&DeviceLabels {
                adapter: adapter.to_owned(),
                device: device.to_owned(),
            })
            .set(i64::from(up));
    }

    /// A device connected: counted until the guard drops.
    pub fn connection(&self, adapter: &str, device: &str) -> ConnectionGuard {
        let l = DeviceLabels {
            adapter: adapter.to_owned(),
            device: device.to_owned(),
        };
        self.device_connections.get_or_create(&l).inc();
        self.device_last_connection
            .get_or_create(&l)
            .set(crate::now_ms() / 1000);
        ConnectionGuard {
            gauge: self.device_connections.get_or_create(&l).clone(),
        }
    }

    /// Starts an ECG source's series at zero, so that alerts on increases
    /// see its first quarantine.
    pub fn register_ecg_source(&self, device: &str) {
        for lane in [Lane::Urgent, Lane::Clinical] {
            let _ = self.ecg_received.get_or_create(&EcgLabels {
                device: device.to_owned(),
                lane: lane.to_string(),
            });
        }
        for reason in crate::content::QUARANTINE_CLASSES {
            let _ = self.ecg_quarantined.get_or_create(&QuarantineLabels {
                device: device.to_owned(),
                reason: (*reason).to_owned(),
            });
        }
    }

    /// Counts a stored payload from an ECG source.
    pub fn ecg(&self, device: &str, lane: Lane, d: &crate::content::Description) {
        if d.ecg {
            self.ecg_received
                .get_or_create(&EcgLabels {
                    device: device.to_owned(),
                    lane: lane.to_string(),
                })
                .inc();
        }
        if let Some(q) = &d.quarantine {
            self.ecg_quarantined
                .get_or_create(&QuarantineLabels {
                    device: device.to_owned(),
                    reason: q.class.to_owned(),
                })
                .inc();
        }
    }

    pub fn retry(&self, reason: &str) {
        self.upload_retries
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One device connection, counted in `yilian_device_connections` while it
/// lives.
#[derive(Debug)]
pub struct ConnectionGuard {
    gauge: Gauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}
