//! HL7 aECG (the FDA's annotated ECG XML) header reader: patient, effective
//! time, device, author, read with a streaming parser that stops where the
//! waveform sequences begin, so a 50 MB file costs the same as a 50 kB one.
//!
//! Elements are matched by local name, so any namespace prefix (or none)
//! works. Carts and converters disagree on where they put things; every
//! field is optional and the first occurrence on its path wins.

use std::io::BufRead;

use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};

/// Header fields of an aECG document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AecgHeader {
    /// The document's own id (`AnnotatedECG/id@root`, with `@extension`).
    pub document_id: Option<String>,
    /// `effectiveTime` of the ECG (`center`, else `low`), as written (HL7 TS).
    pub effective_time: Option<String>,
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    /// `administrativeGenderCode@code` (M, F, UN).
    pub sex: Option<String>,
    /// `birthTime@value` (HL7 TS).
    pub birth_date: Option<String>,
    /// `manufacturerModelName` of the acquiring device.
    pub device_model: Option<String>,
    pub device_manufacturer: Option<String>,
    /// The person named as author or performer (technician).
    pub author: Option<String>,
    /// The organization the author represents, or the site.
    pub institution: Option<String>,
    /// `priorityCode@code` when present (HL7 v3 ActPriority: S, EM, UR...).
    pub priority: Option<String>,
}

impl AecgHeader {
    /// STAT, emergency or urgent by HL7 v3 ActPriority.
    pub fn is_stat(&self) -> bool {
        self.priority
            .as_deref()
            .is_some_and(|p| matches!(p, "S" | "EM" | "UR" | "CR" | "A"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AecgError {
    #[error("not an aECG document: the root element is {0:?}, not AnnotatedECG")]
    NotAecg(String),
    #[error("no root element")]
    Empty,
    #[error("malformed XML at byte {position}: {message}")]
    Xml { position: u64, message: String },
}

/// Longest text kept for one field: names, ids and times are short; a
/// field longer than this is a broken or hostile file.
const MAX_FIELD: usize = 256;
/// Deepest nesting followed; aECG headers sit well within it.
const MAX_DEPTH: usize = 64;
/// Bytes read before giving up on reaching the waveforms: headers are
/// kilobytes; the bound also caps the parser's buffer, which holds one
/// whole event (a hostile file could make one text node gigabytes long).
const MAX_HEADER_BYTES: u64 = 64 * 1024 * 1024;

/// Reads the header of the aECG document in `input`.
pub fn read_aecg<R: BufRead>(input: R) -> Result<AecgHeader, AecgError> {
    let mut reader = Reader::from_reader(input.take(MAX_HEADER_BYTES));
    let mut buf = Vec::new();
    // Local names of the open elements, root first.
    let mut path: Vec<String> = Vec::new();
    let mut header = AecgHeader::default();
    let mut text = String::new();
    let mut seen_root = false;
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| AecgError::Xml {
                position: reader.error_position(),
                message: e.to_string(),
            })?;
        match event {
            Event::Start(e) | Event::Empty(e) if !seen_root && local(&e) != "AnnotatedECG" => {
                return Err(AecgError::NotAecg(local(&e)));
            }
            Event::Start(e) => {
                seen_root = true;
                let name = local(&e);
                if name == "sequenceSet" {
                    // The waveforms: everything the header needs came before.
                    break;
                }
                on_element(&mut header, &path, &name, &e);
                if path.len() >= MAX_DEPTH {
                    return Err(AecgError::Xml {
                        position: reader.buffer_position(),
                        message: "nested too deeply".into(),
                    });
                }
                path.push(name);
                text.clear();
            }
            Event::Empty(e) => {
                seen_root = true;
                on_element(&mut header, &path, &local(&e), &e);
            }
            Event::Text(t) => push_text(&mut text, &t),
            Event::CData(t) => push_text(&mut text, &t.into_inner()),
            Event::GeneralRef(r) => {
                let resolved = match r.resolve_char_ref() {
                    Ok(Some(c)) => Some(c.to_string()),
                    Ok(None) => resolve_predefined_entity(&r).map(str::to_owned),
                    Err(_) => None,
                };
                if let Some(s) = resolved {
                    push_text(&mut text, &s);
                }
            }
            Event::End(_) => {
                on_text(&mut header, &path, text.trim());
                text.clear();
                path.pop();
                if path.is_empty() {
                    break;
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !seen_root {
        return Err(AecgError::Empty);
    }
    Ok(header)
}

fn local(e: &BytesStart<'_>) -> String {
    e.local_name().as_ref().to_owned()
}

fn push_text(text: &mut String, s: &str) {
    if text.len() < MAX_FIELD {
        text.push_str(s);
    }
}

fn attribute(e: &BytesStart<'_>, name: &str) -> Option<String> {
    e.attributes().flatten().find_map(|a| {
        (a.key.local_name().as_ref() == name).then(|| {
            let v = quick_xml::escape::unescape(&a.value).unwrap_or(a.value.clone());
            let v: String = v.chars().take(MAX_FIELD).collect();
            v.trim().to_owned()
        })
    })
}

fn within(path: &[String], name: &str) -> bool {
    path.iter().any(|p| p == name)
}

fn set(field: &mut Option<String>, value: Option<String>) {
    if field.is_none() {
        *field = value.filter(|v| !v.is_empty());
    }
}

/// Fields carried in attributes.
fn on_element(h: &mut AecgHeader, path: &[String], name: &str, e: &BytesStart<'_>) {
    let parent = path.last().map(String::as_str);
    match name {
        "id" if path.len() == 1 => {
            let root = attribute(e, "root");
            let id = match (root, attribute(e, "extension")) {
                (Some(r), Some(x)) if !x.is_empty() => Some(format!("{r}^{x}")),
                (r, _) => r,
            };
            set(&mut h.document_id, id);
        }
        "center" | "low" if path.len() == 2 && parent == Some("effectiveTime") => {
            // `center` is the finding time; `low` the start of an interval.
            if name == "center" {
                h.effective_time = attribute(e, "value").or(h.effective_time.take());
            } else {
                set(&mut h.effective_time, attribute(e, "value"));
            }
        }
        "id" if parent == Some("trialSubject") || parent == Some("patient") => {
            set(
                &mut h.patient_id,
                attribute(e, "extension").or_else(|| attribute(e, "root")),
            );
        }
        "administrativeGenderCode" => set(&mut h.sex, attribute(e, "code")),
        "birthTime" => set(&mut h.birth_date, attribute(e, "value")),
        "priorityCode" => set(&mut h.priority, attribute(e, "code")),
        _ => {}
    }
}

/// Fields carried in element text.
fn on_text(h: &mut AecgHeader, path: &[String], text: &str) {
    if text.is_empty() {
        return;
    }
    let Some((name, parents)) = path.split_last() else {
        return;
    };
    let parent = parents.last().map(String::as_str);
    let value = Some(text.chars().take(MAX_FIELD).collect::<String>());
    match (name.as_str(), parent) {
        ("name", Some("subjectDemographicPerson" | "patientPerson")) => {
            set(&mut h.patient_name, value)
        }
        ("manufacturerModelName", _) => set(&mut h.device_model, value),
        ("name", Some("manufacturerOrganization")) => set(&mut h.device_manufacturer, value),
        ("name", Some("assignedPerson"))
            if within(parents, "author") || within(parents, "seriesPerformer") =>
        {
            set(&mut h.author, value)
        }
        ("name", Some("representedAuthoringOrganization")) => set(&mut h.institution, value),
        ("name", Some("location")) if within(parents, "trialSite") => {
            set(&mut h.institution, value)
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_minimal_document_with_a_prefix() {
        let xml = br#"<?xml version="1.0"?>
<v3:AnnotatedECG xmlns:v3="urn:hl7-org:v3">
  <v3:id root="1.2.3" extension="42"/>
  <v3:effectiveTime><v3:center value="20261123101500+0800"/></v3:effectiveTime>
  <v3:priorityCode code="S"/>
  <v3:componentOf><v3:subject><v3:trialSubject><v3:id extension="P-7"/>
    <v3:subjectDemographicPerson><v3:name>Wang &amp; Li &#x738B;</v3:name></v3:subjectDemographicPerson>
  </v3:trialSubject></v3:subject></v3:componentOf>
  <v3:component><v3:series><v3:author><v3:seriesAuthor><v3:manufacturedSeriesDevice>
    <v3:manufacturerModelName>CardioBox 12</v3:manufacturerModelName>
  </v3:manufacturedSeriesDevice></v3:seriesAuthor></v3:author>
  <v3:sequenceSet><v3:never>ignored</v3:never>
"#;
        let h = read_aecg(&xml[..]).unwrap();
        assert_eq!(h.document_id.as_deref(), Some("1.2.3^42"));
        assert_eq!(h.effective_time.as_deref(), Some("20261123101500+0800"));
        assert_eq!(h.patient_id.as_deref(), Some("P-7"));
        assert_eq!(h.patient_name.as_deref(), Some("Wang & Li 王"));
        assert_eq!(h.device_model.as_deref(), Some("CardioBox 12"));
        assert!(h.is_stat());
    }

    #[test]
    fn refuses_other_documents_and_garbage() {
        assert!(matches!(
            read_aecg(&b"<html><body/></html>"[..]),
            Err(AecgError::NotAecg(n)) if n == "html"
        ));
        assert!(matches!(read_aecg(&b""[..]), Err(AecgError::Empty)));
        assert!(read_aecg(&b"<AnnotatedECG><id root='1'></AnnotatedECG>"[..]).is_err());
    }

    #[test]
    fn conformance_sample_when_present() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/samples/aecg/ecgtoolkit_Example_aECG.xml");
        let Ok(file) = std::fs::File::open(&path) else {
            eprintln!("skipped: {} is absent", path.display());
            return;
        };
        let h = read_aecg(std::io::BufReader::new(file)).expect("reads");
        assert_eq!(h.effective_time.as_deref(), Some("20021122091000"));
        assert_eq!(h.patient_id.as_deref(), Some("SBJ-123"));
        assert_eq!(h.patient_name.as_deref(), Some("Clark"));
        assert_eq!(h.sex.as_deref(), Some("M"));
        assert_eq!(h.birth_date.as_deref(), Some("19530508"));
        assert_eq!(h.device_model.as_deref(), Some("ELI250"));
        assert_eq!(
            h.device_manufacturer.as_deref(),
            Some("Mortara Instrument, Inc.")
        );
        assert_eq!(h.author.as_deref(), Some("JMK"));
        assert!(!h.is_stat());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000)) {
            let mut doc = b"<AnnotatedECG>".to_vec();
            doc.extend_from_slice(&data);
            let _ = read_aecg(&doc[..]);
            let _ = read_aecg(&data[..]);
        }
    }
}
