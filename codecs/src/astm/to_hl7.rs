//! ASTM E1394 results to an HL7 v2.5.1 ORU^R01 for a hospital LIS.
//!
//! One PID per patient record, OBR per order, OBX per result (value,
//! units, reference range, abnormal flag, status, completion time), NTE
//! per comment. Values are unescaped from ASTM and escaped for HL7; the
//! message is original-mode (the LIS answers AA/AE/AR) and UTF-8.

use super::records::{AstmMessage, Record, unescape};
use crate::hl7::Delimiters;
use crate::hl7::escape::escape;

/// Where the message comes from and goes to, for MSH.
#[derive(Debug, Clone)]
pub struct OruHeader<'a> {
    pub sending_application: &'a str,
    pub sending_facility: &'a str,
    pub receiving_application: &'a str,
    pub receiving_facility: &'a str,
    /// MSH-7, `YYYYMMDDHHMMSS`.
    pub timestamp: &'a str,
    /// MSH-10: must be the same on every resend of this message.
    pub control_id: &'a str,
}

fn hl7(s: &str) -> String {
    escape(s, &Delimiters::default())
}

/// An ASTM field (first repeat), components unescaped and re-joined with
/// HL7's component separator.
fn comps(r: &Record, m: &AstmMessage, n: usize) -> Vec<String> {
    let d = &m.delimiters;
    r.field(n)
        .split(d.repeat)
        .next()
        .unwrap_or("")
        .split(d.component)
        .map(|c| unescape(c, d))
        .collect()
}

fn first(r: &Record, m: &AstmMessage, n: usize) -> String {
    unescape(
        r.field(n).split(m.delimiters.repeat).next().unwrap_or(""),
        &m.delimiters,
    )
}

/// The test identifier of an ASTM universal test id (`^^^code^name` or a
/// plain code) as HL7 `code^name^L`.
fn test_id(parts: &[String]) -> String {
    let code = parts
        .get(3)
        .filter(|s| !s.is_empty())
        .or_else(|| parts.iter().find(|s| !s.is_empty()));
    let name = parts.get(4).filter(|s| !s.is_empty());
    match (code, name) {
        (Some(c), Some(n)) => format!("{}^{}^L", hl7(c), hl7(n)),
        (Some(c), None) => format!("{}^{}^L", hl7(c), hl7(c)),
        _ => String::new(),
    }
}

/// Converts; `None` when the message has no result to report.
pub fn to_oru(m: &AstmMessage, h: &OruHeader<'_>) -> Option<String> {
    if !m.records.iter().any(|r| r.kind == 'R') {
        return None;
    }
    let mut out = format!(
        "MSH|^~\\&|{}|{}|{}|{}|{}||ORU^R01^ORU_R01|{}|P|2.5.1||||||UNICODE UTF-8\r",
        hl7(h.sending_application),
        hl7(h.sending_facility),
        hl7(h.receiving_application),
        hl7(h.receiving_facility),
        h.timestamp,
        hl7(h.control_id)
    );
    let (mut pid_n, mut obr_n, mut obx_n, mut nte_n) = (0, 0, 0, 0);
    let mut have_patient = false;
    for r in &m.records {
        match r.kind {
            'P' => {
                pid_n += 1;
                have_patient = true;
                let id = [first(r, m, 3), first(r, m, 4), first(r, m, 5)]
                    .into_iter()
                    .find(|s| !s.is_empty())
                    .unwrap_or_default();
                let name = comps(r, m, 6);
                let family = name.first().cloned().unwrap_or_default();
                let given = name.get(1).cloned().unwrap_or_default();
                out.push_str(&format!(
                    "PID|{pid_n}||{}||{}^{}||{}|{}\r",
                    hl7(&id),
                    hl7(&family),
                    hl7(&given),
                    hl7(&first(r, m, 8)),
                    hl7(&first(r, m, 9))
                ));
                obr_n = 0;
            }
            'O' => {
                if !have_patient {
                    // HL7 needs a PID before the order.
                    pid_n += 1;
                    have_patient = true;
                    out.push_str(&format!("PID|{pid_n}\r"));
                }
                obr_n += 1;
                obx_n = 0;
                let priority = first(r, m, 6);
                out.push_str(&format!(
                    "OBR|{obr_n}||{}|{}|{}||{}|{}\r",
                    hl7(&first(r, m, 3)),
                    test_id(&comps(r, m, 5)),
                    hl7(&priority),
                    hl7(&first(r, m, 7)),
                    hl7(&first(r, m, 8))
                ));
            }
            'R' => {
                if obr_n == 0 {
                    if !have_patient {
                        pid_n += 1;
                        have_patient = true;
                        out.push_str(&format!("PID|{pid_n}\r"));
                    }
                    obr_n += 1;
                    out.push_str(&format!("OBR|{obr_n}\r"));
                }
                obx_n += 1;
                nte_n = 0;
                let value = first(r, m, 4);
                let kind = if value.trim().parse::<f64>().is_ok() {
                    "NM"
                } else {
                    "ST"
                };
                let status = match first(r, m, 9).as_str() {
                    "" => "F".to_owned(),
                    s => s.to_owned(),
                };
                out.push_str(&format!(
                    "OBX|{obx_n}|{kind}|{}||{}|{}|{}|{}|||{}|||{}\r",
                    test_id(&comps(r, m, 3)),
                    hl7(value.trim()),
                    hl7(&first(r, m, 5)),
                    hl7(&first(r, m, 6)),
                    hl7(&first(r, m, 7)),
                    hl7(&status),
                    hl7(&first(r, m, 13))
                ));
            }
            'C' => {
                nte_n += 1;
                let text = comps(r, m, 4)
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                out.push_str(&format!("NTE|{nte_n}|L|{}\r", hl7(&text)));
            }
            _ => {}
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::Message;

    #[test]
    fn results_become_obx_with_units_ranges_flags() {
        let astm = AstmMessage::parse_text(
            "H|\\^&|||XN-550\rP|1||PAT1||张^三||19800101|M\rO|1|SID001||^^^CBC|S|20240101110000\rR|1|^^^WBC^White cells|12.5|10*3/uL|4.0-10.0|H||F||||20240101113000\rC|1|I|hemolysed&F&sample|G\rR|2|^^^BLOOD|positive|||A||F\rL|1|N\r",
        )
        .expect("parses");
        let h = OruHeader {
            sending_application: "YILIAN",
            sending_facility: "anxi/hutou",
            receiving_application: "LIS",
            receiving_facility: "COUNTY",
            timestamp: "20240101120000",
            control_id: "YLa1b2",
        };
        let oru = to_oru(&astm, &h).expect("has results");
        let m = Message::parse(&oru).expect("valid HL7");
        assert_eq!(m.message_type(), ("ORU", "R01", "ORU_R01"));
        assert_eq!(m.control_id(), "YLa1b2");
        assert_eq!(m.get("PID", 3, 1), "PAT1");
        assert_eq!(m.get("PID", 5, 1), "张");
        assert_eq!(m.get("OBR", 3, 1), "SID001");
        assert_eq!(m.get("OBR", 5, 1), "S");
        let obx: Vec<_> = m.segments.iter().filter(|s| s.id() == "OBX").collect();
        assert_eq!(obx.len(), 2);
        assert_eq!(obx[0].field(2), "NM");
        assert_eq!(obx[0].field(3), "WBC^White cells^L");
        assert_eq!(obx[0].field(5), "12.5");
        assert_eq!(obx[0].field(6), "10*3/uL");
        assert_eq!(obx[0].field(7), "4.0-10.0");
        assert_eq!(obx[0].field(8), "H");
        assert_eq!(obx[0].field(11), "F");
        assert_eq!(obx[0].field(14), "20240101113000");
        assert_eq!(obx[1].field(2), "ST");
        let nte = m.segment("NTE").expect("comment");
        assert_eq!(
            crate::hl7::escape::unescape(nte.field(3), &m.delimiters),
            "hemolysed|sample"
        );
    }

    #[test]
    fn no_results_no_message() {
        let q = AstmMessage::parse_text("H|\\^&\rQ|1|^S1||^^^ALL\rL|1|N\r").expect("parses");
        let h = OruHeader {
            sending_application: "A",
            sending_facility: "B",
            receiving_application: "C",
            receiving_facility: "D",
            timestamp: "1",
            control_id: "X",
        };
        assert_eq!(to_oru(&q, &h), None);
    }

    #[test]
    fn conformance_captures_convert_when_present() {
        let base =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/samples/astm");
        let Ok(dir) = std::fs::read_dir(base) else {
            return;
        };
        for entry in dir.flatten() {
            let bytes = std::fs::read(entry.path()).expect("read");
            let mut text = Vec::new();
            let mut i = 0;
            while let Some(s) = bytes[i..].iter().position(|&b| b == crate::astm::STX) {
                match crate::astm::frame::parse_frame(&bytes[i + s..], 1 << 20) {
                    Some((Ok(f), used)) => {
                        text.extend(f.text);
                        i += s + used;
                    }
                    Some((Err(_), used)) => i += s + used.max(1),
                    None => break,
                }
            }
            let m = AstmMessage::parse(&text, crate::hl7::Charset::Utf8).expect("records");
            let h = OruHeader {
                sending_application: "YILIAN",
                sending_facility: "test",
                receiving_application: "LIS",
                receiving_facility: "HOSP",
                timestamp: "20240101120000",
                control_id: "C1",
            };
            if let Some(oru) = to_oru(&m, &h) {
                let parsed = Message::parse(&oru).expect("valid HL7");
                let results = m.records.iter().filter(|r| r.kind == 'R').count();
                let obx = parsed.segments.iter().filter(|s| s.id() == "OBX").count();
                assert_eq!(obx, results, "{}", entry.path().display());
            }
        }
    }
}
