//! Central's Prometheus metrics. Labels are low-cardinality: lane, reason,
//! and the box identity parts taken from certificates; never patient or
//! item identifiers.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use yilian_protocol::BoxIdentity;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabels {
    pub lane: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
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
    pub items_committed: Family<LaneLabels, Counter>,
    pub bytes_received: Counter,
    pub bytes_committed: Counter,
    pub rejections: Family<ReasonLabels, Counter>,
    pub handshake_failures: Counter,
    pub connections: Gauge,
    pub gateway_last_seen: Family<GatewayLabels, GaugeF>,
    pub gateway_link_up: Family<GatewayLabels, Gauge>,
    pub gateway_backlog_items: Family<GatewayLaneLabels, Gauge>,
    pub gateway_backlog_bytes: Family<GatewayLaneLabels, Gauge>,
    pub gateway_oldest_age: Family<GatewayLaneLabels, GaugeF>,
}

impl std::fmt::Debug for CentralMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CentralMetrics")
    }
}

impl CentralMetrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Self {
            registry: Arc::new(Registry::default()),
            items_committed: Family::default(),
            bytes_received: Counter::default(),
            bytes_committed: Counter::default(),
            rejections: Family::default(),
            handshake_failures: Counter::default(),
            connections: Gauge::default(),
            gateway_last_seen: Family::default(),
            gateway_link_up: Family::default(),
            gateway_backlog_items: Family::default(),
            gateway_backlog_bytes: Family::default(),
            gateway_oldest_age: Family::default(),
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
        r.register(
            "yilian_central_upload_rejections",
            "Uploads answered REJECTED, by reason",
            m.rejections.clone(),
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
        Self {
            registry: Arc::new(r),
            ..m
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for CentralMetrics {
    fn default() -> Self {
        Self::new()
    }
}
