//! `yilian-gateway status`: what a clinic technician or a county admin on
//! the phone needs at a glance. Works whether or not the gateway runs: the
//! spool is read directly; the link state comes from the running gateway.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use yilian_spool::{ItemSummary, Lane, Spool, SpoolStats};

use crate::config::GatewayConfig;

#[derive(Debug, serde::Serialize)]
pub struct StatusReport {
    pub link: Option<serde_json::Value>,
    pub spool: SpoolStats,
    pub recent: Vec<ItemSummary>,
    /// The newest ECGs (and what ECG sources sent for review).
    pub ecgs: Vec<ItemSummary>,
}

pub fn collect(config: &GatewayConfig, recent: u32) -> anyhow::Result<StatusReport> {
    let (spool, recent_items) = Spool::inspect(&config.spool.dir, recent)?;
    let ecgs =
        Spool::inspect_with_key(&config.spool.dir, yilian_protocol::kind::keys::ECG, recent)?;
    let recent = recent_items;
    let link = fetch_link(config.metrics.listen);
    Ok(StatusReport {
        link,
        spool: SpoolStats {
            quota_bytes: Spool::effective_quota(&config.spool_config(), spool.used_bytes),
            quota_configured_bytes: config.spool.quota.0,
            ..spool
        },
        recent,
        ecgs,
    })
}

/// GET /status from the running gateway, without an HTTP client library.
fn fetch_link(addr: SocketAddr) -> Option<serde_json::Value> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET /status HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let json = body.split("\r\n\r\n").nth(1)?;
    serde_json::from_str(json).ok()
}

fn age(ms: i64, now: i64) -> String {
    let s = ((now - ms).max(0) / 1000) as u64;
    humantime::format_duration(Duration::from_secs(s)).to_string()
}

/// The report for a person, times in the clinic's zone (`clock`).
pub fn render(r: &StatusReport, now_ms: i64, clock: &crate::clock::Clock) -> String {
    let mut o = String::new();
    match &r.link {
        Some(l) => {
            let state = l["state"].as_str().unwrap_or("?");
            let central = l["central"].as_str().unwrap_or("?");
            let since = l["since_ms"]
                .as_i64()
                .map(|t| format!("for {}, since {}", age(t, now_ms), clock.format_ms(t)))
                .unwrap_or_default();
            let _ = write!(o, "link:     {state} to {central} ({since})");
            if let Some(rtt) = l["rtt_ms"].as_f64() {
                let _ = write!(o, ", rtt {rtt:.0} ms");
            }
            if let Some(id) = l["identity"].as_str() {
                let _ = write!(o, ", as {id}");
            }
            o.push('\n');
            if let Some(e) = l["last_error"].as_str() {
                let _ = writeln!(o, "          last error: {e}");
            }
        }
        None => o.push_str("link:     unknown (the gateway is not running, or its metrics listener is elsewhere)\n"),
    }
    let _ = writeln!(
        o,
        "spool:    {} of {} used, {} dead letter(s), {} delivered kept",
        bytes(r.spool.used_bytes),
        bytes(r.spool.quota_bytes),
        r.spool.dead,
        r.spool.delivered_kept
    );
    if r.spool.quota_configured_bytes > r.spool.quota_bytes {
        let _ = writeln!(
            o,
            "          the disk holds less than the configured quota of {}; lower `quota` in [spool]",
            bytes(r.spool.quota_configured_bytes)
        );
    }
    let _ = writeln!(
        o,
        "waiting:  {:<9} {:>7} {:>10}  OLDEST",
        "LANE", "ITEMS", "BYTES"
    );
    for lane in Lane::ALL {
        let l = &r.spool.lanes[lane as usize];
        let oldest = l
            .oldest_received_ms
            .map(|t| age(t, now_ms))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            o,
            "          {:<9} {:>7} {:>10}  {}",
            lane.name(),
            l.items,
            bytes(l.bytes),
            oldest
        );
    }
    if !r.recent.is_empty() {
        let _ = writeln!(
            o,
            "recent:   {:<10} {:<22} {:<8} {:<9} {:>10}  STATE",
            "AGO", "SOURCE", "KIND", "LANE", "SIZE"
        );
        for i in &r.recent {
            let _ = writeln!(
                o,
                "          {:<10} {:<22} {:<8} {:<9} {:>10}  {}{}",
                age(i.received_ms, now_ms),
                i.source,
                i.kind,
                i.lane,
                bytes(i.size),
                i.state,
                i.last_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
    }
    if !r.ecgs.is_empty() {
        let _ = writeln!(
            o,
            "ecg:      {:<25} {:<18} {:<16} {:<8} STATE",
            "RECEIVED", "DEVICE", "PATIENT ID", "LANE"
        );
        for i in &r.ecgs {
            let m = |k: &str| i.metadata.get(k).map(String::as_str).unwrap_or("-");
            let device = i
                .source
                .split_once(':')
                .map_or(i.source.as_str(), |(_, d)| d);
            let state = match i.metadata.get("quarantine") {
                Some(q) => format!("{}, QUARANTINED: {q}", delivery(i.state)),
                None => delivery(i.state).to_owned(),
            };
            let _ = writeln!(
                o,
                "          {:<25} {:<18} {:<16} {:<8} {}",
                clock.format_ms(i.received_ms),
                device,
                m("patient_id"),
                i.lane,
                state
            );
        }
    }
    o
}

/// What a technician asks: has it reached the hospital?
fn delivery(state: &str) -> &str {
    match state {
        "delivered" => "delivered",
        "dead" => "NOT delivered (dead letter, see dead-letters)",
        _ => "waiting to upload",
    }
}

pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
