//! DIMSE command sets (always Implicit VR Little Endian): reading the
//! requests a storage SCP receives and writing its responses, and the Part
//! 10 header the spool stores in front of each received data set.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

/// Command Field values.
pub const C_STORE_RQ: u16 = 0x0001;
pub const C_STORE_RSP: u16 = 0x8001;
pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;
pub const C_FIND_RQ: u16 = 0x0020;
pub const C_CANCEL_RQ: u16 = 0x0FFF;

/// Status codes the storage SCP answers with.
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Out of resources: the spool refuses (full, or its disk failing).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Data set does not match SOP class.
    pub const DATASET_MISMATCH: u16 = 0xA900;
    /// Cannot understand: the data set is not readable DICOM.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
}

/// Our implementation's identity in the Part 10 headers we write.
pub const IMPLEMENTATION_CLASS_UID: &str = "1.2.826.0.1.3680043.10.1431.1";
pub const IMPLEMENTATION_VERSION: &str = "YILIAN_GW_01";

#[derive(Debug, thiserror::Error)]
pub enum DimseError {
    #[error("command set does not parse: {0}")]
    Parse(String),
    #[error("command set lacks {0}")]
    Missing(&'static str),
}

/// The fields of a request the SCP acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: u16,
    pub message_id: u16,
    pub sop_class: String,
    pub sop_instance: String,
    /// Whether a data set follows (Command Data Set Type ≠ 0x0101).
    pub has_dataset: bool,
}

fn trim(s: &str) -> String {
    s.trim_end_matches(['\0', ' ']).to_owned()
}

/// Reads a command set.
pub fn read_request(bytes: &[u8]) -> Result<Request, DimseError> {
    let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, &ts)
        .map_err(|e| DimseError::Parse(e.to_string()))?;
    let u16_of = |tag, name| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u16>().ok())
            .ok_or(DimseError::Missing(name))
    };
    let str_of = |tag| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok().map(|s| trim(&s)))
            .unwrap_or_default()
    };
    let command = u16_of(tags::COMMAND_FIELD, "Command Field")?;
    let message_id = u16_of(tags::MESSAGE_ID, "Message ID").unwrap_or(0);
    let data_set_type = u16_of(tags::COMMAND_DATA_SET_TYPE, "Command Data Set Type")?;
    Ok(Request {
        command,
        message_id,
        sop_class: str_of(tags::AFFECTED_SOP_CLASS_UID),
        sop_instance: str_of(tags::AFFECTED_SOP_INSTANCE_UID),
        has_dataset: data_set_type != 0x0101,
    })
}

fn encode(obj: &InMemDicomObject) -> Vec<u8> {
    let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
    let mut out = Vec::with_capacity(256);
    // Writing a command set built from known elements into a Vec cannot
    // fail; an empty set would only make the peer abort.
    if let Err(e) = obj.write_dataset_with_ts(&mut out, &ts) {
        tracing::error!(error = %e, "cannot encode a DIMSE response");
    }
    out
}

/// A response command set (no data set follows).
pub fn response(
    command: u16,
    message_id: u16,
    sop_class: &str,
    sop_instance: Option<&str>,
    status: u16,
    error_comment: Option<&str>,
) -> Vec<u8> {
    let mut elements = vec![
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(sop_class),
        ),
        DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(command)),
        DataElement::new(
            tags::MESSAGE_ID_BEING_RESPONDED_TO,
            VR::US,
            PrimitiveValue::from(message_id),
        ),
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            PrimitiveValue::from(0x0101u16),
        ),
        DataElement::new(tags::STATUS, VR::US, PrimitiveValue::from(status)),
    ];
    if let Some(i) = sop_instance {
        elements.push(DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(i),
        ));
    }
    if let Some(c) = error_comment {
        // (0000,0902) is at most 64 characters.
        let c: String = c.chars().take(64).collect();
        elements.push(DataElement::new(
            tags::ERROR_COMMENT,
            VR::LO,
            PrimitiveValue::from(c),
        ));
    }
    encode(&InMemDicomObject::command_from_element_iter(elements))
}

/// Preamble, `DICM` and the file meta group for an instance received over
/// the network, so the spool holds an ordinary Part 10 file.
pub fn part10_header(
    sop_class: &str,
    sop_instance: &str,
    transfer_syntax: &str,
    calling_ae: &str,
) -> Result<Vec<u8>, DimseError> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .transfer_syntax(transfer_syntax)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION)
        .source_application_entity_title(calling_ae.trim())
        .build()
        .map_err(|e| DimseError::Parse(e.to_string()))?;
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    meta.write(&mut out)
        .map_err(|e| DimseError::Parse(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_reads_back() {
        let bytes = response(
            C_STORE_RSP,
            7,
            "1.2.840.10008.5.1.4.1.1.2",
            Some("1.2.3"),
            0xA700,
            Some("spool full"),
        );
        let r = read_request(&bytes).expect("parses");
        assert_eq!(r.command, C_STORE_RSP);
        assert_eq!(r.sop_instance, "1.2.3");
        assert!(!r.has_dataset);
        assert!(read_request(b"\x00\x01garbage").is_err());
    }

    #[test]
    fn part10_header_is_what_readers_expect() {
        let h = part10_header(
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.3.4",
            "1.2.840.10008.1.2.1",
            "CT01",
        )
        .expect("header");
        assert_eq!(&h[128..132], b"DICM");
        assert_eq!(h.len() % 2, 0);
    }
}
