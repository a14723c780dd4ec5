//! What the page shows, gathered from the running box: its identity and
//! versions, the link, the spool, one row per configured device, and the
//! items received last. Every text a technician reads comes from the
//! catalogues when the page is rendered; this holds facts only.

use yilian_spool::{ItemSummary, Spool, SpoolStats};

use crate::board::DeviceRecord;
use crate::config::{AstmTransport, GatewayConfig};
use crate::metrics::{DeviceLabels, GatewayMetrics};
use crate::uplink::LinkStatus;

/// How a device is doing, in three words a technician reads without
/// colour: 正常 / 警告 / 故障.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    Warning,
    Fault,
}

/// One configured device.
#[derive(Debug, Clone)]
pub struct DeviceRow {
    /// Catalogue key of the family (`family-hl7`, ...).
    pub family: &'static str,
    pub name: String,
    /// Where it connects: an address, a port path, a folder.
    pub place: String,
    /// Catalogue key of its state, and the connection count.
    pub state: &'static str,
    pub connections: i64,
    pub health: Health,
    /// Catalogue key of what to do, when it is in fault.
    pub advice: Option<&'static str>,
    pub record: DeviceRecord,
}

/// Everything the page shows.
#[derive(Debug)]
pub struct View {
    pub identity: Option<String>,
    pub config_version: String,
    pub link: LinkStatus,
    pub certificate_not_after: i64,
    /// Bytes per second, or none for unlimited.
    pub cap: Option<f64>,
    pub spool: Option<SpoolStats>,
    pub devices: Vec<DeviceRow>,
    pub recent: Vec<ItemSummary>,
    /// Items set aside for an operator, newest first.
    pub dead: Vec<ItemSummary>,
    /// Reports from the hospital, newest first, and where they went.
    pub reports: Vec<crate::reports::store::ReportView>,
    /// Each configured sink's counts.
    pub report_sinks: std::collections::BTreeMap<String, crate::reports::store::SinkCounts>,
}

/// How many recent items the page lists.
pub const RECENT: u32 = 20;
/// A problem younger than this makes a device's row a warning.
const WARN_FOR_MS: i64 = 3600 * 1000;

pub fn gather(
    config: &GatewayConfig,
    spool: &Spool,
    reports: &crate::reports::ReportStore,
    metrics: &GatewayMetrics,
    link: LinkStatus,
    board: &crate::board::DeviceBoard,
    now_ms: i64,
) -> View {
    let stats = spool.stats().ok().map(|s| SpoolStats {
        quota_bytes: Spool::effective_quota(&config.spool_config(), s.used_bytes),
        quota_configured_bytes: config.spool.quota.0,
        ..s
    });
    let recent = Spool::inspect(&config.spool.dir, RECENT)
        .map(|(_, items)| items)
        .unwrap_or_default();
    let cap = metrics.rate_cap.get();
    let mut report_sinks = reports.counts().map(|(_, s)| s).unwrap_or_default();
    for s in &config.report_sink {
        report_sinks.entry(s.name.clone()).or_default();
    }
    View {
        reports: reports.recent(RECENT as usize).unwrap_or_default(),
        report_sinks,
        identity: link.identity.clone(),
        config_version: config.version.clone(),
        certificate_not_after: metrics.certificate_expiry.get(),
        cap: (cap > 0.0).then_some(cap),
        link,
        spool: stats,
        devices: devices(config, metrics, board, now_ms),
        recent,
        dead: spool.dead_letters(RECENT).unwrap_or_default(),
    }
}

fn devices(
    config: &GatewayConfig,
    metrics: &GatewayMetrics,
    board: &crate::board::DeviceBoard,
    now_ms: i64,
) -> Vec<DeviceRow> {
    // `how`: what its being "up" means (a folder there, a serial port
    // present, a listener bound).
    let row =
        |adapter: &'static str, how: Kind, family: &'static str, name: &str, place: String| {
            let labels = DeviceLabels {
                adapter: adapter.to_owned(),
                device: name.to_owned(),
            };
            let up = metrics.device_up.get_or_create(&labels).get() > 0;
            let connections = metrics.device_connections.get_or_create(&labels).get();
            let record = board.get(adapter, name, now_ms);
            DeviceRow {
                family,
                name: name.to_owned(),
                place,
                state: "",
                connections,
                health: if up { Health::Ok } else { Health::Fault },
                advice: None,
                record,
            }
            .judged(up, how)
        };
    let mut rows = Vec::new();
    for f in &config.folder {
        rows.push(row(
            "folder",
            Kind::Folder,
            "family-folder",
            &f.name,
            f.path.display().to_string(),
        ));
    }
    for h in &config.hl7 {
        rows.push(row(
            "hl7",
            Kind::Listener,
            "family-hl7",
            &h.name,
            h.listen.to_string(),
        ));
    }
    for a in &config.astm {
        let place = match a.transport {
            AstmTransport::Serial => a
                .port
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            _ => a
                .listen
                .map(|l| l.to_string())
                .or_else(|| a.connect.clone())
                .unwrap_or_default(),
        };
        let how = if a.transport == AstmTransport::Serial {
            Kind::SerialPort
        } else {
            Kind::Listener
        };
        rows.push(row("astm", how, "family-astm", &a.name, place));
    }
    for d in &config.dicom {
        let allowed: Vec<&str> = d.allowed.iter().map(|p| p.ae_title.as_str()).collect();
        let place = if allowed.is_empty() {
            format!("{} ({})", d.listen, d.ae_title)
        } else {
            format!("{} ({}; {})", d.listen, d.ae_title, allowed.join(", "))
        };
        rows.push(row("dicom", Kind::Listener, "family-dicom", &d.name, place));
    }
    for e in &config.ecg_serial {
        rows.push(row(
            "serial",
            Kind::SerialPort,
            "family-serial",
            &e.name,
            e.port.display().to_string(),
        ));
    }
    rows
}

/// How a device is reached, which says what its being "up" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Folder,
    SerialPort,
    Listener,
}

impl DeviceRow {
    /// The state, health and advice from whether the device's listener,
    /// port or folder is there, its connections and its last problem.
    fn judged(mut self, up: bool, how: Kind) -> Self {
        let (state, advice) = match (how, up) {
            (Kind::Folder, true) => ("device-watching", None),
            (Kind::Folder, false) => ("device-folder-missing", Some("advice-folder-missing")),
            (Kind::SerialPort, true) => ("device-port-present", None),
            (Kind::SerialPort, false) => ("device-port-missing", Some("advice-port-missing")),
            (Kind::Listener, true) if self.connections > 0 => ("device-connected", None),
            (Kind::Listener, true) => ("device-listening", None),
            (Kind::Listener, false) => ("device-not-listening", Some("advice-not-listening")),
        };
        self.state = state;
        self.advice = advice;
        if up {
            let recent_problem = self
                .record
                .last_problem
                .as_ref()
                .is_some_and(|(_, at)| crate::now_ms() - at < WARN_FOR_MS);
            self.health = if recent_problem {
                Health::Warning
            } else {
                Health::Ok
            };
        }
        self
    }
}

/// A patient ID as the page shows it: enough to match a paper form, not
/// enough to identify someone from a glance at the screen
/// (`MZ2611****17`).
pub fn mask_patient_id(id: &str) -> String {
    let chars: Vec<char> = id.trim().chars().collect();
    match chars.len() {
        0 => String::new(),
        1..=4 => "****".to_owned(),
        n @ 5..=7 => {
            let mut s = chars[0].to_string();
            s.push_str("****");
            s.push(chars[n - 1]);
            s
        }
        n => {
            let head = ((n - 2) / 2).min(6);
            let tail = 2;
            let mut s: String = chars[..head].iter().collect();
            s.push_str("****");
            s.extend(&chars[n - tail..]);
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_ids_are_masked() {
        assert_eq!(mask_patient_id("MZ261100000017"), "MZ2611****17");
        assert_eq!(mask_patient_id("P3001"), "P****1");
        assert_eq!(mask_patient_id("123"), "****");
        assert_eq!(mask_patient_id(""), "");
        assert_eq!(mask_patient_id("ZS20260317"), "ZS20****17");
    }
}
