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
    /// Reports from the hospital and where they went at the clinic.
    pub reports: Option<ReportsSummary>,
}

#[derive(Debug, serde::Serialize)]
pub struct ReportsSummary {
    pub received: u64,
    pub sinks: std::collections::BTreeMap<String, crate::reports::store::SinkCounts>,
    pub recent: Vec<crate::reports::store::ReportView>,
}

pub fn collect(config: &GatewayConfig, recent: u32) -> anyhow::Result<StatusReport> {
    let (spool, recent_items) = Spool::inspect(&config.spool.dir, recent)?;
    let ecgs =
        Spool::inspect_with_key(&config.spool.dir, yilian_protocol::kind::keys::ECG, recent)?;
    let recent_reports = recent as usize;
    let recent = recent_items;
    let link = fetch_link(config.metrics.listen);
    let reports = match crate::reports::ReportStore::inspect(&config.spool.dir)? {
        Some(store) => {
            let (received, sinks) = store.counts()?;
            Some(ReportsSummary {
                received,
                sinks,
                recent: store.recent(recent_reports)?,
            })
        }
        None => None,
    };
    Ok(StatusReport {
        reports,
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

/// The report for a person, in `lang`, times in the clinic's zone
/// (`clock`).
pub fn render(
    r: &StatusReport,
    now_ms: i64,
    clock: &crate::clock::Clock,
    lang: crate::i18n::Language,
) -> String {
    use fluent_bundle::FluentValue;
    let c = crate::i18n::Catalog::get();
    let t = |id: &str| c.t(lang, id);
    let ta = |id: &str, args: &[(&str, FluentValue<'_>)]| c.t_args(lang, id, args);
    let mut o = String::new();
    match &r.link {
        Some(l) => {
            let state = match l["state"].as_str().unwrap_or("?") {
                "up" => t("link-up"),
                "down" => t("link-down"),
                "connecting" => t("link-connecting"),
                "revoked" => t("link-revoked"),
                other => other.to_owned(),
            };
            let central = l["central"].as_str().unwrap_or("?");
            let since = l["since_ms"]
                .as_i64()
                .map(|ms| {
                    ta(
                        "cli-link-for",
                        &[
                            ("age", age(ms, now_ms).into()),
                            ("time", clock.format_ms(ms).into()),
                        ],
                    )
                })
                .unwrap_or_default();
            o.push_str(&ta(
                "cli-link",
                &[
                    ("state", state.into()),
                    ("central", central.into()),
                    ("since", since.into()),
                ],
            ));
            if let Some(rtt) = l["rtt_ms"].as_f64() {
                o.push_str(&ta("cli-rtt", &[("rtt", format!("{rtt:.0}").into())]));
            }
            if let Some(id) = l["identity"].as_str() {
                o.push_str(&ta("cli-as", &[("id", id.into())]));
            }
            o.push('\n');
            if let Some(e) = l["last_error"].as_str() {
                // What it means first (a catalogue key the gateway chose),
                // then the error itself.
                if let Some(key) = l["last_error_key"]
                    .as_str()
                    .filter(|k| k.starts_with("link-why-"))
                {
                    let _ = writeln!(o, "          {}", t(key));
                }
                let _ = writeln!(
                    o,
                    "          {}",
                    ta("cli-last-error", &[("error", e.into())])
                );
            }
        }
        None => {
            o.push_str(&t("cli-link-unknown"));
            o.push('\n');
        }
    }
    o.push_str(&ta(
        "cli-spool",
        &[
            ("used", bytes(r.spool.used_bytes).into()),
            ("quota", bytes(r.spool.quota_bytes).into()),
            ("dead", r.spool.dead.to_string().into()),
            ("kept", r.spool.delivered_kept.to_string().into()),
        ],
    ));
    o.push('\n');
    if r.spool.quota_configured_bytes > r.spool.quota_bytes {
        let _ = writeln!(
            o,
            "          {}",
            ta(
                "cli-disk-small",
                &[("quota", bytes(r.spool.quota_configured_bytes).into())]
            )
        );
    }
    let _ = writeln!(
        o,
        "{:<10}{:<9} {:>7} {:>10}  {}",
        t("cli-waiting"),
        t("cli-col-lane"),
        t("cli-col-items"),
        t("cli-col-bytes"),
        t("cli-col-oldest")
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
            t(&format!("lane-{}", lane.name())),
            l.items,
            bytes(l.bytes),
            oldest
        );
    }
    if !r.recent.is_empty() {
        let _ = writeln!(
            o,
            "{:<10}{:<10} {:<22} {:<8} {:<9} {:>10}  {}",
            t("cli-recent"),
            t("cli-col-ago"),
            t("cli-col-source"),
            t("cli-col-kind"),
            t("cli-col-lane"),
            t("cli-col-size"),
            t("cli-col-state")
        );
        for i in &r.recent {
            let _ = writeln!(
                o,
                "          {:<10} {:<22} {:<8} {:<9} {:>10}  {}{}",
                age(i.received_ms, now_ms),
                i.source,
                i.kind,
                t(&format!("lane-{}", i.lane)),
                bytes(i.size),
                t(&format!("item-{}", i.state)),
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
            "{:<10}{:<25} {:<18} {:<16} {:<8} {}",
            t("cli-ecg"),
            t("cli-col-received"),
            t("cli-col-device"),
            t("cli-col-patient"),
            t("cli-col-lane"),
            t("cli-col-state")
        );
        for i in &r.ecgs {
            let m = |k: &str| i.metadata.get(k).map(String::as_str).unwrap_or("-");
            let device = i
                .source
                .split_once(':')
                .map_or(i.source.as_str(), |(_, d)| d);
            let delivery = t(match i.state {
                "delivered" => "cli-delivered",
                "dead" => "cli-dead",
                _ => "cli-waiting-upload",
            });
            let state = match i.metadata.get("quarantine") {
                Some(q) => ta(
                    "cli-quarantined",
                    &[("state", delivery.into()), ("reason", q.as_str().into())],
                ),
                None => delivery,
            };
            let _ = writeln!(
                o,
                "          {:<25} {:<18} {:<16} {:<8} {}",
                clock.format_ms(i.received_ms),
                device,
                m("patient_id"),
                t(&format!("lane-{}", i.lane)),
                state
            );
        }
    }
    if let Some(rep) = &r.reports {
        render_reports(&mut o, rep, clock, lang);
    }
    o
}

/// Reports received and where each went.
fn render_reports(
    o: &mut String,
    rep: &ReportsSummary,
    clock: &crate::clock::Clock,
    lang: crate::i18n::Language,
) {
    let c = crate::i18n::Catalog::get();
    let t = |id: &str| c.t(lang, id);
    let ta = |id: &str, args: &[(&str, fluent_bundle::FluentValue<'_>)]| c.t_args(lang, id, args);
    let sinks: Vec<String> = rep
        .sinks
        .iter()
        .map(|(name, n)| {
            ta(
                "cli-report-sink",
                &[
                    ("sink", name.as_str().into()),
                    ("delivered", n.delivered.to_string().into()),
                    ("waiting", n.waiting.to_string().into()),
                    ("failed", n.failed.to_string().into()),
                ],
            )
        })
        .collect();
    let _ = writeln!(
        o,
        "{:<10}{}",
        t("cli-reports"),
        ta(
            "cli-reports-summary",
            &[
                ("received", rep.received.to_string().into()),
                ("sinks", sinks.join("; ").into()),
            ]
        )
    );
    for r in &rep.recent {
        let status = t(match r.status.as_str() {
            "C" => "report-corrected",
            "P" => "report-preliminary",
            _ => "report-final",
        });
        let urgent = if r.urgent {
            t("report-urgent")
        } else {
            String::new()
        };
        let wheres: Vec<String> = r
            .sinks
            .iter()
            .map(|s| {
                let state = t(&format!("report-sink-{}", s.state));
                match (&s.error, s.state) {
                    (Some(e), "waiting" | "failed") => format!(
                        "{} {state} ({})",
                        s.sink,
                        crate::reports::sinks::describe(e, lang)
                    ),
                    _ => format!("{} {state}", s.sink),
                }
            })
            .collect();
        let _ = writeln!(
            o,
            "          {:<25} {}{} {:<14} {}  {}",
            clock.format_ms(r.received_ms),
            status,
            urgent,
            r.patient_id,
            r.title,
            wheres.join(", ")
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::i18n::Language;

    #[test]
    fn the_report_reads_in_chinese_and_in_english() {
        let mut spool = SpoolStats {
            used_bytes: 3 << 20,
            quota_bytes: 20 << 30,
            quota_configured_bytes: 20 << 30,
            dead: 1,
            ..SpoolStats::default()
        };
        spool.lanes[Lane::Urgent as usize].items = 2;
        spool.lanes[Lane::Urgent as usize].oldest_received_ms = Some(1_000);
        let r = StatusReport {
            link: Some(serde_json::json!({
                "state": "down", "central": "hub.county.example:4433", "since_ms": 1_000,
                "identity": "anxi/hutou/box-1", "last_error": "connection lost: timed out",
                "last_error_key": "link-why-timeout"
            })),
            spool,
            recent: Vec::new(),
            ecgs: Vec::new(),
            reports: Some(ReportsSummary {
                received: 1,
                sinks: [(
                    "his".to_owned(),
                    crate::reports::store::SinkCounts {
                        waiting: 1,
                        ..Default::default()
                    },
                )]
                .into(),
                recent: vec![crate::reports::store::ReportView {
                    id: "R1".into(),
                    received_ms: 1_000,
                    urgent: true,
                    status: "C".into(),
                    title: "胸部CT".into(),
                    patient_id: "P1".into(),
                    kind: "imaging".into(),
                    sinks: vec![crate::reports::store::SinkState {
                        sink: "his".into(),
                        state: "waiting",
                        error: Some(
                            "why-his-unreachable\t127.0.0.1:2575: connection refused".into(),
                        ),
                        done_ms: None,
                    }],
                }],
            }),
        };
        let clock = crate::clock::Clock::default();
        let zh = render(&r, 61_000, &clock, Language::ZhCn);
        assert!(
            zh.contains("连接：    已断开，中心 hub.county.example:4433"),
            "{zh}"
        );
        assert!(
            zh.contains("最近的错误：connection lost: timed out"),
            "{zh}"
        );
        assert!(zh.contains("无法送达 1 项"), "{zh}");
        assert!(zh.contains("中心没有应答：诊所的网络通吗？"), "{zh}");
        assert!(zh.contains("紧急"), "{zh}");
        assert!(
            zh.contains("已从上级医院收到 1 份；his：已送达 0，待送 1，被拒 0"),
            "{zh}"
        );
        assert!(zh.contains("更正报告，危急值/急诊"), "{zh}");
        let en = render(&r, 61_000, &clock, Language::En);
        assert!(en.starts_with("link:     down to hub.county.example:4433 (for 1m, since 1970-01-01T08:00:01+08:00), as anxi/hutou/box-1\n"), "{en}");
        assert!(
            en.contains("3.0 MiB of 20.0 GiB used, 1 dead letter(s)"),
            "{en}"
        );
        assert!(en.contains("urgent"), "{en}");
        assert!(
            en.contains("CORRECTED, CRITICAL/STAT P1")
                && en.contains(
                    "his waiting (cannot reach the HIS (127.0.0.1:2575: connection refused)"
                ),
            "{en}"
        );
    }
}
