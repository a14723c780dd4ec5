//! Modality Worklist C-FIND, answered from the worklist central pushed to
//! the box, so a console gets its patients also while the county link is
//! down. Matching follows DICOM: universal (empty), single value with `*`
//! and `?` wildcards (names case-insensitive), date ranges.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use yilian_protocol::messages::WorklistEntry;

use crate::worklist::Query;

/// Modality Worklist Information Model – FIND.
pub const MWL_FIND: &str = "1.2.840.10008.5.1.4.31";

fn text(o: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    o.element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| {
            e.to_str()
                .ok()
                .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
        })
        .unwrap_or_default()
}

/// Reads the matching keys of a worklist query identifier.
pub fn parse_query(data: &[u8], transfer_syntax: &str) -> Result<Query, String> {
    let o = super::dimse::read_request_dataset(data, transfer_syntax)?;
    let mut q = Query {
        patient_id: text(&o, tags::PATIENT_ID),
        patient_name: text(&o, tags::PATIENT_NAME),
        accession_number: text(&o, tags::ACCESSION_NUMBER),
        requested_procedure_id: text(&o, tags::REQUESTED_PROCEDURE_ID),
        ..Query::default()
    };
    if let Some(step) = o
        .element_opt(tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items().and_then(|i| i.first().cloned()))
    {
        q.modality = text(&step, tags::MODALITY);
        q.station_ae_title = text(&step, tags::SCHEDULED_STATION_AE_TITLE);
        q.start_date = text(&step, tags::SCHEDULED_PROCEDURE_STEP_START_DATE);
    }
    Ok(q)
}

/// One match, encoded in the association's transfer syntax.
pub fn response_dataset(e: &WorklistEntry, transfer_syntax: &str) -> Result<Vec<u8>, String> {
    let ts = TransferSyntaxRegistry
        .get(transfer_syntax)
        .ok_or_else(|| format!("unknown transfer syntax {transfer_syntax}"))?;
    let s = |tag, vr, v: &str| DataElement::new(tag, vr, PrimitiveValue::from(v));
    let mut step = InMemDicomObject::new_empty();
    step.put(s(tags::MODALITY, VR::CS, &e.modality));
    step.put(s(
        tags::SCHEDULED_STATION_AE_TITLE,
        VR::AE,
        &e.scheduled_station_ae_title,
    ));
    step.put(s(
        tags::SCHEDULED_PROCEDURE_STEP_START_DATE,
        VR::DA,
        &e.scheduled_start_date,
    ));
    step.put(s(
        tags::SCHEDULED_PROCEDURE_STEP_START_TIME,
        VR::TM,
        &e.scheduled_start_time,
    ));
    step.put(s(
        tags::SCHEDULED_PROCEDURE_STEP_DESCRIPTION,
        VR::LO,
        &e.scheduled_procedure_step_description,
    ));
    step.put(s(
        tags::SCHEDULED_PROCEDURE_STEP_ID,
        VR::SH,
        &e.scheduled_procedure_step_id,
    ));
    let mut o = InMemDicomObject::new_empty();
    // Names arrive from central as UTF-8.
    o.put(s(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"));
    o.put(s(tags::ACCESSION_NUMBER, VR::SH, &e.accession_number));
    o.put(s(
        tags::REFERRING_PHYSICIAN_NAME,
        VR::PN,
        &e.referring_physician,
    ));
    o.put(s(tags::PATIENT_NAME, VR::PN, &e.patient_name));
    o.put(s(tags::PATIENT_ID, VR::LO, &e.patient_id));
    o.put(s(tags::PATIENT_BIRTH_DATE, VR::DA, &e.patient_birth_date));
    o.put(s(tags::PATIENT_SEX, VR::CS, &e.patient_sex));
    o.put(s(tags::STUDY_INSTANCE_UID, VR::UI, &e.study_instance_uid));
    o.put(s(
        tags::REQUESTED_PROCEDURE_DESCRIPTION,
        VR::LO,
        &e.requested_procedure_description,
    ));
    o.put(DataElement::new(
        tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE,
        VR::SQ,
        dicom_core::value::DataSetSequence::from(vec![step]),
    ));
    o.put(s(
        tags::REQUESTED_PROCEDURE_ID,
        VR::SH,
        &e.requested_procedure_id,
    ));
    let mut out = Vec::new();
    o.write_dataset_with_ts(&mut out, ts)
        .map_err(|e| e.to_string())?;
    Ok(out)
}
