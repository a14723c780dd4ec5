//! Imaging orders from the hospital RIS, HL7 ORM^O01 or OMI^O23 over MLLP,
//! into the worklists central pushes to clinic gateways.
//!
//! The clinic is MSH-6 (receiving facility): `COUNTY/CLINIC` as is, or a
//! facility code mapped in `[worklist] facilities`. ORC-1 NW/XO/SC add or
//! update the scheduled step, CA/DC/OC/CR (and SC with ORC-5 CM, CA or DC)
//! remove it. Fields: accession IPC-1, else OBR-18, else OBR-3/ORC-3;
//! patient PID-3/5/7/8 (PID-5's pinyin and character repetitions become
//! the DICOM name's component groups); procedure OBR-4 (text), OBR-19 or IPC-2; study UID
//! IPC-3; step IPC-4 or OBR-20; modality IPC-5 or OBR-24; station AE IPC-8
//! or OBR-21; start TQ1-7, else OBR-27.4, else ORC-7.4, else OBR-7;
//! referring physician OBR-16. The ACK (AA) goes after the database commit;
//! AE with an ERR segment says what is missing; AR when the store fails.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use yilian_codecs::hl7::{ErrorInfo, Message, Verdict, build_ack, decode, encode};
use yilian_codecs::mllp;
use yilian_protocol::messages::WorklistEntry;

use crate::config::WorklistSection;
use crate::store::Store;

/// What one order message does to a clinic's worklist.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderUpdate {
    pub clinic: String,
    pub upsert: Option<WorklistEntry>,
    pub remove: Option<String>,
}

fn error(location: &str, code: u16, text: impl Into<String>) -> ErrorInfo {
    ErrorInfo {
        location: location.to_owned(),
        code,
        text: text.into(),
        severity: 'E',
    }
}

fn first<'a>(m: &'a Message, candidates: &[(&str, usize, usize)]) -> &'a str {
    candidates
        .iter()
        .map(|(s, f, c)| m.get(s, *f, *c))
        .find(|v| !v.is_empty())
        .unwrap_or("")
}

/// Where the parts of a name sit in an HL7 name type: family name (given,
/// middle, suffix and prefix follow it) and the name representation code.
struct NameLayout {
    family: usize,
    representation: usize,
}

/// XPN (PID-5): family 1, representation code 8.
const XPN: NameLayout = NameLayout {
    family: 1,
    representation: 8,
};
/// XCN (OBR-16): ID first, family 2, representation code 15.
const XCN: NameLayout = NameLayout {
    family: 2,
    representation: 15,
};

/// A DICOM person name from the repetitions of an HL7 name field. Chinese
/// RIS send the pinyin and the characters as two repetitions
/// (`Wang^Xiaoming~王^小明`), marked A(lphabetic) and I(deographic) in the
/// name representation code or not at all; they become the component
/// groups `Wang^Xiaoming=王^小明`. Unmarked, a name with non-ASCII
/// characters is the ideographic one; a single unmarked name stays in the
/// first group whatever its script, as consoles display that one.
fn person_name(m: &Message, seg: &str, f: usize, layout: NameLayout) -> String {
    let Some(segment) = m.segment(seg) else {
        return String::new();
    };
    let d = &m.delimiters;
    let mut groups: [Option<String>; 3] = [None, None, None];
    let mut unmarked = 0;
    for rep in segment.field(f).split(d.repetition) {
        let parts: Vec<&str> = rep.split(d.component).collect();
        let part = |i: usize| {
            let raw = parts.get(i.wrapping_sub(1)).copied().unwrap_or("");
            // `^`, `=` and `\` delimit a DICOM name; they cannot be in it.
            yilian_codecs::hl7::escape::unescape(raw, d)
                .chars()
                .filter(|c| !matches!(c, '^' | '=' | '\\'))
                .collect::<String>()
                .trim()
                .to_owned()
        };
        // DICOM order: family, given, middle, prefix, suffix.
        let f0 = layout.family;
        let mut pn = [
            part(f0),
            part(f0 + 1),
            part(f0 + 2),
            part(f0 + 4),
            part(f0 + 3),
        ]
        .join("^");
        while pn.ends_with('^') {
            pn.pop();
        }
        if pn.is_empty() {
            continue;
        }
        let slot = match part(layout.representation).as_str() {
            "A" => 0,
            "I" => 1,
            "P" => 2,
            _ => {
                unmarked += 1;
                usize::from(!pn.is_ascii())
            }
        };
        if groups[slot].is_none() {
            groups[slot] = Some(pn);
        }
    }
    if unmarked == 1 && groups.iter().filter(|g| g.is_some()).count() == 1 {
        return groups.into_iter().flatten().next().unwrap_or_default();
    }
    let mut out = groups.map(Option::unwrap_or_default).join("=");
    while out.ends_with('=') {
        out.pop();
    }
    out
}

/// Interprets an ORM^O01 or OMI^O23.
pub fn order_update(
    m: &Message,
    facilities: &BTreeMap<String, String>,
) -> Result<OrderUpdate, ErrorInfo> {
    let (code, trigger, _) = m.message_type();
    if !matches!((code, trigger), ("ORM", "O01") | ("OMI", "O23")) {
        return Err(error(
            "MSH^1^9",
            200,
            format!("{code}^{trigger} is not an imaging order"),
        ));
    }
    let facility = m.get("MSH", 6, 1);
    let clinic = if facility.contains('/') {
        facility.to_owned()
    } else {
        facilities.get(facility).cloned().ok_or_else(|| {
            error(
                "MSH^1^6",
                101,
                format!("receiving facility {facility:?} is not a known clinic"),
            )
        })?
    };
    let accession = first(
        m,
        &[("IPC", 1, 1), ("OBR", 18, 1), ("OBR", 3, 1), ("ORC", 3, 1)],
    )
    .to_owned();
    if accession.is_empty() {
        return Err(error(
            "OBR^1^18",
            101,
            "no accession number (IPC-1, OBR-18, OBR-3 or ORC-3)",
        ));
    }
    let control = m.get("ORC", 1, 1);
    let status = m.get("ORC", 5, 1);
    let removes = matches!(control, "CA" | "DC" | "OC" | "CR")
        || (control == "SC" && matches!(status, "CM" | "CA" | "DC"));
    if removes {
        return Ok(OrderUpdate {
            clinic,
            upsert: None,
            remove: Some(accession),
        });
    }
    if !matches!(control, "NW" | "XO" | "SC") {
        return Err(error(
            "ORC^1^1",
            201,
            format!("order control {control:?} is not handled"),
        ));
    }
    let patient_id = m.get("PID", 3, 1).to_owned();
    if patient_id.is_empty() {
        return Err(error("PID^1^3", 101, "no patient identifier"));
    }
    let start = first(
        m,
        &[("TQ1", 7, 1), ("OBR", 27, 4), ("ORC", 7, 4), ("OBR", 7, 1)],
    );
    let digits: String = start.chars().filter(char::is_ascii_digit).collect();
    let entry = WorklistEntry {
        accession_number: accession,
        patient_id,
        patient_name: person_name(m, "PID", 5, XPN),
        patient_birth_date: m.get("PID", 7, 1).chars().take(8).collect(),
        patient_sex: m.get("PID", 8, 1).to_owned(),
        requested_procedure_id: first(m, &[("IPC", 2, 1), ("OBR", 19, 1)]).to_owned(),
        requested_procedure_description: first(m, &[("OBR", 4, 2), ("OBR", 4, 1)]).to_owned(),
        study_instance_uid: m.get("IPC", 3, 1).to_owned(),
        modality: first(m, &[("IPC", 5, 1), ("OBR", 24, 1)]).to_owned(),
        scheduled_station_ae_title: first(m, &[("IPC", 8, 1), ("OBR", 21, 1)]).to_owned(),
        scheduled_start_date: digits.chars().take(8).collect(),
        scheduled_start_time: digits.chars().skip(8).take(6).collect(),
        scheduled_procedure_step_id: first(m, &[("IPC", 4, 1), ("OBR", 20, 1)]).to_owned(),
        scheduled_procedure_step_description: first(m, &[("OBR", 4, 2), ("OBR", 4, 1)]).to_owned(),
        referring_physician: person_name(m, "OBR", 16, XCN),
    };
    Ok(OrderUpdate {
        clinic,
        upsert: Some(entry),
        remove: None,
    })
}

pub struct OrderListener {
    pub config: WorklistSection,
    pub store: Store,
}

impl crate::hl7_listener::Hl7Service for OrderListener {
    fn what(&self) -> &'static str {
        "RIS orders"
    }

    async fn handle(&self, bytes: &[u8], peer: SocketAddr) -> Option<Vec<u8>> {
        let decoded = decode(bytes, None);
        let m = match Message::parse(&decoded.text) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "unreadable message from the RIS; no ACK possible");
                return None;
            }
        };
        // The RIS hears AA only with the store's proof of the commit.
        let refused;
        let stored;
        let verdict = match order_update(&m, &self.config.facilities) {
            Err(e) => {
                tracing::warn!(%peer, control = m.control_id(), reason = %e.text, "RIS order refused (AE)");
                refused = e;
                Verdict::Malformed(&refused)
            }
            Ok(update) => {
                let store = self.store.clone();
                let u = update.clone();
                let r = tokio::task::spawn_blocking(move || {
                    let upserts: Vec<WorklistEntry> = u.upsert.into_iter().collect();
                    let removals: Vec<String> = u.remove.into_iter().collect();
                    store.worklist_update(&u.clinic, &upserts, &removals)
                })
                .await;
                match r {
                    Ok(Ok(proof)) => {
                        tracing::info!(%peer, clinic = %update.clinic, control = m.control_id(),
                            removed = update.remove.is_some(), "RIS order applied to the clinic's worklist");
                        stored = proof;
                        Verdict::Stored(&stored)
                    }
                    _ => {
                        refused = error("", 207, "worklist store unavailable; send again later");
                        Verdict::Refused(&refused)
                    }
                }
            }
        };
        let ts: String = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        let control = format!("YLO{}", &ts);
        let ack = build_ack(&m, verdict, &control, &ts);
        Some(mllp::encode(&encode(&ack, decoded.charset)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Message {
        Message::parse(&s.replace('\n', "\r")).expect("parses")
    }

    /// A segment from (field number, value) pairs.
    fn seg(id: &str, fields: &[(usize, &str)]) -> String {
        let n = fields.iter().map(|f| f.0).max().unwrap_or(0);
        let mut v = vec![""; n + 1];
        v[0] = id;
        for (i, val) in fields {
            v[*i] = val;
        }
        v.join("|")
    }

    #[test]
    fn orm_new_order_and_cancel() {
        let facilities = BTreeMap::from([("XIACUN".to_owned(), "lingshan/xiacun".to_owned())]);
        let obr = seg(
            "OBR",
            &[
                (1, "1"),
                (2, "PL1"),
                (3, "FL1"),
                (4, "CHEST^Chest PA"),
                (18, "ACC2001"),
                (19, "RP2001"),
                (20, "SPS2001"),
                (21, "DR_ROOM"),
                (24, "DX"),
            ],
        );
        let text = format!(
            "MSH|^~\\&|RIS|COUNTY|YILIAN|XIACUN|20261123090000||ORM^O01|M1|P|2.3\n\
             PID|1||P2001^^^H||Chen^Jing||19800202|F\n\
             ORC|NW|PL1|FL1||SC||^^^20261124083000\n{obr}"
        );
        let u = order_update(&parse(&text), &facilities).expect("an order");
        assert_eq!(u.clinic, "lingshan/xiacun");
        let e = u.upsert.expect("upsert");
        assert_eq!(e.accession_number, "ACC2001");
        assert_eq!(e.patient_name, "Chen^Jing");
        assert_eq!(e.modality, "DX");
        assert_eq!(e.scheduled_station_ae_title, "DR_ROOM");
        assert_eq!(
            (
                e.scheduled_start_date.as_str(),
                e.scheduled_start_time.as_str()
            ),
            ("20261124", "083000")
        );
        let obr = seg("OBR", &[(1, "1"), (3, "FL1"), (18, "ACC2001")]);
        let text = format!(
            "MSH|^~\\&|RIS|COUNTY|YILIAN|lingshan/xiacun|20261123090000||ORM^O01|M2|P|2.3\n\
             ORC|CA|PL1|FL1\n{obr}"
        );
        let u = order_update(&parse(&text), &facilities).expect("a cancel");
        assert_eq!(u.remove.as_deref(), Some("ACC2001"));
    }

    #[test]
    fn names_in_two_scripts_become_dicom_component_groups() {
        let pn = |pid5: &str| {
            let m = parse(&format!(
                "MSH|^~\\&|RIS|COUNTY|YILIAN|a/b|20261123||ORM^O01|M9|P|2.5\nPID|1||P1||{pid5}"
            ));
            person_name(&m, "PID", 5, XPN)
        };
        // Marked with the name representation code, in either order.
        assert_eq!(
            pn("王^小明^^^^^L^I~Wang^Xiaoming^^^^^L^A"),
            "Wang^Xiaoming=王^小明"
        );
        // Unmarked: the script decides.
        assert_eq!(pn("Wang^Xiaoming~王^小明"), "Wang^Xiaoming=王^小明");
        assert_eq!(pn("王^小明~Wang^Xiaoming"), "Wang^Xiaoming=王^小明");
        // A single name stays in the first group, whatever its script.
        assert_eq!(pn("王^小明"), "王^小明");
        assert_eq!(pn("Chen^Jing"), "Chen^Jing");
        // Only an ideographic name, said so.
        assert_eq!(pn("王^小明^^^^^L^I"), "=王^小明");
        // Phonetic after an empty ideographic group; middle name and prefix
        // in DICOM's order; escapes undone, DICOM delimiters dropped.
        assert_eq!(pn("Li^Na^^^^^^A~li^na^^^^^^P"), "Li^Na==li^na");
        assert_eq!(pn("Smith^John^Q^Jr^Dr"), "Smith^John^Q^Dr^Jr");
        assert_eq!(pn("O\\T\\Brien^Pat"), "O&Brien^Pat");
        assert_eq!(pn(""), "");
    }

    #[test]
    fn unknown_facility_and_missing_accession_are_errors() {
        let m =
            parse("MSH|^~\\&|RIS|COUNTY|YILIAN|NOWHERE|20261123||ORM^O01|M3|P|2.3\nORC|NW\nOBR|1");
        assert_eq!(
            order_update(&m, &BTreeMap::new())
                .map(|_| ())
                .unwrap_err()
                .code,
            101
        );
        let m = parse("MSH|^~\\&|RIS|COUNTY|YILIAN|a/b|20261123||ORU^R01|M4|P|2.3");
        assert_eq!(
            order_update(&m, &BTreeMap::new())
                .map(|_| ())
                .unwrap_err()
                .code,
            200
        );
    }
}
