//! The clinic's DICOM viewer (or a modality that shows reports): each
//! report stored by C-STORE, a PDF as Encapsulated PDF, a text report as
//! a Basic Text SR. Every UID derives from the report's id, so a report
//! stored again (after a lost answer) is the same instance, never a
//! second copy; a correction is a new report, so a new instance in the
//! same study.

use std::time::Duration;

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_ul::ClientAssociationOptions;
use sha2::{Digest, Sha256};
use yilian_codecs::dicom::{Command, command};
use yilian_codecs::hl7::report::ReportStatus;
use yilian_gateway_config::schema::ReportSinkSection;

use super::{Ready, Sink, SinkVerdict, Why};

pub use yilian_codecs::dicom_report::{BASIC_TEXT_SR, ENCAPSULATED_PDF};
const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

pub struct ViewerSink {
    address: String,
    called: String,
    calling: String,
    timeout: Duration,
}

impl ViewerSink {
    pub fn new(section: &ReportSinkSection) -> Self {
        Self {
            address: section.address.clone().unwrap_or_default(),
            called: section.ae_title.clone().unwrap_or_default(),
            calling: section
                .calling_ae_title
                .clone()
                .unwrap_or_else(|| "YILIAN_GW".into()),
            timeout: section.ack_timeout,
        }
    }
}

/// A UID under 2.25 (ISO/IEC 9834-8) from `what`: the same input, the
/// same UID, wherever and however often it is made.
pub fn uid_for(what: &str) -> String {
    let h = Sha256::digest(what.as_bytes());
    let mut n = [0u8; 16];
    n.copy_from_slice(&h[..16]);
    // The top bit cleared keeps the number within 38 digits.
    n[0] &= 0x7f;
    format!("2.25.{}", u128::from_be_bytes(n))
}

/// The SOP Instance UID a report is stored under.
pub fn instance_uid(report_id: &str) -> String {
    uid_for(&format!("yilian-report-instance:{report_id}"))
}

fn da_tm(hl7_ts: &str) -> (String, String) {
    let digits: String = hl7_ts.chars().filter(char::is_ascii_digit).collect();
    (
        digits.chars().take(8).collect(),
        digits.chars().skip(8).take(6).collect(),
    )
}

/// The report as a DICOM data set: (SOP class, SOP instance, data set).
pub fn dataset(ready: &Ready<'_>) -> (&'static str, String, InMemDicomObject) {
    let r = ready.report;
    let s = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
    let study_key = if r.keys.accession.is_empty() {
        ready.held.id.as_str()
    } else {
        r.keys.accession.as_str()
    };
    let study_uid = match ready.held.meta("study_uid") {
        "" => uid_for(&format!("yilian-report-study:{study_key}")),
        uid => uid.to_owned(),
    };
    let sop_class = if r.pdf.is_some() {
        ENCAPSULATED_PDF
    } else {
        BASIC_TEXT_SR
    };
    let instance = instance_uid(&ready.held.id);
    let (date, time) = da_tm(&r.reported_at);
    let mut o = InMemDicomObject::new_empty();
    o.put(s(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"));
    o.put(s(tags::SOP_CLASS_UID, VR::UI, sop_class));
    o.put(s(tags::SOP_INSTANCE_UID, VR::UI, &instance));
    o.put(s(tags::STUDY_DATE, VR::DA, &date));
    o.put(s(tags::STUDY_TIME, VR::TM, &time));
    o.put(s(tags::CONTENT_DATE, VR::DA, &date));
    o.put(s(tags::CONTENT_TIME, VR::TM, &time));
    o.put(s(tags::ACCESSION_NUMBER, VR::SH, &r.keys.accession));
    o.put(s(
        tags::MODALITY,
        VR::CS,
        if r.pdf.is_some() { "DOC" } else { "SR" },
    ));
    o.put(s(tags::MANUFACTURER, VR::LO, "Yilian"));
    o.put(s(tags::REFERRING_PHYSICIAN_NAME, VR::PN, ""));
    o.put(s(
        tags::PATIENT_NAME,
        VR::PN,
        &r.patient_name.replace(' ', "^"),
    ));
    o.put(s(tags::PATIENT_ID, VR::LO, &r.keys.patient_id));
    o.put(s(tags::PATIENT_BIRTH_DATE, VR::DA, ""));
    o.put(s(tags::PATIENT_SEX, VR::CS, ""));
    o.put(s(tags::STUDY_INSTANCE_UID, VR::UI, &study_uid));
    o.put(s(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        &uid_for(&format!("yilian-report-series:{}:{sop_class}", study_uid)),
    ));
    o.put(s(tags::STUDY_ID, VR::SH, ""));
    o.put(s(tags::SERIES_NUMBER, VR::IS, "999"));
    o.put(s(tags::INSTANCE_NUMBER, VR::IS, "1"));
    match &r.pdf {
        Some(pdf) => {
            o.put(s(tags::ACQUISITION_DATE_TIME, VR::DT, ""));
            o.put(s(tags::BURNED_IN_ANNOTATION, VR::CS, "YES"));
            o.put(s(tags::DOCUMENT_TITLE, VR::ST, &r.title));
            o.put(DataElement::new(
                tags::CONCEPT_NAME_CODE_SEQUENCE,
                VR::SQ,
                DataSetSequence::from(Vec::<InMemDicomObject>::new()),
            ));
            o.put(s(
                tags::MIME_TYPE_OF_ENCAPSULATED_DOCUMENT,
                VR::LO,
                "application/pdf",
            ));
            // OB is padded to an even length with a zero byte.
            let mut bytes = pdf.clone();
            if bytes.len() % 2 == 1 {
                bytes.push(0);
            }
            o.put(DataElement::new(
                tags::ENCAPSULATED_DOCUMENT,
                VR::OB,
                PrimitiveValue::from(bytes),
            ));
        }
        None => {
            let code = |value: &str, scheme: &str, meaning: &str| {
                let mut c = InMemDicomObject::new_empty();
                c.put(s(tags::CODE_VALUE, VR::SH, value));
                c.put(s(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme));
                c.put(s(tags::CODE_MEANING, VR::LO, meaning));
                DataElement::new(
                    tags::CONCEPT_NAME_CODE_SEQUENCE,
                    VR::SQ,
                    DataSetSequence::from(vec![c]),
                )
            };
            let mut item = InMemDicomObject::new_empty();
            item.put(s(tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS"));
            item.put(s(tags::VALUE_TYPE, VR::CS, "TEXT"));
            item.put(code("121071", "DCM", "Finding"));
            item.put(s(tags::TEXT_VALUE, VR::UT, &r.text));
            o.put(s(tags::VALUE_TYPE, VR::CS, "CONTAINER"));
            o.put(code("18748-4", "LN", "Diagnostic imaging report"));
            o.put(s(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"));
            o.put(s(
                tags::COMPLETION_FLAG,
                VR::CS,
                if r.status == ReportStatus::Preliminary {
                    "PARTIAL"
                } else {
                    "COMPLETE"
                },
            ));
            o.put(s(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"));
            o.put(DataElement::new(
                tags::CONTENT_SEQUENCE,
                VR::SQ,
                DataSetSequence::from(vec![item]),
            ));
        }
    }
    (sop_class, instance, o)
}

impl Sink for ViewerSink {
    async fn deliver(&mut self, ready: &Ready<'_>) -> SinkVerdict {
        let (sop_class, instance, object) = dataset(ready);
        let assoc = ClientAssociationOptions::new()
            .calling_ae_title(self.calling.clone())
            .called_ae_title(self.called.clone())
            .with_presentation_context(
                sop_class.to_owned(),
                vec![EXPLICIT_VR_LE.to_owned(), IMPLICIT_VR_LE.to_owned()],
            )
            .connection_timeout(self.timeout)
            .read_timeout(self.timeout)
            .write_timeout(self.timeout)
            .establish_async(self.address.as_str())
            .await;
        let assoc = match assoc {
            Ok(a) => a,
            Err(e) => {
                return SinkVerdict::Retry(Why::new(
                    "why-viewer-unreachable",
                    format!("{}: {e}", self.address),
                ));
            }
        };
        let Some((assoc, pc, ts)) = crate::intake::dicom::scu::accepted_context(assoc).await else {
            return SinkVerdict::Failed(Why::new("why-viewer-refused-class", sop_class));
        };
        let Some(ts) = TransferSyntaxRegistry.get(&ts) else {
            return SinkVerdict::Failed(Why::new("why-viewer-refused-class", ts));
        };
        let mut data = Vec::new();
        if let Err(e) = object.write_dataset_with_ts(&mut data, ts) {
            return SinkVerdict::Failed(Why::new("why-report-unreadable", e));
        }
        let rq = Command {
            field: command::C_STORE_RQ,
            affected_sop_class: sop_class.into(),
            affected_sop_instance: instance.clone(),
            message_id: 1,
            data_set_type: 0x0000,
            ..Command::default()
        };
        match crate::intake::dicom::scu::request(assoc, pc, &rq, Some(data)).await {
            Ok(rsp) => match rsp.status {
                Some(0x0000) | Some(0xB000) | Some(0xB006) | Some(0xB007) => {
                    SinkVerdict::Delivered(format!("stored as {instance}"))
                }
                // Out of resources (A7xx) is the viewer's "send again later".
                Some(s) if (0xA700..0xA800).contains(&s) => SinkVerdict::Retry(Why::new(
                    "why-viewer-refused",
                    format!("{s:#06x} {}", rsp.error_comment.unwrap_or_default()),
                )),
                Some(s) if (0xA000..0xB000).contains(&s) || (0xC000..0xD000).contains(&s) => {
                    SinkVerdict::Failed(Why::new(
                        "why-viewer-refused",
                        format!("{s:#06x} {}", rsp.error_comment.unwrap_or_default()),
                    ))
                }
                s => SinkVerdict::Retry(Why::new("why-viewer-refused", format!("{s:?}"))),
            },
            Err(e) => SinkVerdict::Retry(Why::new("why-viewer-unreachable", e)),
        }
    }
}
