//! The storage SCP's status codes, the Part 10 header the spool stores in
//! front of each received data set, and the checked read of data sets that
//! requests carry (command sets themselves are
//! `yilian_codecs::dicom::Command`).

use dicom_object::FileMetaTableBuilder;

/// Status codes the storage SCP answers with.
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Out of resources: the spool refuses (full, or its disk failing).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Cannot understand: the data set is not readable DICOM.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
}

/// Our implementation's identity in the Part 10 headers we write.
pub const IMPLEMENTATION_CLASS_UID: &str = "1.2.826.0.1.3680043.10.1431.1";
pub const IMPLEMENTATION_VERSION: &str = "YILIAN_GW_01";

/// Preamble, `DICM` and the file meta group for an instance received over
/// the network, so the spool holds an ordinary Part 10 file.
pub fn part10_header(
    sop_class: &str,
    sop_instance: &str,
    transfer_syntax: &str,
    calling_ae: &str,
) -> Result<Vec<u8>, String> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class)
        .media_storage_sop_instance_uid(sop_instance)
        .transfer_syntax(transfer_syntax)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION)
        .source_application_entity_title(calling_ae.trim())
        .build()
        .map_err(|e| e.to_string())?;
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    meta.write(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Reads a data set a DIMSE request carried whole (a C-FIND identifier, an
/// N-ACTION's request), every element length checked against the bytes
/// first: the library allocates what a header declares before reading it.
pub use yilian_codecs::dicom_report::read_dataset as read_request_dataset;

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_dictionary_std::tags;
    use dicom_object::InMemDicomObject;
    use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
    use yilian_codecs::dicom::{Command, command, read_part10};

    /// Our hand-written command sets, read by dicom-rs.
    #[test]
    fn a_response_reads_back_with_dicom_rs() {
        let rq = Command {
            field: command::C_STORE_RQ,
            affected_sop_class: "1.2.840.10008.5.1.4.1.1.2".into(),
            affected_sop_instance: "1.2.3".into(),
            message_id: 7,
            ..Command::default()
        };
        let bytes = rq.response(0xA700, Some("spool full")).encode();
        let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
        let o = InMemDicomObject::read_dataset_with_ts(&bytes[..], &ts).expect("dicom-rs reads it");
        let u16_of = |t| o.element(t).expect("element").to_int::<u16>().expect("int");
        assert_eq!(u16_of(tags::COMMAND_FIELD), command::C_STORE_RSP);
        assert_eq!(u16_of(tags::STATUS), 0xA700);
        assert_eq!(u16_of(tags::MESSAGE_ID_BEING_RESPONDED_TO), 7);
        assert_eq!(u16_of(tags::COMMAND_DATA_SET_TYPE), 0x0101);
        let len = o
            .element(tags::COMMAND_GROUP_LENGTH)
            .expect("group length")
            .to_int::<u32>()
            .expect("int");
        assert_eq!(len as usize, bytes.len() - 12);
    }

    #[test]
    fn a_request_data_set_with_a_forged_length_is_refused_before_parsing() {
        // (0008,0050) SH "A1", then (0040,0100) SQ claiming 1 GiB.
        let mut data = vec![0x08, 0x00, 0x50, 0x00, b'S', b'H', 2, 0, b'A', b'1'];
        data.extend_from_slice(&[0x40, 0x00, 0x00, 0x01, b'S', b'Q', 0, 0]);
        data.extend_from_slice(&0x4000_0000u32.to_le_bytes());
        let e = read_request_dataset(&data, "1.2.840.10008.1.2.1").expect_err("refused");
        assert!(e.contains("(0040,0100)"), "{e}");
        let ok = read_request_dataset(&data[..10], "1.2.840.10008.1.2.1").expect("reads");
        assert!(ok.element(tags::ACCESSION_NUMBER).is_ok());
    }

    #[test]
    fn part10_header_reads_back() {
        let h = part10_header(
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.3.4",
            "1.2.840.10008.1.2.1",
            "CT01",
        )
        .expect("header");
        let p = read_part10(&h).expect("our own reader");
        assert_eq!(p.sop_instance, "1.2.3.4");
        assert_eq!(p.transfer_syntax, "1.2.840.10008.1.2.1");
        assert_eq!(p.dataset_offset, h.len());
    }
}
