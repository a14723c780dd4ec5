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

/// Every repeat of an ASTM field, each unescaped.
fn repeats(r: &Record, m: &AstmMessage, n: usize) -> Vec<String> {
    r.field(n)
        .split(m.delimiters.repeat)
        .map(|v| unescape(v, &m.delimiters))
        .collect()
}

/// The components of every repeat of an ASTM field.
fn repeated_comps(r: &Record, m: &AstmMessage, n: usize) -> Vec<Vec<String>> {
    let d = &m.delimiters;
    r.field(n)
        .split(d.repeat)
        .map(|rep| rep.split(d.component).map(|c| unescape(c, d)).collect())
        .collect()
}

/// The test code of a universal test id (`^^^code^name`), for matching a
/// result to the ordered test it answers.
fn test_code(parts: &[String]) -> Option<&str> {
    parts
        .get(3)
        .filter(|s| !s.is_empty())
        .or_else(|| parts.iter().find(|s| !s.is_empty()))
        .map(String::as_str)
}

/// What an OBX or NTE says before it is numbered.
enum Piece {
    /// OBX-2 onwards, without the set id.
    Obx(String),
    Note(String),
}

/// An order being gathered: one OBR per ordered test (ASTM O.5 repeats;
/// HL7's OBR-4 holds one test), each followed by its results.
struct Order {
    /// OBR-3 onwards after OBR-4: (placer/filler, priority, times).
    specimen: String,
    priority: String,
    requested: String,
    collected: String,
    /// `(test id for OBR-4, code to match results)`, at least one.
    tests: Vec<(String, Option<String>)>,
    /// Results and their comments, per test.
    pieces: Vec<Vec<Piece>>,
    /// Comments on the order itself.
    notes: Vec<String>,
}

impl Order {
    fn empty() -> Self {
        Order {
            specimen: String::new(),
            priority: String::new(),
            requested: String::new(),
            collected: String::new(),
            tests: vec![(String::new(), None)],
            pieces: vec![Vec::new()],
            notes: Vec::new(),
        }
    }

    /// The test a result with `code` answers: the one ordered under that
    /// code, else the first.
    fn slot(&self, code: Option<&str>) -> usize {
        code.and_then(|c| self.tests.iter().position(|(_, t)| t.as_deref() == Some(c)))
            .unwrap_or(0)
    }

    fn write(self, out: &mut String, obr_n: &mut usize) {
        for (i, (test, pieces)) in self.tests.into_iter().zip(self.pieces).enumerate() {
            *obr_n += 1;
            out.push_str(&format!(
                "OBR|{obr_n}||{}|{}|{}||{}|{}\r",
                hl7(&self.specimen),
                test.0,
                hl7(&self.priority),
                hl7(&self.requested),
                hl7(&self.collected)
            ));
            if i == 0 {
                for (k, n) in self.notes.iter().enumerate() {
                    out.push_str(&format!("NTE|{}|L|{}\r", k + 1, hl7(n)));
                }
            }
            let (mut obx_n, mut nte_n) = (0, 0);
            for p in pieces {
                match p {
                    Piece::Obx(rest) => {
                        obx_n += 1;
                        nte_n = 0;
                        out.push_str(&format!("OBX|{obx_n}|{rest}\r"));
                    }
                    Piece::Note(text) => {
                        nte_n += 1;
                        out.push_str(&format!("NTE|{nte_n}|L|{}\r", hl7(&text)));
                    }
                }
            }
        }
    }
}

/// Converts; `None` when the message has no result to report.
///
/// Every ordered test becomes its own OBR (the specimen and times
/// repeated), and each result goes under the test whose code it carries;
/// every repeat of a result value (ASTM R.4) becomes a repeat of OBX-5,
/// typed NM only when all of them are numbers.
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
    let (mut pid_n, mut obr_n) = (0, 0usize);
    let mut have_patient = false;
    let mut order: Option<Order> = None;
    // Where a comment record attaches: the last result, else the order.
    let mut last_result: Option<usize> = None;
    for r in &m.records {
        match r.kind {
            'P' => {
                if let Some(o) = order.take() {
                    o.write(&mut out, &mut obr_n);
                }
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
                if let Some(o) = order.take() {
                    o.write(&mut out, &mut obr_n);
                }
                if !have_patient {
                    // HL7 needs a PID before the order.
                    pid_n += 1;
                    have_patient = true;
                    out.push_str(&format!("PID|{pid_n}\r"));
                }
                let mut tests: Vec<(String, Option<String>)> = repeated_comps(r, m, 5)
                    .iter()
                    .filter(|parts| parts.iter().any(|p| !p.is_empty()))
                    .map(|parts| (test_id(parts), test_code(parts).map(str::to_owned)))
                    .collect();
                if tests.is_empty() {
                    tests.push((String::new(), None));
                }
                let n = tests.len();
                order = Some(Order {
                    specimen: first(r, m, 3),
                    priority: first(r, m, 6),
                    requested: first(r, m, 7),
                    collected: first(r, m, 8),
                    tests,
                    pieces: (0..n).map(|_| Vec::new()).collect(),
                    notes: Vec::new(),
                });
                last_result = None;
            }
            'R' => {
                if !have_patient {
                    pid_n += 1;
                    have_patient = true;
                    out.push_str(&format!("PID|{pid_n}\r"));
                }
                let o = order.get_or_insert_with(Order::empty);
                let test = comps(r, m, 3);
                let slot = o.slot(test_code(&test));
                let values: Vec<String> = repeats(r, m, 4)
                    .into_iter()
                    .map(|v| v.trim().to_owned())
                    .collect();
                let numeric = values.iter().all(|v| v.parse::<f64>().is_ok());
                let kind = if numeric { "NM" } else { "ST" };
                let value = values.iter().map(|v| hl7(v)).collect::<Vec<_>>().join("~");
                let status = match first(r, m, 9).as_str() {
                    "" => "F".to_owned(),
                    s => s.to_owned(),
                };
                o.pieces[slot].push(Piece::Obx(format!(
                    "{kind}|{}||{value}|{}|{}|{}|||{}|||{}",
                    test_id(&test),
                    hl7(&first(r, m, 5)),
                    hl7(&first(r, m, 6)),
                    hl7(&first(r, m, 7)),
                    hl7(&status),
                    hl7(&first(r, m, 13))
                )));
                last_result = Some(slot);
            }
            'C' => {
                let text = comps(r, m, 4)
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ");
                match (order.as_mut(), last_result) {
                    (Some(o), Some(slot)) => o.pieces[slot].push(Piece::Note(text)),
                    (Some(o), None) => o.notes.push(text),
                    // A comment on the patient or header: its own NTE.
                    (None, _) => out.push_str(&format!("NTE|1|L|{}\r", hl7(&text))),
                }
            }
            _ => {}
        }
    }
    if let Some(o) = order.take() {
        o.write(&mut out, &mut obr_n);
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

    #[test]
    fn every_ordered_test_and_every_value_repeat_is_carried() {
        // Two tests ordered on one specimen; a result with two values (a
        // number and its interpretation), one for each test.
        let astm = AstmMessage::parse_text(
            "H|\\^&|||XN-550\rP|1||PAT9\rO|1|SID9||^^^GLU\\^^^HBA1C|R|20240101110000\rR|1|^^^HBA1C|6.8\\high|%||H||F\rR|2|^^^GLU|5.2|mmol/L|||F\rC|1|I|fasting|G\rL|1|N\r",
        )
        .expect("parses");
        let h = OruHeader {
            sending_application: "YILIAN",
            sending_facility: "anxi/hutou",
            receiving_application: "LIS",
            receiving_facility: "COUNTY",
            timestamp: "20240101120000",
            control_id: "YLrep",
        };
        let oru = to_oru(&astm, &h).expect("has results");
        let m = Message::parse(&oru).expect("valid HL7");
        let obr: Vec<_> = m.segments.iter().filter(|s| s.id() == "OBR").collect();
        assert_eq!(obr.len(), 2, "{oru}");
        assert_eq!(obr[0].field(4), "GLU^GLU^L");
        assert_eq!(obr[1].field(4), "HBA1C^HBA1C^L");
        assert_eq!(obr[1].field(3), "SID9", "the specimen on each");
        // Each result under the test it answers, its comment after it.
        let ids: Vec<&str> = m.segments.iter().map(|s| s.id()).collect();
        assert_eq!(
            ids,
            ["MSH", "PID", "OBR", "OBX", "NTE", "OBR", "OBX"],
            "{oru}"
        );
        let obx: Vec<_> = m.segments.iter().filter(|s| s.id() == "OBX").collect();
        assert_eq!(obx[0].field(5), "5.2");
        assert_eq!(obx[1].field(5), "6.8~high", "both repeats");
        assert_eq!(obx[1].field(2), "ST", "not all numbers");
        assert_eq!(obx[1].field(1), "1", "set ids restart under each OBR");
    }
}
