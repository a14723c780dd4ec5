//! Reports that a hospital PACS sends as DICOM: Structured Reports (Basic
//! Text, Enhanced, Comprehensive) and Encapsulated PDF, read into what an
//! HL7 report would say and written out as the ORU^R01 central keeps, so
//! one correlation, one queue and every clinic sink serve both.
//!
//! The SR's content tree becomes the report's text (headings from the
//! containers, `concept: value` for TEXT, CODE, NUM, DATE and names);
//! images and coordinates it references are left out. A PDF is carried as
//! it is. The status follows the SR's completion and verification flags,
//! and any document that names a predecessor is a correction.
//!
//! Every element length is checked against the bytes before dicom-rs
//! parses (it allocates what a header declares), so a forged length is
//! refused, not honoured.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use sha2::{Digest, Sha256};

use crate::dicom::read_part10;
use crate::dicom_extent::dataset_extent;
use crate::hl7::escape::escape;
use crate::hl7::message::Delimiters;
use crate::hl7::report::ReportStatus;

pub const ENCAPSULATED_PDF: &str = "1.2.840.10008.5.1.4.1.1.104.1";
pub const BASIC_TEXT_SR: &str = "1.2.840.10008.5.1.4.1.1.88.11";
pub const ENHANCED_SR: &str = "1.2.840.10008.5.1.4.1.1.88.22";
pub const COMPREHENSIVE_SR: &str = "1.2.840.10008.5.1.4.1.1.88.33";

/// The storage classes a report may come as.
pub const REPORT_SOP_CLASSES: &[&str] = &[
    BASIC_TEXT_SR,
    ENHANCED_SR,
    COMPREHENSIVE_SR,
    ENCAPSULATED_PDF,
];

/// An SR nested deeper than this is not a report a person reads.
const MAX_DEPTH: usize = 16;
/// Text kept from an SR's tree.
const MAX_TEXT: usize = 1024 * 1024;

/// A DICOM report, read.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomReport {
    pub sop_class: String,
    pub sop_instance: String,
    pub study_uid: String,
    pub accession: String,
    /// The placer order number of the request the report answers.
    pub placer: String,
    pub filler: String,
    pub patient_id: String,
    /// `Family^Given` as DICOM spells it.
    pub patient_name: String,
    pub title: String,
    pub status: ReportStatus,
    /// `ecg` for a report on an ECG, else `imaging`.
    pub kind: &'static str,
    /// When the content was made, HL7 TS digits (YYYYMMDDHHMMSS).
    pub reported_at: String,
    pub text: String,
    pub pdf: Option<Vec<u8>>,
}

/// Reads a data set whose bytes arrived whole, checking every element's
/// length against them first.
pub fn read_dataset(data: &[u8], transfer_syntax: &str) -> Result<InMemDicomObject, String> {
    let ts = TransferSyntaxRegistry
        .get(transfer_syntax)
        .ok_or_else(|| format!("unknown transfer syntax {transfer_syntax}"))?;
    let extent = dataset_extent(data, transfer_syntax, u32::MAX);
    if let Some(why) = extent.short {
        return Err(format!("malformed data set: {why}"));
    }
    if extent.len != data.len() {
        return Err(format!(
            "data set in {} not accepted here, or with trailing bytes",
            ts.name()
        ));
    }
    InMemDicomObject::read_dataset_with_ts(data, ts).map_err(|e| e.to_string())
}

/// Reads a report from a Part 10 file (the import folder).
pub fn read_report_file(bytes: &[u8]) -> Result<DicomReport, String> {
    let p = read_part10(bytes).map_err(|e| e.to_string())?;
    let data = bytes
        .get(p.dataset_offset..)
        .ok_or("the file ends in its header")?;
    let o = read_dataset(data, &p.transfer_syntax)?;
    read_report(&o, &p.sop_class, &p.sop_instance)
}

fn text(o: &InMemDicomObject, tag: Tag) -> String {
    o.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_matches(['\0', ' ']).to_owned())
        .unwrap_or_default()
}

fn items(o: &InMemDicomObject, tag: Tag) -> &[InMemDicomObject] {
    o.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.items())
        .unwrap_or(&[])
}

/// The code meaning of a code sequence's first item.
fn meaning(o: &InMemDicomObject, tag: Tag) -> String {
    items(o, tag)
        .first()
        .map(|c| text(c, tags::CODE_MEANING))
        .unwrap_or_default()
}

/// Reads a report from a data set; `sop_class` and `sop_instance` are
/// the command's (the data set's own are used when those are empty).
pub fn read_report(
    o: &InMemDicomObject,
    sop_class: &str,
    sop_instance: &str,
) -> Result<DicomReport, String> {
    let or_own = |given: &str, tag| {
        let given = given.trim_matches(['\0', ' ']);
        if given.is_empty() {
            text(o, tag)
        } else {
            given.to_owned()
        }
    };
    let sop_class = or_own(sop_class, tags::SOP_CLASS_UID);
    let sop_instance = or_own(sop_instance, tags::SOP_INSTANCE_UID);
    if !REPORT_SOP_CLASSES.contains(&sop_class.as_str()) {
        return Err(format!(
            "SOP class {sop_class} is not a report (send a Structured Report or an Encapsulated PDF)"
        ));
    }
    if sop_instance.is_empty() {
        return Err("no SOP Instance UID (0008,0018)".into());
    }
    let patient_id = text(o, tags::PATIENT_ID);
    if patient_id.is_empty() {
        return Err("no Patient ID (0010,0020)".into());
    }
    let request = items(o, tags::REFERENCED_REQUEST_SEQUENCE).first();
    let from_request = |tag| request.map(|r| text(r, tag)).unwrap_or_default();
    let mut accession = text(o, tags::ACCESSION_NUMBER);
    if accession.is_empty() {
        accession = from_request(tags::ACCESSION_NUMBER);
    }
    let mut study_uid = text(o, tags::STUDY_INSTANCE_UID);
    if study_uid.is_empty() {
        study_uid = from_request(tags::STUDY_INSTANCE_UID);
    }
    let pdf = sop_class == ENCAPSULATED_PDF;
    let status = if !items(o, tags::PREDECESSOR_DOCUMENTS_SEQUENCE).is_empty() {
        ReportStatus::Corrected
    } else if !pdf
        && (text(o, tags::COMPLETION_FLAG) == "PARTIAL"
            || text(o, tags::VERIFICATION_FLAG) == "UNVERIFIED")
    {
        ReportStatus::Preliminary
    } else {
        ReportStatus::Final
    };
    let mut title = if pdf {
        text(o, tags::DOCUMENT_TITLE)
    } else {
        meaning(o, tags::CONCEPT_NAME_CODE_SEQUENCE)
    };
    for fallback in [tags::STUDY_DESCRIPTION, tags::SERIES_DESCRIPTION] {
        if title.is_empty() {
            title = text(o, fallback);
        }
    }
    let modality = text(o, tags::MODALITY);
    let ecg =
        modality == "ECG" || title.to_ascii_uppercase().contains("ECG") || title.contains("心电");
    let reported_at = [
        (tags::CONTENT_DATE, tags::CONTENT_TIME),
        (tags::INSTANCE_CREATION_DATE, tags::INSTANCE_CREATION_TIME),
        (tags::STUDY_DATE, tags::STUDY_TIME),
    ]
    .iter()
    .map(|(d, t)| {
        let date: String = text(o, *d).chars().filter(char::is_ascii_digit).collect();
        let time: String = text(o, *t)
            .split('.')
            .next()
            .unwrap_or("")
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        if date.len() == 8 {
            format!("{date}{time}").chars().take(14).collect()
        } else {
            String::new()
        }
    })
    .find(|s| !s.is_empty())
    .unwrap_or_default();
    let (body, document) = if pdf {
        let mime = text(o, tags::MIME_TYPE_OF_ENCAPSULATED_DOCUMENT);
        if !mime.is_empty() && !mime.eq_ignore_ascii_case("application/pdf") {
            return Err(format!("the encapsulated document is {mime}, not a PDF"));
        }
        let bytes = o
            .element_opt(tags::ENCAPSULATED_DOCUMENT)
            .ok()
            .flatten()
            .and_then(|e| e.to_bytes().ok())
            .map(|b| b.into_owned())
            .ok_or("no Encapsulated Document (0042,0011)")?;
        (String::new(), Some(trim_pdf(bytes)?))
    } else {
        let mut out = String::new();
        render(items(o, tags::CONTENT_SEQUENCE), 0, &mut out);
        while out.ends_with('\n') {
            out.pop();
        }
        if out.trim().is_empty() {
            return Err(
                "the Structured Report holds no text (no TEXT, CODE or NUM content)".into(),
            );
        }
        (out, None)
    };
    // A PACS that declares no character set, only ASCII, or Latin-1 (a
    // common default, dcmtk's `pdf2dcm` among them) and still writes
    // Chinese sends UTF-8 or GB18030 bytes, which the library reads as one
    // character per byte: read them again as the HL7 side does.
    let declared = text(o, tags::SPECIFIC_CHARACTER_SET);
    let fix = |s: String| {
        if matches!(declared.as_str(), "" | "ISO_IR 6" | "ISO_IR 100") {
            reread(s)
        } else {
            s
        }
    };
    Ok(DicomReport {
        sop_class,
        sop_instance,
        study_uid,
        accession,
        placer: from_request(tags::PLACER_ORDER_NUMBER_IMAGING_SERVICE_REQUEST),
        filler: from_request(tags::FILLER_ORDER_NUMBER_IMAGING_SERVICE_REQUEST),
        patient_id,
        patient_name: fix(text(o, tags::PATIENT_NAME)),
        title: fix(title),
        status,
        kind: if ecg { "ecg" } else { "imaging" },
        reported_at,
        text: fix(body),
        pdf: document,
    })
}

/// Text read one character per byte, read again as UTF-8, else GB18030;
/// left as it is when it holds a character no single byte makes, or
/// neither reading is clean.
fn reread(s: String) -> String {
    if s.is_ascii() {
        return s;
    }
    let Some(bytes) = s
        .chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect::<Option<Vec<u8>>>()
    else {
        return s;
    };
    if let Ok(utf8) = String::from_utf8(bytes.clone()) {
        return utf8;
    }
    let (gb, _, bad) = encoding_rs::GB18030.decode(&bytes);
    if bad { s } else { gb.into_owned() }
}

/// The document without the pad byte DICOM adds to an odd length.
fn trim_pdf(mut bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    if !bytes.starts_with(b"%PDF") {
        return Err("the encapsulated document does not start as a PDF (%PDF)".into());
    }
    if bytes.len().is_multiple_of(2) && bytes.last() == Some(&0) {
        bytes.pop();
    }
    Ok(bytes)
}

/// Appends the SR content items' text, one line each, headings for
/// containers.
fn render(content: &[InMemDicomObject], depth: usize, out: &mut String) {
    if depth > MAX_DEPTH {
        return;
    }
    for item in content {
        if out.len() > MAX_TEXT {
            return;
        }
        let name = meaning(item, tags::CONCEPT_NAME_CODE_SEQUENCE);
        let value = match text(item, tags::VALUE_TYPE).as_str() {
            "CONTAINER" => {
                if !name.is_empty() {
                    out.push_str(&name);
                    out.push('\n');
                }
                render(items(item, tags::CONTENT_SEQUENCE), depth + 1, out);
                continue;
            }
            "TEXT" => text(item, tags::TEXT_VALUE),
            "CODE" => meaning(item, tags::CONCEPT_CODE_SEQUENCE),
            "NUM" => items(item, tags::MEASURED_VALUE_SEQUENCE)
                .first()
                .map(|m| {
                    let n = text(m, tags::NUMERIC_VALUE);
                    let units = items(m, tags::MEASUREMENT_UNITS_CODE_SEQUENCE)
                        .first()
                        .map(|u| text(u, tags::CODE_VALUE))
                        .unwrap_or_default();
                    if units.is_empty() || units == "1" {
                        n
                    } else {
                        format!("{n} {units}")
                    }
                })
                .unwrap_or_default(),
            "DATE" => text(item, tags::DATE),
            "TIME" => text(item, tags::TIME),
            "DATETIME" => text(item, tags::DATE_TIME),
            "PNAME" => text(item, tags::PERSON_NAME).replace('^', " "),
            _ => String::new(),
        };
        if !value.is_empty() {
            if name.is_empty() {
                out.push_str(&value);
            } else {
                out.push_str(&name);
                out.push_str(": ");
                out.push_str(&value);
            }
            out.push('\n');
        }
        // Findings may hang under a TEXT or CODE item too.
        render(items(item, tags::CONTENT_SEQUENCE), depth + 1, out);
    }
}

impl DicomReport {
    /// The message control id: from the SOP Instance UID, so the same
    /// instance stored twice is one report.
    pub fn control_id(&self) -> String {
        let h = Sha256::digest(self.sop_instance.as_bytes());
        let mut hex = String::with_capacity(19);
        for b in h.iter().take(10) {
            hex.push_str(&format!("{b:02x}"));
        }
        format!("D{}", &hex[..19])
    }

    /// The report as an ORU^R01 in UTF-8: the accession in OBR-18, the
    /// study in ZDS-1, the status in OBR-25, the text as TX and the PDF as
    /// an ED observation. `sender` is the PACS's AE title; `now` the HL7
    /// time of the message.
    pub fn to_oru(&self, sender: &str, now: &str) -> String {
        let d = Delimiters::default();
        let e = |s: &str| escape(&s.replace(['\r', '\n'], " "), &d);
        let name = {
            let mut parts = self.patient_name.splitn(2, '^');
            let family = parts.next().unwrap_or("");
            let given = parts.next().unwrap_or("").replace('^', " ");
            format!("{}^{}", e(family), e(given.trim()))
        };
        let status = self.status.code();
        let section = if self.kind == "ecg" { "EC" } else { "RAD" };
        let title = e(&self.title);
        let filler = if self.filler.is_empty() {
            &self.accession
        } else {
            &self.filler
        };
        let mut obr = vec![String::new(); 26];
        obr[0] = "OBR".into();
        obr[1] = "1".into();
        obr[2] = e(&self.placer);
        obr[3] = e(filler);
        obr[4] = format!("REPORT^{title}");
        obr[18] = e(&self.accession);
        obr[22] = self.reported_at.clone();
        obr[24] = section.into();
        obr[25] = status.into();
        let mut m = format!(
            "MSH|^~\\&|{sender}|PACS|YILIAN|HUB|{now}||ORU^R01|{control}|P|2.5|||||||UNICODE UTF-8\r\
             PID|1||{pid}||{name}\r\
             ORC|RE|{placer}|{filler}\r\
             {obr}\r\
             ZDS|{study}^^Application^DICOM\r",
            sender = e(sender),
            control = self.control_id(),
            pid = e(&self.patient_id),
            placer = e(&self.placer),
            filler = e(filler),
            obr = obr.join("|"),
            study = e(&self.study_uid),
        );
        let mut n = 0;
        if !self.text.is_empty() {
            n += 1;
            let lines: Vec<String> = self.text.lines().map(|l| escape(l, &d)).collect();
            m.push_str(&format!(
                "OBX|{n}|TX|REPORT^{title}||{}||||||{status}\r",
                lines.join("~")
            ));
        }
        if let Some(pdf) = &self.pdf {
            use base64::Engine;
            n += 1;
            let b64 = base64::engine::general_purpose::STANDARD.encode(pdf);
            m.push_str(&format!(
                "OBX|{n}|ED|PDF^{title}||^application^PDF^Base64^{b64}||||||{status}\r"
            ));
        }
        m.push_str(&format!(
            "OBX|{}|HD|113014^Study^DCM||{}||||||{status}\r",
            n + 1,
            e(&self.study_uid)
        ));
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::Message;
    use crate::hl7::report::read_report as read_hl7_report;
    use dicom_core::value::DataSetSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};

    fn el(tag: Tag, vr: VR, v: &str) -> DataElement<InMemDicomObject> {
        DataElement::new(tag, vr, PrimitiveValue::from(v))
    }

    fn code(meaning: &str) -> DataElement<InMemDicomObject> {
        DataElement::new(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![InMemDicomObject::from_element_iter([
                el(tags::CODE_VALUE, VR::SH, "1"),
                el(tags::CODE_MEANING, VR::LO, meaning),
            ])]),
        )
    }

    fn sr() -> InMemDicomObject {
        let finding = InMemDicomObject::from_element_iter([
            el(tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS"),
            el(tags::VALUE_TYPE, VR::CS, "TEXT"),
            code("Finding"),
            el(tags::TEXT_VALUE, VR::UT, "两肺纹理清晰|未见异常"),
        ]);
        let section = InMemDicomObject::from_element_iter([
            el(tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS"),
            el(tags::VALUE_TYPE, VR::CS, "CONTAINER"),
            code("Findings"),
            DataElement::new(
                tags::CONTENT_SEQUENCE,
                VR::SQ,
                DataSetSequence::from(vec![finding]),
            ),
        ]);
        InMemDicomObject::from_element_iter([
            el(tags::SOP_CLASS_UID, VR::UI, BASIC_TEXT_SR),
            el(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4.5"),
            el(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3"),
            el(tags::ACCESSION_NUMBER, VR::SH, "ACC7"),
            el(tags::PATIENT_ID, VR::LO, "P7"),
            el(tags::PATIENT_NAME, VR::PN, "Chen^Jing"),
            el(tags::CONTENT_DATE, VR::DA, "20261203"),
            el(tags::CONTENT_TIME, VR::TM, "101400.123"),
            el(tags::VALUE_TYPE, VR::CS, "CONTAINER"),
            el(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"),
            el(tags::VERIFICATION_FLAG, VR::CS, "VERIFIED"),
            code("Chest X-Ray Report"),
            DataElement::new(
                tags::CONTENT_SEQUENCE,
                VR::SQ,
                DataSetSequence::from(vec![section]),
            ),
        ])
    }

    #[test]
    fn an_sr_reads_and_travels_as_an_oru_the_hl7_reader_agrees_with() {
        let r = read_report(&sr(), "", "").expect("a report");
        assert_eq!(r.status, ReportStatus::Final);
        assert_eq!(r.title, "Chest X-Ray Report");
        assert_eq!(r.text, "Findings\nFinding: 两肺纹理清晰|未见异常");
        assert_eq!(r.reported_at, "20261203101400");
        let oru = r.to_oru("PACS1", "20261203101500");
        let m = Message::parse(&oru).expect("parses");
        let h = read_hl7_report(&m).expect("the HL7 reader takes it");
        assert_eq!(h.status, ReportStatus::Final);
        assert_eq!(h.keys.accession, "ACC7");
        assert_eq!(h.keys.study_uid, "1.2.3");
        assert_eq!(h.keys.patient_id, "P7");
        assert_eq!(h.kind, "imaging");
        assert_eq!(h.text, r.text);
        assert_eq!(h.title, "Chest X-Ray Report");
        assert_eq!(h.control_id, r.control_id());
    }

    #[test]
    fn flags_and_predecessors_set_the_status() {
        let mut o = sr();
        o.put(el(tags::COMPLETION_FLAG, VR::CS, "PARTIAL"));
        assert_eq!(
            read_report(&o, "", "").expect("r").status,
            ReportStatus::Preliminary
        );
        o.put(DataElement::new(
            tags::PREDECESSOR_DOCUMENTS_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![InMemDicomObject::new_empty()]),
        ));
        assert_eq!(
            read_report(&o, "", "").expect("r").status,
            ReportStatus::Corrected
        );
    }

    #[test]
    fn a_pdf_keeps_its_bytes_without_the_pad() {
        let mut pdf = b"%PDF-1.4 od".to_vec();
        pdf.push(0);
        let o = InMemDicomObject::from_element_iter([
            el(tags::SOP_INSTANCE_UID, VR::UI, "1.2.9"),
            el(tags::PATIENT_ID, VR::LO, "P8"),
            el(tags::DOCUMENT_TITLE, VR::ST, "心电图报告"),
            el(
                tags::MIME_TYPE_OF_ENCAPSULATED_DOCUMENT,
                VR::LO,
                "application/pdf",
            ),
            DataElement::new(
                tags::ENCAPSULATED_DOCUMENT,
                VR::OB,
                PrimitiveValue::from(pdf),
            ),
        ]);
        let r = read_report(&o, ENCAPSULATED_PDF, "").expect("a report");
        assert_eq!(r.pdf.as_deref(), Some(&b"%PDF-1.4 od"[..]));
        assert_eq!(r.kind, "ecg");
        let m = Message::parse(&r.to_oru("PACS", "20261203")).expect("parses");
        let h = read_hl7_report(&m).expect("read");
        assert_eq!(h.pdf, r.pdf);
        assert_eq!(h.kind, "ecg");
    }

    #[test]
    fn chinese_without_a_declared_character_set_is_read_again() {
        let latin = |b: &[u8]| b.iter().map(|&c| char::from(c)).collect::<String>();
        assert_eq!(reread(latin("胸部报告".as_bytes())), "胸部报告");
        let (gbk, _, _) = encoding_rs::GB18030.encode("心电图报告");
        assert_eq!(reread(latin(&gbk)), "心电图报告");
        // Latin-1 names read as GB18030 too: in the alliance's hospitals an
        // undeclared non-ASCII byte is Chinese far more often than not.
        assert_eq!(reread("Chen^Jing".into()), "Chen^Jing");
        assert_eq!(reread("已是中文".into()), "已是中文");
    }

    #[test]
    fn what_is_not_a_report_is_named() {
        let mut o = sr();
        assert!(
            read_report(&o, "1.2.840.10008.5.1.4.1.1.2", "")
                .unwrap_err()
                .contains("not a report")
        );
        o.remove_element(tags::PATIENT_ID);
        assert!(read_report(&o, "", "").unwrap_err().contains("(0010,0020)"));
        let empty = InMemDicomObject::from_element_iter([
            el(tags::SOP_INSTANCE_UID, VR::UI, "1"),
            el(tags::PATIENT_ID, VR::LO, "P"),
        ]);
        assert!(
            read_report(&empty, BASIC_TEXT_SR, "")
                .unwrap_err()
                .contains("no text")
        );
    }
}
