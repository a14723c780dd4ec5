//! Reading a report out of an HL7 v2 message: ORU^R01 (text in OBX of type
//! TX, FT or ST, or a document as an ED value) and MDM^T02 and its
//! siblings (TXA, then OBX). Central reads the keys it correlates on and
//! whether the report is urgent; the box reads the text and the PDF it
//! files, prints or forwards.
//!
//! Everything here is lenient in what it reads and says precisely what is
//! missing when a report cannot be taken: the [`ReportError`] names the
//! HL7 field, which goes back to the sender in ERR-2.

use base64::Engine;

use super::escape::unescape;
use super::message::{Message, Segment};

/// Where a report stands, from OBR-25 (ORU) or TXA-17 and the trigger
/// (MDM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportStatus {
    Preliminary,
    Final,
    /// Replaces an earlier version, which the clinic must see replaced.
    Corrected,
}

impl ReportStatus {
    /// The OBR-25 code.
    pub fn code(self) -> &'static str {
        match self {
            ReportStatus::Preliminary => "P",
            ReportStatus::Final => "F",
            ReportStatus::Corrected => "C",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        match code {
            "P" => Some(ReportStatus::Preliminary),
            "F" => Some(ReportStatus::Final),
            "C" => Some(ReportStatus::Corrected),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ReportStatus::Preliminary => "preliminary",
            ReportStatus::Final => "final",
            ReportStatus::Corrected => "corrected",
        }
    }
}

/// A report that cannot be taken: the field (`OBR^1^25`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {text}")]
pub struct ReportError {
    pub location: String,
    /// HL7 table 0357: 101 required field missing, 102 data type error,
    /// 200 unsupported message type.
    pub code: u16,
    pub text: String,
}

fn missing(location: &str, text: &str) -> ReportError {
    ReportError {
        location: location.to_owned(),
        code: 101,
        text: text.to_owned(),
    }
}

/// What central correlates a report on, and how it travels.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReportKeys {
    /// Accession number: OBR-18, else OBR-3 / ORC-3 (filler order number,
    /// which most RIS set to it), else TXA-14 (placer order of the
    /// document's order).
    pub accession: String,
    /// Placer order number ORC-2 / OBR-2, as the clinic's order had it.
    pub placer: String,
    /// Filler order number OBR-3 / ORC-3 / TXA-13 (parent document).
    pub filler: String,
    /// Study Instance UID: ZDS-1 or IPC-3, or an OBX of type RP/HD whose
    /// identifier says so.
    pub study_uid: String,
    pub patient_id: String,
    /// MSH-6, the receiving facility.
    pub facility: String,
}

/// A report as read from its message.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `ORU^R01`, `MDM^T02`, ...
    pub message_type: String,
    pub control_id: String,
    pub status: ReportStatus,
    /// STAT (OBR-5, OBR-27.6, TQ1-9) or a critical value (OBX-8 HH, LL,
    /// AA or a panic flag).
    pub urgent: bool,
    /// `imaging`, `ecg`, `lab` or `document`, from OBR-24 or the message.
    pub kind: &'static str,
    pub keys: ReportKeys,
    pub patient_name: String,
    /// OBR-4 text, else TXA-2 (document type), else the first OBX-3 text.
    pub title: String,
    /// When the report was made (OBR-22, TXA-22 or TXA-4, MSH-7), as sent.
    pub reported_at: String,
    /// The report's text: TX/FT/ST values, one line per repetition.
    pub text: String,
    /// The first embedded PDF (ED with subtype PDF, base64).
    pub pdf: Option<Vec<u8>>,
}

fn first(m: &Message, candidates: &[(&str, usize, usize)]) -> String {
    candidates
        .iter()
        .map(|(s, f, c)| unescape(m.get(s, *f, *c), &m.delimiters))
        .find(|v| !v.trim().is_empty())
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

fn components<'a>(m: &Message, value: &'a str) -> Vec<&'a str> {
    value.split(m.delimiters.component).collect()
}

/// The OBX segments.
fn observations(m: &Message) -> impl Iterator<Item = &Segment> {
    m.segments.iter().filter(|s| s.id() == "OBX")
}

const CRITICAL_FLAGS: &[&str] = &["HH", "LL", "AA", "PANIC", ">", "<"];

/// Reads a report from a parsed message.
pub fn read_report(m: &Message) -> Result<Report, ReportError> {
    let (code, trigger, _) = m.message_type();
    let message_type = format!("{code}^{trigger}");
    let control_id = m.control_id().to_owned();
    if control_id.is_empty() {
        return Err(missing("MSH^1^10", "no message control id (MSH-10)"));
    }
    let mdm = code == "MDM";
    if !(code == "ORU" || mdm) {
        return Err(ReportError {
            location: "MSH^1^9".into(),
            code: 200,
            text: format!("{message_type} is not a report; send ORU^R01 or MDM^T02"),
        });
    }
    let patient_id = first(m, &[("PID", 3, 1)]);
    if patient_id.is_empty() {
        return Err(missing("PID^1^3", "no patient identifier (PID-3)"));
    }
    let status = if mdm {
        if m.segment("TXA").is_none() {
            return Err(missing("TXA", "an MDM message needs its TXA segment"));
        }
        // T08/T10 edit or replace an earlier document.
        if matches!(trigger, "T04" | "T06" | "T08" | "T10") {
            ReportStatus::Corrected
        } else {
            match m.get("TXA", 17, 1) {
                "AU" | "LA" => ReportStatus::Final,
                "" => {
                    return Err(missing(
                        "TXA^1^17",
                        "no document completion status (TXA-17)",
                    ));
                }
                _ => ReportStatus::Preliminary,
            }
        }
    } else {
        if m.segment("OBR").is_none() {
            return Err(missing("OBR", "an ORU message needs its OBR segment"));
        }
        let code = m.get("OBR", 25, 1);
        match code {
            "" => return Err(missing("OBR^1^25", "no result status (OBR-25)")),
            "F" => ReportStatus::Final,
            "C" => ReportStatus::Corrected,
            "P" | "R" | "S" | "I" | "A" => ReportStatus::Preliminary,
            other => {
                return Err(ReportError {
                    location: "OBR^1^25".into(),
                    code: 102,
                    text: format!("result status {other:?} is not a report (P, F or C)"),
                });
            }
        }
    };
    if observations(m).next().is_none() {
        return Err(missing(
            "OBX",
            "the message holds no OBX with the report's content",
        ));
    }
    let mut text = String::new();
    let mut pdf = None;
    let mut urgent = false;
    let mut study_from_obx = String::new();
    for obx in observations(m) {
        let value_type = obx.field(2);
        let flags = obx.field(8);
        if flags
            .split(m.delimiters.repetition)
            .any(|f| CRITICAL_FLAGS.contains(&f.trim().to_ascii_uppercase().as_str()))
        {
            urgent = true;
        }
        match value_type {
            "TX" | "FT" | "ST" => {
                for rep in obx.field(5).split(m.delimiters.repetition) {
                    text.push_str(&unescape(rep, &m.delimiters));
                    text.push('\n');
                }
            }
            "ED" if pdf.is_none() => {
                let parts = components(m, obx.field(5));
                let subtype = parts.get(2).copied().unwrap_or("").to_ascii_uppercase();
                let encoding = parts.get(3).copied().unwrap_or("").to_ascii_uppercase();
                let data = parts.get(4).copied().unwrap_or("");
                if subtype == "PDF" && encoding == "BASE64" {
                    // Line breaks and escaped breaks may sit inside the data.
                    let clean: String = unescape(data, &m.delimiters)
                        .chars()
                        .filter(|c| !c.is_whitespace())
                        .collect();
                    match base64::engine::general_purpose::STANDARD.decode(clean.as_bytes()) {
                        Ok(bytes) if bytes.starts_with(b"%PDF") => pdf = Some(bytes),
                        _ => {
                            return Err(ReportError {
                                location: "OBX^1^5".into(),
                                code: 102,
                                text: "the embedded PDF is not valid base64 of a PDF".into(),
                            });
                        }
                    }
                }
            }
            "RP" | "HD" => {
                let id = obx.field(3).to_ascii_uppercase();
                if id.contains("STUDY") || id.contains("113014") {
                    study_from_obx = components(m, obx.field(5))
                        .first()
                        .copied()
                        .unwrap_or("")
                        .to_owned();
                }
            }
            _ => {}
        }
    }
    while text.ends_with('\n') {
        text.pop();
    }
    if text.trim().is_empty() && pdf.is_none() {
        return Err(missing(
            "OBX^1^5",
            "no report text (OBX of type TX, FT or ST) and no embedded PDF (ED)",
        ));
    }
    let priority = first(m, &[("OBR", 5, 1), ("OBR", 27, 6), ("TQ1", 9, 1)]);
    if priority.eq_ignore_ascii_case("S") {
        urgent = true;
    }
    let section = m.get("OBR", 24, 1).to_ascii_uppercase();
    let kind = if mdm {
        "document"
    } else {
        match section.as_str() {
            "EC" | "ECG" | "EKG" | "CUS" => "ecg",
            "RAD" | "RX" | "CT" | "MR" | "US" | "NMR" | "DX" | "CR" | "MG" | "NM" | "XA" | "RF"
            | "OUS" => "imaging",
            "" => "lab",
            _ => "lab",
        }
    };
    let mut study_uid = first(m, &[("ZDS", 1, 1), ("IPC", 3, 1)]);
    if study_uid.is_empty() {
        study_uid = study_from_obx;
    }
    let keys = ReportKeys {
        accession: first(
            m,
            &[("OBR", 18, 1), ("OBR", 3, 1), ("ORC", 3, 1), ("TXA", 14, 1)],
        ),
        placer: first(m, &[("ORC", 2, 1), ("OBR", 2, 1), ("TXA", 14, 1)]),
        filler: first(m, &[("OBR", 3, 1), ("ORC", 3, 1), ("TXA", 13, 1)]),
        study_uid,
        patient_id,
        facility: first(m, &[("MSH", 6, 1)]),
    };
    let patient_name = {
        let family = first(m, &[("PID", 5, 1)]);
        let given = first(m, &[("PID", 5, 2)]);
        if given.is_empty() {
            family
        } else {
            format!("{family} {given}")
        }
    };
    let title = first(
        m,
        &[
            ("OBR", 4, 2),
            ("OBR", 4, 1),
            ("TXA", 2, 2),
            ("TXA", 2, 1),
            ("OBX", 3, 2),
        ],
    );
    let reported_at = first(
        m,
        &[("OBR", 22, 1), ("TXA", 22, 1), ("TXA", 4, 1), ("MSH", 7, 1)],
    );
    Ok(Report {
        message_type,
        control_id,
        status,
        urgent,
        kind,
        keys,
        patient_name,
        title,
        reported_at,
        text,
        pdf,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Message {
        Message::parse(&s.replace('\n', "\r")).expect("parses")
    }

    const ORU: &str = "MSH|^~\\&|RIS|COUNTY|YILIAN|lingshan/xiacun|20261203101500||ORU^R01|R100|P|2.5\n\
PID|1||P2001^^^H||Chen^Jing||19800202|F\n\
ORC|RE|PL1|ACC2001\n\
OBR|1|PL1|ACC2001|CHEST^胸部正位|||20261203100000|||||||||||ACC2001||||20261203101400|||F\n\
OBX|1|TX|REPORT^Impression||两肺纹理清晰。~未见明显异常。||||||F\n";

    #[test]
    fn reads_an_imaging_report() {
        let r = read_report(&parse(ORU)).expect("a report");
        assert_eq!(r.status, ReportStatus::Final);
        assert_eq!(r.keys.accession, "ACC2001");
        assert_eq!(r.keys.placer, "PL1");
        assert_eq!(r.keys.patient_id, "P2001");
        assert_eq!(r.keys.facility, "lingshan/xiacun");
        assert_eq!(r.title, "胸部正位");
        assert_eq!(r.text, "两肺纹理清晰。\n未见明显异常。");
        assert!(!r.urgent);
        assert_eq!(r.kind, "lab");
    }

    #[test]
    fn critical_values_and_stat_are_urgent() {
        let crit = ORU.replace("||||||F\n", "|||HH|||F\n");
        assert!(read_report(&parse(&crit)).expect("report").urgent);
        let stat = ORU.replace(
            "OBR|1|PL1|ACC2001|CHEST^胸部正位||",
            "OBR|1|PL1|ACC2001|CHEST^胸部正位|S|",
        );
        assert!(read_report(&parse(&stat)).expect("report").urgent);
    }

    #[test]
    fn embedded_pdf_is_decoded() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(b"%PDF-1.4 test");
        let msg = ORU.replace(
            "OBX|1|TX|REPORT^Impression||两肺纹理清晰。~未见明显异常。||||||F\n",
            &format!("OBX|1|ED|PDF^Report||^application^pdf^Base64^{b64}||||||F\n"),
        );
        let r = read_report(&parse(&msg)).expect("a report");
        assert_eq!(r.pdf.as_deref(), Some(&b"%PDF-1.4 test"[..]));
        let bad = ORU.replace(
            "OBX|1|TX|REPORT^Impression||两肺纹理清晰。~未见明显异常。||||||F\n",
            "OBX|1|ED|PDF^Report||^application^pdf^Base64^@@@@||||||F\n",
        );
        assert_eq!(read_report(&parse(&bad)).unwrap_err().location, "OBX^1^5");
    }

    #[test]
    fn missing_fields_are_named() {
        let no_status = ORU.replace("|||F\nOBX", "|||\nOBX");
        assert_eq!(
            read_report(&parse(&no_status)).unwrap_err().location,
            "OBR^1^25"
        );
        let no_patient = ORU.replace("PID|1||P2001^^^H|", "PID|1|||");
        assert_eq!(
            read_report(&parse(&no_patient)).unwrap_err().location,
            "PID^1^3"
        );
        let no_obx: String = ORU
            .lines()
            .filter(|l| !l.starts_with("OBX"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(read_report(&parse(&no_obx)).unwrap_err().location, "OBX");
        let orm = ORU.replace("ORU^R01", "ORM^O01");
        assert_eq!(read_report(&parse(&orm)).unwrap_err().code, 200);
    }

    #[test]
    fn mdm_documents() {
        let mdm = "MSH|^~\\&|ECGSYS|COUNTY|YILIAN|x|20261203||MDM^T02|D1|P|2.5\n\
PID|1||P9\n\
TXA|1|ECG^心电图报告|TX|20261203|||||||||DOC1||||AU\n\
OBX|1|TX|ECG||窦性心律||||||F\n";
        let r = read_report(&parse(mdm)).expect("a document");
        assert_eq!((r.status, r.kind), (ReportStatus::Final, "document"));
        assert_eq!(r.title, "心电图报告");
        let edit = mdm.replace("MDM^T02", "MDM^T08");
        assert_eq!(
            read_report(&parse(&edit)).expect("edit").status,
            ReportStatus::Corrected
        );
    }
}
