//! What a received file or record is: its kind (by content, never by
//! name), the metadata central and the status views need (patient,
//! acquisition time, device, DICOM identifiers), whether it is a STAT ECG,
//! and whether it must be quarantined.
//!
//! Quarantine never drops anything. The item is stored and uploaded like
//! any other, marked with the reason, so central files it apart from the
//! reading system's import and an operator looks at it; the gateway counts
//! it in `yilian_gateway_ecg_quarantined_total` for the alert.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::Path;

use yilian_codecs::ecg::{ScpHeader, read_aecg, read_scp};
use yilian_codecs::sniff::{ContentKind, sniff};
use yilian_protocol::ItemKind;
use yilian_protocol::kind::keys;

/// The item kind a recognised payload is offered as.
fn item_kind(k: ContentKind) -> ItemKind {
    match k {
        ContentKind::Dicom => ItemKind::Dicom,
        ContentKind::ScpEcg => ItemKind::ScpEcg,
        ContentKind::Aecg => ItemKind::Aecg,
        ContentKind::Pdf => ItemKind::Pdf,
        ContentKind::Hl7 => ItemKind::Hl7,
        ContentKind::Other => ItemKind::File,
    }
}

/// The largest SCP-ECG record read whole: a 10 s 12-lead record is tens of
/// kilobytes, a long Holter-like one a few megabytes.
pub const MAX_SCP_BYTES: u64 = 16 * 1024 * 1024;

/// SOP classes of ECG waveforms (12-lead, general, ambulatory).
const ECG_SOP_CLASSES: [&str; 3] = [
    "1.2.840.10008.5.1.4.1.1.9.1.1",
    "1.2.840.10008.5.1.4.1.1.9.1.2",
    "1.2.840.10008.5.1.4.1.1.9.1.3",
];

pub use crate::config::Profile;

/// A payload, described.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Description {
    pub kind: ItemKind,
    pub metadata: BTreeMap<String, String>,
    /// An ECG (SCP-ECG, aECG or a DICOM ECG waveform).
    pub ecg: bool,
    /// Marked urgent by the device: goes on the urgent lane.
    pub stat: bool,
    /// Why it must be looked at by a person before it is used.
    pub quarantine: Option<Quarantine>,
}

/// Why a payload was quarantined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// A short class for metrics: one of [`QUARANTINE_CLASSES`].
    pub class: &'static str,
    /// What an operator reads.
    pub reason: String,
}

/// Bytes of a DICOM file read for its metadata: headers sit well within
/// them, before any pixel data.
const DICOM_HEAD_BYTES: u64 = 1024 * 1024;

pub const QUARANTINE_CLASSES: &[&str] = &["unreadable", "checksum", "not_ecg", "too_large"];

impl Description {
    fn new(kind: ContentKind) -> Self {
        Self {
            kind: item_kind(kind),
            ..Self::default()
        }
    }

    fn put(&mut self, key: &str, value: Option<String>) {
        if let Some(v) = value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()) {
            self.metadata.insert(key.to_owned(), v);
        }
    }

    fn quarantine(&mut self, class: &'static str, reason: impl Into<String>) {
        let reason = reason.into();
        self.metadata.insert("quarantine".into(), reason.clone());
        self.quarantine = Some(Quarantine { class, reason });
    }

    /// Applies a source profile's rules once the content is known. The
    /// `ecg` metadata tells central where an item goes: `record` (an ECG),
    /// `report` (a PDF from an ECG source), `unrecognised` (anything else
    /// an ECG source sent, quarantined).
    fn finish(mut self, profile: Profile) -> Self {
        let is_pdf = self.kind == ItemKind::Pdf;
        let role = match (self.ecg, profile, is_pdf) {
            (true, _, _) => Some("record"),
            (false, Profile::Ecg, true) => Some("report"),
            (false, Profile::Ecg, false) => {
                if self.quarantine.is_none() {
                    self.quarantine(
                        "not_ecg",
                        format!("not a recognised ECG format ({})", self.kind),
                    );
                }
                Some("unrecognised")
            }
            (false, Profile::Files, _) => {
                // Not an ECG and not from an ECG source: nothing to
                // quarantine, the reason only describes the file.
                if let Some(q) = self.quarantine.take() {
                    self.metadata.remove("quarantine");
                    self.metadata.insert("parse_error".into(), q.reason);
                }
                None
            }
        };
        if let Some(role) = role {
            self.metadata.insert(keys::ECG.into(), role.into());
        }
        if self.stat {
            self.metadata.insert("stat".into(), "1".into());
        }
        self
    }
}

/// Describes a payload held in memory (a record from a serial line).
pub fn describe_bytes(data: &[u8], profile: Profile) -> Description {
    let kind = sniff(
        &data[..data.len().min(yilian_codecs::sniff::SNIFF_LEN)],
        data.len() as u64,
    );
    let mut d = Description::new(kind);
    match kind {
        ContentKind::ScpEcg => describe_scp(&mut d, data),
        ContentKind::Aecg => describe_aecg(&mut d, data),
        ContentKind::Dicom => describe_dicom(&mut d, data, true),
        _ => {}
    }
    d.finish(profile)
}

/// Describes a DICOM instance from its first bytes (Part 10 header and the
/// start of the data set); `whole` when `head` is the entire instance, so
/// that an element running past its end is a malformed data set rather than
/// the cut.
pub fn describe_dicom_head(head: &[u8], whole: bool, profile: Profile) -> Description {
    let mut d = Description::new(ContentKind::Dicom);
    describe_dicom(&mut d, head, whole);
    d.finish(profile)
}

/// Describes the file at `path`, whose first bytes are `head`, without
/// holding more than an SCP-ECG record in memory.
pub fn describe_file(path: &Path, head: &[u8], size: u64, profile: Profile) -> Description {
    let kind = sniff(head, size);
    let mut d = Description::new(kind);
    let open = || std::fs::File::open(path).map(BufReader::new);
    match kind {
        ContentKind::ScpEcg if size <= MAX_SCP_BYTES => {
            let mut data = Vec::with_capacity(size as usize);
            match open().and_then(|mut f| f.read_to_end(&mut data)) {
                Ok(_) => describe_scp(&mut d, &data),
                Err(e) => {
                    d.quarantine("unreadable", format!("cannot read the SCP-ECG record: {e}"))
                }
            }
        }
        ContentKind::ScpEcg => d.quarantine(
            "too_large",
            format!("{size} bytes is too large for an SCP-ECG record"),
        ),
        ContentKind::Aecg => match open() {
            Ok(f) => describe_aecg(&mut d, f),
            Err(e) => d.quarantine("unreadable", format!("cannot read the aECG file: {e}")),
        },
        ContentKind::Dicom => {
            let mut head = Vec::new();
            match open().and_then(|f| f.take(DICOM_HEAD_BYTES).read_to_end(&mut head)) {
                Ok(_) => describe_dicom(&mut d, &head, size <= DICOM_HEAD_BYTES),
                Err(e) => d.quarantine("unreadable", format!("cannot read the DICOM file: {e}")),
            }
        }
        _ => {}
    }
    d.finish(profile)
}

fn date((y, m, d): (u16, u8, u8)) -> String {
    format!("{y:04}-{m:02}-{d:02}")
}

fn describe_scp(d: &mut Description, data: &[u8]) {
    d.ecg = true;
    let record = match read_scp(data) {
        Ok(r) => r,
        Err(e) => {
            d.quarantine("unreadable", format!("unreadable SCP-ECG record: {e}"));
            return;
        }
    };
    let h: &ScpHeader = &record.header;
    d.put("patient_id", h.patient_id.clone());
    let name = match (&h.last_name, &h.first_name) {
        (Some(l), Some(f)) => Some(format!("{l}^{f}")),
        (Some(l), None) => Some(l.clone()),
        (None, Some(f)) => Some(format!("^{f}")),
        (None, None) => None,
    };
    d.put("patient_name", name);
    d.put(
        "sex",
        h.sex.map(|s| match s {
            1 => "M".into(),
            2 => "F".into(),
            _ => "U".into(),
        }),
    );
    d.put("birth_date", h.birth_date.map(date));
    let acquired = h.acquisition_date.map(|day| {
        let mut s = date(day);
        if let Some((hh, mm, ss)) = h.acquisition_time {
            s.push_str(&format!("T{hh:02}:{mm:02}:{ss:02}"));
            if let Some(off) = h.utc_offset_minutes {
                let sign = if off < 0 { '-' } else { '+' };
                let off = off.unsigned_abs();
                s.push_str(&format!("{sign}{:02}:{:02}", off / 60, off % 60));
            }
        }
        s
    });
    d.put("acquired", acquired);
    d.put("device", h.device_model.clone());
    d.put("institution", h.institution.clone());
    d.put("department", h.department.clone());
    d.put("technician", h.technician.clone());
    d.put("stat_code", h.stat_code.map(|c| c.to_string()));
    d.stat = h.is_stat();
    if !record.conformant() {
        let list: Vec<String> = record.deviations.iter().map(|x| format!("{x:?}")).collect();
        d.put("deviations", Some(list.join(",")));
    }
    if !record.trusted() {
        d.quarantine(
            "checksum",
            "SCP-ECG checksum matches no known variant: the data may be damaged",
        );
    }
}

fn describe_aecg(d: &mut Description, input: impl std::io::BufRead) {
    d.ecg = true;
    let h = match read_aecg(input) {
        Ok(h) => h,
        Err(e) => {
            d.quarantine("unreadable", format!("unreadable aECG document: {e}"));
            return;
        }
    };
    d.put("patient_id", h.patient_id.clone());
    d.put("patient_name", h.patient_name.clone());
    d.put("sex", h.sex.clone());
    d.put("birth_date", h.birth_date.as_deref().map(hl7_ts));
    d.put("acquired", h.effective_time.as_deref().map(hl7_ts));
    d.put("device", h.device_model.clone());
    d.put("manufacturer", h.device_manufacturer.clone());
    d.put("technician", h.author.clone());
    d.put("institution", h.institution.clone());
    d.put("document_id", h.document_id.clone());
    d.stat = h.is_stat();
}

/// `YYYYMMDDhhmmss[+zzzz]` → `YYYY-MM-DD[Thh:mm[:ss]][+zz:zz]`; anything
/// else is kept as written.
fn hl7_ts(ts: &str) -> String {
    let (digits, zone) = match ts.find(['+', '-']) {
        Some(i) => ts.split_at(i),
        None => (ts.split('.').next().unwrap_or(ts), ""),
    };
    let digits = digits.split('.').next().unwrap_or(digits);
    if !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() < 8 {
        return ts.to_owned();
    }
    let mut s = format!("{}-{}-{}", &digits[0..4], &digits[4..6], &digits[6..8]);
    if digits.len() >= 12 {
        s.push_str(&format!("T{}:{}", &digits[8..10], &digits[10..12]));
        if digits.len() >= 14 {
            s.push_str(&format!(":{}", &digits[12..14]));
        }
        if zone.len() == 5 {
            s.push_str(&format!("{}:{}", &zone[..3], &zone[3..]));
        }
    }
    s
}

fn describe_dicom(d: &mut Description, head: &[u8], whole: bool) {
    use dicom_dictionary_std::tags;
    use dicom_object::OpenFileOptions;

    // Everything needed sits before the waveform and pixel data, which are
    // never read (a multi-frame instance can be gigabytes). The library
    // allocates values at their declared length before reading them, so it
    // only sees the elements whose lengths fit in the bytes at hand.
    let stop = tags::WAVEFORM_SEQUENCE;
    let stop = (u32::from(stop.group()) << 16) | u32::from(stop.element());
    let extent = match yilian_codecs::dicom_extent::parsable_extent(head, stop) {
        Ok(e) => e,
        Err(e) => {
            d.quarantine("unreadable", format!("unreadable DICOM file: {e}"));
            return;
        }
    };
    if let (true, Some(why)) = (whole, &extent.short) {
        d.quarantine("unreadable", format!("malformed DICOM data set: {why}"));
        return;
    }
    let parsable = head.get(..extent.len).unwrap_or(head);
    let options = OpenFileOptions::new().read_until(tags::WAVEFORM_SEQUENCE);
    let object = match options.from_reader(parsable) {
        Ok(o) => o,
        Err(e) => {
            d.quarantine("unreadable", format!("unreadable DICOM file: {e}"));
            return;
        }
    };
    let text = |tag| {
        object.element_opt(tag).ok().flatten().and_then(|e| {
            e.to_str()
                .ok()
                .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
        })
    };
    let sop_class = object
        .meta()
        .media_storage_sop_class_uid()
        .trim_end_matches('\0')
        .to_owned();
    d.ecg = ECG_SOP_CLASSES.contains(&sop_class.as_str());
    d.put("sop_class", Some(sop_class));
    d.put(
        "transfer_syntax",
        Some(
            object
                .meta()
                .transfer_syntax()
                .trim_end_matches('\0')
                .to_owned(),
        ),
    );
    d.put("patient_id", text(tags::PATIENT_ID));
    d.put("patient_name", text(tags::PATIENT_NAME));
    d.put("sex", text(tags::PATIENT_SEX));
    d.put(
        "birth_date",
        text(tags::PATIENT_BIRTH_DATE).as_deref().map(hl7_ts),
    );
    d.put("study_uid", text(tags::STUDY_INSTANCE_UID));
    d.put("series_uid", text(tags::SERIES_INSTANCE_UID));
    d.put(keys::SOP_INSTANCE_UID, text(tags::SOP_INSTANCE_UID));
    d.put("accession", text(tags::ACCESSION_NUMBER));
    d.put("modality", text(tags::MODALITY));
    d.put("study_date", text(tags::STUDY_DATE).as_deref().map(hl7_ts));
    d.put("device", text(tags::MANUFACTURER_MODEL_NAME));
    d.put("institution", text(tags::INSTITUTION_NAME));
    let acquired = match (
        text(tags::ACQUISITION_DATE_TIME),
        text(tags::CONTENT_DATE),
        text(tags::CONTENT_TIME),
    ) {
        (Some(dt), _, _) => Some(hl7_ts(&dt)),
        (None, Some(day), Some(time)) => Some(hl7_ts(&format!("{day}{time}"))),
        (None, Some(day), None) => Some(hl7_ts(&day)),
        _ => None,
    };
    d.put("acquired", acquired);
    // No standard STAT flag in a stored instance; carts that order urgent
    // ECGs carry the requested procedure priority from the worklist.
    d.stat =
        text(tags::REQUESTED_PROCEDURE_PRIORITY).is_some_and(|p| p.eq_ignore_ascii_case("STAT"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hl7_timestamps() {
        assert_eq!(hl7_ts("20021122091000"), "2002-11-22T09:10:00");
        assert_eq!(hl7_ts("20261123101500+0800"), "2026-11-23T10:15:00+08:00");
        assert_eq!(hl7_ts("19530508"), "1953-05-08");
        assert_eq!(hl7_ts("2026112310"), "2026-11-23");
        assert_eq!(hl7_ts("garbage"), "garbage");
    }

    #[test]
    fn ecg_profile_quarantines_what_is_not_an_ecg() {
        let d = describe_bytes(b"hello, not an ECG", Profile::Ecg);
        assert!(d.quarantine.is_some());
        assert_eq!(d.kind, ItemKind::File);
        let d = describe_bytes(b"hello, not an ECG", Profile::Files);
        assert!(d.quarantine.is_none());
        let d = describe_bytes(b"%PDF-1.4 report", Profile::Ecg);
        assert!(d.quarantine.is_none(), "ECG reports come as PDFs");
        let mut broken_dicom = vec![0u8; 128];
        broken_dicom.extend_from_slice(b"DICM\x02\x00");
        let d = describe_bytes(&broken_dicom, Profile::Files);
        assert!(
            d.quarantine.is_none() && d.metadata.contains_key("parse_error"),
            "{d:?}"
        );
        let d = describe_bytes(&broken_dicom, Profile::Ecg);
        assert!(d.quarantine.is_some(), "{d:?}");
    }

    fn sample(rel: &str) -> Option<Vec<u8>> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/samples")
            .join(rel);
        let r = std::fs::read(&path).ok();
        if r.is_none() {
            eprintln!("skipped: {} is absent", path.display());
        }
        r
    }

    #[test]
    fn conformance_samples() {
        if let Some(scp) = sample("scp-ecg/ecgtoolkit_Example.scp") {
            let d = describe_bytes(&scp, Profile::Ecg);
            assert_eq!(
                (d.kind, d.ecg, d.quarantine.as_ref()),
                (ItemKind::ScpEcg, true, None)
            );
            assert_eq!(d.metadata.get("device").map(String::as_str), Some("ELI250"));
            // Truncated: the record is not all there.
            let d = describe_bytes(&scp[..scp.len() / 2], Profile::Ecg);
            assert!(d.quarantine.is_some(), "{d:?}");
            // One flipped byte in the waveform: checksum fails.
            let mut bad = scp.clone();
            let n = bad.len();
            bad[n - 100] ^= 0x55;
            let d = describe_bytes(&bad, Profile::Ecg);
            assert!(
                d.quarantine.as_ref().is_some_and(|q| q.class == "checksum"),
                "{d:?}"
            );
        }
        if let Some(xml) = sample("aecg/ecgtoolkit_Example_aECG.xml") {
            let d = describe_bytes(&xml, Profile::Ecg);
            assert_eq!(
                (d.kind, d.ecg, d.quarantine.as_ref()),
                (ItemKind::Aecg, true, None)
            );
            assert_eq!(
                d.metadata.get("acquired").map(String::as_str),
                Some("2002-11-22T09:10:00")
            );
            assert_eq!(
                d.metadata.get("patient_id").map(String::as_str),
                Some("SBJ-123")
            );
        }
        if let Some(dcm) = sample("dicom-ecg/ecgtoolkit_Example_12lead.dcm") {
            let d = describe_bytes(&dcm, Profile::Ecg);
            assert_eq!(
                (d.kind, d.ecg, d.quarantine.as_ref()),
                (ItemKind::Dicom, true, None),
                "{d:?}"
            );
            assert!(d.metadata.contains_key("sop_instance_uid"), "{d:?}");
        }
        if let Some(dcm) = sample("dicom-charset/chrX1.dcm") {
            let d = describe_bytes(&dcm, Profile::Files);
            assert!(!d.ecg);
            assert_eq!(
                d.metadata.get("patient_name").map(String::as_str),
                Some("Wang^XiaoDong=王^小東=")
            );
        }
    }
}
