//! A folder the clinic's PC opens: the report's PDF (or its text when the
//! hospital sent no PDF) and a JSON sidecar, each written atomically
//! under a name that is the same however often the report is delivered.
//! A corrected report gets its own name, marked as a correction, beside
//! the earlier one; its sidecar names the file it replaces.

use std::path::PathBuf;

use yilian_codecs::hl7::report::ReportStatus;
use yilian_gateway_config::schema::ReportSinkSection;

use super::{Ready, Sink, SinkVerdict, Why, safe};

pub struct FolderSink {
    dir: PathBuf,
}

impl FolderSink {
    pub fn new(section: &ReportSinkSection) -> Self {
        Self {
            dir: section.dir.clone().unwrap_or_default(),
        }
    }
}

/// `<reported>_<patient>_<accession or report>_<status>`: sorted by time
/// in a file manager, one name per version of a report.
pub fn stem(ready: &Ready<'_>) -> String {
    let r = ready.report;
    let when: String = r
        .reported_at
        .chars()
        .filter(char::is_ascii_digit)
        .take(14)
        .collect();
    let when = if when.len() >= 8 {
        when
    } else {
        ready
            .clock
            .format_ms(ready.held.received_ms)
            .chars()
            .filter(char::is_ascii_digit)
            .take(14)
            .collect()
    };
    let order = if r.keys.accession.is_empty() {
        ready.held.id.as_str()
    } else {
        r.keys.accession.as_str()
    };
    let status = match r.status {
        ReportStatus::Preliminary => "preliminary",
        ReportStatus::Final => "final",
        ReportStatus::Corrected => "CORRECTED",
    };
    format!(
        "{when}_{}_{}_{status}_{}",
        safe(&r.keys.patient_id, 32),
        safe(order, 32),
        &ready.held.id[..ready.held.id.len().min(9)]
    )
}

/// An HL7 time (`YYYYMMDDHHMMSS[+ZZZZ]`, the hospital's clock) as a
/// person reads it: `2026-12-03 10:14:00 +0800`; text that is not one is
/// shown as it is.
pub fn readable_ts(ts: &str) -> String {
    let (time, zone) = match ts.find(['+', '-']) {
        Some(i) => (&ts[..i], &ts[i..]),
        None => (ts, ""),
    };
    let d: String = time.chars().take_while(char::is_ascii_digit).collect();
    if d.len() < 8 {
        return ts.to_owned();
    }
    let mut out = format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..8]);
    if d.len() >= 12 {
        out.push_str(&format!(" {}:{}", &d[8..10], &d[10..12]));
        if d.len() >= 14 {
            out.push_str(&format!(":{}", &d[12..14]));
        }
    }
    if !zone.is_empty() {
        out.push(' ');
        out.push_str(zone);
    }
    out
}

/// The text version: a header a person reads first, then the report.
pub fn text(ready: &Ready<'_>) -> String {
    let r = ready.report;
    let mut out = String::new();
    if r.status == ReportStatus::Corrected {
        out.push_str(
            "*** 更正报告 CORRECTED REPORT: 替代此前的报告 replaces the earlier version ***\n",
        );
    } else if r.status == ReportStatus::Preliminary {
        out.push_str("*** 初步报告 PRELIMINARY REPORT ***\n");
    }
    if ready.held.urgent {
        out.push_str("*** 危急值/急诊 CRITICAL / STAT ***\n");
    }
    out.push_str(&format!("{}\n", r.title));
    out.push_str(&format!(
        "患者 Patient: {} {}\n",
        r.keys.patient_id, r.patient_name
    ));
    if !r.keys.accession.is_empty() {
        out.push_str(&format!("检查号 Accession: {}\n", r.keys.accession));
    }
    out.push_str(&format!(
        "报告时间 Reported: {}\n",
        readable_ts(&r.reported_at)
    ));
    out.push_str(&format!(
        "收到 Received: {}\n\n",
        ready.clock.format_ms(ready.held.received_ms)
    ));
    out.push_str(&r.text);
    out.push('\n');
    out
}

impl Sink for FolderSink {
    async fn deliver(&mut self, ready: &Ready<'_>) -> SinkVerdict {
        let stem = stem(ready);
        let (body, ext) = match &ready.report.pdf {
            Some(pdf) => (pdf.clone(), "pdf"),
            None => (text(ready).into_bytes(), "txt"),
        };
        let file = format!("{stem}.{ext}");
        let sidecar = serde_json::json!({
            "report_id": ready.held.id,
            "file": file,
            "status": ready.report.status.name(),
            "urgent": ready.held.urgent,
            "title": ready.report.title,
            "patient_id": ready.report.keys.patient_id,
            "patient_name": ready.report.patient_name,
            "accession": ready.report.keys.accession,
            "placer_order": ready.report.keys.placer,
            "reported_at": ready.report.reported_at,
            "received_at": ready.clock.format_ms(ready.held.received_ms),
            "replaces": ready.held.meta("replaces"),
            "text": ready.report.text,
        });
        let dir = self.dir.clone();
        let json = serde_json::to_vec_pretty(&sidecar).unwrap_or_default();
        let f = file.clone();
        let r = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)?;
            // The document first, then the sidecar: a PC that watches for
            // sidecars finds the document already whole.
            yilian_proof::disk::write_atomically(&dir.join(&f), &body, 0o644)?;
            yilian_proof::disk::write_atomically(&dir.join(format!("{stem}.json")), &json, 0o644)
        })
        .await;
        match r {
            Ok(Ok(())) => SinkVerdict::Delivered(file),
            // Under the packaged unit the whole filesystem is read-only but
            // for the state directory and /srv/yilian: say so, it is what
            // an admin who put the folder elsewhere meets.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem => {
                SinkVerdict::Retry(Why::new(
                    "why-folder-read-only",
                    format!("{}: {e}", self.dir.display()),
                ))
            }
            Ok(Err(e)) => SinkVerdict::Retry(Why::new(
                "why-folder-unwritable",
                format!("{}: {e}", self.dir.display()),
            )),
            Err(e) => SinkVerdict::Retry(Why::new("why-box-disk", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::readable_ts;

    #[test]
    fn hospital_times_read_as_dates() {
        assert_eq!(readable_ts("20261203101400"), "2026-12-03 10:14:00");
        assert_eq!(readable_ts("202612031014+0800"), "2026-12-03 10:14 +0800");
        assert_eq!(readable_ts("20261203"), "2026-12-03");
        assert_eq!(readable_ts("soon"), "soon");
        assert_eq!(readable_ts("2026年"), "2026年");
    }
}
