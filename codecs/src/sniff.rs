//! Recognising a payload by its content, never by its file name: clinic
//! equipment names files arbitrarily (`00001.DAT`, `ECG.TMP`, patient names).

/// What a payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    /// DICOM Part-10 file ("DICM" at offset 128).
    Dicom,
    /// SCP-ECG record (EN 1064 / ISO 11073-91064).
    ScpEcg,
    /// HL7 aECG XML (an `AnnotatedECG` root element).
    Aecg,
    /// PDF document (ECG reports are often PDFs).
    Pdf,
    /// HL7 v2 message (starts with MSH, possibly MLLP-framed).
    Hl7,
    /// Anything else.
    Other,
}

impl ContentKind {
    /// The item kind used in offers and listings.
    pub fn name(self) -> &'static str {
        match self {
            ContentKind::Dicom => "dicom",
            ContentKind::ScpEcg => "scp-ecg",
            ContentKind::Aecg => "aecg",
            ContentKind::Pdf => "pdf",
            ContentKind::Hl7 => "hl7",
            ContentKind::Other => "file",
        }
    }
}

/// How many leading bytes [`sniff`] looks at.
pub const SNIFF_LEN: usize = 4096;

/// Recognises `head` (the first up to [`SNIFF_LEN`] bytes of a payload of
/// `total_len` bytes).
pub fn sniff(head: &[u8], total_len: u64) -> ContentKind {
    if head.len() >= 132 && &head[128..132] == b"DICM" {
        return ContentKind::Dicom;
    }
    if head.starts_with(b"%PDF-") {
        return ContentKind::Pdf;
    }
    if is_scp_ecg(head, total_len) {
        return ContentKind::ScpEcg;
    }
    let text = trim_leading(head);
    if text.starts_with(b"MSH") && text.len() > 3 {
        return ContentKind::Hl7;
    }
    if (text.starts_with(b"<?xml") || text.starts_with(b"<")) && contains(head, b"AnnotatedECG") {
        return ContentKind::Aecg;
    }
    ContentKind::Other
}

/// Skips a UTF-8 BOM, whitespace and an MLLP start byte.
fn trim_leading(head: &[u8]) -> &[u8] {
    let mut s = head.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(head);
    while let Some((&b, rest)) = s.split_first() {
        if b == 0x0B || b.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// An SCP-ECG record starts with CRC(2) and record length(4, LE), then
/// section 0 whose 16-byte header has id 0 and (since EN 1064:2005)
/// "SCPECG" in its reserved bytes. Known deviations are accepted: the
/// record length with its 16-bit words swapped, and files padded past the
/// record length (XMODEM, block-size padding).
fn is_scp_ecg(head: &[u8], total_len: u64) -> bool {
    if head.len() < 22 {
        return false;
    }
    let section0_id = u16::from_le_bytes([head[8], head[9]]);
    if section0_id != 0 {
        return false;
    }
    if &head[16..22] == b"SCPECG" {
        return true;
    }
    // Older records: no magic; require a plausible record length.
    let len = u32::from_le_bytes([head[2], head[3], head[4], head[5]]) as u64;
    let swapped = u32::from_le_bytes([head[4], head[5], head[2], head[3]]) as u64;
    let section0_len = u32::from_le_bytes([head[10], head[11], head[12], head[13]]) as u64;
    let plausible = |l: u64| l >= 22 && l <= total_len && total_len - l < 64 * 1024;
    (plausible(len) || plausible(swapped)) && (16..=4096).contains(&section0_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_by_content() {
        let mut dicom = vec![0u8; 200];
        dicom[128..132].copy_from_slice(b"DICM");
        assert_eq!(sniff(&dicom, 200), ContentKind::Dicom);
        assert_eq!(sniff(b"%PDF-1.7\n", 9), ContentKind::Pdf);
        assert_eq!(sniff(b"\x0bMSH|^~\\&|LAB", 14), ContentKind::Hl7);
        assert_eq!(
            sniff(
                b"<?xml version=\"1.0\"?>\n<AnnotatedECG xmlns=\"urn:hl7-org:v3\">",
                60
            ),
            ContentKind::Aecg
        );
        assert_eq!(sniff(b"hello", 5), ContentKind::Other);
        assert_eq!(sniff(b"", 0), ContentKind::Other);
    }

    #[test]
    fn scp_ecg_header_with_and_without_magic() {
        let mut rec = vec![0u8; 200];
        rec[2..6].copy_from_slice(&200u32.to_le_bytes());
        rec[8..10].copy_from_slice(&0u16.to_le_bytes());
        rec[10..14].copy_from_slice(&136u32.to_le_bytes());
        assert_eq!(sniff(&rec, 200), ContentKind::ScpEcg);
        // Padded to a block size by XMODEM:
        assert_eq!(sniff(&rec, 256), ContentKind::ScpEcg);
        rec[16..22].copy_from_slice(b"SCPECG");
        rec[2..6].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(sniff(&rec, 200), ContentKind::ScpEcg);
    }

    #[test]
    fn conformance_samples_when_present() {
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/samples");
        for (file, kind) in [
            ("scp-ecg/ecgtoolkit_Example.scp", ContentKind::ScpEcg),
            (
                "dicom-ecg/ecgtoolkit_Example_12lead.dcm",
                ContentKind::Dicom,
            ),
            ("dicom-charset/chrX1.dcm", ContentKind::Dicom),
            ("aecg/ecgtoolkit_Example_aECG.xml", ContentKind::Aecg),
            (
                "hl7/nist/ORU_R01_2.5.1_SampleTestCase1.hl7",
                ContentKind::Hl7,
            ),
        ] {
            let path = base.join(file);
            let Ok(data) = std::fs::read(&path) else {
                eprintln!("skipped: {} not present", path.display());
                continue;
            };
            let head = &data[..data.len().min(SNIFF_LEN)];
            assert_eq!(sniff(head, data.len() as u64), kind, "{file}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600), total in 0u64..100_000) {
            let _ = sniff(&data, total);
        }
    }
}
