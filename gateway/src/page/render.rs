//! The page as HTML: server-rendered, CSS inlined, no script; it refreshes
//! itself. Status is always a word (正常 / 警告 / 故障) with a symbol,
//! never colour alone. Times are the clinic's, with the offset.

use std::time::Duration;

use fluent_bundle::FluentValue;
use maud::{DOCTYPE, Markup, html};
use yilian_spool::Lane;

use super::view::{Health, View, mask_patient_id};
use crate::clock::Clock;
use crate::i18n::{Catalog, Language};

const STYLE: &str = "
body{font-family:'Noto Sans CJK SC','Noto Sans SC','Microsoft YaHei','PingFang SC',sans-serif;margin:0;background:#f6f7f9;color:#1d2329}
header{background:#1f4e79;color:#fff;padding:12px 16px;display:flex;flex-wrap:wrap;gap:12px;align-items:baseline}
header h1{font-size:1.3em;margin:0}header a{color:#fff;margin-left:auto}
main{padding:8px 16px;max-width:1100px}
section{background:#fff;border:1px solid #d8dde3;border-radius:6px;margin:12px 0;padding:8px 14px}
h2{font-size:1.1em;margin:6px 0 10px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dt{color:#52606d}dd{margin:0}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:6px 8px;border-top:1px solid #e4e7eb;vertical-align:top}
th{color:#52606d;font-weight:normal}
.ok{color:#1b6e20}.warning{color:#8a5a00}.fault{color:#a61b1b;font-weight:bold}
.status{white-space:nowrap}.advice{color:#3e4c59}
footer{color:#52606d;font-size:.9em;padding:0 16px 16px}
form{display:inline-block;margin:4px 8px 4px 0}button{font-size:1em;padding:6px 12px}input{font-size:1em;padding:5px}
@media (max-width:700px){table,thead,tbody,tr,th,td{display:block}thead{display:none}td{border:none;padding:2px 0}tr{border-top:1px solid #e4e7eb;padding:6px 0}}
";

/// A clock further from central's than this is shown as a fault: renewal
/// and TLS start failing well before certificates' one-hour backdating is
/// used up, and times on the page mislead.
const CLOCK_OFF_MS: i64 = 60_000;

/// A time as the page shows it: `2026-12-03 16:30:17+08:00`.
fn local(clock: &Clock, ms: i64) -> String {
    clock.format_ms(ms).replacen('T', " ", 1)
}

fn age(from_ms: i64, now_ms: i64) -> String {
    let secs = ((now_ms - from_ms).max(0) / 1000) as u64;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// What the diagnostics section needs besides the view.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    pub pin_set: bool,
    pub logged_in: bool,
    /// The token every form carries (the `yl_csrf` cookie's value).
    pub csrf: String,
    /// The last action's result.
    pub flash: Option<String>,
    /// A catalogue key about the last login.
    pub notice: Option<String>,
    pub folders: Vec<String>,
    /// Modalities that can be echoed: (DICOM node, AE title).
    pub modalities: Vec<(String, String)>,
}

fn diagnostics(d: &Diagnostics, lang: Language) -> Markup {
    let c = Catalog::get();
    let t = |id: &str| c.t(lang, id);
    let hidden = html! {
        input type="hidden" name="csrf" value=(d.csrf);
        input type="hidden" name="lang" value=(lang.tag());
    };
    html! {
        section id="diagnostics" {
            h2 { (t("section-diagnostics")) }
            @if let Some(f) = &d.flash { p id="result" class="advice" { strong { (f) } } }
            @if let Some(n) = &d.notice { p id="notice" class="warning" { (t(n)) } }
            @if !d.pin_set {
                p { (t("diag-no-pin")) }
            } @else if !d.logged_in {
                // On a page of its own: this one refreshes itself, which
                // would wipe a PIN half typed.
                p { a href=(format!("/login?lang={}", lang.tag())) id="to-login" { (t("diag-login")) } }
            } @else {
                form method="post" action="/action" { (hidden) input type="hidden" name="action" value="check-link";
                    button type="submit" id="check-link" { (t("diag-check-link")) } }
                @for f in &d.folders {
                    form method="post" action="/action" { (hidden) input type="hidden" name="action" value="check-folder";
                        input type="hidden" name="target" value=(f);
                        button type="submit" class="folder" { (c.t_args(lang, "diag-check-folder", &[("folder", f.as_str().into())])) } }
                }
                @for (node, ae) in &d.modalities {
                    form method="post" action="/action" { (hidden) input type="hidden" name="action" value="echo";
                        input type="hidden" name="target" value=(format!("{node}/{ae}"));
                        button type="submit" class="echo" { (c.t_args(lang, "diag-echo", &[("ae", ae.as_str().into())])) } }
                }
                p { a href="/support-bundle" id="bundle" { (t("diag-bundle")) } }
                form method="post" action="/action" { (hidden) input type="hidden" name="action" value="logout";
                    button type="submit" { (t("diag-logout")) } }
            }
        }
    }
}

/// Items central refused for good: why, and (logged in) send again.
fn dead_letters(v: &View, lang: Language, clock: &Clock, d: &Diagnostics) -> Markup {
    let c = Catalog::get();
    let t = |id: &str| c.t(lang, id);
    html! {
        @if !v.dead.is_empty() {
            section id="dead" {
                h2 class="warning" { (t("section-dead")) }
                table {
                    thead { tr {
                        th { (t("col-received")) } th { (t("col-device")) } th { (t("col-kind")) }
                        th { (t("col-reason")) } @if d.logged_in { th {} }
                    } }
                    tbody {
                        @for i in &v.dead {
                            tr data-item=(i.id) {
                                td { (local(clock, i.received_ms)) }
                                td { (i.source.split_once(':').map_or(i.source.as_str(), |(_, d)| d)) }
                                td { (i.kind) }
                                td { (i.last_error.clone().unwrap_or_default()) }
                                @if d.logged_in {
                                    td { form method="post" action="/action" {
                                        input type="hidden" name="csrf" value=(d.csrf);
                                        input type="hidden" name="lang" value=(lang.tag());
                                        input type="hidden" name="action" value="requeue";
                                        input type="hidden" name="target" value=(i.id);
                                        button type="submit" class="requeue" { (t("diag-requeue")) }
                                    } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The page in `lang`.
pub fn page(v: &View, lang: Language, clock: &Clock, now_ms: i64, diag: &Diagnostics) -> String {
    let c = Catalog::get();
    let t = |id: &str| c.t(lang, id);
    let ta = |id: &str, args: &[(&str, FluentValue<'_>)]| c.t_args(lang, id, args);
    let other = match lang {
        Language::ZhCn => Language::En,
        Language::En => Language::ZhCn,
    };
    let markup: Markup = html! {
        (DOCTYPE)
        html lang=(lang.tag()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="refresh" content=(format!("10; url=/?lang={}", lang.tag()));
                title { (t("page-title")) }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                header {
                    h1 { (t("page-title")) }
                    span id="identity" { (v.identity.clone().unwrap_or_else(|| t("not-enrolled"))) }
                    a href=(format!("/?lang={}", other.tag())) lang=(other.tag()) { (t("switch-language")) }
                }
                main {
                    (overview(v, lang, clock, now_ms))
                    (devices(v, lang, clock, now_ms))
                    (dead_letters(v, lang, clock, diag))
                    (diagnostics(diag, lang))
                    (super::reports::section(v, lang, clock))
                    section id="recent" {
                        h2 { (t("section-recent")) }
                        @if v.recent.is_empty() {
                            p { (t("recent-none")) }
                        } @else {
                            table {
                                thead { tr {
                                    th { (t("col-received")) } th { (t("col-device")) } th { (t("col-kind")) }
                                    th { (t("col-patient")) } th { (t("col-lane")) } th { (t("col-delivery")) }
                                } }
                                tbody {
                                    @for i in &v.recent {
                                        @let device = i.source.split_once(':').map_or(i.source.as_str(), |(_, d)| d);
                                        @let delivery = match i.state {
                                            "delivered" => "delivery-delivered",
                                            "dead" => "delivery-dead",
                                            _ => "delivery-waiting",
                                        };
                                        tr {
                                            td { (local(clock, i.received_ms)) }
                                            td { (device) }
                                            td { (i.kind) }
                                            td { (i.metadata.get("patient_id").map(|p| mask_patient_id(p)).unwrap_or_default()) }
                                            td { (t(&format!("lane-{}", i.lane))) }
                                            td {
                                                (t(delivery))
                                                @if let Some(q) = i.metadata.get("quarantine") {
                                                    br; span class="warning" { (ta("quarantined", &[("reason", q.as_str().into())])) }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                footer { (ta("refresh-note", &[("offset", clock.offset_text().into())])) }
            }
        }
    };
    markup.into_string()
}

fn overview(v: &View, lang: Language, clock: &Clock, now_ms: i64) -> Markup {
    let c = Catalog::get();
    let t = |id: &str| c.t(lang, id);
    let ta = |id: &str, args: &[(&str, FluentValue<'_>)]| c.t_args(lang, id, args);
    let (link_word, link_class) = match v.link.state {
        "up" => (t("link-up"), "ok"),
        "revoked" => (t("link-revoked"), "fault"),
        "connecting" => (t("link-connecting"), "warning"),
        "down" => (t("link-down"), "fault"),
        _ => (t("link-unknown"), "warning"),
    };
    html! {
        section id="overview" {
            h2 { (t("section-overview")) }
            dl {
                dt { (t("label-identity")) } dd { (v.identity.clone().unwrap_or_else(|| t("not-enrolled"))) }
                dt { (t("label-software")) } dd { (env!("CARGO_PKG_VERSION")) }
                dt { (t("label-config")) } dd { (v.config_version) }
                dt { (t("label-clock")) } dd { (local(clock, now_ms)) }
                @if let Some(off) = v.link.clock_offset_ms {
                    dt { (t("label-clock-offset")) }
                    dd id="clock-offset" class=(if off.abs() > CLOCK_OFF_MS { "fault" } else { "" }) {
                        (ta("clock-offset", &[("secs", format!("{:+.1}", off as f64 / 1000.0).into())]))
                        @if off.abs() > CLOCK_OFF_MS { br; span class="advice" { (t("clock-off-advice")) } }
                    }
                }
                dt { (t("label-link")) }
                dd id="link" {
                    span class=(link_class) { (link_word) }
                    " " (ta("link-since", &[("since", local(clock, v.link.since_ms).into())]))
                    @if v.link.state != "up" {
                        @if let Some(key) = v.link.last_error_key {
                            br; span class="advice" { (t(key)) }
                        }
                        @if let Some(e) = &v.link.last_error {
                            br; small { (ta("link-why", &[("reason", e.as_str().into())])) }
                        }
                    }
                }
                dt { (t("label-central")) } dd { (v.link.central) }
                @if let Some(rtt) = v.link.rtt_ms {
                    dt { (t("label-rtt")) } dd { (format!("{rtt:.0} ms")) }
                }
                @if v.certificate_not_after > 0 {
                    dt { (t("label-certificate")) } dd { (local(clock, v.certificate_not_after.saturating_mul(1000))) }
                }
                dt { (t("label-cap")) }
                dd { (v.cap.map(|b| format!("{:.1} Mbit/s", b * 8.0 / 1e6)).unwrap_or_else(|| t("cap-unlimited"))) }
                @if let Some(s) = &v.spool {
                    dt { (t("label-spool")) }
                    dd { (ta("spool-usage", &[("used", crate::status::bytes(s.used_bytes).into()), ("quota", crate::status::bytes(s.quota_bytes).into())])) }
                    dt { (t("label-backlog")) }
                    dd id="backlog" {
                        @let waiting: Vec<_> = Lane::ALL.iter().filter(|&&l| s.lanes[l as usize].items > 0).collect();
                        @if waiting.is_empty() { (t("backlog-none")) }
                        @for &&lane in &waiting {
                            @let l = &s.lanes[lane as usize];
                            (ta("backlog-lane", &[
                                ("lane", t(&format!("lane-{}", lane.name())).into()),
                                ("items", (l.items as i64).into()),
                                ("age", l.oldest_received_ms.map(|o| age(o, now_ms)).unwrap_or_default().into()),
                            ]))
                            br;
                        }
                    }
                    dt { (t("label-dead")) }
                    dd class=(if s.dead > 0 { "warning" } else { "" }) { (s.dead) }
                }
            }
        }
    }
}

fn devices(v: &View, lang: Language, clock: &Clock, now_ms: i64) -> Markup {
    let c = Catalog::get();
    let t = |id: &str| c.t(lang, id);
    html! {
        section id="devices" {
            h2 { (t("section-devices")) }
            table {
                thead { tr {
                    th { (t("col-state")) } th { (t("col-device")) } th { (t("col-kind")) } th { (t("col-where")) }
                    th { (t("col-last-item")) } th { (t("col-today")) } th { (t("col-problem")) }
                } }
                tbody {
                    @for d in &v.devices {
                        @let (class, symbol, word) = match d.health {
                            Health::Ok => ("ok", "✔", t("status-ok")),
                            Health::Warning => ("warning", "▲", t("status-warning")),
                            Health::Fault => ("fault", "✖", t("status-fault")),
                        };
                        tr data-health=(class) data-device=(d.name) {
                            td class=(format!("status {class}")) { (symbol) " " (word) }
                            td { strong { (d.name) } br;
                                span { (c.t_args(lang, d.state, &[("count", d.connections.into())])) } }
                            td { (t(d.family)) }
                            td { code { (d.place) } }
                            td { (d.record.last_item_ms.map(|ms| local(clock, ms)).unwrap_or_else(|| t("never"))) }
                            td { (d.record.items_today) }
                            td class="advice" {
                                @if let Some(a) = d.advice {
                                    (t(a)) br;
                                }
                                @match &d.record.last_problem {
                                    Some((key, at)) => {
                                        (t(key)) " " (c.t_args(lang, "problem-at", &[("at", format!("{}, {}", local(clock, *at), age(*at, now_ms)).into())]))
                                    }
                                    None => @if d.advice.is_none() { (t("no-problem")) },
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The login page: the PIN form alone, without the refresh.
pub fn login_page(lang: Language, csrf: &str, notice: Option<&str>) -> String {
    let c = Catalog::get();
    let t = |id: &str| c.t(lang, id);
    html! {
        (DOCTYPE)
        html lang=(lang.tag()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (t("page-title")) }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                header { h1 { (t("page-title")) } a href=(format!("/?lang={}", lang.tag())) { (t("section-overview")) } }
                main {
                    section id="diagnostics" {
                        h2 { (t("section-diagnostics")) }
                        @if let Some(n) = notice { p id="notice" class="warning" { (t(n)) } }
                        form method="post" action="/login" id="login" {
                            input type="hidden" name="csrf" value=(csrf);
                            input type="hidden" name="lang" value=(lang.tag());
                            label { (t("diag-pin")) " " input type="password" name="pin" id="pin" inputmode="numeric" autocomplete="off" required; }
                            " " button type="submit" id="login-button" { (t("diag-login")) }
                        }
                    }
                }
            }
        }
    }
    .into_string()
}
