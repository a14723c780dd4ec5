//! The page's section for reports from the hospital: what arrived, with
//! the patient ID masked, whether it is a correction or urgent, and where
//! it went at the clinic (the folder, the printer, the HIS), with the
//! reason in plain words when a sink has not taken it yet.

use maud::{Markup, html};

use super::view::{View, mask_patient_id};
use crate::clock::Clock;
use crate::i18n::{Catalog, Language};

pub fn section(v: &View, lang: Language, clock: &Clock) -> Markup {
    let c = Catalog::get();
    let t = |id: &str| c.t(lang, id);
    let ta = |id: &str, args: &[(&str, fluent_bundle::FluentValue<'_>)]| c.t_args(lang, id, args);
    html! {
        section id="reports" {
            h2 { (t("section-reports")) }
            @if v.report_sinks.is_empty() {
                p class="warning" { "⚠ " (t("reports-no-sink")) }
            }
            @for (sink, n) in &v.report_sinks {
                p data-sink=(sink) {
                    @if n.waiting > 0 || n.failed > 0 { span class="warning" { "⚠ " } } @else { span class="ok" { "✓ " } }
                    (ta("cli-report-sink", &[
                        ("sink", sink.as_str().into()),
                        ("delivered", n.delivered.to_string().into()),
                        ("waiting", n.waiting.to_string().into()),
                        ("failed", n.failed.to_string().into()),
                    ]))
                }
            }
            @if v.reports.is_empty() {
                p { (t("reports-none")) }
            } @else {
                table {
                    thead { tr {
                        th { (t("col-received")) } th { (t("col-report")) } th { (t("col-patient")) } th { (t("col-delivered-to")) }
                    } }
                    tbody {
                        @for r in &v.reports {
                            @let status = t(match r.status.as_str() {
                                "C" => "report-corrected",
                                "P" => "report-preliminary",
                                _ => "report-final",
                            });
                            tr data-report=(r.id) {
                                td { (clock.format_ms(r.received_ms).replacen('T', " ", 1)) }
                                td {
                                    @if r.status == "C" { strong class="warning" { (status) } } @else { (status) }
                                    @if r.urgent { " " strong class="fault" { (t("report-urgent-word")) } }
                                    " " (r.title)
                                }
                                td { (mask_patient_id(&r.patient_id)) }
                                td {
                                    @for s in &r.sinks {
                                        @let (mark, class) = match s.state {
                                            "delivered" => ("✓", "ok"),
                                            "failed" => ("✗", "fault"),
                                            _ => ("…", "warning"),
                                        };
                                        span class=(class) { (mark) " " (s.sink) " " (t(&format!("report-sink-{}", s.state))) }
                                        @if let (Some(e), "waiting" | "failed") = (&s.error, s.state) {
                                            " (" (crate::reports::sinks::describe(e, lang)) ")"
                                        }
                                        br;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
